/*
 * Enrollment profile (.mobileconfig): root CA payloads, an identity
 * payload (PKCS#12 or SCEP) and the com.apple.mdm payload, checked
 * against Apple's schemas before it is written, optionally CMS-signed.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "mdmctl.h"


#define MDM_MAX_CERTS  16


typedef struct {
    const char  *name;
    unsigned     bits;
} mdm_right_t;


/* AccessRights bits (com.apple.mdm.yaml) under readable names */
static const mdm_right_t  mdm_rights[] = {
    { "inspect", 1 },
    { "install", 2 },
    { "lock", 4 },
    { "erase", 8 },
    { "device-info", 16 },
    { "network-info", 32 },
    { "provisioning-inspect", 64 },
    { "provisioning-install", 128 },
    { "apps", 256 },
    { "restrictions", 512 },
    { "security", 1024 },
    { "settings", 2048 },
    { "app-management", 4096 },
    { "all", 8191 },
    { NULL, 0 }
};


static const char *const  mdm_capabilities[] = {
    "per-user-connections", "bootstraptoken", "token", NULL
};


typedef struct {
    const char      *server_url;
    const char      *checkin_url;
    const char      *base_url;
    const char      *topic;
    const char      *push_cert;
    const char      *p12;
    char            *p12_pass;
    const char      *scep_url;
    const char      *scep_challenge;
    const char      *scep_subject;
    const char      *scep_name;
    long             scep_keysize;
    long             scep_key_usage;
    const char      *ca_certs[MDM_MAX_CERTS];
    int              nca;
    const char      *server_cert;
    long             rights;
    int              sign_message;
    int              checkout;
    unsigned         caps;
    int              dev_apns;
    const char      *identifier;
    const char      *org;
    const char      *name;
    const char      *description;
    const char      *sign_cert;
    const char      *sign_key;
    char            *sign_key_pass;
    const char      *sign_chain;
    const char      *out;
    int              force;
    char            *urls[2];
} mdm_profile_conf_t;


static int mdm_profile_create(int argc, char **argv);
static int mdm_profile_check(int argc, char **argv);
static int mdm_profile_sign(int argc, char **argv);


static const mdm_cmd_t  mdm_profile_cmds[] = {
    { "create", mdm_profile_create,
      "write an enrollment profile (optionally signed)" },
    { "check", mdm_profile_check,
      "check a profile (XML, binary or CMS-signed) against the schemas" },
    { "sign", mdm_profile_sign, "CMS-sign an existing profile (DER)" },
    { NULL, NULL, NULL }
};


int
mdm_profile_main(int argc, char **argv)
{
    return mdm_dispatch(mdm_profile_cmds, "profile", argc, argv);
}


/* "inspect,lock,erase" or a number; rights that need another are refused */
static int
mdm_parse_rights(const char *s, long *out)
{
    long                r;
    size_t              n;
    const char         *p, *e;
    const mdm_right_t  *m;

    if (mdm_parse_int(s, 1, 8191, &r) != 0) {
        r = 0;
        for (p = s; *p; p = *e ? e + 1 : e) {
            e = p + strcspn(p, ",");
            n = e - p;
            for (m = mdm_rights; m->name; m++) {
                if (strlen(m->name) == n && strncmp(m->name, p, n) == 0) {
                    break;
                }
            }
            if (m->name == NULL) {
                mdm_err("unknown access right \"%.*s\" (inspect, install,"
                        " lock, erase, device-info, network-info,"
                        " provisioning-inspect, provisioning-install, apps,"
                        " restrictions, security, settings, app-management,"
                        " all, or a number 1..8191)", (int) n, p);
                return -1;
            }
            r |= m->bits;
        }
    }

    if (r == 0) {
        mdm_err("--rights must grant at least one right");
        return -1;
    }

    if ((r & 2) && !(r & 1)) {
        mdm_err("access right \"install\" (2) needs \"inspect\" (1)");
        return -1;
    }

    if ((r & 128) && !(r & 64)) {
        mdm_err("access right \"provisioning-install\" (128) needs"
                " \"provisioning-inspect\" (64)");
        return -1;
    }

    *out = r;
    return 0;
}


static int
mdm_parse_caps(const char *s, unsigned *out)
{
    int          i;
    size_t       n;
    unsigned     caps;
    const char  *p, *e;

    caps = 0;
    if (strcmp(s, "none") == 0) {
        *out = 0;
        return 0;
    }

    for (p = s; *p; p = *e ? e + 1 : e) {
        e = p + strcspn(p, ",");
        n = e - p;
        for (i = 0; mdm_capabilities[i]; i++) {
            if (strlen(mdm_capabilities[i]) == n
                && strncmp(mdm_capabilities[i], p, n) == 0)
            {
                break;
            }
        }
        if (mdm_capabilities[i] == NULL) {
            mdm_err("unknown server capability \"%.*s\" (per-user-connections,"
                    " bootstraptoken, token or none)", (int) n, p);
            return -1;
        }
        caps |= 1u << i;
    }

    *out = caps;
    return 0;
}


