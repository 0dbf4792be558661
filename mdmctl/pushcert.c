/*
 * MDM push certificate tooling: the customer's key and CSR, the vendor's
 * signed request for Apple's Push Certificates Portal, inspection of the
 * issued certificate, and PEM <-> PKCS#12 conversion for the APNs sender.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>

#include "mdmctl.h"


#define MDM_MAX_CHAIN  8


static int mdm_pushcert_csr(int argc, char **argv);
static int mdm_pushcert_vendor_sign(int argc, char **argv);
static int mdm_pushcert_info(int argc, char **argv);
static int mdm_pushcert_p12(int argc, char **argv);
static int mdm_pushcert_pem(int argc, char **argv);


static const mdm_cmd_t  mdm_pushcert_cmds[] = {
    { "csr", mdm_pushcert_csr, "customer: push key and CSR" },
    { "vendor-sign", mdm_pushcert_vendor_sign,
      "vendor: sign a customer CSR into the portal's request file" },
    { "info", mdm_pushcert_info,
      "topic, subject, issuer, validity, and whether a key matches" },
    { "p12", mdm_pushcert_p12, "PEM certificate + key -> PKCS#12" },
    { "pem", mdm_pushcert_pem, "PKCS#12 -> PEM certificate + key" },
    { NULL, NULL, NULL }
};


int
mdm_pushcert_main(int argc, char **argv)
{
    return mdm_dispatch(mdm_pushcert_cmds, "pushcert", argc, argv);
}


static int
mdm_add_name(X509_NAME *name, const char *field, const char *value)
{
    if (value == NULL || value[0] == '\0') {
        return 0;
    }

    if (!X509_NAME_add_entry_by_txt(name, field, MBSTRING_UTF8,
                                    (const unsigned char *) value, -1, -1,
                                    0))
    {
        mdm_err_ssl("subject %s \"%s\"", field, value);
        return -1;
    }
    return 0;
}


static const struct option  mdm_csr_opts[] = {
    { "key-out", required_argument, NULL, 'k' },
    { "key", required_argument, NULL, 'K' },
    { "key-password", required_argument, NULL, 'p' },
    { "csr-out", required_argument, NULL, 'c' },
    { "cn", required_argument, NULL, 'n' },
    { "email", required_argument, NULL, 'e' },
    { "country", required_argument, NULL, 'C' },
    { "force", no_argument, NULL, 'f' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 }
};


static int
mdm_pushcert_csr(int argc, char **argv)
{
    int          ch, force, rc;
    BIO         *bio;
    char        *pass;
    EVP_PKEY    *key;
    X509_REQ    *req;
    X509_NAME   *name;
    const char  *keyout, *keyin, *csrout, *cn, *email, *country;

    keyout = NULL;
    keyin = NULL;
    csrout = NULL;
    cn = "MDM Push Certificate";
    email = NULL;
    country = NULL;
    pass = NULL;
    force = 0;

    while ((ch = mdm_getopt(argc, argv, mdm_csr_opts)) != -1) {
        switch (ch) {
        case 'k':
            keyout = optarg;
            break;
        case 'K':
            keyin = optarg;
            break;
        case 'c':
            csrout = optarg;
            break;
        case 'n':
            cn = optarg;
            break;
        case 'e':
            email = optarg;
            break;
        case 'C':
            country = optarg;
            break;
        case 'f':
            force = 1;
            break;
        case 'p':
            if (mdm_password(optarg, &pass) != 0) {
                return MDM_ERROR;
            }
            break;
        case 'h':
            return mdm_usage("(--key-out NEW.key | --key EXISTING.key)"
                             " [--key-password PW]\n"
                             "    --csr-out FILE [--cn NAME]"
                             " [--email ADDR] [--country CC] [--force]\n");
        default:
            return MDM_USAGE;
        }
    }

    if ((keyout == NULL) == (keyin == NULL) || csrout == NULL
        || optind != argc)
    {
        mdm_err("usage: (--key-out NEW.key | --key EXISTING.key)"
                " --csr-out FILE (see --help)");
        free(pass);
        return MDM_USAGE;
    }

    if (country && strlen(country) != 2) {
        mdm_err("--country must be a two-letter code, not \"%s\"", country);
        free(pass);
        return MDM_USAGE;
    }

    rc = MDM_ERROR;
    req = X509_REQ_new();
    name = X509_NAME_new();
    bio = BIO_new(BIO_s_mem());

    /* the key stays with the customer; Apple wants RSA 2048 */
    key = keyin ? mdm_load_key(keyin, pass) : mdm_new_key("rsa2048");
    if (key == NULL) {
        goto done;
    }

    if (!EVP_PKEY_is_a(key, "RSA")) {
        mdm_err("%s: the push key must be RSA", keyin);
        goto done;
    }

    /* the subject Keychain Access writes: C, CN, emailAddress */
    if (mdm_add_name(name, "C", country) != 0
        || mdm_add_name(name, "CN", cn) != 0
        || mdm_add_name(name, "emailAddress", email) != 0)
    {
        goto done;
    }

    if (!X509_REQ_set_version(req, 0) || !X509_REQ_set_subject_name(req, name)
        || !X509_REQ_set_pubkey(req, key) || !X509_REQ_sign(req, key,
                                                            EVP_sha256())
        || !PEM_write_bio_X509_REQ(bio, req))
    {
        mdm_err_ssl("cannot build the CSR");
        goto done;
    }

    if (keyout && mdm_write_key(keyout, key, pass, force) != 0) {
        goto done;
    }

    if (mdm_write_bio(csrout, bio, 0644, force) != 0) {
        goto done;
    }

    printf("wrote %s%s%s\n", csrout, keyout ? " " : "", keyout ? keyout : "");
    rc = MDM_OK;

