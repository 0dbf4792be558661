/*
 * Test tool for t/28-scep-server.t: builds SCEP PKIOperation requests with
 * each part chosen (so hostile ones too), and reads a CertRep.
 *
 *   scep_req build TYPE CIPHER RECIPIENT.crt SIGNER.crt SIGNER.key CSR.der
 *                  NONCEHEX TXID OUT.der
 *   scep_req read CERTREP.der [KEY CERT [OUT.pem]]   prints status=,
 *       failInfo=, and issued= (the SHA-256; the certificate to OUT.pem)
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs7.h>
#include <openssl/provider.h>
#include <openssl/x509.h>


static int  nid_mt, nid_st, nid_fi, nid_sn, nid_tx;


static void
die(const char *what)
{
    fprintf(stderr, "scep_req: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}


static int
nid(const char *oid, const char *sn)
{
    int  n = OBJ_txt2nid(oid);

    return n != NID_undef ? n : OBJ_create(oid, sn, sn);
}


static unsigned char *
slurp(const char *path, long *len)
{
    FILE           *f;
    unsigned char  *buf;

    f = fopen(path, "rb");
    if (f == NULL) {
        die(path);
    }
    buf = malloc(1 << 20);
    *len = (long) fread(buf, 1, 1 << 20, f);
    fclose(f);
    return buf;
}


static void
add_str(PKCS7_SIGNER_INFO *si, int n, const char *s)
{
    ASN1_PRINTABLESTRING  *v = ASN1_PRINTABLESTRING_new();

    ASN1_STRING_set(v, s, (int) strlen(s));
    PKCS7_add_signed_attribute(si, n, V_ASN1_PRINTABLESTRING, v);
}


static int
build(char **argv)
{
    int                  i, len;
    long                 n;
    BIO                 *in, *b;
    FILE                *f;
    X509                *rc, *sc;
    PKCS7               *env, *p7;
    EVP_PKEY            *key;
    unsigned char       *csr, *der, nonce[16];
    const EVP_CIPHER    *ciph;
    STACK_OF(X509)      *to;
    ASN1_OCTET_STRING   *os;
    PKCS7_SIGNER_INFO   *si;

    ciph = EVP_get_cipherbyname(argv[1]);
    if (ciph == NULL) {
        die("unknown cipher");
    }

    f = fopen(argv[2], "r");
    rc = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    f = fopen(argv[3], "r");
    sc = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    f = fopen(argv[4], "r");
    key = f ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
    if (rc == NULL || sc == NULL || key == NULL) {
        die("cannot read the certificates or key");
    }

    csr = slurp(argv[5], &n);
    for (i = 0; i < 16; i++) {
        sscanf(argv[6] + 2 * i, "%2hhx", &nonce[i]);
    }

    to = sk_X509_new_null();
    sk_X509_push(to, rc);
    in = BIO_new_mem_buf(csr, (int) n);
    env = PKCS7_encrypt(to, in, ciph, PKCS7_BINARY);
    if (env == NULL) {
        die("encrypt");
    }

    der = NULL;
    len = i2d_PKCS7(env, &der);

    p7 = PKCS7_new();
    PKCS7_set_type(p7, NID_pkcs7_signed);
    si = PKCS7_add_signature(p7, sc, key, EVP_sha256());
    PKCS7_add_certificate(p7, sc);
    PKCS7_add_signed_attribute(si, NID_pkcs9_contentType, V_ASN1_OBJECT,
                               OBJ_nid2obj(NID_pkcs7_data));
    add_str(si, nid_mt, argv[0]);
    add_str(si, nid_tx, argv[7]);
    os = ASN1_OCTET_STRING_new();
    ASN1_OCTET_STRING_set(os, nonce, 16);
    PKCS7_add_signed_attribute(si, nid_sn, V_ASN1_OCTET_STRING, os);
    PKCS7_content_new(p7, NID_pkcs7_data);

    b = PKCS7_dataInit(p7, NULL);
    BIO_write(b, der, len);
    BIO_flush(b);
    if (PKCS7_dataFinal(p7, b) != 1) {
        die("sign");
    }

    f = fopen(argv[8], "wb");
    i2d_PKCS7_fp(f, p7);
    fclose(f);
    return 0;
}


static const char *
attr(PKCS7_SIGNER_INFO *si, int n)
{
    static char  buf[64];
    ASN1_TYPE   *t = PKCS7_get_signed_attribute(si, n);

    if (t == NULL || t->type != V_ASN1_PRINTABLESTRING) {
        return "-";
    }
    snprintf(buf, sizeof(buf), "%.*s", t->value.printablestring->length,
             t->value.printablestring->data);
    return buf;
}


static int
readrep(int argc, char **argv)
{
    int                   i;
    long                  n;
    BIO                  *out, *dec;
    FILE                 *f;
    X509                 *c, *x;
    PKCS7                *p7, *env, *certs;
    BUF_MEM              *bm;
    EVP_PKEY             *k;
    unsigned int          mdlen;
    unsigned char        *der, md[32];
    const unsigned char  *p;
    PKCS7_SIGNER_INFO    *si;

    der = slurp(argv[0], &n);
    p = der;
    p7 = d2i_PKCS7(NULL, &p, n);
    if (p7 == NULL || !PKCS7_type_is_signed(p7)) {
        die("not a SignedData");
    }

    si = sk_PKCS7_SIGNER_INFO_value(PKCS7_get_signer_info(p7), 0);
    printf("messageType=%s\n", attr(si, nid_mt));
    printf("status=%s\n", attr(si, nid_st));
    printf("failInfo=%s\n", attr(si, nid_fi));

    out = BIO_new(BIO_s_mem());
    if (PKCS7_verify(p7, NULL, NULL, NULL, out, PKCS7_NOVERIFY) != 1) {
        die("CertRep signature");
    }
    printf("verified=1\n");

    if (argc < 3) {
        return 0;
    }

    f = fopen(argv[1], "r");
    k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    f = fopen(argv[2], "r");
    c = PEM_read_X509(f, NULL, NULL, NULL);

    BIO_get_mem_ptr(out, &bm);
    p = (unsigned char *) bm->data;
    env = d2i_PKCS7(NULL, &p, bm->length);
    dec = BIO_new(BIO_s_mem());
    if (env == NULL || PKCS7_decrypt(env, k, c, dec, 0) != 1) {
        die("decrypt");
    }

    BIO_get_mem_ptr(dec, &bm);
    p = (unsigned char *) bm->data;
    certs = d2i_PKCS7(NULL, &p, bm->length);
    if (certs == NULL || certs->d.sign->cert == NULL) {
        die("no certificate");
    }

    x = sk_X509_value(certs->d.sign->cert, 0);
    X509_digest(x, EVP_sha256(), md, &mdlen);
    printf("issued=");
    for (i = 0; i < 32; i++) {
        printf("%02x", md[i]);
    }
    printf("\n");

    if (argc >= 4) {
        f = fopen(argv[3], "w");
        PEM_write_X509(f, x);
        fclose(f);
    }

    return 0;
}


int
main(int argc, char **argv)
{
    OSSL_PROVIDER_load(NULL, "legacy");
    OSSL_PROVIDER_load(NULL, "default");

    nid_mt = nid("2.16.840.1.113733.1.9.2", "messageType");
    nid_st = nid("2.16.840.1.113733.1.9.3", "pkiStatus");
    nid_fi = nid("2.16.840.1.113733.1.9.4", "failInfo");
    nid_sn = nid("2.16.840.1.113733.1.9.5", "senderNonce");
    nid_tx = nid("2.16.840.1.113733.1.9.7", "transactionID");

    if (argc == 11 && strcmp(argv[1], "build") == 0) {
        return build(argv + 2);
    }
    if (argc >= 3 && strcmp(argv[1], "read") == 0) {
        return readrep(argc - 2, argv + 2);
    }

    fprintf(stderr, "usage: see the comment at the top of scep_req.c\n");
    return 2;
}