/* The host of an https URL, for the default identifier and SAN check. */
static char *
mdm_url_host(const char *url)
{
    size_t       n;
    const char  *p;

    if (strncmp(url, "https://", 8) != 0) {
        return NULL;
    }

    p = url + 8;
    if (*p == '[') {
        n = strcspn(++p, "]");
    } else {
        n = strcspn(p, ":/?#");
    }
    return n ? strndup(p, n) : NULL;
}


/* mdm.example.com -> com.example.mdm.enroll */
static char *
mdm_default_identifier(const char *host)
{
    size_t       n;
    char        *id, *q;
    const char  *b, *e;

    if (strspn(host, "0123456789.:abcdefABCDEF") == strlen(host)) {
        return strdup("local.mdm.enroll");
    }

    n = strlen(host);
    id = malloc(n + sizeof(".enroll"));
    if (id == NULL) {
        return NULL;
    }

    q = id;
    for (e = host + n; e > host; e = (b > host) ? b - 1 : host) {
        for (b = e; b > host && b[-1] != '.'; b--) {
            /* void */
        }
        memcpy(q, b, e - b);
        q += e - b;
        *q++ = '.';
    }
    strcpy(q, "enroll");
    return id;
}


static plist_t
mdm_payload(const char *type, const char *ident, const char *suffix,
    const char *display, char uuid[37])
{
    char     id[512];
    plist_t  p;

    mdm_uuid(uuid);
    snprintf(id, sizeof(id), "%s.%s", ident, suffix);

    p = plist_new_dict();
    plist_dict_set_item(p, "PayloadType", plist_new_string(type));
    plist_dict_set_item(p, "PayloadVersion", plist_new_uint(1));
    plist_dict_set_item(p, "PayloadIdentifier", plist_new_string(id));
    plist_dict_set_item(p, "PayloadUUID", plist_new_string(uuid));
    plist_dict_set_item(p, "PayloadDisplayName", plist_new_string(display));
    return p;
}


/*
 * Adds one trust payload per certificate; returns the store of them so
 * the server certificate can be checked against exactly these roots.
 */
static int
mdm_add_ca_payloads(mdm_profile_conf_t *cf, const char *ident,
    plist_t content, STACK_OF(X509) *cas)
{
    int             i, n, self;
    char            uuid[37], suffix[32], display[300], *cn;
    plist_t         p;
    X509           *x;
    unsigned char  *der;
    int             len;

    for (i = 0; i < cf->nca; i++) {
        if (mdm_load_certs(cf->ca_certs[i], cas) < 0) {
            return -1;
        }
    }

    n = sk_X509_num(cas);
    for (i = 0; i < n; i++) {
        x = sk_X509_value(cas, i);
        mdm_check_validity(x, "CA certificate");

        /* a root goes in .root, an intermediate in the generic .pkcs1 */
        self = X509_check_issued(x, x) == X509_V_OK;
        snprintf(suffix, sizeof(suffix), "ca%d", i + 1);
        cn = mdm_name_oneline(X509_get_subject_name(x));
        snprintf(display, sizeof(display), "%s", cn);
        free(cn);

        p = mdm_payload(self ? "com.apple.security.root"
                             : "com.apple.security.pkcs1",
                        ident, suffix, display, uuid);

        der = NULL;
        len = i2d_X509(x, &der);
        if (len <= 0) {
            mdm_err_ssl("cannot encode a CA certificate");
            plist_free(p);
            return -1;
        }
        snprintf(suffix, sizeof(suffix), "ca%d.cer", i + 1);
        plist_dict_set_item(p, "PayloadCertificateFileName",
                            plist_new_string(suffix));
        plist_dict_set_item(p, "PayloadContent",
                            plist_new_data((char *) der, len));
        OPENSSL_free(der);
        plist_array_append_item(content, p);
    }

    return 0;
}


/*
 * A server certificate that no system root vouches for needs its CA in
 * the profile, or the device refuses to talk to the server.
 */
