/* Push certificates: PEM or PKCS#12 in, topic (subject UID) and in-memory
 * PEM blobs for the TLS client (h2conn.c) out. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/provider.h>
#include <openssl/x509.h>

#include "apnsd.h"

#define TOPIC_PREFIX "com.apple.mgmt."

void ssl_err(char *err, size_t len, const char *what)
{
    unsigned long e = ERR_peek_last_error();
    char buf[256] = "";
    if (e) ERR_error_string_n(e, buf, sizeof buf);
    ERR_clear_error();
    snprintf(err, len, "%s%s%s", what, *buf ? ": " : "", buf);
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcasecmp(s + a - b, suf) == 0;
}

static char *bio_string(BIO *b, size_t *len)
{
    char *p;
    long n = BIO_get_mem_data(b, &p);
    char *s = xmalloc((size_t) n + 1);
    memcpy(s, p, (size_t) n);
    s[n] = '\0';
    *len = (size_t) n;
    return s;
}

static OSSL_PROVIDER *prov_legacy, *prov_default;

static void legacy_providers(void)
{
    static int done;
    if (done) return;
    done = 1;
    /* PKCS#12 files exported by macOS Keychain use RC2/3DES: legacy provider
     * (loading one explicitly means the default one must be loaded too) */
    prov_legacy = OSSL_PROVIDER_load(NULL, "legacy");
    prov_default = OSSL_PROVIDER_load(NULL, "default");
    ERR_clear_error();
}

void cert_cleanup(void)
{
    if (prov_legacy) OSSL_PROVIDER_unload(prov_legacy);
    if (prov_default) OSSL_PROVIDER_unload(prov_default);
    prov_legacy = prov_default = NULL;
}

static int pw_cb(char *buf, int size, int rwflag, void *u)
{
    (void) rwflag;
    const char *pw = u;
    if (!pw) return 0;
    int n = (int) strlen(pw);
    if (n > size) n = size;
    memcpy(buf, pw, (size_t) n);
    return n;
}

static ident_t *ident_make(X509 *cert, EVP_PKEY *pkey, STACK_OF(X509) *chain,
                           const char *label, char *err, size_t errlen);

/* A certificate and key given in memory, PEM (PUT v1/pushcert, via Redis). */
ident_t *ident_load_pem(const char *pem, size_t len, const char *label,
                        char *err, size_t errlen)
{
    ident_t *id = NULL;
    X509 *cert = NULL, *c;
    EVP_PKEY *pkey = NULL;
    STACK_OF(X509) *chain = sk_X509_new_null();
    BIO *in, *kin;

    ERR_clear_error();
    in = BIO_new_mem_buf(pem, (int) len);
    kin = BIO_new_mem_buf(pem, (int) len);
    cert = in ? PEM_read_bio_X509(in, NULL, NULL, (void *) "") : NULL;
    while (cert && chain && (c = PEM_read_bio_X509(in, NULL, NULL, (void *) "")))
        sk_X509_push(chain, c);
    pkey = kin ? PEM_read_bio_PrivateKey(kin, NULL, NULL, (void *) "") : NULL;
    if (!cert) ssl_err(err, errlen, "no PEM certificate");
    else if (!pkey) ssl_err(err, errlen, "no unencrypted PEM private key");
    else id = ident_make(cert, pkey, chain, label, err, errlen);
    BIO_free(in);
    BIO_free(kin);
    X509_free(cert);
    EVP_PKEY_free(pkey);
    sk_X509_pop_free(chain, X509_free);
    ERR_clear_error();
    return id;
}

