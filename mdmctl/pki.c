/*
 * Development PKI: a CA, a TLS server certificate and per-device identity
 * certificates (PEM and PKCS#12), laid out in one directory:
 *
 *   D/ca.crt ca.key server.crt server.key UDID.crt UDID.key UDID.p12
 */

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "mdmctl.h"


/* Apple platforms reject TLS server certificates valid for longer. */
#define MDM_SERVER_MAX_DAYS  825
#define MDM_MAX_NAMES        32


static int mdm_pki_ca(int argc, char **argv);
static int mdm_pki_server(int argc, char **argv);
static int mdm_pki_device(int argc, char **argv);


static const mdm_cmd_t  mdm_pki_cmds[] = {
    { "ca", mdm_pki_ca, "create the CA (ca.crt, ca.key)" },
    { "server", mdm_pki_server,
      "TLS server certificate for FQDNs and IPs (server.crt, server.key)" },
    { "device", mdm_pki_device,
      "device identity (UDID.crt, UDID.key, UDID.p12)" },
    { NULL, NULL, NULL }
};


int
mdm_pki_main(int argc, char **argv)
{
    return mdm_dispatch(mdm_pki_cmds, "pki", argc, argv);
}


/* rsa2048 (default), rsa3072, rsa4096, ec256, ec384 */
EVP_PKEY *
mdm_new_key(const char *type)
{
    EVP_PKEY  *key;

    if (type == NULL || strcmp(type, "rsa2048") == 0) {
        key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t) 2048);

    } else if (strcmp(type, "rsa3072") == 0) {
        key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t) 3072);

    } else if (strcmp(type, "rsa4096") == 0) {
        key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t) 4096);

    } else if (strcmp(type, "ec256") == 0) {
        key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");

    } else if (strcmp(type, "ec384") == 0) {
        key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");

    } else {
        mdm_err("unknown key type \"%s\" (rsa2048, rsa3072, rsa4096, "
                "ec256, ec384)", type);
        return NULL;
    }

    if (key == NULL) {
        mdm_err_ssl("key generation failed");
    }
    return key;
}


static int
mdm_add_ext(X509 *x, X509V3_CTX *ctx, const char *name, const char *value)
{
    X509_EXTENSION  *ext;

    ext = X509V3_EXT_nconf(NULL, ctx, name, value);
    if (ext == NULL || !X509_add_ext(x, ext, -1)) {
        mdm_err_ssl("extension %s = %s", name, value);
        X509_EXTENSION_free(ext);
        return -1;
    }

    X509_EXTENSION_free(ext);
    return 0;
}


/*
 * Issues a certificate for "pub" with subject CN (and O); a NULL issuer
 * makes it self-signed. exts are name/value pairs ending with NULL.
 */
static X509 *
mdm_issue(const char *cn, const char *org, EVP_PKEY *pub, X509 *issuer,
    EVP_PKEY *issuer_key, long days, const char *const *exts)
{
    X509        *x;
    BIGNUM      *bn;
    X509_NAME   *name;
    X509V3_CTX   ctx;

    x = X509_new();
    bn = BN_new();
    name = X509_NAME_new();
    if (x == NULL || bn == NULL || name == NULL) {
        goto failed;
    }

    /* 159 random bits: positive, unique, at most 20 octets (RFC 5280) */
    if (!X509_set_version(x, 2)
        || !BN_rand(bn, 159, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY)
        || BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) == NULL)
    {
        goto failed;
    }

    if (org != NULL
        && !X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
                                       (const unsigned char *) org, -1, -1,
                                       0))
    {
        goto failed;
    }

    if (!X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                    (const unsigned char *) cn, -1, -1, 0)
        || !X509_set_subject_name(x, name)
        || !X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer)
                                           : name)
        || !X509_set_pubkey(x, pub))
    {
        goto failed;
    }

    /* back-dated an hour so a device with a slow clock accepts it */
    if (X509_gmtime_adj(X509_getm_notBefore(x), -3600) == NULL
        || X509_time_adj_ex(X509_getm_notAfter(x), (int) days, 0, NULL)
           == NULL)
    {
        goto failed;
    }

    X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);

    for ( /* void */ ; exts[0] != NULL; exts += 2) {
        if (mdm_add_ext(x, &ctx, exts[0], exts[1]) != 0) {
            goto error;
        }
    }

    if (!X509_sign(x, issuer_key, EVP_sha256())) {
        goto failed;
    }

    BN_free(bn);
    X509_NAME_free(name);
    return x;

