/*
 * Shared helpers: one-line errors, option parsing, files with explicit
 * modes, loading and writing certificates, keys and PKCS#12 files.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rand.h>

#include "mdmctl.h"


char  mdm_cmd_path[128];


static void
mdm_vmsg(const char *level, const char *ssl, const char *fmt, va_list ap)
{
    fprintf(stderr, "mdmctl%s%s: %s", mdm_cmd_path[0] ? " " : "",
            mdm_cmd_path, level);
    vfprintf(stderr, fmt, ap);
    if (ssl) {
        fprintf(stderr, ": %s", ssl);
    }
    fputc('\n', stderr);
}


void
mdm_err(const char *fmt, ...)
{
    va_list  ap;

    va_start(ap, fmt);
    mdm_vmsg("", NULL, fmt, ap);
    va_end(ap);
    ERR_clear_error();
}


/* Appends the reason of the newest OpenSSL error, if any. */
void
mdm_err_ssl(const char *fmt, ...)
{
    va_list        ap;
    unsigned long  e;
    const char    *reason;

    e = ERR_peek_last_error();
    reason = e ? ERR_reason_error_string(e) : NULL;

    va_start(ap, fmt);
    mdm_vmsg("", reason ? reason : "unknown OpenSSL error", fmt, ap);
    va_end(ap);
    ERR_clear_error();
}


void
mdm_warn(const char *fmt, ...)
{
    va_list  ap;

    va_start(ap, fmt);
    mdm_vmsg("warning: ", NULL, fmt, ap);
    va_end(ap);
}


int
mdm_usage(const char *usage)
{
    printf("usage: mdmctl %s %s", mdm_cmd_path, usage);
    return MDM_OK;
}


/*
 * getopt_long() with our own one-line messages; it restarts parsing when
 * called with a new argv so each subcommand can simply loop over it.
 */
int
mdm_getopt(int argc, char **argv, const struct option *opts)
{
    int           ch;
    static char **last;

    if (argv != last) {
        last = argv;
        optind = 0;
    }

    opterr = 0;
    ch = getopt_long(argc, argv, "+:h", opts, NULL);

    if (ch == '?') {
        mdm_err("unknown option %s", argv[optind - 1]);

    } else if (ch == ':') {
        mdm_err("option %s needs a value", argv[optind - 1]);
        ch = '?';
    }

    return ch;
}


int
mdm_read_file(const char *path, unsigned char **data, size_t *len)
{
    FILE           *f;
    long            size;
    unsigned char  *buf;

    f = fopen(path, "rb");
    if (f == NULL) {
        mdm_err("%s: %s", path, strerror(errno));
        return -1;
    }

    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0
        || fseek(f, 0, SEEK_SET) != 0)
    {
        mdm_err("%s: %s", path, strerror(errno));
        fclose(f);
        return -1;
    }

    /* one spare byte keeps the buffer a C string for PEM sniffing */
    buf = malloc(size + 1);
    if (buf == NULL || fread(buf, 1, size, f) != (size_t) size) {
        mdm_err("%s: read failed", path);
        free(buf);
        fclose(f);
        return -1;
    }

    fclose(f);
    buf[size] = '\0';
    *data = buf;
    *len = size;
    return 0;
}


/*
 * Refuses to replace an existing file unless forced: overwriting a CA or
 * push key by accident cannot be undone. The mode is set explicitly so
 * keys stay 0600 whatever the umask or the old file's mode.
 */
int
mdm_write_file(const char *path, const void *data, size_t len, int mode,
    int force)
{
    int          fd;
    const char  *p;
    ssize_t      n;

    fd = open(path, O_WRONLY | O_CREAT | (force ? O_TRUNC : O_EXCL), mode);
    if (fd == -1) {
        if (errno == EEXIST) {
            mdm_err("%s exists (use --force to replace it)", path);
        } else {
            mdm_err("%s: %s", path, strerror(errno));
        }
        return -1;
    }

    if (fchmod(fd, mode) == -1) {
        mdm_err("%s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }

    for (p = data; len > 0; p += n, len -= n) {
        n = write(fd, p, len);
        if (n <= 0) {
            mdm_err("%s: %s", path, strerror(errno));
            close(fd);
            return -1;
        }
    }

    if (close(fd) == -1) {
        mdm_err("%s: %s", path, strerror(errno));
        return -1;
    }

    return 0;
}


int
mdm_write_bio(const char *path, BIO *bio, int mode, int force)
{
    char  *data;
    long   len;

    len = BIO_get_mem_data(bio, &data);
    if (strcmp(path, "-") == 0) {
        return fwrite(data, 1, len, stdout) == (size_t) len ? 0 : -1;
    }

    return mdm_write_file(path, data, len, mode, force);
}


int
mdm_mkdir(const char *dir)
{
    struct stat  st;

    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) {
            mdm_err("%s is not a directory", dir);
            return -1;
        }
        return 0;
    }

    if (mkdir(dir, 0700) == -1) {
        mdm_err("%s: %s", dir, strerror(errno));
        return -1;
    }

    return 0;
}


