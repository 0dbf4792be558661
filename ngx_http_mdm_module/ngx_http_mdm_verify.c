/*
 * Device identity verification (see ngx_http_mdm_verify.h).  nginx-free:
 * plain C and OpenSSL, so the decoders can be unit-tested and fuzzed.
 */

/* timegm() */
#define _DEFAULT_SOURCE

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "ngx_http_mdm_cms.h"
#include "ngx_http_mdm_verify.h"


/* Each cache set holds up to this many entries, replaced LRU-first. */
#define MDM_CACHE_WAYS  8


/*
 * A certificate that chains to a configured CA, decoded once: a known
 * device's Mdm-Signature costs neither certificate decoding nor chain
 * building.  The entry holds a reference to the X509.
 */
typedef struct {
    unsigned char        key[32];      /* SHA-256 of the certificate DER */
    time_t               not_before;   /* latest notBefore of the chain */
    time_t               expires;      /* min(chain notAfter, added + ttl) */
    uint64_t             used;         /* LRU tick, 0 = free slot */
    X509                *cert;
} mdm_cache_entry_t;


struct mdm_verifier_s {
    X509_STORE          *store;
    STACK_OF(X509)      *untrusted;
    mdm_cache_entry_t   *cache;
    size_t               nsets;
    size_t               ways;
    uint64_t             tick;
    time_t               ttl;
    EVP_MD              *md[MDM_CMS_MD_N];     /* fetched once */
    EVP_MD_CTX          *mdctx;
    mdm_verify_stats_t   stats;
};


/* A cached certificate's SHA-256 and notAfter, computed when cached. */
typedef struct {
    char                 sha256[65];
    time_t               not_after;
} mdm_cert_facts_t;


static int mdm_signed_by(mdm_verifier_t *v, const mdm_cms_signer_t *s,
    const EVP_MD *md, X509 *cert, const struct iovec *body, int nbody,
    const char **reason);
static int mdm_extra_certs(const mdm_cms_t *cms, int signer,
    STACK_OF(X509) **extra);
static int mdm_b64_decode(const unsigned char *in, size_t len,
    unsigned char **out, size_t *outlen);
static int mdm_url_unescape(const unsigned char *in, size_t len,
    unsigned char **out, size_t *outlen);
static int mdm_load_intermediates(mdm_verifier_t *v, const char *file,
    char *err, size_t errlen);
static int mdm_chain(mdm_verifier_t *v, X509 *cert,
    STACK_OF(X509) *extra, time_t now, const char **reason);
static int mdm_chain_cache(mdm_verifier_t *v, X509 *cert,
    const unsigned char *key, STACK_OF(X509) *extra, time_t now,
    const char **reason);
static int mdm_chain_build(mdm_verifier_t *v, X509 *cert,
    STACK_OF(X509) *extra, time_t now, time_t *not_before,
    time_t *not_after, const char **reason);
static const char *mdm_chain_reason(int err, int depth);
static mdm_cache_entry_t *mdm_cache_set(mdm_verifier_t *v,
    const unsigned char *key);
static mdm_cache_entry_t *mdm_cache_lookup(mdm_verifier_t *v,
    const unsigned char *key, time_t now);
static void mdm_cache_insert(mdm_verifier_t *v, const unsigned char *key,
    X509 *cert, time_t now, time_t not_before, time_t not_after);
static void mdm_cache_drop(mdm_verifier_t *v, mdm_cache_entry_t *e);
static void mdm_cert_facts_set(X509 *cert);
static mdm_cert_facts_t *mdm_cert_facts(X509 *cert);
static void mdm_cert_facts_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad,
    int idx, long argl, void *argp);
static time_t mdm_asn1_time(const ASN1_TIME *t);
static int mdm_fail(const char **reason, const char *text);


static const char  *mdm_md_names[MDM_CMS_MD_N] = {
    NULL, "SHA1", "SHA224", "SHA256", "SHA384", "SHA512"
};

/* ex_data index of mdm_cert_facts_t, -1 until first needed */
static int  mdm_facts_index = -1;


