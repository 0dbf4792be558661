
/*
 * Copyright (C) The MDM module authors
 *
 * SCEP messages (RFC 8894). A PKIOperation is a SignedData whose content
 * is an EnvelopedData to our CA certificate holding a PKCS#10 request;
 * every layer is parsed with OpenSSL and must be consumed whole. The
 * CertRep is a SignedData by the CA with the SCEP attributes, and on
 * success an EnvelopedData to the requester holding a certs-only
 * SignedData with the issued certificate.
 */


#define _GNU_SOURCE
#include <string.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "ngx_http_mdm_scep_msg.h"


/* the SCEP attributes, under 2.16.840.1.113733.1.9 (VeriSign) */
static int  mdm_nid_message_type;
static int  mdm_nid_pki_status;
static int  mdm_nid_fail_info;
static int  mdm_nid_sender_nonce;
static int  mdm_nid_recipient_nonce;
static int  mdm_nid_transaction_id;


static int mdm_scep_nid(const char *oid, const char *sn);
static int mdm_scep_attr_string(PKCS7_SIGNER_INFO *si, int nid, char *buf,
    size_t size);
static int mdm_scep_unwrap(mdm_scep_ca_t *ca, const unsigned char *der,
    size_t len, mdm_scep_req_t *req, const char **reason);
static int mdm_scep_check_csr(mdm_scep_req_t *req, const char **reason);
static int mdm_scep_add_string(PKCS7_SIGNER_INFO *si, int nid,
    const char *s);
static int mdm_scep_add_octets(PKCS7_SIGNER_INFO *si, int nid,
    const unsigned char *p, size_t len);
static int mdm_scep_envelope(mdm_scep_req_t *req, X509 *issued, BIO *out);
static int mdm_scep_ext(X509 *x, X509 *ca, int nid, const char *value);


int
mdm_scep_init(void)
{
    mdm_nid_message_type = mdm_scep_nid("2.16.840.1.113733.1.9.2",
                                        "messageType");
    mdm_nid_pki_status = mdm_scep_nid("2.16.840.1.113733.1.9.3",
                                      "pkiStatus");
    mdm_nid_fail_info = mdm_scep_nid("2.16.840.1.113733.1.9.4", "failInfo");
    mdm_nid_sender_nonce = mdm_scep_nid("2.16.840.1.113733.1.9.5",
                                        "senderNonce");
    mdm_nid_recipient_nonce = mdm_scep_nid("2.16.840.1.113733.1.9.6",
                                           "recipientNonce");
    mdm_nid_transaction_id = mdm_scep_nid("2.16.840.1.113733.1.9.7",
                                          "transactionID");

    return (mdm_nid_message_type && mdm_nid_pki_status && mdm_nid_fail_info
            && mdm_nid_sender_nonce && mdm_nid_recipient_nonce
            && mdm_nid_transaction_id) ? 0 : -1;
}


/* The NID of an OID, registered once (another module may have done so). */

static int
mdm_scep_nid(const char *oid, const char *sn)
{
    int  nid;

    nid = OBJ_txt2nid(oid);
    if (nid != NID_undef) {
        return nid;
    }

    nid = OBJ_create(oid, sn, sn);

    return nid == NID_undef ? 0 : nid;
}