ident_t *ident_load(const char *cert_path, const char *key_path,
                    const char *password, char *err, size_t errlen)
{
    ident_t *id = NULL;
    X509 *cert = NULL;
    EVP_PKEY *pkey = NULL;
    STACK_OF(X509) *chain = NULL;
    BIO *in = NULL, *kin = NULL;
    PKCS12 *p12 = NULL;

    ERR_clear_error();
    in = BIO_new_file(cert_path, "rb");
    if (!in) { ssl_err(err, errlen, "cannot read certificate file"); goto done; }

    int is_p12 = ends_with(cert_path, ".p12") || ends_with(cert_path, ".pfx");
    if (is_p12) {
        legacy_providers();
        p12 = d2i_PKCS12_bio(in, NULL);
        if (!p12) { ssl_err(err, errlen, "not a PKCS#12 file"); goto done; }
        if (!PKCS12_parse(p12, password ? password : "", &pkey, &cert, &chain)) {
            ssl_err(err, errlen, "PKCS#12: cannot decrypt (wrong password?)");
            goto done;
        }
        if (!cert || !pkey) {
            snprintf(err, errlen, "PKCS#12: certificate or key missing");
            goto done;
        }
    } else {
        cert = PEM_read_bio_X509(in, NULL, pw_cb, (void *) password);
        if (!cert) { ssl_err(err, errlen, "no PEM certificate"); goto done; }
        chain = sk_X509_new_null();
        X509 *c;
        while ((c = PEM_read_bio_X509(in, NULL, pw_cb, (void *) password)))
            sk_X509_push(chain, c);
        ERR_clear_error();
        kin = BIO_new_file(key_path ? key_path : cert_path, "rb");
        if (!kin) { ssl_err(err, errlen, "cannot read key file"); goto done; }
        pkey = PEM_read_bio_PrivateKey(kin, NULL, pw_cb, (void *) password);
        if (!pkey) {
            ssl_err(err, errlen, key_path ? "no PEM private key in key file"
                                          : "no PEM private key next to the certificate");
            goto done;
        }
    }
    id = ident_make(cert, pkey, chain, cert_path, err, errlen);

done:
    BIO_free(in);
    BIO_free(kin);
    PKCS12_free(p12);
    X509_free(cert);
    EVP_PKEY_free(pkey);
    sk_X509_pop_free(chain, X509_free);
    ERR_clear_error();
    return id;
}

/* The identity of a loaded certificate and key: checked, topic, PEM copies. */
static ident_t *ident_make(X509 *cert, EVP_PKEY *pkey, STACK_OF(X509) *chain,
                           const char *label, char *err, size_t errlen)
{
    ident_t *id = NULL;
    BIO *out = NULL, *kout = NULL;

    if (!X509_check_private_key(cert, pkey)) {
        ssl_err(err, errlen, "private key does not match the certificate");
        goto done;
    }

    X509_NAME *subj = X509_get_subject_name(cert);
    int idx = X509_NAME_get_index_by_NID(subj, NID_userId, -1);
    if (idx < 0) {
        snprintf(err, errlen, "certificate subject has no UID "
                 "(0.9.2342.19200300.100.1.1): not an MDM push certificate");
        goto done;
    }
    unsigned char *utf8 = NULL;
    int ulen = ASN1_STRING_to_UTF8(&utf8,
                    X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, idx)));
    if (ulen <= 0) { ssl_err(err, errlen, "certificate UID unreadable"); goto done; }
    char *topic = xstrndup((char *) utf8, (size_t) ulen);
    OPENSSL_free(utf8);
    if (strncmp(topic, TOPIC_PREFIX, strlen(TOPIC_PREFIX)) != 0
        || strpbrk(topic, " \t\r\n/") != NULL) {
        snprintf(err, errlen, "certificate UID \"%s\" is not an MDM topic "
                 "(" TOPIC_PREFIX "...)", topic);
        free(topic);
        goto done;
    }

    id = xcalloc(1, sizeof *id);
    id->refs = 1;                   /* the caller's reference */
    id->topic = topic;
    id->path = xstrdup(label);

    struct tm tm;
    if (ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm))
        id->not_after_ms = (int64_t) timegm(&tm) * 1000;
    ASN1_INTEGER *ser = X509_get_serialNumber(cert);
    BIGNUM *bn = ASN1_INTEGER_to_BN(ser, NULL);
    if (bn) {
        char *hex = BN_bn2hex(bn);
        snprintf(id->serial, sizeof id->serial, "%s", hex ? hex : "?");
        OPENSSL_free(hex);
        BN_free(bn);
    }
    X509_NAME_oneline(subj, id->subject, sizeof id->subject);

    out = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(out, cert);
    for (int i = 0; chain && i < sk_X509_num(chain); i++)
        PEM_write_bio_X509(out, sk_X509_value(chain, i));
    id->cert_pem = bio_string(out, &id->cert_len);
    kout = BIO_new(BIO_s_mem());
    if (!PEM_write_bio_PrivateKey(kout, pkey, NULL, NULL, 0, NULL, NULL)) {
        ssl_err(err, errlen, "cannot encode the private key");
        ident_free(id);
        id = NULL;
        goto done;
    }
    id->key_pem = bio_string(kout, &id->key_len);

done:
    if (kout) {
        char *p;
        long n = BIO_get_mem_data(kout, &p);
        if (n > 0) OPENSSL_cleanse(p, (size_t) n);
        BIO_free(kout);
    }
    BIO_free(out);
    return id;
}

void ident_free(ident_t *id)
{
    if (!id) return;
    free(id->topic);
    free(id->path);
    free(id->cert_pem);
    if (id->key_pem) {
        OPENSSL_cleanse(id->key_pem, id->key_len);
        free(id->key_pem);
    }
    free(id);
}