mdm_verifier_t *
mdm_verifier_create(const char *ca_file, const char *intermediates_file,
    size_t cache_size, char *err, size_t errlen)
{
    int              n;
    mdm_verifier_t  *v;
    unsigned long    e;

    if (mdm_facts_index == -1) {
        mdm_facts_index = X509_get_ex_new_index(0, NULL, NULL, NULL,
                                                mdm_cert_facts_free);
        if (mdm_facts_index == -1) {
            snprintf(err, errlen, "X509_get_ex_new_index() failed");
            return NULL;
        }
    }

    if (errlen) {
        err[0] = '\0';
    }

    v = calloc(1, sizeof(mdm_verifier_t));
    if (v == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }

    v->ttl = MDM_VERIFY_DEFAULT_TTL;

    for (n = 1; n < MDM_CMS_MD_N; n++) {
        v->md[n] = EVP_MD_fetch(NULL, mdm_md_names[n], NULL);
        if (v->md[n] == NULL) {
            snprintf(err, errlen, "no %s digest", mdm_md_names[n]);
            goto failed;
        }
    }

    v->mdctx = EVP_MD_CTX_new();
    if (v->mdctx == NULL) {
        snprintf(err, errlen, "out of memory");
        goto failed;
    }

    v->store = X509_STORE_new();
    if (v->store == NULL) {
        snprintf(err, errlen, "X509_STORE_new() failed");
        goto failed;
    }

    if (ca_file == NULL || !X509_STORE_load_file(v->store, ca_file)) {
        e = ERR_peek_last_error();
        snprintf(err, errlen, "cannot load CA file \"%s\": %s",
                 ca_file ? ca_file : "(none)",
                 e ? ERR_reason_error_string(e) : "no file");
        goto failed;
    }

    /*
     * Every certificate of the CA file is an anchor, so that the file may
     * hold the issuing (intermediate) CA alone.
     */
    X509_STORE_set_flags(v->store, X509_V_FLAG_PARTIAL_CHAIN);

    if (intermediates_file
        && mdm_load_intermediates(v, intermediates_file, err, errlen) != 0)
    {
        goto failed;
    }

    if (cache_size) {
        v->ways = cache_size < MDM_CACHE_WAYS ? cache_size : MDM_CACHE_WAYS;
        v->nsets = (cache_size + v->ways - 1) / v->ways;
        v->cache = calloc(v->nsets * v->ways, sizeof(mdm_cache_entry_t));
        if (v->cache == NULL) {
            snprintf(err, errlen, "out of memory");
            goto failed;
        }
    }

    ERR_clear_error();
    return v;

failed:

    mdm_verifier_free(v);
    ERR_clear_error();
    return NULL;
}


void
mdm_verifier_free(mdm_verifier_t *v)
{
    size_t  i;

    if (v == NULL) {
        return;
    }

    for (i = 0; v->cache && i < v->nsets * v->ways; i++) {
        X509_free(v->cache[i].cert);
    }

    for (i = 0; i < MDM_CMS_MD_N; i++) {
        EVP_MD_free(v->md[i]);
    }

    EVP_MD_CTX_free(v->mdctx);
    X509_STORE_free(v->store);
    sk_X509_pop_free(v->untrusted, X509_free);
    free(v->cache);
    free(v);
}


void
mdm_verifier_set_cache_ttl(mdm_verifier_t *v, time_t ttl)
{
    v->ttl = ttl;
}


void
mdm_verifier_get_stats(mdm_verifier_t *v, mdm_verify_stats_t *st)
{
    *st = v->stats;
}