static int
mdm_check_server_cert(mdm_profile_conf_t *cf, STACK_OF(X509) *cas)
{
    int             i, ok, rc;
    char           *host;
    X509           *x;
    X509_STORE     *store;
    X509_STORE_CTX *ctx;

    x = mdm_load_cert(cf->server_cert);
    if (x == NULL) {
        return -1;
    }

    rc = -1;
    host = mdm_url_host(cf->server_url);
    if (host && X509_check_host(x, host, 0, 0, NULL) != 1
        && X509_check_ip_asc(x, host, 0) != 1)
    {
        mdm_err("%s does not name %s in its subjectAltName",
                cf->server_cert, host);
        goto done;
    }

    mdm_check_validity(x, "server certificate");

    store = X509_STORE_new();
    ctx = X509_STORE_CTX_new();
    X509_STORE_set_default_paths(store);
    for (i = 0; i < sk_X509_num(cas); i++) {
        X509_STORE_add_cert(store, sk_X509_value(cas, i));
    }

    X509_STORE_CTX_init(ctx, store, x, cas);
    X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_SERVER);
    ok = X509_verify_cert(ctx);

    if (ok != 1) {
        mdm_err("%s does not chain to a system root or a --ca-cert: %s%s",
                cf->server_cert,
                X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)),
                cf->nca ? "" : " (give its CA with --ca-cert)");
    } else {
        rc = 0;
    }

    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);

done:

    free(host);
    X509_free(x);
    ERR_clear_error();
    return rc;
}


static plist_t
mdm_identity_p12(mdm_profile_conf_t *cf, const char *ident, char uuid[37])
{
    plist_t         p;
    X509           *cert;
    EVP_PKEY       *key;
    size_t          len;
    const char     *base;
    unsigned char  *data;
    STACK_OF(X509) *ca;

    ca = NULL;
    if (mdm_load_p12(cf->p12, cf->p12_pass, &key, &cert, &ca) != 0) {
        return NULL;
    }

    if (!mdm_key_matches(cert, key)) {
        mdm_err("%s: the key does not match the certificate", cf->p12);
        p = NULL;
        goto done;
    }

    mdm_check_validity(cert, "identity certificate");

    p = NULL;
    if (mdm_read_file(cf->p12, &data, &len) != 0) {
        goto done;
    }

    base = strrchr(cf->p12, '/');
    base = base ? base + 1 : cf->p12;

    p = mdm_payload("com.apple.security.pkcs12", ident, "identity",
                    "Device identity", uuid);
    plist_dict_set_item(p, "PayloadCertificateFileName",
                        plist_new_string(base));
    plist_dict_set_item(p, "PayloadContent",
                        plist_new_data((char *) data, len));
    plist_dict_set_item(p, "Password",
                        plist_new_string(cf->p12_pass ? cf->p12_pass : ""));
    OPENSSL_cleanse(data, len);
    free(data);

done:

    EVP_PKEY_free(key);
    X509_free(cert);
    sk_X509_pop_free(ca, X509_free);
    return p;
}


/* "/O=Example/CN=device" -> [[["O","Example"]],[["CN","device"]]] */
static plist_t
mdm_scep_subject(const char *s)
{
    size_t       n, k;
    plist_t      subject, rdn, pair;
    char        *part;
    const char  *p, *e, *eq;

    if (s[0] != '/') {
        mdm_err("--scep-subject must look like /O=Org/CN=name, not \"%s\"",
                s);
        return NULL;
    }

    subject = plist_new_array();
    for (p = s + 1; *p; p = *e ? e + 1 : e) {
        e = p + strcspn(p, "/");
        n = e - p;
        eq = memchr(p, '=', n);
        if (eq == NULL || eq == p || eq == e - 1) {
            mdm_err("--scep-subject: \"%.*s\" is not TYPE=value", (int) n,
                    p);
            plist_free(subject);
            return NULL;
        }

        k = eq - p;
        part = strndup(p, k);
        pair = plist_new_array();
        plist_array_append_item(pair, plist_new_string(part));
        free(part);
        part = strndup(eq + 1, n - k - 1);
        plist_array_append_item(pair, plist_new_string(part));
        free(part);

        rdn = plist_new_array();
        plist_array_append_item(rdn, pair);
        plist_array_append_item(subject, rdn);
    }

    return subject;
}


static plist_t
mdm_identity_scep(mdm_profile_conf_t *cf, const char *ident, char uuid[37])
{
    plist_t  p, c, subject;

    subject = NULL;
    if (cf->scep_subject) {
        subject = mdm_scep_subject(cf->scep_subject);
        if (subject == NULL) {
            return NULL;
        }
    }

    c = plist_new_dict();
    plist_dict_set_item(c, "URL", plist_new_string(cf->scep_url));
    if (cf->scep_name) {
        plist_dict_set_item(c, "Name", plist_new_string(cf->scep_name));
    }
    if (subject) {
        plist_dict_set_item(c, "Subject", subject);
    }
    if (cf->scep_challenge) {
        plist_dict_set_item(c, "Challenge",
                            plist_new_string(cf->scep_challenge));
    }
    plist_dict_set_item(c, "Keysize", plist_new_uint(cf->scep_keysize));
    plist_dict_set_item(c, "Key Type", plist_new_string("RSA"));
    plist_dict_set_item(c, "Key Usage", plist_new_uint(cf->scep_key_usage));

    p = mdm_payload("com.apple.security.scep", ident, "identity",
                    "Device identity (SCEP)", uuid);
    plist_dict_set_item(p, "PayloadContent", c);
    return p;
}