int
mdm_scep_parse(mdm_scep_ca_t *ca, const unsigned char *der, size_t len,
    mdm_scep_req_t *req, const char **reason)
{
    int                         rc, n;
    char                        mt[8];
    BIO                        *out;
    PKCS7                      *p7;
    BUF_MEM                    *bm;
    ASN1_TYPE                  *t;
    const unsigned char        *p;
    STACK_OF(X509)             *signers;
    PKCS7_SIGNER_INFO          *si;
    STACK_OF(PKCS7_SIGNER_INFO) *sis;

    memset(req, 0, sizeof(*req));
    p7 = NULL;
    out = NULL;
    signers = NULL;
    rc = MDM_SCEP_NOT_SCEP;

    if (len == 0 || len > MDM_SCEP_MAX_MSG) {
        *reason = "empty or oversized PKIOperation";
        return rc;
    }

    p = der;
    p7 = d2i_PKCS7(NULL, &p, (long) len);

    if (p7 == NULL || p != der + len || !PKCS7_type_is_signed(p7)
        || PKCS7_get_detached(p7))
    {
        *reason = "PKIOperation is not a PKCS#7 SignedData";
        goto done;
    }

    sis = PKCS7_get_signer_info(p7);
    if (sis == NULL || sk_PKCS7_SIGNER_INFO_num(sis) != 1) {
        *reason = "PKIOperation has not exactly one signer";
        goto done;
    }

    si = sk_PKCS7_SIGNER_INFO_value(sis, 0);

    if (mdm_scep_attr_string(si, mdm_nid_transaction_id, req->txid,
                             sizeof(req->txid)) != 0
        || req->txid[0] == '\0')
    {
        *reason = "PKIOperation without a valid transactionID";
        goto done;
    }

    t = PKCS7_get_signed_attribute(si, mdm_nid_sender_nonce);
    if (t == NULL || t->type != V_ASN1_OCTET_STRING
        || ASN1_STRING_length(t->value.octet_string) != 16)
    {
        *reason = "PKIOperation without a 16-byte senderNonce";
        goto done;
    }

    memcpy(req->nonce, ASN1_STRING_get0_data(t->value.octet_string), 16);
    req->has_nonce = 1;

    /* from here on, the requester gets a signed FAILURE */
    rc = MDM_SCEP_FAIL;
    req->fail_info = MDM_SCEP_BAD_REQUEST;

    if (mdm_scep_attr_string(si, mdm_nid_message_type, mt, sizeof(mt)) != 0) {
        *reason = "PKIOperation without a messageType";
        goto done;
    }

    req->type = atoi(mt);

    if (req->type != MDM_SCEP_PKCSREQ && req->type != MDM_SCEP_RENEWALREQ) {
        *reason = "unsupported messageType (PKCSReq and RenewalReq only)";
        goto done;
    }

    signers = PKCS7_get0_signers(p7, NULL, 0);
    if (signers == NULL || sk_X509_num(signers) != 1) {
        req->fail_info = MDM_SCEP_BAD_MESSAGE;
        *reason = "PKIOperation does not carry its signer's certificate";
        goto done;
    }

    req->signer = sk_X509_value(signers, 0);
    X509_up_ref(req->signer);

    out = BIO_new(BIO_s_mem());
    if (out == NULL) {
        *reason = "out of memory";
        goto done;
    }

    /* the signature only: a PKCSReq's signer is self-signed */
    if (PKCS7_verify(p7, NULL, NULL, NULL, out,
                     PKCS7_NOVERIFY | PKCS7_BINARY) != 1)
    {
        req->fail_info = MDM_SCEP_BAD_MESSAGE;
        *reason = "PKIOperation signature does not verify";
        goto done;
    }

    BIO_get_mem_ptr(out, &bm);
    n = mdm_scep_unwrap(ca, (unsigned char *) bm->data, bm->length, req,
                        reason);
    if (n != 0) {
        goto done;
    }

    if (mdm_scep_check_csr(req, reason) != 0) {
        goto done;
    }

    rc = MDM_SCEP_OK;

done:

    sk_X509_free(signers);
    BIO_free(out);
    PKCS7_free(p7);
    ERR_clear_error();

    return rc;
}


/* The EnvelopedData: to us, with a cipher we accept, holding a CSR. */