static int
mdm_load_intermediates(mdm_verifier_t *v, const char *file, char *err,
    size_t errlen)
{
    BIO   *bio;
    X509  *x;

    bio = BIO_new_file(file, "r");
    if (bio == NULL) {
        snprintf(err, errlen, "cannot open intermediates file \"%s\"", file);
        return -1;
    }

    v->untrusted = sk_X509_new_null();
    if (v->untrusted == NULL) {
        BIO_free(bio);
        snprintf(err, errlen, "out of memory");
        return -1;
    }

    for ( ;; ) {
        x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        if (x == NULL) {
            break;
        }

        if (!sk_X509_push(v->untrusted, x)) {
            X509_free(x);
            BIO_free(bio);
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    }

    BIO_free(bio);

    /* PEM_read_bio_X509() ends with "no start line" at the end of file. */
    if (ERR_GET_REASON(ERR_peek_last_error()) != PEM_R_NO_START_LINE
        || sk_X509_num(v->untrusted) == 0)
    {
        snprintf(err, errlen, "no certificates in intermediates file \"%s\"",
                 file);
        return -1;
    }

    ERR_clear_error();
    return 0;
}


int
mdm_verify_signature(mdm_verifier_t *v, const unsigned char *b64, size_t len,
    const struct iovec *body, int nbody, X509 **signer, const char **reason)
{
    return mdm_verify_signature_at(v, b64, len, body, nbody, time(NULL),
                                   signer, reason);
}


int
mdm_verify_signature_at(mdm_verifier_t *v, const unsigned char *b64,
    size_t len, const struct iovec *body, int nbody, time_t now,
    X509 **signer, const char **reason)
{
    int                   rc, i;
    X509                 *cert;
    size_t                derlen;
    mdm_cms_t             cms;
    const EVP_MD         *md;
    unsigned char        *der, key[32];
    STACK_OF(X509)       *extra;
    mdm_cache_entry_t    *e;
    const unsigned char  *p;

    *signer = NULL;
    cert = NULL;
    extra = NULL;
    rc = -1;

    if (len > MDM_VERIFY_MAX_SIGNATURE) {
        return mdm_fail(reason, "signature too large");
    }

    if (mdm_b64_decode(b64, len, &der, &derlen) != 0) {
        return mdm_fail(reason, "bad base64");
    }

    if (mdm_cms_parse(der, derlen, &cms, reason) != 0) {
        goto done;
    }

    if (!cms.detached) {
        mdm_fail(reason, "signature is not detached");
        goto done;
    }

    if (cms.nsigners < 1) {
        mdm_fail(reason, "no signer");
        goto done;
    }

    if (cms.nsigners > 1) {
        mdm_fail(reason, "more than one signer");
        goto done;
    }

    md = v->md[cms.signer.md];

    if (md == NULL) {
        mdm_fail(reason, "unsupported digest algorithm");
        goto done;
    }

    if (cms.signer.sig == MDM_CMS_SIG_UNKNOWN) {
        mdm_fail(reason, "unsupported signature algorithm");
        goto done;
    }

    /* Only certificates carried in the signature may identify the signer. */
    i = mdm_cms_find_signer(&cms);

    if (i < 0) {
        mdm_fail(reason, "signer certificate not embedded");
        goto done;
    }

    if (!EVP_Digest(cms.certs[i].data, cms.certs[i].len, key, NULL,
                    v->md[MDM_CMS_MD_SHA256], NULL))
    {
        mdm_fail(reason, "cannot hash certificate");
        goto done;
    }

    e = v->cache ? mdm_cache_lookup(v, key, now) : NULL;

    if (e) {
        cert = e->cert;
        if (!X509_up_ref(cert)) {
            cert = NULL;
            mdm_fail(reason, "out of memory");
            goto done;
        }

    } else {
        v->stats.cert_decodes++;

        p = cms.certs[i].data;
        cert = d2i_X509(NULL, &p, (long) cms.certs[i].len);

        if (cert == NULL || p != cms.certs[i].data + cms.certs[i].len) {
            mdm_fail(reason, "bad signer certificate");
            goto done;
        }
    }

    if (mdm_signed_by(v, &cms.signer, md, cert, body, nbody, reason) != 0) {
        goto done;
    }

    if (e == NULL) {
        /* The other certificates serve as untrusted intermediates. */
        if (mdm_extra_certs(&cms, i, &extra) != 0) {
            mdm_fail(reason, "bad certificate in signature");
            goto done;
        }

        if (mdm_chain_cache(v, cert, key, extra, now, reason) != 0) {
            goto done;
        }
    }

    *signer = cert;
    cert = NULL;
    rc = 0;

done:

    X509_free(cert);
    sk_X509_pop_free(extra, X509_free);
    OPENSSL_clear_free(der, derlen);
    ERR_clear_error();

    return rc;
}


/*
 * The message digest of the body against the signed attribute, then the
 * signature over the attributes DER-encoded as a SET (the [0] tag turned
 * into SET, RFC 5652 5.4); without attributes, over the body itself.
 */

static int
mdm_signed_by(mdm_verifier_t *v, const mdm_cms_signer_t *s,
    const EVP_MD *md, X509 *cert, const struct iovec *body, int nbody,
    const char **reason)
{
    int              i, ok, type;
    EVP_PKEY        *pkey;
    EVP_MD_CTX      *ctx;
    unsigned int     n;
    unsigned char    digest[EVP_MAX_MD_SIZE];

    static const unsigned char  set = 0x31;

    pkey = X509_get0_pubkey(cert);
    if (pkey == NULL) {
        return mdm_fail(reason, "bad signer key");
    }

    type = EVP_PKEY_get_base_id(pkey);

    if ((s->sig == MDM_CMS_SIG_RSA && type != EVP_PKEY_RSA)
        || (s->sig == MDM_CMS_SIG_ECDSA && type != EVP_PKEY_EC))
    {
        return mdm_fail(reason, "signature algorithm does not fit the key");
    }

    ctx = v->mdctx;

    if (s->signed_attrs.len) {
        if (!EVP_DigestInit_ex(ctx, md, NULL)) {
            return mdm_fail(reason, "digest failed");
        }

        for (i = 0; i < nbody; i++) {
            if (body[i].iov_len
                && !EVP_DigestUpdate(ctx, body[i].iov_base, body[i].iov_len))
            {
                return mdm_fail(reason, "digest failed");
            }
        }

        if (!EVP_DigestFinal_ex(ctx, digest, &n)) {
            return mdm_fail(reason, "digest failed");
        }

        if (n != s->message_digest.len
            || CRYPTO_memcmp(digest, s->message_digest.data, n) != 0)
        {
            return mdm_fail(reason, "signature does not verify");
        }

        EVP_MD_CTX_reset(ctx);

        ok = EVP_DigestVerifyInit(ctx, NULL, md, NULL, pkey) == 1
             && EVP_DigestVerifyUpdate(ctx, &set, 1) == 1
             && EVP_DigestVerifyUpdate(ctx, s->signed_attrs.data + 1,
                                       s->signed_attrs.len - 1) == 1;

    } else {
        ok = EVP_DigestVerifyInit(ctx, NULL, md, NULL, pkey) == 1;

        for (i = 0; ok && i < nbody; i++) {
            ok = body[i].iov_len == 0
                 || EVP_DigestVerifyUpdate(ctx, body[i].iov_base,
                                           body[i].iov_len) == 1;
        }
    }

    ok = ok && EVP_DigestVerifyFinal(ctx, s->signature.data,
                                     s->signature.len) == 1;

    EVP_MD_CTX_reset(ctx);

    return ok ? 0 : mdm_fail(reason, "signature does not verify");
}


static int
mdm_extra_certs(const mdm_cms_t *cms, int signer, STACK_OF(X509) **extra)
{
    int                   i;
    X509                 *x;
    const unsigned char  *p;

    *extra = NULL;

    for (i = 0; i < cms->ncerts; i++) {
        if (i == signer) {
            continue;
        }

        if (*extra == NULL) {
            *extra = sk_X509_new_null();
            if (*extra == NULL) {
                return -1;
            }
        }

        p = cms->certs[i].data;
        x = d2i_X509(NULL, &p, (long) cms->certs[i].len);

        if (x == NULL || p != cms->certs[i].data + cms->certs[i].len
            || !sk_X509_push(*extra, x))
        {
            X509_free(x);
            return -1;
        }
    }

    return 0;
}


int
mdm_parse_forwarded_cert(const unsigned char *value, size_t len, X509 **cert,
    const char **reason)
{
    int                   rc;
    BIO                  *bio;
    X509                 *x;
    char                 *rest;
    long                  nrest;
    size_t                derlen, pemlen;
    unsigned char        *buf;
    const unsigned char  *p;

    *cert = NULL;

    if (len > MDM_VERIFY_MAX_FORWARDED) {
        return mdm_fail(reason, "forwarded certificate too large");
    }

    /* Optional whitespace around a header field value. */
    while (len && (value[0] == ' ' || value[0] == '\t')) {
        value++;
        len--;
    }

    while (len && (value[len - 1] == ' ' || value[len - 1] == '\t')) {
        len--;
    }

    if (len == 0) {
        return mdm_fail(reason, "empty forwarded certificate");
    }

    if (value[0] == ':') {

        /* RFC 9440: a structured-field byte sequence of the DER. */

        if (len < 2 || value[len - 1] != ':') {
            return mdm_fail(reason, "bad RFC 9440 certificate");
        }

        if (mdm_b64_decode(value + 1, len - 2, &buf, &derlen) != 0) {
            return mdm_fail(reason, "bad base64");
        }

        p = buf;
        x = d2i_X509(NULL, &p, (long) derlen);
        rc = 0;

        if (x == NULL) {
            rc = mdm_fail(reason, "bad DER certificate");

        } else if (p != buf + derlen) {
            X509_free(x);
            rc = mdm_fail(reason, "trailing data after certificate");

        } else {
            *cert = x;
        }

        free(buf);
        ERR_clear_error();
        return rc;
    }

    /* nginx $ssl_client_escaped_cert: URL-escaped PEM. */

    if (mdm_url_unescape(value, len, &buf, &pemlen) != 0) {
        return mdm_fail(reason, "bad URL escape");
    }

    bio = BIO_new_mem_buf(buf, (int) pemlen);
    if (bio == NULL) {
        free(buf);
        return mdm_fail(reason, "out of memory");
    }

    x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    rc = 0;

    if (x == NULL) {
        rc = mdm_fail(reason, "bad PEM certificate");

    } else {
        nrest = BIO_get_mem_data(bio, &rest);

        while (nrest > 0 && (rest[nrest - 1] == '\n' || rest[nrest - 1] == '\r'
                             || rest[nrest - 1] == ' '
                             || rest[nrest - 1] == '\t'))
        {
            nrest--;
        }

        if (nrest > 0) {
            X509_free(x);
            rc = mdm_fail(reason, "trailing data after certificate");

        } else {
            *cert = x;
        }
    }

    BIO_free(bio);
    free(buf);
    ERR_clear_error();

    return rc;
}


/*
 * Decodes %XX escapes; everything else is copied as is ("+" stays "+":
 * nginx escapes a literal "+" as %2B, and base64 uses "+").
 */
static int
mdm_url_unescape(const unsigned char *in, size_t len, unsigned char **out,
    size_t *outlen)
{
    int             hi, lo;
    size_t          i, n;
    unsigned char  *buf;

    buf = malloc(len + 1);
    if (buf == NULL) {
        return -1;
    }

    n = 0;

    for (i = 0; i < len; i++) {
        if (in[i] != '%') {
            buf[n++] = in[i];
            continue;
        }

        if (len - i < 3) {
            goto failed;
        }

        hi = OPENSSL_hexchar2int(in[i + 1]);
        lo = OPENSSL_hexchar2int(in[i + 2]);

        if (hi < 0 || lo < 0) {
            goto failed;
        }

        buf[n++] = (unsigned char) (hi << 4 | lo);
        i += 2;
    }

    *out = buf;
    *outlen = n;

    return 0;

failed:

    free(buf);
    return -1;
}


/*
 * Standard base64 (RFC 4648 section 4) with optional padding; whitespace
 * is ignored, anything else after the padding is an error.  One pass
 * with a table: this runs on every signed request.
 */

#define MDM_B64_BAD    -1
#define MDM_B64_SPACE  -2
#define MDM_B64_PAD    -3

static int
mdm_b64_decode(const unsigned char *in, size_t len, unsigned char **out,
    size_t *outlen)
{
    int             c;
    size_t          i, n, o, pad;
    uint32_t        acc;
    unsigned char  *buf;

    static signed char  tab[256];
    static const char   alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    if (tab['='] == 0) {
        memset(tab, MDM_B64_BAD, sizeof(tab));
        for (i = 0; i < 64; i++) {
            tab[(unsigned char) alphabet[i]] = (signed char) i;
        }
        tab[' '] = tab['\t'] = tab['\r'] = tab['\n'] = MDM_B64_SPACE;
        tab['='] = MDM_B64_PAD;
    }

    if (len == 0) {
        return -1;
    }

    buf = malloc(len / 4 * 3 + 3);
    if (buf == NULL) {
        return -1;
    }

    acc = 0;
    n = 0;
    o = 0;
    pad = 0;

    for (i = 0; i < len; i++) {
        c = tab[in[i]];

        if (c >= 0 && pad == 0) {
            acc = acc << 6 | (uint32_t) c;

            if ((++n & 3) == 0) {
                buf[o++] = (unsigned char) (acc >> 16);
                buf[o++] = (unsigned char) (acc >> 8);
                buf[o++] = (unsigned char) acc;
                acc = 0;
            }
            continue;
        }

        if (c == MDM_B64_SPACE) {
            continue;
        }

        if (c == MDM_B64_PAD) {
            pad++;
            continue;
        }

        goto failed;
    }

    if (n == 0 || n % 4 == 1 || pad > 2 || (pad && (n + pad) % 4 != 0)) {
        goto failed;
    }

    switch (n % 4) {
    case 2:
        buf[o++] = (unsigned char) (acc >> 4);
        break;
    case 3:
        buf[o++] = (unsigned char) (acc >> 10);
        buf[o++] = (unsigned char) (acc >> 2);
        break;
    }

    *out = buf;
    *outlen = o;

    return 0;

failed:

    free(buf);
    return -1;
}


int
mdm_verify_chain(mdm_verifier_t *v, X509 *cert, time_t now,
    const char **reason)
{
    return mdm_chain(v, cert, NULL, now, reason);
}


static int
mdm_chain(mdm_verifier_t *v, X509 *cert, STACK_OF(X509) *extra, time_t now,
    const char **reason)
{
    unsigned int   n;
    unsigned char  key[EVP_MAX_MD_SIZE];

    if (v->cache == NULL) {
        return mdm_chain_cache(v, cert, NULL, extra, now, reason);
    }

    if (!X509_digest(cert, v->md[MDM_CMS_MD_SHA256], key, &n) || n != 32) {
        ERR_clear_error();
        return mdm_fail(reason, "cannot hash certificate");
    }

    if (mdm_cache_lookup(v, key, now)) {
        return 0;
    }

    return mdm_chain_cache(v, cert, key, extra, now, reason);
}


/* Builds the chain (the cache had nothing) and caches a success. */

static int
mdm_chain_cache(mdm_verifier_t *v, X509 *cert, const unsigned char *key,
    STACK_OF(X509) *extra, time_t now, const char **reason)
{
    int     rc;
    time_t  not_before, not_after;

    rc = mdm_chain_build(v, cert, extra, now, &not_before, &not_after,
                         reason);

    if (rc == 0 && v->cache && key) {
        mdm_cache_insert(v, key, cert, now, not_before, not_after);
    }

    ERR_clear_error();

    return rc;
}


static int
mdm_chain_build(mdm_verifier_t *v, X509 *cert, STACK_OF(X509) *extra,
    time_t now, time_t *not_before, time_t *not_after, const char **reason)
{
    int                  i, rc;
    time_t               t;
    X509                *x;
    X509_STORE_CTX      *ctx;
    STACK_OF(X509)      *untrusted, *chain;

    untrusted = v->untrusted;

    if (extra && sk_X509_num(extra) > 0) {
        untrusted = v->untrusted ? sk_X509_dup(v->untrusted)
                                 : sk_X509_new_null();
        if (untrusted == NULL) {
            return mdm_fail(reason, "out of memory");
        }

        for (i = 0; i < sk_X509_num(extra); i++) {
            if (!sk_X509_push(untrusted, sk_X509_value(extra, i))) {
                sk_X509_free(untrusted);
                return mdm_fail(reason, "out of memory");
            }
        }
    }

    ctx = X509_STORE_CTX_new();

    if (ctx == NULL || !X509_STORE_CTX_init(ctx, v->store, cert, untrusted)) {
        rc = mdm_fail(reason, "out of memory");
        goto done;
    }

    /* Also sets the trust to X509_TRUST_SSL_CLIENT. */
    X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT);
    X509_STORE_CTX_set_time(ctx, 0, now);

    v->stats.chain_builds++;

    if (X509_verify_cert(ctx) != 1) {
        rc = mdm_fail(reason,
                      mdm_chain_reason(X509_STORE_CTX_get_error(ctx),
                                       X509_STORE_CTX_get_error_depth(ctx)));
        goto done;
    }

    /* The cached result must not outlive any certificate of the chain. */

    chain = X509_STORE_CTX_get0_chain(ctx);
    *not_before = 0;
    *not_after = (time_t) -1;
    rc = 0;

    for (i = 0; i < sk_X509_num(chain); i++) {
        x = sk_X509_value(chain, i);

        t = mdm_asn1_time(X509_get0_notBefore(x));
        if (t == (time_t) -1) {
            rc = mdm_fail(reason, "bad certificate validity");
            break;
        }

        if (t > *not_before) {
            *not_before = t;
        }

        t = mdm_asn1_time(X509_get0_notAfter(x));
        if (t == (time_t) -1) {
            rc = mdm_fail(reason, "bad certificate validity");
            break;
        }

        if (*not_after == (time_t) -1 || t < *not_after) {
            *not_after = t;
        }
    }

done:

    X509_STORE_CTX_free(ctx);

    if (untrusted != v->untrusted) {
        sk_X509_free(untrusted);
    }

    return rc;
}