static int
mdm_push_topic(mdm_profile_conf_t *cf, char **topic)
{
    X509  *x;

    x = mdm_load_cert(cf->push_cert);
    if (x == NULL) {
        return -1;
    }

    *topic = mdm_cert_topic(x);
    if (*topic == NULL) {
        mdm_err("%s has no UID (topic) attribute in its subject: not an MDM"
                " push certificate", cf->push_cert);
        X509_free(x);
        return -1;
    }

    mdm_check_validity(x, "push certificate");
    X509_free(x);
    return 0;
}


static plist_t
mdm_mdm_payload(mdm_profile_conf_t *cf, const char *ident,
    const char *topic, const char *identity_uuid)
{
    int      i;
    char     uuid[37], cap[64];
    plist_t  p, caps;

    p = mdm_payload("com.apple.mdm", ident, "mdm", "Device management",
                    uuid);
    plist_dict_set_item(p, "IdentityCertificateUUID",
                        plist_new_string(identity_uuid));
    plist_dict_set_item(p, "Topic", plist_new_string(topic));
    plist_dict_set_item(p, "ServerURL", plist_new_string(cf->server_url));
    if (cf->checkin_url) {
        plist_dict_set_item(p, "CheckInURL",
                            plist_new_string(cf->checkin_url));
    }
    plist_dict_set_item(p, "AccessRights", plist_new_uint(cf->rights));
    plist_dict_set_item(p, "SignMessage", plist_new_bool(cf->sign_message));
    plist_dict_set_item(p, "CheckOutWhenRemoved",
                        plist_new_bool(cf->checkout));
    plist_dict_set_item(p, "UseDevelopmentAPNS",
                        plist_new_bool(cf->dev_apns));

    if (cf->caps) {
        caps = plist_new_array();
        for (i = 0; mdm_capabilities[i]; i++) {
            if (cf->caps & (1u << i)) {
                snprintf(cap, sizeof(cap), "com.apple.mdm.%s",
                         mdm_capabilities[i]);
                plist_array_append_item(caps, plist_new_string(cap));
            }
        }
        plist_dict_set_item(p, "ServerCapabilities", caps);
    }

    return p;
}


/* CMS SignedData with the profile attached, DER-encoded into "out". */
static int
mdm_cms_sign(const char *data, size_t len, const char *certf,
    const char *keyf, const char *pass, const char *chainf, BIO *out)
{
    int              rc;
    BIO             *in;
    X509            *cert;
    EVP_PKEY        *key;
    CMS_ContentInfo *cms;
    STACK_OF(X509)  *chain;

    rc = -1;
    key = NULL;
    cms = NULL;
    chain = sk_X509_new_null();

    cert = mdm_load_cert(certf);
    if (cert == NULL) {
        goto done;
    }

    key = mdm_load_key(keyf, pass);
    if (key == NULL) {
        goto done;
    }

    if (!mdm_key_matches(cert, key)) {
        mdm_err("%s does not match the signing certificate %s", keyf, certf);
        goto done;
    }

    mdm_check_validity(cert, "signing certificate");

    if (chainf && mdm_load_certs(chainf, chain) < 0) {
        goto done;
    }

    in = BIO_new_mem_buf(data, (int) len);
    cms = CMS_sign(cert, key, chain, in, CMS_BINARY);
    BIO_free(in);

    if (cms == NULL || !i2d_CMS_bio(out, cms)) {
        mdm_err_ssl("cannot sign the profile");
        goto done;
    }

    rc = 0;

done:

    CMS_ContentInfo_free(cms);
    sk_X509_pop_free(chain, X509_free);
    EVP_PKEY_free(key);
    X509_free(cert);
    return rc;
}