done:

    BIO_free(bio);
    X509_NAME_free(name);
    X509_REQ_free(req);
    EVP_PKEY_free(key);
    free(pass);
    return rc;
}


static const struct option  mdm_vendor_opts[] = {
    { "csr", required_argument, NULL, 'c' },
    { "vendor-cert", required_argument, NULL, 'v' },
    { "vendor-key", required_argument, NULL, 'k' },
    { "vendor-key-password", required_argument, NULL, 'p' },
    { "chain", required_argument, NULL, 'C' },
    { "digest", required_argument, NULL, 'd' },
    { "out", required_argument, NULL, 'O' },
    { "force", no_argument, NULL, 'f' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 }
};


/* PEM of the vendor certificate followed by every chain file's certs. */
static char *
mdm_chain_pem(X509 *vendor, const char **files, int n)
{
    int              i, j;
    BIO             *bio;
    char            *data, *s;
    long             len;
    STACK_OF(X509)  *sk;

    bio = BIO_new(BIO_s_mem());
    sk = sk_X509_new_null();
    s = NULL;

    PEM_write_bio_X509(bio, vendor);
    for (i = 0; i < n; i++) {
        if (mdm_load_certs(files[i], sk) < 0) {
            goto done;
        }
        for (j = 0; j < sk_X509_num(sk); j++) {
            PEM_write_bio_X509(bio, sk_X509_value(sk, j));
        }
        sk_X509_pop_free(sk, X509_free);
        sk = sk_X509_new_null();
    }

    len = BIO_get_mem_data(bio, &data);
    s = strndup(data, len);

done:

    sk_X509_pop_free(sk, X509_free);
    BIO_free(bio);
    return s;
}