failed:

    mdm_err_ssl("cannot issue the certificate for \"%s\"", cn);

error:

    X509_free(x);
    BN_free(bn);
    X509_NAME_free(name);
    return NULL;
}


/* Loads D/ca.crt and D/ca.key and checks that they belong together. */
static int
mdm_load_ca(const char *dir, const char *pass, X509 **cert, EVP_PKEY **key)
{
    char  *cp, *kp;
    int    rc;

    rc = -1;
    cp = mdm_path(dir, "ca", "crt");
    kp = mdm_path(dir, "ca", "key");
    *key = NULL;

    *cert = mdm_load_cert(cp);
    if (*cert == NULL) {
        goto done;
    }

    *key = mdm_load_key(kp, pass);
    if (*key == NULL) {
        goto done;
    }

    if (!mdm_key_matches(*cert, *key)) {
        mdm_err("%s does not match the certificate %s", kp, cp);
        goto done;
    }

    mdm_check_validity(*cert, cp);
    rc = 0;

done:

    if (rc != 0) {
        X509_free(*cert);
        EVP_PKEY_free(*key);
        *cert = NULL;
        *key = NULL;
    }
    free(cp);
    free(kp);
    return rc;
}


/* Writes NAME.key (0600) and NAME.crt into dir. */
static int
mdm_write_pair(const char *dir, const char *name, X509 *x, EVP_PKEY *key,
    const char *pass, int force)
{
    char  *cp, *kp;
    int    rc;

    cp = mdm_path(dir, name, "crt");
    kp = mdm_path(dir, name, "key");

    rc = mdm_write_key(kp, key, pass, force);
    if (rc == 0) {
        rc = mdm_write_cert(cp, x, force);
    }
    if (rc == 0) {
        printf("wrote %s %s\n", cp, kp);
    }

    free(cp);
    free(kp);
    return rc;
}


/* Options every pki verb shares. */
typedef struct {
    const char  *dir;
    const char  *ktype;
    char        *pass;          /* CA key password */
    long         days;
    long         max_days;
    int          force;
} mdm_pki_opts_t;


#define MDM_PKI_COMMON_OPTS                                                   \
    { "dir", required_argument, NULL, 'd' },                                  \
    { "days", required_argument, NULL, 't' },                                 \
    { "key-type", required_argument, NULL, 'k' },                             \
    { "force", no_argument, NULL, 'f' },                                      \
    { "help", no_argument, NULL, 'h' }


/* 1: handled, 0: not a common option, -1: usage error, -2: error */
static int
mdm_pki_common_opt(mdm_pki_opts_t *o, int ch)
{
    switch (ch) {

    case 'd':
        o->dir = optarg;
        return 1;

    case 'k':
        o->ktype = optarg;
        return 1;

    case 'f':
        o->force = 1;
        return 1;

    case 'P':
        free(o->pass);
        o->pass = NULL;
        return mdm_password(optarg, &o->pass) == 0 ? 1 : -2;

    case 't':
        if (mdm_parse_int(optarg, 1, o->max_days, &o->days) != 0) {
            mdm_err("--days must be 1..%ld%s, not \"%s\"", o->max_days,
                    o->max_days == MDM_SERVER_MAX_DAYS
                    ? " (Apple's limit for TLS server certificates)" : "",
                    optarg);
            return -1;
        }
        return 1;

    default:
        return 0;
    }
}


static int
mdm_pki_opt_rc(int rc)
{
    return rc == -2 ? MDM_ERROR : MDM_USAGE;
}