static int
mdm_output_profile(mdm_profile_conf_t *cf, plist_t profile)
{
    int        rc;
    BIO       *out;
    char      *xml;
    uint32_t   len;

    xml = NULL;
    plist_to_xml(profile, &xml, &len);
    if (xml == NULL) {
        mdm_err("cannot serialise the profile");
        return -1;
    }

    out = BIO_new(BIO_s_mem());
    if (cf->sign_cert) {
        rc = mdm_cms_sign(xml, len, cf->sign_cert, cf->sign_key,
                          cf->sign_key_pass, cf->sign_chain, out);
    } else {
        rc = BIO_write(out, xml, (int) len) == (int) len ? 0 : -1;
    }

    /* a PKCS#12 identity and its password are inside: keep it private */
    if (rc == 0) {
        rc = mdm_write_bio(cf->out, out, 0600, cf->force);
    }

    if (rc == 0 && strcmp(cf->out, "-") != 0) {
        printf("wrote %s%s\n", cf->out, cf->sign_cert ? " (signed)" : "");
    }

    BIO_free(out);
    plist_to_xml_free(xml);
    return rc;
}


static const struct option  mdm_create_opts[] = {
    { "url", required_argument, NULL, 'U' },
    { "server-url", required_argument, NULL, 'u' },
    { "checkin-url", required_argument, NULL, 'c' },
    { "topic", required_argument, NULL, 'T' },
    { "push-cert", required_argument, NULL, 'X' },
    { "p12", required_argument, NULL, 'p' },
    { "p12-password", required_argument, NULL, 'P' },
    { "scep-url", required_argument, NULL, 's' },
    { "scep-challenge", required_argument, NULL, 'C' },
    { "scep-subject", required_argument, NULL, 'S' },
    { "scep-name", required_argument, NULL, 'N' },
    { "scep-keysize", required_argument, NULL, 'K' },
    { "scep-key-usage", required_argument, NULL, 'G' },
    { "ca-cert", required_argument, NULL, 'a' },
    { "server-cert", required_argument, NULL, 'e' },
    { "rights", required_argument, NULL, 'r' },
    { "sign-message", no_argument, NULL, 'm' },
    { "no-checkout-when-removed", no_argument, NULL, 'o' },
    { "capabilities", required_argument, NULL, 'A' },
    { "dev-apns", no_argument, NULL, 'D' },
    { "identifier", required_argument, NULL, 'i' },
    { "org", required_argument, NULL, 'g' },
    { "name", required_argument, NULL, 'n' },
    { "description", required_argument, NULL, 'd' },
    { "removal-disallowed", no_argument, NULL, 'R' },
    { "sign-cert", required_argument, NULL, 'x' },
    { "sign-key", required_argument, NULL, 'k' },
    { "sign-key-password", required_argument, NULL, 'w' },
    { "sign-chain", required_argument, NULL, 'H' },
    { "out", required_argument, NULL, 'O' },
    { "force", no_argument, NULL, 'f' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 }
};


static const char  mdm_create_usage[] =
    "(--url BASE | --server-url URL [--checkin-url URL])\n"
    "    (--topic TOPIC | --push-cert FILE)\n"
    "    (--p12 FILE --p12-password PW | --scep-url URL"
    " [--scep-challenge C]\n"
    "     [--scep-subject /O=Org/CN=name] [--scep-name N]"
    " [--scep-keysize 1024|2048|4096]\n"
    "     [--scep-key-usage N])\n"
    "    [--ca-cert FILE]... [--server-cert FILE]\n"
    "    [--rights all|inspect,install,lock,erase,device-info,network-info,\n"
    "      provisioning-inspect,provisioning-install,apps,restrictions,\n"
    "      security,settings,app-management|N]\n"
    "    [--sign-message] [--no-checkout-when-removed] [--dev-apns]\n"
    "    [--capabilities per-user-connections,bootstraptoken,token|none]\n"
    "    [--identifier ID] [--org ORG] [--name NAME] [--description TEXT]\n"
    "    [--sign-cert FILE --sign-key FILE [--sign-key-password PW]"
    " [--sign-chain FILE]]\n"
    "    [--out FILE|-] [--force]\n"
    "--url BASE sets ServerURL BASE/mdm/connect and CheckInURL"
    " BASE/mdm/checkin.\n";


