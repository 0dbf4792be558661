/*
 * The CMS SignedData reader of Mdm-Signature (see ngx_http_mdm_cms.h).
 * Every read is checked against the end of the enclosing element; an
 * indefinite-length element ends at its end-of-contents octets, which are
 * looked for only where the structure allows them.
 */

#include <string.h>

#include "ngx_http_mdm_cms.h"


#define MDM_DER_INDEF       1       /* the element may be indefinite */
#define MDM_CMS_MAX_ATTRS   32
#define MDM_CMS_MAX_ALGS    8
#define MDM_CMS_MAX_SIG     2048    /* RSA-16384 fits */


/* A position inside an element's contents. */
typedef struct {
    const unsigned char  *p;
    const unsigned char  *end;      /* of the contents, or of the buffer */
    unsigned              indef;    /* contents end at 00 00 */
    unsigned              depth;
} mdm_der_t;


typedef struct {
    unsigned              tag;      /* identifier octet (low tag numbers) */
    const unsigned char  *tlv;
    const unsigned char  *val;
    size_t                len;      /* definite only */
    size_t                tlvlen;   /* definite only */
    unsigned              indef;
} mdm_der_elem_t;


static int mdm_der_get(mdm_der_t *r, mdm_der_elem_t *e, unsigned flags);
static int mdm_der_expect(mdm_der_t *r, mdm_der_elem_t *e, unsigned tag,
    unsigned flags);
static int mdm_der_open(const mdm_der_t *r, const mdm_der_elem_t *e,
    mdm_der_t *child);
static int mdm_der_more(const mdm_der_t *r);
static int mdm_der_peek(const mdm_der_t *r);
static int mdm_der_close(mdm_der_t *r, mdm_der_t *child);
static int mdm_der_oid_is(const mdm_der_elem_t *e, const unsigned char *oid,
    size_t len);
static int mdm_cms_alg(mdm_der_t *r, mdm_der_elem_t *oid, int *null_params);
static int mdm_cms_octets(mdm_der_t *r);
static int mdm_cms_signed_data(mdm_der_t *r, mdm_cms_t *cms,
    const char **reason);
static int mdm_cms_signer(mdm_der_t *r, mdm_cms_signer_t *s,
    const char **reason);
static int mdm_cms_attrs(mdm_der_t *r, mdm_cms_signer_t *s,
    const char **reason);
static int mdm_cms_md(const mdm_der_elem_t *oid);
static int mdm_cms_sig(const mdm_der_elem_t *oid);
static int mdm_cms_fail(const char **reason, const char *text);


#define MDM_OID(name, ...)                                                  \
    static const unsigned char  name[] = { __VA_ARGS__ }

/* 1.2.840.113549.1.7.1/2 */
MDM_OID(mdm_oid_data, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01);
MDM_OID(mdm_oid_signed, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07,
        0x02);
/* 1.2.840.113549.1.9.3/4/5 */
MDM_OID(mdm_oid_ctype, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x03);
MDM_OID(mdm_oid_mdigest, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09,
        0x04);
MDM_OID(mdm_oid_stime, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x05);
/* 1.3.14.3.2.26, 2.16.840.1.101.3.4.2.n */
MDM_OID(mdm_oid_sha1, 0x2b, 0x0e, 0x03, 0x02, 0x1a);
MDM_OID(mdm_oid_sha2, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02);
/* 1.2.840.113549.1.1.n: 1 rsaEncryption, 5 and 11-14 shaNWithRSA */
MDM_OID(mdm_oid_pkcs1, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01);
/* 1.2.840.10045.2.1 id-ecPublicKey, 4.1 and 4.3.n ecdsa-with-SHAn */
MDM_OID(mdm_oid_ecpub, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01);
MDM_OID(mdm_oid_ecdsa_sha1, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01);
MDM_OID(mdm_oid_ecdsa_sha2, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03);
/* 2.5.29.14 */
MDM_OID(mdm_oid_ski, 0x55, 0x1d, 0x0e);