static const struct option  mdm_ca_opts[] = {
    MDM_PKI_COMMON_OPTS,
    { "cn", required_argument, NULL, 'n' },
    { "org", required_argument, NULL, 'o' },
    { "key-password", required_argument, NULL, 'P' },
    { NULL, 0, NULL, 0 }
};


static int
mdm_pki_ca(int argc, char **argv)
{
    int              ch, c, rc;
    X509            *x;
    EVP_PKEY        *key;
    const char      *cn, *org;
    mdm_pki_opts_t   o = { NULL, NULL, NULL, 3650, 36500, 0 };

    static const char *const  exts[] = {
        "basicConstraints", "critical,CA:TRUE",
        "keyUsage", "critical,keyCertSign,cRLSign,digitalSignature",
        "subjectKeyIdentifier", "hash",
        "authorityKeyIdentifier", "keyid:always",
        NULL
    };

    cn = "MDM Development CA";
    org = NULL;
    key = NULL;
    x = NULL;
    rc = MDM_USAGE;

    while ((ch = mdm_getopt(argc, argv, mdm_ca_opts)) != -1) {
        if (ch == 'n') {
            cn = optarg;

        } else if (ch == 'o') {
            org = optarg;

        } else if (ch == 'h') {
            rc = mdm_usage("--dir D [--cn NAME] [--org ORG] [--days N]"
                           " [--key-type T]\n"
                           "    [--key-password PW] [--force]\n");
            goto done;

        } else if ((c = mdm_pki_common_opt(&o, ch)) != 1) {
            rc = mdm_pki_opt_rc(c);
            goto done;
        }
    }

    rc = MDM_USAGE;
    if (o.dir == NULL || optind != argc) {
        mdm_err("usage: --dir D [--cn NAME] ... (see --help)");
        goto done;
    }

    rc = MDM_ERROR;
    if (mdm_mkdir(o.dir) != 0 || (key = mdm_new_key(o.ktype)) == NULL) {
        goto done;
    }

    x = mdm_issue(cn, org, key, NULL, key, o.days, exts);
    if (x != NULL && mdm_write_pair(o.dir, "ca", x, key, o.pass, o.force)
                     == 0)
    {
        rc = MDM_OK;
    }

done:

    X509_free(x);
    EVP_PKEY_free(key);
    free(o.pass);
    return rc;
}


static const struct option  mdm_server_opts[] = {
    MDM_PKI_COMMON_OPTS,
    { "name", required_argument, NULL, 'n' },
    { "ip", required_argument, NULL, 'i' },
    { "out", required_argument, NULL, 'O' },
    { "ca-password", required_argument, NULL, 'P' },
    { NULL, 0, NULL, 0 }
};


static int
mdm_valid_dns(const char *s)
{
    size_t  n;

    n = strlen(s);
    if (n == 0 || n > 253 || s[0] == '.' || s[0] == '-' || s[n - 1] == '.') {
        return 0;
    }

    /* a leading "*." wildcard is allowed; nothing else but LDH and dots */
    if (s[0] == '*' && s[1] == '.') {
        s += 2;
    }
    return strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                     "0123456789-.") == strlen(s);
}



/* "DNS:a,DNS:b,IP:1.2.3.4" */
static char *
mdm_san(const char **names, int nnames, const char **ips, int nips)
{
    int      i;
    char    *san, *p;
    size_t   len;

    len = 1;
    for (i = 0; i < nnames; i++) {
        len += strlen(names[i]) + 5;
    }
    for (i = 0; i < nips; i++) {
        len += strlen(ips[i]) + 4;
    }

    san = malloc(len);
    if (san == NULL) {
        return NULL;
    }

    p = san;
    for (i = 0; i < nnames; i++) {
        p += sprintf(p, "%sDNS:%s", i ? "," : "", names[i]);
    }
    for (i = 0; i < nips; i++) {
        p += sprintf(p, ",IP:%s", ips[i]);
    }
    return san;
}