static const char *
mdm_chain_reason(int err, int depth)
{
    switch (err) {

    case X509_V_ERR_CERT_HAS_EXPIRED:
        return depth ? "issuer certificate expired" : "certificate expired";

    case X509_V_ERR_CERT_NOT_YET_VALID:
        return depth ? "issuer certificate not yet valid"
                     : "certificate not yet valid";

    case X509_V_ERR_INVALID_PURPOSE:
        return "not for TLS client auth";

    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_CERT_UNTRUSTED:
        return "certificate not issued by a trusted CA";

    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
        return "certificate signature does not verify";

    default:
        /* Static strings too, e.g. "invalid CA certificate". */
        return X509_verify_cert_error_string(err);
    }
}


static mdm_cache_entry_t *
mdm_cache_set(mdm_verifier_t *v, const unsigned char *key)
{
    uint64_t  h;

    /* The key is a cryptographic hash: its first bytes are uniform. */
    memcpy(&h, key, sizeof(h));

    return &v->cache[(h % v->nsets) * v->ways];
}


static mdm_cache_entry_t *
mdm_cache_lookup(mdm_verifier_t *v, const unsigned char *key, time_t now)
{
    size_t              i;
    mdm_cache_entry_t  *set, *e;

    set = mdm_cache_set(v, key);

    for (i = 0; i < v->ways; i++) {
        e = &set[i];

        if (e->used == 0 || memcmp(e->key, key, sizeof(e->key)) != 0) {
            continue;
        }

        if (now >= e->not_before && now < e->expires) {
            e->used = ++v->tick;
            v->stats.cache_hits++;
            return e;
        }

        mdm_cache_drop(v, e);
        v->stats.cache_expired++;
        return NULL;
    }

    v->stats.cache_misses++;
    return NULL;
}