char *
mdm_path(const char *dir, const char *name, const char *ext)
{
    size_t  n;
    char   *p;

    n = strlen(dir) + strlen(name) + strlen(ext) + 3;
    p = malloc(n);
    if (p != NULL) {
        snprintf(p, n, "%s/%s%s%s", dir, name, ext[0] ? "." : "", ext);
    }
    return p;
}


/*
 * Password arguments follow openssl's conventions so secrets need not
 * appear in the process list: pass:TEXT, env:VAR, file:PATH (first line),
 * anything else is the password itself.
 */
int
mdm_password(const char *spec, char **out)
{
    const char     *v;
    unsigned char  *data;
    size_t          len;

    if (strncmp(spec, "env:", 4) == 0) {
        v = getenv(spec + 4);
        if (v == NULL) {
            mdm_err("password variable %s is not set", spec + 4);
            return -1;
        }
        *out = strdup(v);
        return 0;
    }

    if (strncmp(spec, "file:", 5) == 0) {
        if (mdm_read_file(spec + 5, &data, &len) != 0) {
            return -1;
        }
        data[strcspn((char *) data, "\r\n")] = '\0';
        *out = (char *) data;
        return 0;
    }

    if (strncmp(spec, "pass:", 5) == 0) {
        spec += 5;
    }

    *out = strdup(spec);
    return 0;
}


int
mdm_parse_int(const char *s, long min, long max, long *out)
{
    char  *end;
    long   v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < min || v > max) {
        return -1;
    }
    *out = v;
    return 0;
}


static BIO *
mdm_file_bio(const char *path, unsigned char **data, size_t *len)
{
    BIO  *bio;

    if (mdm_read_file(path, data, len) != 0) {
        return NULL;
    }

    bio = BIO_new_mem_buf(*data, (int) *len);
    if (bio == NULL) {
        mdm_err_ssl("%s", path);
        free(*data);
    }
    return bio;
}


/* PEM or DER; the first certificate of a PEM bundle. */
X509 *
mdm_load_cert(const char *path)
{
    BIO            *bio;
    X509           *x;
    size_t          len;
    unsigned char  *data;
    const unsigned char  *p;

    bio = mdm_file_bio(path, &data, &len);
    if (bio == NULL) {
        return NULL;
    }

    x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    if (x == NULL) {
        p = data;
        x = d2i_X509(NULL, &p, (long) len);
    }

    BIO_free(bio);
    free(data);

    if (x == NULL) {
        mdm_err("%s: not a PEM or DER certificate", path);
    }
    ERR_clear_error();
    return x;
}


/* Every certificate of a PEM bundle (or one DER certificate). */
int
mdm_load_certs(const char *path, STACK_OF(X509) *sk)
{
    BIO            *bio;
    X509           *x;
    int             n;
    size_t          len;
    unsigned char  *data;
    const unsigned char  *p;

    bio = mdm_file_bio(path, &data, &len);
    if (bio == NULL) {
        return -1;
    }

    n = 0;
    while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        sk_X509_push(sk, x);
        n++;
    }

    if (n == 0) {
        p = data;
        x = d2i_X509(NULL, &p, (long) len);
        if (x != NULL) {
            sk_X509_push(sk, x);
            n++;
        }
    }

    BIO_free(bio);
    free(data);
    ERR_clear_error();

    if (n == 0) {
        mdm_err("%s: no PEM or DER certificate", path);
        return -1;
    }
    return n;
}


static int
mdm_pass_cb(char *buf, int size, int rwflag, void *u)
{
    int  n;

    (void) rwflag;

    /* never prompt on the terminal: a missing password is an error */
    if (u == NULL) {
        return -1;
    }

    n = (int) strlen(u);
    if (n > size) {
        n = size;
    }
    memcpy(buf, u, n);
    return n;
}


EVP_PKEY *
mdm_load_key(const char *path, const char *pass)
{
    BIO            *bio;
    EVP_PKEY       *key;
    size_t          len;
    unsigned char  *data;
    const unsigned char  *p;

    bio = mdm_file_bio(path, &data, &len);
    if (bio == NULL) {
        return NULL;
    }

    key = PEM_read_bio_PrivateKey(bio, NULL, mdm_pass_cb, (void *) pass);
    if (key == NULL && strstr((char *) data, "-----BEGIN") == NULL) {
        p = data;
        key = d2i_AutoPrivateKey(NULL, &p, (long) len);
    }

    if (key == NULL) {
        if (strstr((char *) data, "ENCRYPTED") == NULL) {
            mdm_err("%s: not a PEM or DER private key", path);

        } else if (pass == NULL) {
            mdm_err("%s: key is encrypted, give its password", path);

        } else {
            mdm_err("%s: wrong password for the key", path);
        }
    }

    BIO_free(bio);
    OPENSSL_cleanse(data, len);
    free(data);
    ERR_clear_error();
    return key;
}