static int
mdm_pki_server(int argc, char **argv)
{
    int              ch, c, rc, nnames, nips;
    char            *san;
    X509            *x, *ca;
    EVP_PKEY        *key, *cakey;
    const char      *out;
    const char      *names[MDM_MAX_NAMES], *ips[MDM_MAX_NAMES];
    const char      *exts[13];
    unsigned char    addr[16];
    mdm_pki_opts_t   o = { NULL, NULL, NULL, 365, MDM_SERVER_MAX_DAYS, 0 };

    out = "server";
    nnames = 0;
    nips = 0;
    san = NULL;
    x = NULL;
    key = NULL;
    rc = MDM_USAGE;

    while ((ch = mdm_getopt(argc, argv, mdm_server_opts)) != -1) {
        if (ch == 'O') {
            out = optarg;

        } else if (ch == 'n') {
            if (!mdm_valid_dns(optarg)) {
                mdm_err("not a DNS name: \"%s\"", optarg);
                goto done;
            }
            if (nnames == MDM_MAX_NAMES) {
                mdm_err("too many --name options");
                goto done;
            }
            names[nnames++] = optarg;

        } else if (ch == 'i') {
            if (inet_pton(AF_INET, optarg, addr) != 1
                && inet_pton(AF_INET6, optarg, addr) != 1)
            {
                mdm_err("not an IP address: \"%s\"", optarg);
                goto done;
            }
            if (nips == MDM_MAX_NAMES) {
                mdm_err("too many --ip options");
                goto done;
            }
            ips[nips++] = optarg;

        } else if (ch == 'h') {
            rc = mdm_usage("--dir D --name FQDN [--name FQDN]..."
                           " [--ip ADDR]...\n"
                           "    [--out NAME] [--days N] [--key-type T]"
                           " [--ca-password PW] [--force]\n");
            goto done;

        } else if ((c = mdm_pki_common_opt(&o, ch)) != 1) {
            rc = mdm_pki_opt_rc(c);
            goto done;
        }
    }

    rc = MDM_USAGE;
    if (o.dir == NULL || nnames == 0 || optind != argc) {
        mdm_err("usage: --dir D --name FQDN [--ip ADDR]... (see --help)");
        goto done;
    }

    if (strchr(out, '/') != NULL || out[0] == '.') {
        mdm_err("--out is a base name inside --dir, not \"%s\"", out);
        goto done;
    }

    rc = MDM_ERROR;
    san = mdm_san(names, nnames, ips, nips);
    if (san == NULL) {
        goto done;
    }

    /* the SAN lists every name and address; CN is the first name */
    exts[0] = "basicConstraints";
    exts[1] = "critical,CA:FALSE";
    exts[2] = "keyUsage";
    exts[3] = "critical,digitalSignature,keyEncipherment";
    exts[4] = "extendedKeyUsage";
    exts[5] = "serverAuth";
    exts[6] = "subjectKeyIdentifier";
    exts[7] = "hash";
    exts[8] = "authorityKeyIdentifier";
    exts[9] = "keyid";
    exts[10] = "subjectAltName";
    exts[11] = san;
    exts[12] = NULL;

    if (mdm_load_ca(o.dir, o.pass, &ca, &cakey) != 0) {
        goto done;
    }

    key = mdm_new_key(o.ktype);
    if (key != NULL) {
        x = mdm_issue(names[0], NULL, key, ca, cakey, o.days, exts);
    }
    if (x != NULL && mdm_write_pair(o.dir, out, x, key, NULL, o.force) == 0)
    {
        rc = MDM_OK;
    }

    X509_free(ca);
    EVP_PKEY_free(cakey);

done:

    X509_free(x);
    EVP_PKEY_free(key);
    free(san);
    free(o.pass);
    return rc;
}


static const struct option  mdm_device_opts[] = {
    MDM_PKI_COMMON_OPTS,
    { "id", required_argument, NULL, 'i' },
    { "p12-password", required_argument, NULL, 'p' },
    { "p12-modern", no_argument, NULL, 'm' },
    { "ca-password", required_argument, NULL, 'P' },
    { NULL, 0, NULL, 0 }
};