static int
mdm_pushcert_vendor_sign(int argc, char **argv)
{
    int             ch, force, rc, nchain, derlen;
    BIO            *bio;
    char           *pass, *chain, *b64csr, *b64sig, *xml, *out;
    size_t          siglen;
    uint32_t        xmllen;
    X509           *vcert;
    plist_t         pl;
    EVP_PKEY       *vkey, *pub;
    X509_REQ       *req;
    EVP_MD_CTX     *md;
    const char     *csrf, *certf, *keyf, *outf, *digest;
    const char     *chainf[MDM_MAX_CHAIN];
    unsigned char  *der, *sig;

    csrf = NULL;
    certf = NULL;
    keyf = NULL;
    outf = NULL;
    digest = "sha256";
    pass = NULL;
    force = 0;
    nchain = 0;

    while ((ch = mdm_getopt(argc, argv, mdm_vendor_opts)) != -1) {
        switch (ch) {
        case 'c':
            csrf = optarg;
            break;
        case 'v':
            certf = optarg;
            break;
        case 'k':
            keyf = optarg;
            break;
        case 'O':
            outf = optarg;
            break;
        case 'f':
            force = 1;
            break;
        case 'd':
            digest = optarg;
            if (strcmp(digest, "sha256") != 0 && strcmp(digest, "sha1") != 0)
            {
                mdm_err("--digest must be sha256 or sha1, not \"%s\"",
                        digest);
                return MDM_USAGE;
            }
            break;
        case 'C':
            if (nchain == MDM_MAX_CHAIN) {
                mdm_err("too many --chain options");
                return MDM_USAGE;
            }
            chainf[nchain++] = optarg;
            break;
        case 'p':
            if (mdm_password(optarg, &pass) != 0) {
                return MDM_ERROR;
            }
            break;
        case 'h':
            return mdm_usage("--csr CUSTOMER.csr --vendor-cert VENDOR.pem"
                             " --vendor-key VENDOR.key\n"
                             "    [--vendor-key-password PW]"
                             " [--chain WWDR.pem] [--chain ROOT.pem]\n"
                             "    [--digest sha256|sha1] --out"
                             " PushCertificateRequest [--force]\n");
        default:
            return MDM_USAGE;
        }
    }

    if (csrf == NULL || certf == NULL || keyf == NULL || outf == NULL
        || optind != argc)
    {
        mdm_err("usage: --csr FILE --vendor-cert FILE --vendor-key FILE"
                " --out FILE (see --help)");
        free(pass);
        return MDM_USAGE;
    }

    rc = MDM_ERROR;
    vcert = NULL;
    vkey = NULL;
    der = NULL;
    sig = NULL;
    chain = NULL;
    b64csr = NULL;
    b64sig = NULL;
    out = NULL;
    pl = NULL;
    md = EVP_MD_CTX_new();
    bio = BIO_new(BIO_s_mem());

    req = mdm_load_csr(csrf);
    if (req == NULL) {
        goto done;
    }

    /* a CSR not signed by its own key was tampered with or mixed up */
    pub = X509_REQ_get0_pubkey(req);
    if (pub == NULL || X509_REQ_verify(req, pub) != 1) {
        mdm_err("%s: the CSR's signature does not verify with its own key"
                " (signed by another key?)", csrf);
        goto done;
    }

    vcert = mdm_load_cert(certf);
    if (vcert == NULL) {
        goto done;
    }

    vkey = mdm_load_key(keyf, pass);
    if (vkey == NULL) {
        goto done;
    }

    if (!mdm_key_matches(vcert, vkey)) {
        mdm_err("%s does not match the vendor certificate %s", keyf, certf);
        goto done;
    }

    if (!EVP_PKEY_is_a(vkey, "RSA")) {
        mdm_err("%s: the vendor signing key must be RSA", keyf);
        goto done;
    }

    mdm_check_validity(vcert, "vendor certificate");

    derlen = i2d_X509_REQ(req, &der);
    if (derlen <= 0) {
        mdm_err_ssl("cannot encode the CSR");
        goto done;
    }

    /* RSA PKCS#1 v1.5 over the CSR's DER (protocol notes, section 7) */
    if (EVP_DigestSignInit_ex(md, NULL, digest, NULL, NULL, vkey, NULL) != 1
        || EVP_DigestSign(md, NULL, &siglen, der, derlen) != 1
        || (sig = malloc(siglen)) == NULL
        || EVP_DigestSign(md, sig, &siglen, der, derlen) != 1)
    {
        mdm_err_ssl("cannot sign the CSR");
        goto done;
    }

    chain = mdm_chain_pem(vcert, chainf, nchain);
    b64csr = mdm_base64(der, derlen);
    b64sig = mdm_base64(sig, siglen);
    if (chain == NULL || b64csr == NULL || b64sig == NULL) {
        goto done;
    }

    pl = plist_new_dict();
    plist_dict_set_item(pl, "PushCertRequestCSR", plist_new_string(b64csr));
    plist_dict_set_item(pl, "PushCertCertificateChain",
                        plist_new_string(chain));
    plist_dict_set_item(pl, "PushCertSignature", plist_new_string(b64sig));

    xml = NULL;
    plist_to_xml(pl, &xml, &xmllen);
    if (xml == NULL) {
        mdm_err("cannot serialise the request");
        goto done;
    }

    /* the portal takes the whole XML plist base64-encoded */
    out = mdm_base64((unsigned char *) xml, xmllen);
    plist_to_xml_free(xml);

    if (out == NULL || mdm_write_file(outf, out, strlen(out), 0644, force)
                       != 0)
    {
        goto done;
    }

    printf("wrote %s (signed with %s)\n", outf, digest);
    rc = MDM_OK;

done:

    if (pl) {
        plist_free(pl);
    }
    free(out);
    free(b64csr);
    free(b64sig);
    free(chain);
    free(sig);
    OPENSSL_free(der);
    BIO_free(bio);
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(vkey);
    X509_free(vcert);
    X509_REQ_free(req);
    free(pass);
    return rc;
}