X509_REQ *
mdm_load_csr(const char *path)
{
    BIO            *bio;
    X509_REQ       *req;
    size_t          len;
    unsigned char  *data;
    const unsigned char  *p;

    bio = mdm_file_bio(path, &data, &len);
    if (bio == NULL) {
        return NULL;
    }

    req = PEM_read_bio_X509_REQ(bio, NULL, NULL, NULL);
    if (req == NULL) {
        p = data;
        req = d2i_X509_REQ(NULL, &p, (long) len);
    }

    BIO_free(bio);
    free(data);
    ERR_clear_error();

    if (req == NULL) {
        mdm_err("%s: not a PEM or DER certificate request", path);
    }
    return req;
}


static OSSL_PROVIDER  *mdm_providers[2];


static void
mdm_unload_providers(void)
{
    int  i;

    for (i = 0; i < 2; i++) {
        if (mdm_providers[i] != NULL) {
            OSSL_PROVIDER_unload(mdm_providers[i]);
        }
    }
}


int
mdm_load_p12(const char *path, const char *pass, EVP_PKEY **key,
    X509 **cert, STACK_OF(X509) **ca)
{
    BIO            *bio;
    PKCS12         *p12;
    size_t          len;
    unsigned char  *data;

    /* PKCS#12 files exported by Keychain Access use RC2/3DES */
    if (mdm_providers[1] == NULL) {
        mdm_providers[0] = OSSL_PROVIDER_load(NULL, "legacy");
        mdm_providers[1] = OSSL_PROVIDER_load(NULL, "default");
        atexit(mdm_unload_providers);
        ERR_clear_error();
    }

    bio = mdm_file_bio(path, &data, &len);
    if (bio == NULL) {
        return -1;
    }

    p12 = d2i_PKCS12_bio(bio, NULL);
    BIO_free(bio);
    free(data);

    if (p12 == NULL) {
        mdm_err("%s: not a PKCS#12 file", path);
        return -1;
    }

    if (pass == NULL) {
        pass = "";
    }

    if (PKCS12_mac_present(p12) && !PKCS12_verify_mac(p12, pass, -1)) {
        mdm_err("%s: wrong password for the PKCS#12 file", path);
        PKCS12_free(p12);
        return -1;
    }

    *key = NULL;
    *cert = NULL;
    if (!PKCS12_parse(p12, pass, key, cert, ca)) {
        mdm_err_ssl("%s: cannot decrypt the PKCS#12 file", path);
        PKCS12_free(p12);
        return -1;
    }

    PKCS12_free(p12);

    if (*key == NULL || *cert == NULL) {
        mdm_err("%s: the PKCS#12 file must hold one key and its certificate",
                path);
        EVP_PKEY_free(*key);
        X509_free(*cert);
        return -1;
    }

    return 0;
}


int
mdm_key_matches(X509 *cert, EVP_PKEY *key)
{
    int  ok;

    ok = X509_check_private_key(cert, key);
    ERR_clear_error();
    return ok == 1;
}


/* Warns about an expired or not yet valid certificate; 1 if unusable. */
int
mdm_check_validity(X509 *cert, const char *what)
{
    BIO   *bio;
    char  *s;
    int    bad;

    bad = 0;
    bio = BIO_new(BIO_s_mem());

    if (X509_cmp_current_time(X509_get0_notAfter(cert)) < 0) {
        ASN1_TIME_print(bio, X509_get0_notAfter(cert));
        BIO_write(bio, "", 1);
        BIO_get_mem_data(bio, &s);
        mdm_warn("%s expired on %s", what, s);
        bad = 1;

    } else if (X509_cmp_current_time(X509_get0_notBefore(cert)) > 0) {
        ASN1_TIME_print(bio, X509_get0_notBefore(cert));
        BIO_write(bio, "", 1);
        BIO_get_mem_data(bio, &s);
        mdm_warn("%s is not valid before %s", what, s);
        bad = 1;
    }

    BIO_free(bio);
    return bad;
}


long
mdm_days_left(X509 *cert)
{
    int  days, secs;

    if (!ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notAfter(cert))) {
        return 0;
    }

    /* a partial day that has already begun to run out counts as spent */
    if (secs < 0 && days <= 0) {
        days--;
    }
    return days;
}