int
mdm_cms_parse(const unsigned char *der, size_t len, mdm_cms_t *cms,
    const char **reason)
{
    mdm_der_t       top, ci, exp;
    mdm_der_elem_t  e;
    const char     *why;

    memset(cms, 0, sizeof(mdm_cms_t));
    why = NULL;

    if (reason) {
        *reason = NULL;
    }

    top.p = der;
    top.end = der + len;
    top.indef = 0;
    top.depth = 0;

    if (mdm_der_expect(&top, &e, 0x30, MDM_DER_INDEF) != 0
        || mdm_der_open(&top, &e, &ci) != 0
        || mdm_der_expect(&ci, &e, 0x06, 0) != 0)
    {
        return mdm_cms_fail(reason, "signature is not CMS");
    }

    if (!mdm_der_oid_is(&e, mdm_oid_signed, sizeof(mdm_oid_signed))) {
        return mdm_cms_fail(reason, "signature is not CMS SignedData");
    }

    if (mdm_der_expect(&ci, &e, 0xa0, MDM_DER_INDEF) != 0
        || mdm_der_open(&ci, &e, &exp) != 0
        || mdm_cms_signed_data(&exp, cms, &why) != 0
        || mdm_der_more(&exp)
        || mdm_der_close(&ci, &exp) != 0
        || mdm_der_more(&ci)
        || mdm_der_close(&top, &ci) != 0)
    {
        return mdm_cms_fail(reason, why ? why : "signature is not CMS");
    }

    if (top.p != top.end) {
        return mdm_cms_fail(reason, "trailing data after signature");
    }

    return 0;
}


static int
mdm_cms_signed_data(mdm_der_t *r, mdm_cms_t *cms, const char **reason)
{
    int                n, null_params;
    mdm_der_t          sd, set, eci, sub;
    mdm_der_elem_t     e, oid;
    mdm_cms_signer_t   other;

    if (mdm_der_expect(r, &e, 0x30, MDM_DER_INDEF) != 0
        || mdm_der_open(r, &e, &sd) != 0
        || mdm_der_expect(&sd, &e, 0x02, 0) != 0
        || e.len != 1)
    {
        return -1;
    }

    cms->version = e.val[0];

    if (cms->version != 1 && cms->version != 3) {
        return mdm_cms_fail(reason, "unsupported SignedData version");
    }

    /* digestAlgorithms: well formed, not used (the signer's counts) */

    if (mdm_der_expect(&sd, &e, 0x31, MDM_DER_INDEF) != 0
        || mdm_der_open(&sd, &e, &set) != 0)
    {
        return -1;
    }

    for (n = 0; mdm_der_more(&set); n++) {
        if (n == MDM_CMS_MAX_ALGS || mdm_cms_alg(&set, &oid, &null_params))
        {
            return -1;
        }
    }

    if (mdm_der_close(&sd, &set) != 0) {
        return -1;
    }

    /* encapContentInfo: id-data, detached when eContent is absent */

    if (mdm_der_expect(&sd, &e, 0x30, MDM_DER_INDEF) != 0
        || mdm_der_open(&sd, &e, &eci) != 0
        || mdm_der_expect(&eci, &e, 0x06, 0) != 0)
    {
        return -1;
    }

    if (!mdm_der_oid_is(&e, mdm_oid_data, sizeof(mdm_oid_data))) {
        return mdm_cms_fail(reason, "signed content type is not id-data");
    }

    cms->detached = 1;

    if (mdm_der_more(&eci)) {
        if (mdm_der_expect(&eci, &e, 0xa0, MDM_DER_INDEF) != 0
            || mdm_der_open(&eci, &e, &sub) != 0
            || mdm_cms_octets(&sub) != 0
            || mdm_der_more(&sub)
            || mdm_der_close(&eci, &sub) != 0)
        {
            return -1;
        }

        cms->detached = 0;
    }

    if (mdm_der_more(&eci) || mdm_der_close(&sd, &eci) != 0) {
        return -1;
    }

    /* certificates [0] IMPLICIT: plain X.509 certificates only */

    if (mdm_der_peek(&sd) == 0xa0) {
        if (mdm_der_expect(&sd, &e, 0xa0, MDM_DER_INDEF) != 0
            || mdm_der_open(&sd, &e, &set) != 0)
        {
            return -1;
        }

        while (mdm_der_more(&set)) {
            if (mdm_der_expect(&set, &e, 0x30, 0) != 0) {
                return mdm_cms_fail(reason,
                                    "bad certificate in signature");
            }

            if (cms->ncerts == MDM_CMS_MAX_CERTS) {
                return mdm_cms_fail(reason,
                                    "too many certificates in signature");
            }

            cms->certs[cms->ncerts].data = e.tlv;
            cms->certs[cms->ncerts].len = e.tlvlen;
            cms->ncerts++;
        }

        if (mdm_der_close(&sd, &set) != 0) {
            return -1;
        }
    }

    /* crls [1] IMPLICIT: skipped */

    if (mdm_der_peek(&sd) == 0xa1 && mdm_der_expect(&sd, &e, 0xa1, 0) != 0) {
        return -1;
    }

    /* signerInfos: all well formed, the first one kept */

    if (mdm_der_expect(&sd, &e, 0x31, MDM_DER_INDEF) != 0
        || mdm_der_open(&sd, &e, &set) != 0)
    {
        return -1;
    }

    while (mdm_der_more(&set)) {
        if (cms->nsigners == MDM_CMS_MAX_SIGNERS) {
            return -1;
        }

        if (mdm_cms_signer(&set, cms->nsigners ? &other : &cms->signer,
                           reason)
            != 0)
        {
            return -1;
        }

        cms->nsigners++;
    }

    if (mdm_der_close(&sd, &set) != 0
        || mdm_der_more(&sd)
        || mdm_der_close(r, &sd) != 0)
    {
        return -1;
    }

    return 0;
}