/* A PEM file holding the certificate and its key together (apnsd style). */
static int
mdm_has_key(const char *path)
{
    int             has;
    size_t          len;
    unsigned char  *data;

    if (mdm_read_file(path, &data, &len) != 0) {
        ERR_clear_error();
        return 0;
    }

    has = strstr((char *) data, "PRIVATE KEY-----") != NULL;
    OPENSSL_cleanse(data, len);
    free(data);
    return has;
}


/* --key-password (p) and --password (w, of a PKCS#12) */
static int
mdm_pass_opt(int ch, char **kpass, char **ppass)
{
    char  **dst;

    dst = (ch == 'p') ? kpass : ppass;
    free(*dst);
    *dst = NULL;
    return mdm_password(optarg, dst);
}


static const struct option  mdm_info_opts[] = {
    { "cert", required_argument, NULL, 'c' },
    { "key", required_argument, NULL, 'k' },
    { "key-password", required_argument, NULL, 'p' },
    { "p12", required_argument, NULL, 'P' },
    { "password", required_argument, NULL, 'w' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 }
};


static void
mdm_print_time(const char *label, const ASN1_TIME *t)
{
    BIO   *bio;
    char  *s;
    long   n;

    bio = BIO_new(BIO_s_mem());
    ASN1_TIME_print_ex(bio, t, ASN1_DTFLGS_ISO8601);
    n = BIO_get_mem_data(bio, &s);
    printf("%-11s %.*s\n", label, (int) n, s);
    BIO_free(bio);
}


static int
mdm_pushcert_info(int argc, char **argv)
{
    int              ch, rc;
    char            *kpass, *ppass, *topic, *s;
    X509            *x;
    EVP_PKEY        *key;
    const char      *certf, *keyf, *p12f;
    STACK_OF(X509)  *ca;

    certf = NULL;
    keyf = NULL;
    p12f = NULL;
    kpass = NULL;
    ppass = NULL;

    while ((ch = mdm_getopt(argc, argv, mdm_info_opts)) != -1) {
        switch (ch) {
        case 'c':
            certf = optarg;
            break;
        case 'k':
            keyf = optarg;
            break;
        case 'P':
            p12f = optarg;
            break;
        case 'p':
        case 'w':
            if (mdm_pass_opt(ch, &kpass, &ppass) != 0) {
                return MDM_ERROR;
            }
            break;
        case 'h':
            return mdm_usage("--cert FILE [--key FILE [--key-password PW]]\n"
                             "       mdmctl pushcert info --p12 FILE"
                             " --password PW\n"
                             "A --cert file that also holds the key is"
                             " checked against it.\n");
        default:
            return MDM_USAGE;
        }
    }

    if ((certf == NULL) == (p12f == NULL) || (p12f && keyf)
        || optind != argc)
    {
        mdm_err("usage: --cert FILE [--key FILE] | --p12 FILE --password PW");
        free(kpass);
        free(ppass);
        return MDM_USAGE;
    }

    rc = MDM_ERROR;
    key = NULL;
    ca = NULL;
    topic = NULL;

    if (certf && keyf == NULL && mdm_has_key(certf)) {
        keyf = certf;
    }

    if (p12f) {
        if (mdm_load_p12(p12f, ppass, &key, &x, &ca) != 0) {
            goto done_pass;
        }
    } else {
        x = mdm_load_cert(certf);
        if (x == NULL) {
            goto done_pass;
        }
    }

    topic = mdm_cert_topic(x);
    if (topic == NULL) {
        mdm_err("%s has no UID (topic) attribute in its subject: not an MDM"
                " push certificate", certf ? certf : p12f);
        goto done;
    }

    printf("%-11s %s\n", "topic:", topic);
    s = mdm_name_oneline(X509_get_subject_name(x));
    printf("%-11s %s\n", "subject:", s);
    free(s);
    s = mdm_name_oneline(X509_get_issuer_name(x));
    printf("%-11s %s\n", "issuer:", s);
    free(s);
    mdm_print_time("not before:", X509_get0_notBefore(x));
    mdm_print_time("not after:", X509_get0_notAfter(x));
    printf("%-11s %ld\n", "days left:", mdm_days_left(x));

    if (strncmp(topic, "com.apple.mgmt.", 15) != 0) {
        mdm_warn("topic \"%s\" does not begin with com.apple.mgmt.", topic);
    }

    mdm_check_validity(x, "push certificate");

    if (keyf) {
        key = mdm_load_key(keyf, kpass);
        if (key == NULL) {
            goto done;
        }
    }

    if (key) {
        if (!mdm_key_matches(x, key)) {
            printf("%-11s does not match\n", "key:");
            mdm_err("%s does not match the certificate",
                    keyf ? keyf : p12f);
            goto done;
        }
        printf("%-11s matches\n", "key:");
    }

    rc = MDM_OK;

done:

    free(topic);
    EVP_PKEY_free(key);
    X509_free(x);
    sk_X509_pop_free(ca, X509_free);

done_pass:

    free(kpass);
    free(ppass);
    return rc;
}