char *
mdm_name_oneline(X509_NAME *name)
{
    BIO   *bio;
    char  *s, *r;
    long   n;

    bio = BIO_new(BIO_s_mem());
    X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB);
    n = BIO_get_mem_data(bio, &s);
    r = strndup(s, n);
    BIO_free(bio);
    return r;
}


/* The APNs topic is the UID attribute of the push certificate subject. */
char *
mdm_cert_topic(X509 *cert)
{
    int             i;
    X509_NAME      *name;
    ASN1_STRING    *v;
    unsigned char  *utf8;
    char           *topic;

    name = X509_get_subject_name(cert);
    i = X509_NAME_get_index_by_NID(name, NID_userId, -1);
    if (i < 0) {
        return NULL;
    }

    v = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
    if (ASN1_STRING_to_UTF8(&utf8, v) < 0) {
        ERR_clear_error();
        return NULL;
    }

    topic = strdup((char *) utf8);
    OPENSSL_free(utf8);
    return topic;
}


/*
 * Apple's PKCS#12 import has long required the classic algorithms, so
 * the default is 3DES with a SHA-1 MAC; "modern" is OpenSSL 3's
 * AES-256/PBKDF2/SHA-256 for consumers that accept it.
 */
PKCS12 *
mdm_make_p12(EVP_PKEY *key, X509 *cert, STACK_OF(X509) *ca,
    const char *pass, const char *friendly, int modern)
{
    PKCS12  *p12;
    int      nid;

    if (modern) {
        p12 = PKCS12_create(pass, friendly, key, cert, ca, 0, 0, 0, 0, 0);

    } else {
        nid = NID_pbe_WithSHA1And3_Key_TripleDES_CBC;
        p12 = PKCS12_create(pass, friendly, key, cert, ca, nid, nid, 2048,
                            -1, 0);
        if (p12 != NULL
            && !PKCS12_set_mac(p12, pass, -1, NULL, 0, 2048, EVP_sha1()))
        {
            PKCS12_free(p12);
            p12 = NULL;
        }
    }

    if (p12 == NULL) {
        mdm_err_ssl("cannot build the PKCS#12 file");
    }
    return p12;
}


/* Writes what an encoder put into "bio" (ok), or reports its failure. */
static int
mdm_write_encoded(const char *path, BIO *bio, int ok, int mode, int force)
{
    int  rc;

    if (ok) {
        rc = mdm_write_bio(path, bio, mode, force);

    } else {
        mdm_err_ssl("%s", path);
        rc = -1;
    }

    BIO_free(bio);
    return rc;
}


int
mdm_write_p12(const char *path, PKCS12 *p12, int force)
{
    BIO  *bio;

    bio = BIO_new(BIO_s_mem());
    return mdm_write_encoded(path, bio, i2d_PKCS12_bio(bio, p12), 0600,
                             force);
}


int
mdm_write_key(const char *path, EVP_PKEY *key, const char *pass, int force)
{
    BIO  *bio;
    int   ok;

    bio = BIO_new(BIO_s_mem());
    if (pass != NULL) {
        ok = PEM_write_bio_PKCS8PrivateKey(bio, key, EVP_aes_256_cbc(),
                                           NULL, 0, NULL, (void *) pass);
    } else {
        ok = PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL);
    }

    return mdm_write_encoded(path, bio, ok, 0600, force);
}


int
mdm_write_cert(const char *path, X509 *cert, int force)
{
    BIO  *bio;

    bio = BIO_new(BIO_s_mem());
    return mdm_write_encoded(path, bio, PEM_write_bio_X509(bio, cert), 0644,
                             force);
}


/* A random (version 4) UUID, upper case as Apple's tools write them. */
void
mdm_uuid(char out[37])
{
    unsigned char  b[16];

    if (RAND_bytes(b, sizeof(b)) != 1) {
        /* the DRBG failing is not recoverable for a key tool */
        abort();
    }

    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;

    snprintf(out, 37, "%02X%02X%02X%02X-%02X%02X-%02X%02X-%02X%02X-"
             "%02X%02X%02X%02X%02X%02X", b[0], b[1], b[2], b[3], b[4], b[5],
             b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
             b[15]);
}


/* Single-line base64, as Apple's portal and plists expect. */
char *
mdm_base64(const unsigned char *data, size_t len)
{
    char  *out;

    out = malloc(4 * ((len + 2) / 3) + 1);
    if (out != NULL) {
        EVP_EncodeBlock((unsigned char *) out, data, (int) len);
    }
    return out;
}


char *
mdm_random_password(void)
{
    unsigned char  b[16];
    char          *s;
    int            i;

    if (RAND_bytes(b, sizeof(b)) != 1) {
        abort();
    }

    s = malloc(2 * sizeof(b) + 1);
    if (s != NULL) {
        for (i = 0; i < (int) sizeof(b); i++) {
            sprintf(s + 2 * i, "%02x", b[i]);
        }
    }
    return s;
}