static int
mdm_pki_device(int argc, char **argv)
{
    int              ch, c, modern, rc;
    char            *p12pass, *p12path, *passpath;
    X509            *x, *ca;
    PKCS12          *p12;
    EVP_PKEY        *key, *cakey;
    const char      *id;
    mdm_pki_opts_t   o = { NULL, NULL, NULL, 365, 36500, 0 };

    static const char *const  exts[] = {
        "basicConstraints", "critical,CA:FALSE",
        "keyUsage", "critical,digitalSignature,keyEncipherment",
        "extendedKeyUsage", "clientAuth",
        "subjectKeyIdentifier", "hash",
        "authorityKeyIdentifier", "keyid",
        NULL
    };

    id = NULL;
    p12pass = NULL;
    p12path = NULL;
    passpath = NULL;
    modern = 0;
    x = NULL;
    key = NULL;
    p12 = NULL;
    rc = MDM_USAGE;

    while ((ch = mdm_getopt(argc, argv, mdm_device_opts)) != -1) {
        if (ch == 'i') {
            id = optarg;

        } else if (ch == 'm') {
            modern = 1;

        } else if (ch == 'p') {
            free(p12pass);
            p12pass = NULL;
            if (mdm_password(optarg, &p12pass) != 0) {
                rc = MDM_ERROR;
                goto done;
            }

        } else if (ch == 'h') {
            rc = mdm_usage("--dir D --id UDID [--p12-password PW]"
                           " [--p12-modern] [--days N]\n"
                           "    [--key-type T] [--ca-password PW]"
                           " [--force]\n"
                           "Without --p12-password a random one is"
                           " written to D/UDID.p12.pass.\n");
            goto done;

        } else if ((c = mdm_pki_common_opt(&o, ch)) != 1) {
            rc = mdm_pki_opt_rc(c);
            goto done;
        }
    }

    rc = MDM_USAGE;
    if (o.dir == NULL || id == NULL || optind != argc) {
        mdm_err("usage: --dir D --id UDID [--p12-password PW] (see --help)");
        goto done;
    }

    /* the id names files in D and is the certificate's CN */
    if (id[0] == '\0' || id[0] == '.' || strlen(id) > 64
        || strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                      "0123456789-_.:") != strlen(id))
    {
        mdm_err("--id must be 1..64 of A-Z a-z 0-9 - _ . : (a UDID), not"
                " \"%s\"", id);
        goto done;
    }

    rc = MDM_ERROR;
    p12path = mdm_path(o.dir, id, "p12");
    passpath = mdm_path(o.dir, id, "p12.pass");

    if (mdm_load_ca(o.dir, o.pass, &ca, &cakey) != 0) {
        goto done;
    }

    if (p12pass == NULL) {
        p12pass = mdm_random_password();
        if (mdm_write_file(passpath, p12pass, strlen(p12pass), 0600,
                           o.force)
            != 0)
        {
            goto done_ca;
        }
    }

    key = mdm_new_key(o.ktype);
    if (key == NULL) {
        goto done_ca;
    }

    x = mdm_issue(id, NULL, key, ca, cakey, o.days, exts);
    if (x == NULL || mdm_write_pair(o.dir, id, x, key, NULL, o.force) != 0) {
        goto done_ca;
    }

    p12 = mdm_make_p12(key, x, NULL, p12pass, id, modern);
    if (p12 != NULL && mdm_write_p12(p12path, p12, o.force) == 0) {
        printf("wrote %s\n", p12path);
        rc = MDM_OK;
    }

done_ca:

    X509_free(ca);
    EVP_PKEY_free(cakey);

done:

    PKCS12_free(p12);
    X509_free(x);
    EVP_PKEY_free(key);
    free(p12path);
    free(passpath);
    free(o.pass);
    free(p12pass);
    return rc;
}