/* eContent: an OCTET STRING, primitive or constructed of primitives. */

static int
mdm_cms_octets(mdm_der_t *r)
{
    mdm_der_t       chunks;
    mdm_der_elem_t  e;

    if (mdm_der_peek(r) == 0x04) {
        return mdm_der_expect(r, &e, 0x04, 0);
    }

    if (mdm_der_expect(r, &e, 0x24, MDM_DER_INDEF) != 0
        || mdm_der_open(r, &e, &chunks) != 0)
    {
        return -1;
    }

    while (mdm_der_more(&chunks)) {
        if (mdm_der_expect(&chunks, &e, 0x04, 0) != 0) {
            return -1;
        }
    }

    return mdm_der_close(r, &chunks);
}


static int
mdm_cms_signer(mdm_der_t *r, mdm_cms_signer_t *s, const char **reason)
{
    int             null_params;
    mdm_der_t       si, sid, attrs;
    mdm_der_elem_t  e, oid;

    memset(s, 0, sizeof(mdm_cms_signer_t));

    if (mdm_der_expect(r, &e, 0x30, MDM_DER_INDEF) != 0
        || mdm_der_open(r, &e, &si) != 0
        || mdm_der_expect(&si, &e, 0x02, 0) != 0
        || e.len != 1)
    {
        return -1;
    }

    s->version = e.val[0];

    /* sid: issuerAndSerialNumber (version 1) or [0] keyid (version 3) */

    if (mdm_der_get(&si, &e, 0) != 0) {
        return -1;
    }

    if (e.tag == 0x30 && s->version == 1) {
        if (mdm_der_open(&si, &e, &sid) != 0
            || mdm_der_expect(&sid, &e, 0x30, 0) != 0)
        {
            return -1;
        }

        s->issuer.data = e.tlv;
        s->issuer.len = e.tlvlen;

        if (mdm_der_expect(&sid, &e, 0x02, 0) != 0 || e.len == 0
            || mdm_der_more(&sid) || mdm_der_close(&si, &sid) != 0)
        {
            return -1;
        }

        s->serial.data = e.tlv;
        s->serial.len = e.tlvlen;

    } else if (e.tag == 0x80 && s->version == 3 && e.len > 0) {
        s->sid_ski = 1;
        s->ski.data = e.val;
        s->ski.len = e.len;

    } else {
        return mdm_cms_fail(reason, "bad signer identifier");
    }

    if (mdm_cms_alg(&si, &oid, &null_params) != 0) {
        return -1;
    }

    s->md = null_params ? mdm_cms_md(&oid) : MDM_CMS_MD_UNKNOWN;

    if (mdm_der_peek(&si) == 0xa0) {
        if (mdm_der_expect(&si, &e, 0xa0, 0) != 0
            || mdm_der_open(&si, &e, &attrs) != 0)
        {
            return -1;
        }

        s->signed_attrs.data = e.tlv;
        s->signed_attrs.len = e.tlvlen;

        if (mdm_cms_attrs(&attrs, s, reason) != 0
            || mdm_der_close(&si, &attrs) != 0)
        {
            return -1;
        }
    }

    if (mdm_cms_alg(&si, &oid, &null_params) != 0) {
        return -1;
    }

    s->sig = null_params ? mdm_cms_sig(&oid) : MDM_CMS_SIG_UNKNOWN;

    if (mdm_der_expect(&si, &e, 0x04, 0) != 0
        || e.len == 0 || e.len > MDM_CMS_MAX_SIG)
    {
        return -1;
    }

    s->signature.data = e.val;
    s->signature.len = e.len;

    /* unsignedAttrs [1]: skipped */

    if (mdm_der_peek(&si) == 0xa1 && mdm_der_expect(&si, &e, 0xa1, 0) != 0) {
        return -1;
    }

    if (mdm_der_more(&si) || mdm_der_close(r, &si) != 0) {
        return -1;
    }

    return 0;
}