/* A push certificate must carry its topic; warn early when it does not. */
static void
mdm_check_push(X509 *x, const char *path)
{
    char  *topic;

    topic = mdm_cert_topic(x);
    if (topic == NULL) {
        mdm_warn("%s has no UID (topic) attribute: not an MDM push"
                 " certificate", path);
    }
    free(topic);
    mdm_check_validity(x, "push certificate");
}


static const struct option  mdm_p12_opts[] = {
    { "cert", required_argument, NULL, 'c' },
    { "key", required_argument, NULL, 'k' },
    { "key-password", required_argument, NULL, 'p' },
    { "out", required_argument, NULL, 'O' },
    { "password", required_argument, NULL, 'w' },
    { "modern", no_argument, NULL, 'm' },
    { "force", no_argument, NULL, 'f' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 }
};


static int
mdm_pushcert_p12(int argc, char **argv)
{
    int              ch, rc, force, modern;
    char            *kpass, *ppass;
    X509            *x;
    PKCS12          *p12;
    EVP_PKEY        *key;
    const char      *certf, *keyf, *outf;
    STACK_OF(X509)  *chain;

    certf = NULL;
    keyf = NULL;
    outf = NULL;
    kpass = NULL;
    ppass = NULL;
    force = 0;
    modern = 0;

    while ((ch = mdm_getopt(argc, argv, mdm_p12_opts)) != -1) {
        switch (ch) {
        case 'c':
            certf = optarg;
            break;
        case 'k':
            keyf = optarg;
            break;
        case 'O':
            outf = optarg;
            break;
        case 'f':
            force = 1;
            break;
        case 'm':
            modern = 1;
            break;
        case 'p':
        case 'w':
            if (mdm_pass_opt(ch, &kpass, &ppass) != 0) {
                return MDM_ERROR;
            }
            break;
        case 'h':
            return mdm_usage("--cert FILE [--key FILE] [--key-password PW]"
                             " --out FILE.p12\n"
                             "    --password PW [--modern] [--force]\n"
                             "Without --key the key is read from --cert."
                             " Extra certificates after the\n"
                             "first in --cert go into the PKCS#12 as its"
                             " chain.\n");
        default:
            return MDM_USAGE;
        }
    }

    if (certf == NULL || outf == NULL || ppass == NULL || optind != argc) {
        mdm_err("usage: --cert FILE [--key FILE] --out FILE --password PW");
        free(kpass);
        free(ppass);
        return MDM_USAGE;
    }

    rc = MDM_ERROR;
    p12 = NULL;
    key = NULL;
    x = NULL;
    chain = sk_X509_new_null();

    if (keyf == NULL) {
        keyf = certf;
    }

    if (mdm_load_certs(certf, chain) < 0) {
        goto done;
    }
    x = sk_X509_shift(chain);

    key = mdm_load_key(keyf, kpass);
    if (key == NULL) {
        goto done;
    }

    if (!mdm_key_matches(x, key)) {
        mdm_err("%s does not match the certificate %s", keyf, certf);
        goto done;
    }

    mdm_check_push(x, certf);

    p12 = mdm_make_p12(key, x, sk_X509_num(chain) ? chain : NULL, ppass,
                       "MDM push certificate", modern);
    if (p12 != NULL && mdm_write_p12(outf, p12, force) == 0) {
        printf("wrote %s\n", outf);
        rc = MDM_OK;
    }

done:

    PKCS12_free(p12);
    EVP_PKEY_free(key);
    X509_free(x);
    sk_X509_pop_free(chain, X509_free);
    free(kpass);
    free(ppass);
    return rc;
}


