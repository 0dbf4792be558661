/*
 * Device identities: minted in-process from a CA (EC P-256, fast enough for
 * thousands of devices), loaded from files, or cached in a directory so
 * consecutive runs present the same certificates (the server binds each
 * certificate to the UDID that first authenticated with it).
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "mdm_sim.h"


static void
sim_ssl_die(const char *what)
{
    char  buf[256];

    ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
    sim_die("%s: %s", what, buf);
}


static void
sim_path(char *out, size_t n, const char *pattern, int index)
{
    /* the pattern is the user's own, with at most one %d */
    if (strstr(pattern, "%d") != NULL) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
        snprintf(out, n, pattern, index);
#pragma GCC diagnostic pop
        return;
    }

    snprintf(out, n, "%s", pattern);
}


static int
sim_load_pem(const char *cert, const char *key, X509 **x, EVP_PKEY **k)
{
    FILE  *f;

    f = fopen(cert, "r");
    if (f == NULL) {
        return -1;
    }
    *x = PEM_read_X509(f, NULL, NULL, NULL);
    if (key != NULL) {
        fclose(f);
        f = fopen(key, "r");
        if (f == NULL) {
            return -1;
        }
    } else {
        rewind(f);
    }
    *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);

    return (*x != NULL && *k != NULL) ? 0 : -1;
}


static void
sim_add_ext(X509 *x, X509 *ca, int nid, const char *value)
{
    X509V3_CTX       v3;
    X509_EXTENSION  *ext;

    X509V3_set_ctx(&v3, ca, x, NULL, NULL, 0);
    ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (ext == NULL || !X509_add_ext(x, ext, -1)) {
        sim_ssl_die("extension");
    }
    X509_EXTENSION_free(ext);
}


static void
sim_mint(X509 *ca, EVP_PKEY *ca_key, sim_device_t *dev, int rsa)
{
    X509          *x;
    EVP_PKEY      *k;
    X509_NAME     *name;
    unsigned char  serial[8];
    BIGNUM        *bn;

    k = rsa ? EVP_RSA_gen(2048) : EVP_EC_gen("P-256");
    x = X509_new();
    if (k == NULL || x == NULL) {
        sim_ssl_die("keygen");
    }

    X509_set_version(x, 2);
    RAND_bytes(serial, sizeof(serial));
    serial[0] &= 0x7f;
    bn = BN_bin2bn(serial, sizeof(serial), NULL);
    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    BN_free(bn);

    /* an hour of clock skew back, thirty days ahead */
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 30L * 86400);

    name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               (unsigned char *) dev->udid, -1, -1, 0);
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                               (unsigned char *) "mdm-sim", -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(ca));
    X509_set_pubkey(x, k);

    sim_add_ext(x, ca, NID_basic_constraints, "critical,CA:FALSE");
    sim_add_ext(x, ca, NID_key_usage, "critical,digitalSignature");
    sim_add_ext(x, ca, NID_ext_key_usage, "clientAuth");

    if (!X509_sign(x, ca_key, EVP_sha256())) {
        sim_ssl_die("sign");
    }

    dev->cert = x;
    dev->key = k;
}


static void
sim_save(const char *path, sim_device_t *dev)
{
    FILE  *f;
    char   tmp[4200];

    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    f = fopen(tmp, "w");
    if (f == NULL) {
        sim_die("%s: cannot write", tmp);
    }
    PEM_write_X509(f, dev->cert);
    PEM_write_PrivateKey(f, dev->key, NULL, NULL, 0, NULL, NULL);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        sim_die("%s: cannot write", path);
    }
}


void
sim_pki_init(sim_t *sim)
{
    int            i;
    char           path[4096], kpath[4096];
    X509          *ca;
    EVP_PKEY      *ca_key;
    sim_conf_t    *cf;
    sim_device_t  *dev;

    cf = &sim->conf;
    ca = NULL;
    ca_key = NULL;

    if (cf->ca_cert != NULL) {
        if (sim_load_pem(cf->ca_cert, cf->ca_key, &ca, &ca_key) != 0) {
            sim_die("cannot load CA %s / %s", cf->ca_cert,
                    cf->ca_key ? cf->ca_key : cf->ca_cert);
        }
    } else if (cf->cert_file == NULL && cf->scenario != SIM_STATIC) {
        sim_die("need --ca-cert/--ca-key or --cert/--key");
    }

    if (cf->certs_dir != NULL) {
        mkdir(cf->certs_dir, 0755);
    }

    for (i = 0; i < cf->devices; i++) {
        dev = &sim->devices[i];

        if (cf->cert_file != NULL) {
            sim_path(path, sizeof(path), cf->cert_file, i);
            sim_path(kpath, sizeof(kpath), cf->key_file ? cf->key_file
                                                        : cf->cert_file, i);
            if (sim_load_pem(path, kpath, &dev->cert, &dev->key) != 0) {
                sim_die("cannot load %s / %s", path, kpath);
            }
            continue;
        }

        if (ca == NULL) {
            continue;               /* static scenario without identities */
        }

        if (cf->certs_dir != NULL) {
            snprintf(path, sizeof(path), "%s/%s.pem", cf->certs_dir,
                     dev->udid);
            if (sim_load_pem(path, NULL, &dev->cert, &dev->key) == 0) {
                continue;
            }
        }

        sim_mint(ca, ca_key, dev, cf->rsa);

        if (cf->certs_dir != NULL) {
            sim_save(path, dev);
        }
    }

    X509_free(ca);
    EVP_PKEY_free(ca_key);

    sim->ctx = SSL_CTX_new(TLS_client_method());
    if (sim->ctx == NULL) {
        sim_ssl_die("SSL_CTX_new");
    }
    SSL_CTX_set_verify(sim->ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(sim->ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(sim->ctx, SSL_MODE_RELEASE_BUFFERS);
}


/* Mdm-Signature: detached CMS SignedData over the exact body, base64. */
void
sim_pki_sign(sim_device_t *dev, const char *body, size_t len, sim_buf_t *out)
{
    int             n;
    BIO            *in;
    CMS_ContentInfo *cms;
    unsigned char  *der, *p;

    if (dev->cert == NULL) {
        sim_die("Mdm-Signature needs device identities");
    }

    /* the server verifies every request in full; only the signing is saved */
    if (dev->signature != NULL && dev->signed_len == len
        && memcmp(dev->signed_body, body, len) == 0)
    {
        sim_buf_add(out, dev->signature, dev->signature_len);
        return;
    }

    in = BIO_new_mem_buf(body, (int) len);
    cms = CMS_sign(dev->cert, dev->key, NULL, in,
                   CMS_DETACHED | CMS_BINARY | CMS_NOSMIMECAP);
    BIO_free(in);
    if (cms == NULL) {
        sim_ssl_die("CMS_sign");
    }

    n = i2d_CMS_ContentInfo(cms, NULL);
    der = malloc(n);
    if (der == NULL) {
        sim_die("out of memory");
    }
    p = der;
    i2d_CMS_ContentInfo(cms, &p);
    CMS_ContentInfo_free(cms);

    sim_buf_base64(out, der, n, 0);
    free(der);

    free(dev->signed_body);
    free(dev->signature);
    dev->signed_body = malloc(len);
    dev->signature = malloc(out->len);
    if (dev->signed_body == NULL || dev->signature == NULL) {
        sim_die("out of memory");
    }
    memcpy(dev->signed_body, body, len);
    dev->signed_len = len;
    memcpy(dev->signature, out->data, out->len);
    dev->signature_len = out->len;
}