/*
 * Signed attributes: content-type id-data and message-digest exactly once,
 * signing-time at most once, each with one value; others are skipped.
 */

static int
mdm_cms_attrs(mdm_der_t *r, mdm_cms_signer_t *s, const char **reason)
{
    int              n, nvals, ctype;
    mdm_der_t        attr, vals;
    mdm_der_elem_t   oid, e, v;

    ctype = 0;
    v.tag = 0;

    for (n = 0; mdm_der_more(r); n++) {
        if (n == MDM_CMS_MAX_ATTRS
            || mdm_der_expect(r, &e, 0x30, 0) != 0
            || mdm_der_open(r, &e, &attr) != 0
            || mdm_der_expect(&attr, &oid, 0x06, 0) != 0
            || oid.len == 0
            || mdm_der_expect(&attr, &e, 0x31, 0) != 0
            || mdm_der_open(&attr, &e, &vals) != 0)
        {
            return mdm_cms_fail(reason, "bad signed attributes");
        }

        for (nvals = 0; mdm_der_more(&vals); nvals++) {
            if (mdm_der_get(&vals, nvals ? &e : &v, 0) != 0) {
                return mdm_cms_fail(reason, "bad signed attributes");
            }
        }

        if (mdm_der_close(&attr, &vals) != 0 || mdm_der_more(&attr)
            || mdm_der_close(r, &attr) != 0)
        {
            return mdm_cms_fail(reason, "bad signed attributes");
        }

        if (mdm_der_oid_is(&oid, mdm_oid_ctype, sizeof(mdm_oid_ctype))) {
            if (ctype || nvals != 1 || v.tag != 0x06
                || !mdm_der_oid_is(&v, mdm_oid_data, sizeof(mdm_oid_data)))
            {
                return mdm_cms_fail(reason,
                                    "content-type attribute is not id-data");
            }
            ctype = 1;

        } else if (mdm_der_oid_is(&oid, mdm_oid_mdigest,
                                  sizeof(mdm_oid_mdigest)))
        {
            if (s->message_digest.data || nvals != 1 || v.tag != 0x04) {
                return mdm_cms_fail(reason, "bad message-digest attribute");
            }
            s->message_digest.data = v.val;
            s->message_digest.len = v.len;

        } else if (mdm_der_oid_is(&oid, mdm_oid_stime,
                                  sizeof(mdm_oid_stime)))
        {
            if (s->signing_time.data || nvals != 1
                || (v.tag != 0x17 && v.tag != 0x18))
            {
                return mdm_cms_fail(reason, "bad signing-time attribute");
            }
            s->signing_time.data = v.tlv;
            s->signing_time.len = v.tlvlen;
        }
    }

    if (!ctype) {
        return mdm_cms_fail(reason, "no content-type attribute");
    }

    if (s->message_digest.data == NULL) {
        return mdm_cms_fail(reason, "no message-digest attribute");
    }

    return 0;
}