static const struct option  mdm_pem_opts[] = {
    { "p12", required_argument, NULL, 'P' },
    { "password", required_argument, NULL, 'w' },
    { "cert-out", required_argument, NULL, 'c' },
    { "key-out", required_argument, NULL, 'k' },
    { "out", required_argument, NULL, 'O' },
    { "key-password", required_argument, NULL, 'p' },
    { "force", no_argument, NULL, 'f' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 }
};


static int
mdm_pushcert_pem(int argc, char **argv)
{
    int              ch, rc, force, i;
    BIO             *bio;
    char            *kpass, *ppass;
    X509            *x;
    EVP_PKEY        *key;
    const char      *p12f, *certf, *keyf, *outf;
    STACK_OF(X509)  *ca;

    p12f = NULL;
    certf = NULL;
    keyf = NULL;
    outf = NULL;
    kpass = NULL;
    ppass = NULL;
    force = 0;

    while ((ch = mdm_getopt(argc, argv, mdm_pem_opts)) != -1) {
        switch (ch) {
        case 'P':
            p12f = optarg;
            break;
        case 'c':
            certf = optarg;
            break;
        case 'k':
            keyf = optarg;
            break;
        case 'O':
            outf = optarg;
            break;
        case 'f':
            force = 1;
            break;
        case 'p':
        case 'w':
            if (mdm_pass_opt(ch, &kpass, &ppass) != 0) {
                return MDM_ERROR;
            }
            break;
        case 'h':
            return mdm_usage("--p12 FILE --password PW"
                             " (--cert-out FILE --key-out FILE | --out FILE)"
                             "\n"
                             "    [--key-password PW (encrypts the key)]"
                             " [--force]\n"
                             "--out writes certificate and key into one"
                             " file (0600), as apnsd's --cert-dir"
                             " takes them.\n");
        default:
            return MDM_USAGE;
        }
    }

    if (p12f == NULL || optind != argc
        || (outf ? certf || keyf : certf == NULL || keyf == NULL))
    {
        mdm_err("usage: --p12 FILE --password PW (--cert-out FILE"
                " --key-out FILE | --out FILE)");
        free(kpass);
        free(ppass);
        return MDM_USAGE;
    }

    rc = MDM_ERROR;
    ca = NULL;
    bio = BIO_new(BIO_s_mem());

    if (mdm_load_p12(p12f, ppass, &key, &x, &ca) != 0) {
        goto done_pass;
    }

    if (!mdm_key_matches(x, key)) {
        mdm_err("%s: the key does not match the certificate", p12f);
        goto done;
    }

    mdm_check_push(x, p12f);

    /* the certificate first, then any chain the PKCS#12 carried */
    PEM_write_bio_X509(bio, x);
    for (i = 0; ca && i < sk_X509_num(ca); i++) {
        PEM_write_bio_X509(bio, sk_X509_value(ca, i));
    }

    if (outf) {
        /* one file with the key in it: private */
        if (!PEM_write_bio_PrivateKey(bio, key, kpass ? EVP_aes_256_cbc()
                                                      : NULL,
                                      NULL, 0, NULL, kpass))
        {
            mdm_err_ssl("%s", outf);
            goto done;
        }

        if (mdm_write_bio(outf, bio, 0600, force) != 0) {
            goto done;
        }
        printf("wrote %s\n", outf);

    } else {
        if (mdm_write_key(keyf, key, kpass, force) != 0
            || mdm_write_bio(certf, bio, 0644, force) != 0)
        {
            goto done;
        }
        printf("wrote %s %s\n", certf, keyf);
    }
    rc = MDM_OK;

done:

    EVP_PKEY_free(key);
    X509_free(x);
    sk_X509_pop_free(ca, X509_free);

done_pass:

    BIO_free(bio);
    free(kpass);
    free(ppass);
    return rc;
}