static int
mdm_create_opt(mdm_profile_conf_t *cf, int ch)
{
    switch (ch) {
    case 'U':
        cf->base_url = optarg;
        break;
    case 'u':
        cf->server_url = optarg;
        break;
    case 'c':
        cf->checkin_url = optarg;
        break;
    case 'T':
        cf->topic = optarg;
        break;
    case 'X':
        cf->push_cert = optarg;
        break;
    case 'p':
        cf->p12 = optarg;
        break;
    case 's':
        cf->scep_url = optarg;
        break;
    case 'C':
        cf->scep_challenge = optarg;
        break;
    case 'S':
        cf->scep_subject = optarg;
        break;
    case 'N':
        cf->scep_name = optarg;
        break;
    case 'e':
        cf->server_cert = optarg;
        break;
    case 'm':
        cf->sign_message = 1;
        break;
    case 'o':
        cf->checkout = 0;
        break;
    case 'D':
        cf->dev_apns = 1;
        break;
    case 'i':
        cf->identifier = optarg;
        break;
    case 'g':
        cf->org = optarg;
        break;
    case 'n':
        cf->name = optarg;
        break;
    case 'd':
        cf->description = optarg;
        break;
    case 'x':
        cf->sign_cert = optarg;
        break;
    case 'k':
        cf->sign_key = optarg;
        break;
    case 'H':
        cf->sign_chain = optarg;
        break;
    case 'O':
        cf->out = optarg;
        break;
    case 'f':
        cf->force = 1;
        break;

    case 'P':
        return mdm_password(optarg, &cf->p12_pass);

    case 'w':
        return mdm_password(optarg, &cf->sign_key_pass);

    case 'K':
        if (mdm_parse_int(optarg, 1024, 4096, &cf->scep_keysize) != 0
            || (cf->scep_keysize != 1024 && cf->scep_keysize != 2048
                && cf->scep_keysize != 4096))
        {
            mdm_err("--scep-keysize must be 1024, 2048 or 4096");
            return -1;
        }
        break;

    case 'G':
        if (mdm_parse_int(optarg, 1, 5, &cf->scep_key_usage) != 0) {
            mdm_err("--scep-key-usage must be 1 (signing), 4 (encryption)"
                    " or 5 (both)");
            return -1;
        }
        break;

    case 'a':
        if (cf->nca == MDM_MAX_CERTS) {
            mdm_err("too many --ca-cert options");
            return -1;
        }
        cf->ca_certs[cf->nca++] = optarg;
        break;

    case 'r':
        return mdm_parse_rights(optarg, &cf->rights);

    case 'A':
        return mdm_parse_caps(optarg, &cf->caps);

    case 'R':
        mdm_err("refusing --removal-disallowed: the MDM enrollment profile"
                " must stay removable (the server can always remove it)");
        return -1;

    default:
        return -1;
    }

    return 0;
}


static int
mdm_create_check_args(mdm_profile_conf_t *cf)
{
    size_t  n;

    if (cf->base_url) {
        if (cf->server_url || cf->checkin_url) {
            mdm_err("give --url or --server-url/--checkin-url, not both");
            return -1;
        }
        n = strlen(cf->base_url);
        while (n && cf->base_url[n - 1] == '/') {
            n--;
        }
        cf->urls[0] = malloc(n + sizeof("/mdm/checkin"));
        cf->urls[1] = malloc(n + sizeof("/mdm/checkin"));
        sprintf(cf->urls[0], "%.*s/mdm/connect", (int) n, cf->base_url);
        sprintf(cf->urls[1], "%.*s/mdm/checkin", (int) n, cf->base_url);
        cf->server_url = cf->urls[0];
        cf->checkin_url = cf->urls[1];
    }

    if (cf->server_url == NULL) {
        mdm_err("--url or --server-url is required");
        return -1;
    }

    if (strncmp(cf->server_url, "https://", 8) != 0
        || (cf->checkin_url && strncmp(cf->checkin_url, "https://", 8) != 0))
    {
        mdm_err("server and check-in URLs must begin with https://");
        return -1;
    }

    if ((cf->topic == NULL) == (cf->push_cert == NULL)) {
        mdm_err("give exactly one of --topic and --push-cert");
        return -1;
    }

    if ((cf->p12 == NULL) == (cf->scep_url == NULL)) {
        mdm_err("give exactly one identity: --p12 FILE or --scep-url URL");
        return -1;
    }

    if (cf->p12 && cf->p12_pass == NULL) {
        mdm_err("--p12 needs --p12-password (the device needs it too)");
        return -1;
    }

    if (cf->scep_url && strncmp(cf->scep_url, "http", 4) != 0) {
        mdm_err("--scep-url must be an http(s) URL");
        return -1;
    }

    if ((cf->sign_cert == NULL) != (cf->sign_key == NULL)) {
        mdm_err("signing needs both --sign-cert and --sign-key");
        return -1;
    }

    return 0;
}