/* AlgorithmIdentifier; *null_params: parameters absent or NULL. */

static int
mdm_cms_alg(mdm_der_t *r, mdm_der_elem_t *oid, int *null_params)
{
    mdm_der_t       alg;
    mdm_der_elem_t  e;

    if (mdm_der_expect(r, &e, 0x30, 0) != 0
        || mdm_der_open(r, &e, &alg) != 0
        || mdm_der_expect(&alg, oid, 0x06, 0) != 0
        || oid->len == 0)
    {
        return -1;
    }

    *null_params = 1;

    if (mdm_der_more(&alg)) {
        if (mdm_der_get(&alg, &e, 0) != 0) {
            return -1;
        }

        *null_params = (e.tag == 0x05 && e.len == 0);
    }

    if (mdm_der_more(&alg)) {
        return -1;
    }

    return mdm_der_close(r, &alg);
}


static int
mdm_cms_md(const mdm_der_elem_t *oid)
{
    if (mdm_der_oid_is(oid, mdm_oid_sha1, sizeof(mdm_oid_sha1))) {
        return MDM_CMS_MD_SHA1;
    }

    if (oid->len == sizeof(mdm_oid_sha2) + 1
        && memcmp(oid->val, mdm_oid_sha2, sizeof(mdm_oid_sha2)) == 0)
    {
        switch (oid->val[sizeof(mdm_oid_sha2)]) {
        case 1:
            return MDM_CMS_MD_SHA256;
        case 2:
            return MDM_CMS_MD_SHA384;
        case 3:
            return MDM_CMS_MD_SHA512;
        case 4:
            return MDM_CMS_MD_SHA224;
        }
    }

    return MDM_CMS_MD_UNKNOWN;
}


/*
 * The key type of signatureAlgorithm.  As OpenSSL does, the digest is
 * the SignerInfo's digestAlgorithm whatever hash a combined OID names.
 */

static int
mdm_cms_sig(const mdm_der_elem_t *oid)
{
    unsigned  last;

    if (oid->len == sizeof(mdm_oid_pkcs1) + 1
        && memcmp(oid->val, mdm_oid_pkcs1, sizeof(mdm_oid_pkcs1)) == 0)
    {
        last = oid->val[sizeof(mdm_oid_pkcs1)];

        if (last == 1 || last == 5 || (last >= 11 && last <= 14)) {
            return MDM_CMS_SIG_RSA;
        }

        return MDM_CMS_SIG_UNKNOWN;
    }

    if (mdm_der_oid_is(oid, mdm_oid_ecpub, sizeof(mdm_oid_ecpub))
        || mdm_der_oid_is(oid, mdm_oid_ecdsa_sha1, sizeof(mdm_oid_ecdsa_sha1)))
    {
        return MDM_CMS_SIG_ECDSA;
    }

    if (oid->len == sizeof(mdm_oid_ecdsa_sha2) + 1
        && memcmp(oid->val, mdm_oid_ecdsa_sha2, sizeof(mdm_oid_ecdsa_sha2))
           == 0)
    {
        last = oid->val[sizeof(mdm_oid_ecdsa_sha2)];
        return (last >= 1 && last <= 4) ? MDM_CMS_SIG_ECDSA
                                        : MDM_CMS_SIG_UNKNOWN;
    }

    return MDM_CMS_SIG_UNKNOWN;
}