static void
mdm_cache_insert(mdm_verifier_t *v, const unsigned char *key, X509 *cert,
    time_t now, time_t not_before, time_t not_after)
{
    size_t              i;
    time_t              expires;
    mdm_cache_entry_t  *set, *e;

    expires = now + v->ttl;
    if (not_after < expires) {
        expires = not_after;
    }

    if (expires <= now || !X509_up_ref(cert)) {
        return;
    }

    set = mdm_cache_set(v, key);
    e = &set[0];

    for (i = 0; i < v->ways; i++) {
        if (set[i].used == 0
            || memcmp(set[i].key, key, sizeof(set[i].key)) == 0)
        {
            e = &set[i];
            break;
        }

        if (set[i].used < e->used) {
            e = &set[i];
        }
    }

    if (e->used && memcmp(e->key, key, sizeof(e->key)) != 0) {
        v->stats.cache_evictions++;
    }

    mdm_cache_drop(v, e);

    memcpy(e->key, key, sizeof(e->key));
    e->not_before = not_before;
    e->expires = expires;
    e->used = ++v->tick;
    e->cert = cert;
    v->stats.cache_entries++;

    mdm_cert_facts_set(cert);
}


static void
mdm_cache_drop(mdm_verifier_t *v, mdm_cache_entry_t *e)
{
    if (e->used == 0) {
        return;
    }

    X509_free(e->cert);
    e->cert = NULL;
    e->used = 0;
    v->stats.cache_entries--;
}