static int
mdm_scep_unwrap(mdm_scep_ca_t *ca, const unsigned char *der, size_t len,
    mdm_scep_req_t *req, const char **reason)
{
    int                           i, nid, found, rc;
    BIO                          *out;
    PKCS7                        *env;
    BUF_MEM                      *bm;
    X509_REQ                     *csr;
    PKCS7_RECIP_INFO             *ri;
    const unsigned char          *p;
    STACK_OF(PKCS7_RECIP_INFO)   *ris;

    rc = -1;
    out = NULL;
    req->fail_info = MDM_SCEP_BAD_MESSAGE;

    p = der;
    env = d2i_PKCS7(NULL, &p, (long) len);

    if (env == NULL || p != der + len || !PKCS7_type_is_enveloped(env)
        || env->d.enveloped->enc_data == NULL
        || env->d.enveloped->enc_data->algorithm == NULL)
    {
        *reason = "PKIOperation content is not an EnvelopedData";
        goto done;
    }

    nid = OBJ_obj2nid(env->d.enveloped->enc_data->algorithm->algorithm);

    switch (nid) {

    case NID_aes_128_cbc:
    case NID_aes_192_cbc:
    case NID_aes_256_cbc:
        break;

    case NID_des_cbc:
    case NID_des_ede3_cbc:
        if (ca->allow_des) {
            break;
        }

        /* fall through */

    default:
        req->fail_info = MDM_SCEP_BAD_ALG;
        *reason = "unsupported content-encryption algorithm "
                  "(AES-CBC; DES with mdm_scep_des on)";
        goto done;
    }

    req->cipher = EVP_get_cipherbynid(nid);

    ris = env->d.enveloped->recipientinfo;
    found = 0;

    for (i = 0; i < sk_PKCS7_RECIP_INFO_num(ris); i++) {
        ri = sk_PKCS7_RECIP_INFO_value(ris, i);

        if (X509_NAME_cmp(ri->issuer_and_serial->issuer,
                          X509_get_issuer_name(ca->ca)) == 0
            && ASN1_INTEGER_cmp(ri->issuer_and_serial->serial,
                                X509_get0_serialNumber(ca->ca)) == 0)
        {
            found = 1;
            break;
        }
    }

    if (!found) {
        *reason = "PKIOperation is not encrypted to our CA certificate";
        goto done;
    }

    out = BIO_new(BIO_s_mem());
    if (out == NULL) {
        *reason = "out of memory";
        goto done;
    }

    if (req->cipher == NULL
        || PKCS7_decrypt(env, ca->key, ca->ca, out, PKCS7_BINARY) != 1)
    {
        *reason = "PKIOperation does not decrypt with our CA key";
        goto done;
    }

    BIO_get_mem_ptr(out, &bm);
    p = (unsigned char *) bm->data;
    csr = d2i_X509_REQ(NULL, &p, bm->length);

    if (csr == NULL || p != (unsigned char *) bm->data + bm->length) {
        X509_REQ_free(csr);
        *reason = "PKIOperation does not hold a PKCS#10 request";
        goto done;
    }

    req->csr = csr;
    rc = 0;

done:

    BIO_free(out);
    PKCS7_free(env);

    return rc;
}


static int
mdm_scep_check_csr(mdm_scep_req_t *req, const char **reason)
{
    int                   i, bits, len;
    EVP_PKEY             *pk;
    ASN1_TYPE            *t;
    X509_ATTRIBUTE       *a;
    const unsigned char  *s;

    pk = X509_REQ_get0_pubkey(req->csr);

    if (pk == NULL || X509_REQ_verify(req->csr, pk) != 1) {
        req->fail_info = MDM_SCEP_BAD_MESSAGE;
        *reason = "CSR signature does not verify";
        return -1;
    }

    bits = EVP_PKEY_get_bits(pk);

    if (EVP_PKEY_get_base_id(pk) != EVP_PKEY_RSA
        || bits < MDM_SCEP_MIN_RSA_BITS || bits > MDM_SCEP_MAX_RSA_BITS)
    {
        req->fail_info = MDM_SCEP_BAD_ALG;
        *reason = "CSR key is not RSA of 2048 to 8192 bits";
        return -1;
    }

    if (X509_NAME_entry_count(X509_REQ_get_subject_name(req->csr)) == 0) {
        req->fail_info = MDM_SCEP_BAD_REQUEST;
        *reason = "CSR has an empty subject";
        return -1;
    }

    req->fail_info = MDM_SCEP_BAD_REQUEST;

    i = X509_REQ_get_attr_by_NID(req->csr, NID_pkcs9_challengePassword, -1);
    if (i < 0) {
        return 0;
    }

    a = X509_REQ_get_attr(req->csr, i);
    t = X509_ATTRIBUTE_get0_type(a, 0);

    if (X509_ATTRIBUTE_count(a) != 1 || t == NULL
        || (t->type != V_ASN1_PRINTABLESTRING && t->type != V_ASN1_UTF8STRING
            && t->type != V_ASN1_IA5STRING))
    {
        *reason = "CSR challengePassword is not one string";
        return -1;
    }

    len = ASN1_STRING_length(t->value.asn1_string);
    s = ASN1_STRING_get0_data(t->value.asn1_string);

    if (len <= 0 || (size_t) len >= sizeof(req->challenge)) {
        *reason = "CSR challengePassword is empty or too long";
        return -1;
    }

    for (i = 0; i < len; i++) {
        if (s[i] < 0x21 || s[i] > 0x7e) {
            *reason = "CSR challengePassword is not printable ASCII";
            return -1;
        }
    }

    memcpy(req->challenge, s, len);
    req->challenge[len] = '\0';

    return 0;
}