int
mdm_cms_cert_ids(const unsigned char *der, size_t len,
    mdm_cms_slice_t *issuer, mdm_cms_slice_t *serial, mdm_cms_slice_t *ski)
{
    int             ext;
    mdm_der_t       top, cert, tbs, x, exts, one, val;
    mdm_der_elem_t  e, oid;

    top.p = der;
    top.end = der + len;
    top.indef = 0;
    top.depth = 0;

    ski->data = NULL;
    ski->len = 0;

    if (mdm_der_expect(&top, &e, 0x30, 0) != 0 || top.p != top.end
        || mdm_der_open(&top, &e, &cert) != 0
        || mdm_der_expect(&cert, &e, 0x30, 0) != 0
        || mdm_der_open(&cert, &e, &tbs) != 0)
    {
        return -1;
    }

    if (mdm_der_peek(&tbs) == 0xa0 && mdm_der_expect(&tbs, &e, 0xa0, 0)) {
        return -1;
    }

    if (mdm_der_expect(&tbs, &e, 0x02, 0) != 0 || e.len == 0) {
        return -1;
    }

    serial->data = e.tlv;
    serial->len = e.tlvlen;

    if (mdm_der_expect(&tbs, &e, 0x30, 0) != 0          /* signature */
        || mdm_der_expect(&tbs, &e, 0x30, 0) != 0)      /* issuer */
    {
        return -1;
    }

    issuer->data = e.tlv;
    issuer->len = e.tlvlen;

    if (mdm_der_expect(&tbs, &e, 0x30, 0) != 0          /* validity */
        || mdm_der_expect(&tbs, &e, 0x30, 0) != 0       /* subject */
        || mdm_der_expect(&tbs, &e, 0x30, 0) != 0)      /* spki */
    {
        return -1;
    }

    while (mdm_der_more(&tbs)) {
        if (mdm_der_get(&tbs, &e, 0) != 0) {
            return -1;
        }

        if (e.tag != 0xa3) {
            /* issuerUniqueID, subjectUniqueID */
            if (e.tag != 0x81 && e.tag != 0x82 && e.tag != 0xa1
                && e.tag != 0xa2)
            {
                return -1;
            }
            continue;
        }

        if (mdm_der_open(&tbs, &e, &x) != 0
            || mdm_der_expect(&x, &e, 0x30, 0) != 0
            || mdm_der_open(&x, &e, &exts) != 0)
        {
            return -1;
        }

        while (mdm_der_more(&exts)) {
            if (mdm_der_expect(&exts, &e, 0x30, 0) != 0
                || mdm_der_open(&exts, &e, &one) != 0
                || mdm_der_expect(&one, &oid, 0x06, 0) != 0
                || (mdm_der_peek(&one) == 0x01
                    && mdm_der_expect(&one, &e, 0x01, 0) != 0)
                || mdm_der_expect(&one, &e, 0x04, 0) != 0
                || mdm_der_more(&one)
                || mdm_der_close(&exts, &one) != 0)
            {
                return -1;
            }

            ext = mdm_der_oid_is(&oid, mdm_oid_ski, sizeof(mdm_oid_ski));

            if (!ext || ski->data) {
                continue;
            }

            val.p = e.val;
            val.end = e.val + e.len;
            val.indef = 0;
            val.depth = exts.depth + 1;

            if (mdm_der_expect(&val, &e, 0x04, 0) != 0 || val.p != val.end
                || e.len == 0)
            {
                return -1;
            }

            ski->data = e.val;
            ski->len = e.len;
        }

        if (mdm_der_close(&x, &exts) != 0 || mdm_der_more(&x)
            || mdm_der_close(&tbs, &x) != 0)
        {
            return -1;
        }
    }

    return mdm_der_close(&cert, &tbs);
}