static int
mdm_profile_create(int argc, char **argv)
{
    int                  ch, rc;
    char                *topic, *host, *ident;
    char                 uuid[37], identity_uuid[37];
    plist_t              profile, content, identity;
    STACK_OF(X509)      *cas;
    mdm_profile_conf_t   cf;

    memset(&cf, 0, sizeof(cf));
    cf.rights = 8191;
    cf.checkout = 1;
    cf.caps = 7;
    cf.scep_keysize = 2048;
    cf.scep_key_usage = 5;
    cf.out = "-";

    topic = NULL;
    ident = NULL;
    profile = NULL;
    host = NULL;
    cas = sk_X509_new_null();
    rc = MDM_USAGE;

    while ((ch = mdm_getopt(argc, argv, mdm_create_opts)) != -1) {
        if (ch == 'h') {
            rc = mdm_usage(mdm_create_usage);
            goto done;
        }
        if (ch == '?' || mdm_create_opt(&cf, ch) != 0) {
            goto done;
        }
    }

    if (optind != argc) {
        mdm_err("unexpected argument \"%s\"", argv[optind]);
        goto done;
    }

    if (mdm_create_check_args(&cf) != 0) {
        goto done;
    }

    rc = MDM_ERROR;
    host = mdm_url_host(cf.server_url);

    if (cf.push_cert) {
        if (mdm_push_topic(&cf, &topic) != 0) {
            goto done;
        }
    } else {
        topic = strdup(cf.topic);
    }

    if (strncmp(topic, "com.apple.mgmt.", 15) != 0) {
        mdm_err("topic \"%s\" must begin with com.apple.mgmt.", topic);
        goto done;
    }

    ident = cf.identifier ? strdup(cf.identifier)
                          : mdm_default_identifier(host ? host : "local");

    profile = plist_new_dict();
    content = plist_new_array();

    mdm_uuid(uuid);
    plist_dict_set_item(profile, "PayloadType",
                        plist_new_string("Configuration"));
    plist_dict_set_item(profile, "PayloadVersion", plist_new_uint(1));
    plist_dict_set_item(profile, "PayloadIdentifier", plist_new_string(ident));
    plist_dict_set_item(profile, "PayloadUUID", plist_new_string(uuid));
    plist_dict_set_item(profile, "PayloadDisplayName",
                        plist_new_string(cf.name ? cf.name
                                                 : "MDM Enrollment"));
    if (cf.org) {
        plist_dict_set_item(profile, "PayloadOrganization",
                            plist_new_string(cf.org));
    }
    if (cf.description) {
        plist_dict_set_item(profile, "PayloadDescription",
                            plist_new_string(cf.description));
    }
    plist_dict_set_item(profile, "PayloadRemovalDisallowed",
                        plist_new_bool(0));
    plist_dict_set_item(profile, "PayloadContent", content);

    /* trust first: the device installs certificates before the MDM */
    if (mdm_add_ca_payloads(&cf, ident, content, cas) != 0) {
        goto done;
    }

    if (cf.server_cert && mdm_check_server_cert(&cf, cas) != 0) {
        goto done;
    }

    identity = cf.p12 ? mdm_identity_p12(&cf, ident, identity_uuid)
                      : mdm_identity_scep(&cf, ident, identity_uuid);
    if (identity == NULL) {
        goto done;
    }
    plist_array_append_item(content, identity);

    plist_array_append_item(content,
                            mdm_mdm_payload(&cf, ident, topic,
                                            identity_uuid));

    if (mdm_profile_validate(profile, 1) != 0
        || mdm_output_profile(&cf, profile) != 0)
    {
        goto done;
    }

    rc = MDM_OK;

done:

    if (profile) {
        plist_free(profile);
    }
    sk_X509_pop_free(cas, X509_free);
    free(topic);
    free(host);
    free(ident);
    free(cf.urls[0]);
    free(cf.urls[1]);
    free(cf.p12_pass);
    free(cf.sign_key_pass);
    return rc;
}


/*
 * A profile in memory: XML or binary plist, or a CMS SignedData whose
 * signature is checked (and its signer chain when roots are given); what
 * names it in errors. quiet: no "signed by" line.
 */
plist_t
mdm_profile_parse(const char *what, const unsigned char *buf, size_t len,
    const char *roots, int *signed_out, int quiet)
{
    BIO              *in, *content;
    char             *data, *signer;
    long              n;
    plist_t           pl;
    X509_STORE       *store;
    STACK_OF(X509)   *sk, *signers;
    CMS_ContentInfo  *cms;

    pl = NULL;
    *signed_out = 0;

    if (len > 8 && (buf[0] == '<' || memcmp(buf, "bplist", 6) == 0
                    || memcmp(buf, "\xef\xbb\xbf<", 4) == 0))
    {
        plist_from_memory((const char *) buf, (uint32_t) len, &pl);
        if (pl == NULL) {
            mdm_err("%s: not a property list", what);
        }
        return pl;
    }

    in = BIO_new_mem_buf(buf, (int) len);
    cms = d2i_CMS_bio(in, NULL);
    BIO_free(in);

    if (cms == NULL) {
        mdm_err("%s: neither a property list nor CMS signed data", what);
        return NULL;
    }

    store = X509_STORE_new();
    sk = sk_X509_new_null();
    content = BIO_new(BIO_s_mem());

    if (roots && mdm_load_certs(roots, sk) < 0) {
        goto done;
    }
    while (sk_X509_num(sk) > 0) {
        X509 *x = sk_X509_pop(sk);

        X509_STORE_add_cert(store, x);
        X509_free(x);
    }

    if (!CMS_verify(cms, NULL, store, NULL, content,
                    CMS_BINARY | (roots ? 0 : CMS_NO_SIGNER_CERT_VERIFY)))
    {
        mdm_err_ssl("%s: the CMS signature does not verify", what);
        goto done;
    }

    signers = CMS_get0_signers(cms);
    if (!quiet && signers && sk_X509_num(signers) > 0) {
        signer = mdm_name_oneline(
                     X509_get_subject_name(sk_X509_value(signers, 0)));
        printf("signed by %s%s\n", signer,
               roots ? " (chain verified)" : " (chain not checked)");
        free(signer);
    }
    sk_X509_free(signers);

    n = BIO_get_mem_data(content, &data);
    plist_from_memory(data, (uint32_t) n, &pl);
    if (pl == NULL) {
        mdm_err("%s: the signed content is not a property list", what);
    }
    *signed_out = 1;

done:

    BIO_free(content);
    sk_X509_pop_free(sk, X509_free);
    X509_STORE_free(store);
    CMS_ContentInfo_free(cms);
    return pl;
}