/* A printable attribute (messageType, transactionID) as a C string. */

static int
mdm_scep_attr_string(PKCS7_SIGNER_INFO *si, int nid, char *buf, size_t size)
{
    int                   i, len;
    ASN1_TYPE            *t;
    const unsigned char  *s;

    t = PKCS7_get_signed_attribute(si, nid);

    if (t == NULL || t->type != V_ASN1_PRINTABLESTRING) {
        return -1;
    }

    len = ASN1_STRING_length(t->value.printablestring);
    s = ASN1_STRING_get0_data(t->value.printablestring);

    if (len < 0 || (size_t) len >= size) {
        return -1;
    }

    for (i = 0; i < len; i++) {
        if (s[i] < 0x20 || s[i] > 0x7e) {
            return -1;
        }
    }

    memcpy(buf, s, len);
    buf[len] = '\0';

    return 0;
}


void
mdm_scep_req_free(mdm_scep_req_t *req)
{
    X509_free(req->signer);
    X509_REQ_free(req->csr);
    req->signer = NULL;
    req->csr = NULL;
}


/*
 * The certificate: the CSR's subject and key, a random 128-bit serial,
 * digitalSignature + keyEncipherment, clientAuth; never past the CA.
 */

X509 *
mdm_scep_issue(mdm_scep_ca_t *ca, mdm_scep_req_t *req, const char **reason)
{
    X509           *x;
    BIGNUM         *bn;
    ASN1_INTEGER   *serial;
    unsigned char   rnd[16];

    x = X509_new();
    bn = NULL;
    serial = NULL;

    if (x == NULL || RAND_bytes(rnd, sizeof(rnd)) != 1) {
        goto failed;
    }

    rnd[0] &= 0x7f;
    rnd[0] |= 0x40;

    bn = BN_bin2bn(rnd, sizeof(rnd), NULL);
    serial = bn ? BN_to_ASN1_INTEGER(bn, NULL) : NULL;

    if (serial == NULL
        || X509_set_version(x, 2) != 1
        || X509_set_serialNumber(x, serial) != 1
        || X509_set_issuer_name(x, X509_get_subject_name(ca->ca)) != 1
        || X509_set_subject_name(x, X509_REQ_get_subject_name(req->csr)) != 1
        || X509_set_pubkey(x, X509_REQ_get0_pubkey(req->csr)) != 1
        || X509_gmtime_adj(X509_getm_notBefore(x), -300) == NULL
        || X509_gmtime_adj(X509_getm_notAfter(x), ca->validity) == NULL)
    {
        goto failed;
    }

    if (ASN1_TIME_compare(X509_get0_notAfter(x), X509_get0_notAfter(ca->ca))
        > 0
        && X509_set1_notAfter(x, X509_get0_notAfter(ca->ca)) != 1)
    {
        goto failed;
    }

    if (mdm_scep_ext(x, ca->ca, NID_basic_constraints, "critical,CA:FALSE")
        || mdm_scep_ext(x, ca->ca, NID_key_usage,
                        "critical,digitalSignature,keyEncipherment")
        || mdm_scep_ext(x, ca->ca, NID_ext_key_usage, "clientAuth")
        || mdm_scep_ext(x, ca->ca, NID_subject_key_identifier, "hash")
        || mdm_scep_ext(x, ca->ca, NID_authority_key_identifier, "keyid"))
    {
        goto failed;
    }

    if (X509_sign(x, ca->key, EVP_sha256()) <= 0) {
        goto failed;
    }

    BN_free(bn);
    ASN1_INTEGER_free(serial);

    return x;

failed:

    *reason = "cannot build the certificate";
    BN_free(bn);
    ASN1_INTEGER_free(serial);
    X509_free(x);
    ERR_clear_error();

    return NULL;
}