/*
 * The hash and notAfter of a certificate are asked for on every request;
 * a cached X509 serves many, so they are computed once, when it is cached.
 */

static void
mdm_cert_facts_set(X509 *cert)
{
    char               hex[65];
    time_t             t;
    mdm_cert_facts_t  *f;

    if (mdm_facts_index == -1
        || X509_get_ex_data(cert, mdm_facts_index) != NULL
        || mdm_cert_sha256_hex(cert, hex) != 0)
    {
        return;
    }

    t = mdm_cert_not_after(cert);

    f = malloc(sizeof(mdm_cert_facts_t));
    if (f == NULL) {
        return;
    }

    memcpy(f->sha256, hex, sizeof(hex));
    f->not_after = t;

    if (!X509_set_ex_data(cert, mdm_facts_index, f)) {
        free(f);
        ERR_clear_error();
    }
}


static mdm_cert_facts_t *
mdm_cert_facts(X509 *cert)
{
    return mdm_facts_index == -1 ? NULL
                                 : X509_get_ex_data(cert, mdm_facts_index);
}


static void
mdm_cert_facts_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx,
    long argl, void *argp)
{
    (void) parent;
    (void) ad;
    (void) idx;
    (void) argl;
    (void) argp;

    free(ptr);
}


int
mdm_cert_sha256_hex(X509 *cert, char out[65])
{
    static const char  hex[] = "0123456789abcdef";

    unsigned int       i, n;
    unsigned char      md[EVP_MAX_MD_SIZE];
    mdm_cert_facts_t  *f;

    f = mdm_cert_facts(cert);

    if (f) {
        memcpy(out, f->sha256, 65);
        return 0;
    }

    if (!X509_digest(cert, EVP_sha256(), md, &n) || n != 32) {
        ERR_clear_error();
        out[0] = '\0';
        return -1;
    }

    for (i = 0; i < n; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 0xf];
    }

    out[64] = '\0';

    return 0;
}