/* A profile file, as mdm_profile_parse() reads it. */
static plist_t
mdm_read_profile(const char *path, const char *roots, int *signed_out)
{
    size_t          len;
    plist_t         pl;
    unsigned char  *buf;

    if (mdm_read_file(path, &buf, &len) != 0) {
        return NULL;
    }

    pl = mdm_profile_parse(path, buf, len, roots, signed_out, 0);
    free(buf);
    return pl;
}


static const struct option  mdm_check_opts[] = {
    { "ca", required_argument, NULL, 'a' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 }
};


static int
mdm_profile_check(int argc, char **argv)
{
    int          ch, rc, sig;
    plist_t      pl;
    const char  *roots;

    roots = NULL;
    while ((ch = mdm_getopt(argc, argv, mdm_check_opts)) != -1) {
        switch (ch) {
        case 'a':
            roots = optarg;
            break;
        case 'h':
            return mdm_usage("[--ca ROOTS.pem] FILE\n");
        default:
            return MDM_USAGE;
        }
    }

    if (optind != argc - 1) {
        mdm_err("usage: [--ca ROOTS.pem] FILE");
        return MDM_USAGE;
    }

    pl = mdm_read_profile(argv[optind], roots, &sig);
    if (pl == NULL) {
        return MDM_ERROR;
    }

    rc = mdm_profile_validate(pl, 0) == 0 ? MDM_OK : MDM_ERROR;
    plist_free(pl);
    return rc;
}


static const struct option  mdm_sign_opts[] = {
    { "in", required_argument, NULL, 'i' },
    { "out", required_argument, NULL, 'O' },
    { "sign-cert", required_argument, NULL, 'x' },
    { "sign-key", required_argument, NULL, 'k' },
    { "sign-key-password", required_argument, NULL, 'w' },
    { "sign-chain", required_argument, NULL, 'H' },
    { "force", no_argument, NULL, 'f' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 }
};


static int
mdm_profile_sign(int argc, char **argv)
{
    int                  ch, rc, sig;
    plist_t              pl;
    const char          *in;
    mdm_profile_conf_t   cf;

    memset(&cf, 0, sizeof(cf));
    cf.out = "-";
    in = NULL;

    rc = MDM_USAGE;
    pl = NULL;

    while ((ch = mdm_getopt(argc, argv, mdm_sign_opts)) != -1) {
        if (ch == 'h') {
            rc = mdm_usage("--in FILE --sign-cert FILE --sign-key FILE"
                           " [--sign-key-password PW]\n"
                           "    [--sign-chain FILE] [--out FILE|-]"
                           " [--force]\n");
            goto done;
        }
        if (ch == 'i') {
            in = optarg;
            continue;
        }
        if (ch == '?' || mdm_create_opt(&cf, ch) != 0) {
            goto done;
        }
    }

    if (in == NULL || cf.sign_cert == NULL || cf.sign_key == NULL
        || optind != argc)
    {
        mdm_err("usage: --in FILE --sign-cert FILE --sign-key FILE"
                " (see --help)");
        goto done;
    }

    rc = MDM_ERROR;
    pl = mdm_read_profile(in, NULL, &sig);

    if (pl != NULL && mdm_profile_validate(pl, 1) == 0
        && mdm_output_profile(&cf, pl) == 0)
    {
        rc = MDM_OK;
    }

done:

    if (pl) {
        plist_free(pl);
    }
    free(cf.p12_pass);
    free(cf.sign_key_pass);
    return rc;
}