static int
mdm_scep_ext(X509 *x, X509 *ca, int nid, const char *value)
{
    int              rc;
    X509V3_CTX       v3;
    X509_EXTENSION  *ext;

    X509V3_set_ctx(&v3, ca, x, NULL, NULL, 0);

    ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (ext == NULL) {
        return -1;
    }

    rc = X509_add_ext(x, ext, -1) == 1 ? 0 : -1;
    X509_EXTENSION_free(ext);

    return rc;
}


/*
 * CertRep: SUCCESS when issued is set, else FAILURE with req->fail_info.
 * *out is OPENSSL_malloc()ed.
 */

int
mdm_scep_certrep(mdm_scep_ca_t *ca, mdm_scep_req_t *req, X509 *issued,
    unsigned char **out, size_t *outlen)
{
    int                 n, rc;
    BIO                *bio;
    char                num[8];
    PKCS7              *p7;
    unsigned char      *der, nonce[16];
    PKCS7_SIGNER_INFO  *si;

    rc = -1;
    bio = NULL;
    der = NULL;

    p7 = PKCS7_new();
    if (p7 == NULL || PKCS7_set_type(p7, NID_pkcs7_signed) != 1) {
        goto done;
    }

    si = PKCS7_add_signature(p7, ca->ca, ca->key, EVP_sha256());
    if (si == NULL || PKCS7_add_certificate(p7, ca->ca) != 1
        || RAND_bytes(nonce, sizeof(nonce)) != 1)
    {
        goto done;
    }

    snprintf(num, sizeof(num), "%d", MDM_SCEP_CERTREP);

    if (PKCS7_add_signed_attribute(si, NID_pkcs9_contentType, V_ASN1_OBJECT,
                                   OBJ_nid2obj(NID_pkcs7_data)) != 1
        || mdm_scep_add_string(si, mdm_nid_message_type, num)
        || mdm_scep_add_string(si, mdm_nid_pki_status, issued ? "0" : "2")
        || mdm_scep_add_string(si, mdm_nid_transaction_id, req->txid)
        || mdm_scep_add_octets(si, mdm_nid_sender_nonce, nonce, 16)
        || mdm_scep_add_octets(si, mdm_nid_recipient_nonce, req->nonce, 16))
    {
        goto done;
    }

    if (issued == NULL) {
        snprintf(num, sizeof(num), "%d", req->fail_info);
        if (mdm_scep_add_string(si, mdm_nid_fail_info, num)) {
            goto done;
        }
    }

    if (PKCS7_content_new(p7, NID_pkcs7_data) != 1) {
        goto done;
    }

    bio = PKCS7_dataInit(p7, NULL);
    if (bio == NULL) {
        goto done;
    }

    if (issued && mdm_scep_envelope(req, issued, bio) != 0) {
        goto done;
    }

    if (BIO_flush(bio) != 1 || PKCS7_dataFinal(p7, bio) != 1) {
        goto done;
    }

    n = i2d_PKCS7(p7, &der);
    if (n <= 0) {
        goto done;
    }

    *out = der;
    *outlen = n;
    rc = 0;

done:

    BIO_free_all(bio);
    PKCS7_free(p7);
    ERR_clear_error();

    return rc;
}