time_t
mdm_cert_not_after(X509 *cert)
{
    mdm_cert_facts_t  *f;

    f = mdm_cert_facts(cert);

    if (f) {
        return f->not_after;
    }

    return mdm_asn1_time(X509_get0_notAfter(cert));
}


static time_t
mdm_asn1_time(const ASN1_TIME *t)
{
    struct tm  tm;

    memset(&tm, 0, sizeof(struct tm));

    if (t == NULL || !ASN1_TIME_to_tm(t, &tm)) {
        ERR_clear_error();
        return (time_t) -1;
    }

    return timegm(&tm);
}


int
mdm_cert_names_id(X509 *cert, const char *id, size_t idlen)
{
    int                     i, n, found;
    unsigned char          *utf8;
    X509_NAME              *name;
    GENERAL_NAME           *gn;
    ASN1_STRING            *s;
    GENERAL_NAMES          *sans;
    const unsigned char    *data;

    found = 0;
    name = X509_get_subject_name(cert);

    for (i = -1; !found; ) {
        i = X509_NAME_get_index_by_NID(name, NID_commonName, i);
        if (i < 0) {
            break;
        }

        s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));

        n = ASN1_STRING_to_UTF8(&utf8, s);
        if (n < 0) {
            continue;
        }

        found = ((size_t) n == idlen && memcmp(utf8, id, idlen) == 0);
        OPENSSL_free(utf8);
    }

    sans = found ? NULL
                 : X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);

    for (i = 0; !found && i < sk_GENERAL_NAME_num(sans); i++) {
        gn = sk_GENERAL_NAME_value(sans, i);

        switch (gn->type) {
        case GEN_DNS:
        case GEN_URI:
        case GEN_EMAIL:
            s = gn->d.ia5;
            break;
        default:
            continue;
        }

        data = ASN1_STRING_get0_data(s);
        found = ((size_t) ASN1_STRING_length(s) == idlen
                 && memcmp(data, id, idlen) == 0);
    }

    GENERAL_NAMES_free(sans);
    ERR_clear_error();

    return found;
}


static int
mdm_fail(const char **reason, const char *text)
{
    if (reason) {
        *reason = text;
    }

    return -1;
}