int
mdm_cms_find_signer(const mdm_cms_t *cms)
{
    int                      i;
    mdm_cms_slice_t          issuer, serial, ski;
    const mdm_cms_signer_t  *s;

    s = &cms->signer;

    for (i = 0; i < cms->ncerts; i++) {
        if (mdm_cms_cert_ids(cms->certs[i].data, cms->certs[i].len,
                             &issuer, &serial, &ski)
            != 0)
        {
            continue;
        }

        if (s->sid_ski) {
            if (ski.len == s->ski.len && ski.len
                && memcmp(ski.data, s->ski.data, ski.len) == 0)
            {
                return i;
            }
            continue;
        }

        if (issuer.len == s->issuer.len && serial.len == s->serial.len
            && memcmp(issuer.data, s->issuer.data, issuer.len) == 0
            && memcmp(serial.data, s->serial.data, serial.len) == 0)
        {
            return i;
        }
    }

    return -1;
}


/*
 * The header of the next element.  A definite element is skipped over
 * (its contents are e->val, e->len); an indefinite one is entered with
 * mdm_der_open() and left with mdm_der_close().
 */

static int
mdm_der_get(mdm_der_t *r, mdm_der_elem_t *e, unsigned flags)
{
    size_t                n, i, len;
    const unsigned char  *p;

    p = r->p;

    if (r->end - p < 2) {
        return -1;
    }

    e->tlv = p;
    e->tag = *p++;

    /* high tag numbers are not used here; 00 only ends contents */
    if ((e->tag & 0x1f) == 0x1f || e->tag == 0) {
        return -1;
    }

    len = *p++;
    e->indef = 0;

    if (len == 0x80) {
        if (!(flags & MDM_DER_INDEF) || !(e->tag & 0x20)) {
            return -1;
        }

        e->indef = 1;
        e->val = p;
        e->len = 0;
        e->tlvlen = 0;
        r->p = p;
        return 0;
    }

    if (len & 0x80) {
        n = len & 0x7f;

        /* minimal long form, at most 4 length octets */
        if (n > 4 || (size_t) (r->end - p) < n || p[0] == 0) {
            return -1;
        }

        len = 0;
        for (i = 0; i < n; i++) {
            len = len << 8 | *p++;
        }

        if (len < 0x80) {
            return -1;
        }
    }

    if (len > (size_t) (r->end - p)) {
        return -1;
    }

    e->val = p;
    e->len = len;
    e->tlvlen = (size_t) (p + len - e->tlv);
    r->p = p + len;

    return 0;
}


static int
mdm_der_expect(mdm_der_t *r, mdm_der_elem_t *e, unsigned tag,
    unsigned flags)
{
    if (mdm_der_get(r, e, flags) != 0 || e->tag != tag) {
        return -1;
    }

    return 0;
}


static int
mdm_der_open(const mdm_der_t *r, const mdm_der_elem_t *e, mdm_der_t *child)
{
    if (!(e->tag & 0x20) || r->depth + 1 > MDM_CMS_MAX_DEPTH) {
        return -1;
    }

    child->p = e->val;
    child->end = e->indef ? r->end : e->val + e->len;
    child->indef = e->indef;
    child->depth = r->depth + 1;

    return 0;
}


static int
mdm_der_more(const mdm_der_t *r)
{
    if (r->p >= r->end) {
        return 0;
    }

    return !(r->indef && r->end - r->p >= 2 && r->p[0] == 0 && r->p[1] == 0);
}


static int
mdm_der_peek(const mdm_der_t *r)
{
    return mdm_der_more(r) ? r->p[0] : -1;
}


/* Checks that child is at its end; r continues after it. */

static int
mdm_der_close(mdm_der_t *r, mdm_der_t *child)
{
    if (!child->indef) {
        return child->p == child->end ? 0 : -1;
    }

    if (child->end - child->p < 2 || child->p[0] != 0 || child->p[1] != 0) {
        return -1;
    }

    r->p = child->p + 2;

    return 0;
}


static int
mdm_der_oid_is(const mdm_der_elem_t *e, const unsigned char *oid,
    size_t len)
{
    return e->len == len && memcmp(e->val, oid, len) == 0;
}


static int
mdm_cms_fail(const char **reason, const char *text)
{
    if (reason && *reason == NULL) {
        *reason = text;
    }

    return -1;
}