/* The issued certificate in a certs-only SignedData, to the requester. */

static int
mdm_scep_envelope(mdm_scep_req_t *req, X509 *issued, BIO *out)
{
    int              n, rc;
    BIO             *in;
    PKCS7           *certs, *env;
    unsigned char   *der;
    STACK_OF(X509)  *to;

    rc = -1;
    in = NULL;
    env = NULL;
    der = NULL;
    to = NULL;

    certs = PKCS7_new();
    if (certs == NULL || PKCS7_set_type(certs, NID_pkcs7_signed) != 1) {
        goto done;
    }

    /* degenerate: data content type, no content, no signers */
    certs->d.sign->contents->type = OBJ_nid2obj(NID_pkcs7_data);

    if (PKCS7_add_certificate(certs, issued) != 1) {
        goto done;
    }

    n = i2d_PKCS7(certs, &der);
    if (n <= 0) {
        goto done;
    }

    in = BIO_new_mem_buf(der, n);
    to = sk_X509_new_null();

    if (in == NULL || to == NULL || sk_X509_push(to, req->signer) <= 0) {
        goto done;
    }

    env = PKCS7_encrypt(to, in, req->cipher, PKCS7_BINARY);
    if (env == NULL) {
        goto done;
    }

    OPENSSL_free(der);
    der = NULL;

    n = i2d_PKCS7(env, &der);
    if (n <= 0 || BIO_write(out, der, n) != n) {
        goto done;
    }

    rc = 0;

done:

    sk_X509_free(to);
    BIO_free(in);
    OPENSSL_free(der);
    PKCS7_free(env);
    PKCS7_free(certs);

    return rc;
}


static int
mdm_scep_add_string(PKCS7_SIGNER_INFO *si, int nid, const char *s)
{
    ASN1_PRINTABLESTRING  *v;

    v = ASN1_PRINTABLESTRING_new();
    if (v == NULL || ASN1_STRING_set(v, s, (int) strlen(s)) != 1
        || PKCS7_add_signed_attribute(si, nid, V_ASN1_PRINTABLESTRING, v)
           != 1)
    {
        ASN1_STRING_free(v);
        return -1;
    }

    return 0;
}


static int
mdm_scep_add_octets(PKCS7_SIGNER_INFO *si, int nid, const unsigned char *p,
    size_t len)
{
    ASN1_OCTET_STRING  *v;

    v = ASN1_OCTET_STRING_new();
    if (v == NULL || ASN1_OCTET_STRING_set(v, p, (int) len) != 1
        || PKCS7_add_signed_attribute(si, nid, V_ASN1_OCTET_STRING, v) != 1)
    {
        ASN1_OCTET_STRING_free(v);
        return -1;
    }

    return 0;
}


/* What the record of an issued certificate keeps. */

int
mdm_scep_cert_info(X509 *x, char sha256[65], char serial[65],
    long long *not_after)
{
    int             i, n;
    char           *hex;
    BIGNUM         *bn;
    struct tm       tm;
    unsigned int    mdlen;
    unsigned char   md[EVP_MAX_MD_SIZE];
    static const char  digits[] = "0123456789abcdef";

    if (X509_digest(x, EVP_sha256(), md, &mdlen) != 1 || mdlen != 32) {
        return -1;
    }

    for (i = 0; i < 32; i++) {
        sha256[2 * i] = digits[md[i] >> 4];
        sha256[2 * i + 1] = digits[md[i] & 0xf];
    }

    sha256[64] = '\0';

    bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    hex = bn ? BN_bn2hex(bn) : NULL;
    BN_free(bn);

    if (hex == NULL || strlen(hex) > 64) {
        OPENSSL_free(hex);
        return -1;
    }

    n = (int) strlen(hex);
    for (i = 0; i <= n; i++) {
        serial[i] = (hex[i] >= 'A' && hex[i] <= 'F') ? hex[i] + 32 : hex[i];
    }

    OPENSSL_free(hex);

    if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) != 1) {
        return -1;
    }

    *not_after = (long long) timegm(&tm);

    return 0;
}
