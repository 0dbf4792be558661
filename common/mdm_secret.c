
/*
 * Copyright (C) The MDM module authors
 *
 * Secrets at rest (see mdm_secret.h): AES-256-GCM with OpenSSL's EVP.
 */


#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "mdm_secret.h"


#define MDM_SECRET_MAGIC        "mdmS\x01"
#define MDM_SECRET_MAGIC_LEN    5
#define MDM_SECRET_NONCE_LEN    12
#define MDM_SECRET_TAG_LEN      16
#define MDM_SECRET_FILE_MAX     8192


static int mdm_secret_parse_line(mdm_secret_ring_t *ring, const char *p,
    size_t n, char *err, size_t errlen);
static int mdm_secret_valid_id(const char *id, size_t len);
static const mdm_secret_key_t *mdm_secret_find(const mdm_secret_ring_t *ring,
    const unsigned char *id, size_t len);
static int mdm_secret_aad(EVP_CIPHER_CTX *c, const unsigned char *header,
    size_t header_len, const char *field, const char *owner,
    size_t owner_len);


int
mdm_secret_load(mdm_secret_ring_t *ring, const char *path, int *loose,
    char *err, size_t errlen)
{
    int          rc;
    FILE        *f;
    size_t       n;
    struct stat  st;
    char         buf[MDM_SECRET_FILE_MAX + 1];

    f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }

    *loose = fstat(fileno(f), &st) == 0 && (st.st_mode & 077) != 0;

    n = fread(buf, 1, sizeof(buf), f);
    fclose(f);

    if (n > MDM_SECRET_FILE_MAX) {
        snprintf(err, errlen, "%s: larger than %d bytes", path,
                 MDM_SECRET_FILE_MAX);
        return -1;
    }

    rc = mdm_secret_parse(ring, buf, n, err, errlen);
    OPENSSL_cleanse(buf, sizeof(buf));

    return rc;
}


int
mdm_secret_parse(mdm_secret_ring_t *ring, const char *text, size_t len,
    char *err, size_t errlen)
{
    int          line;
    size_t       n;
    const char  *p, *end, *eol;

    memset(ring, 0, sizeof(*ring));

    p = text;
    end = text + len;

    for (line = 1; p < end; line++, p = eol + 1) {
        eol = memchr(p, '\n', end - p);
        if (eol == NULL) {
            eol = end;
        }

        n = eol - p;
        while (n && (p[n - 1] == '\r' || p[n - 1] == ' '
                     || p[n - 1] == '\t'))
        {
            n--;
        }

        if (n == 0 || p[0] == '#') {
            continue;
        }

        if (mdm_secret_parse_line(ring, p, n, err, errlen) != 0) {
            n = strlen(err);
            snprintf(err + n, errlen - n, " (line %d)", line);
            mdm_secret_clear(ring);
            return -1;
        }
    }

    if (ring->n == 0) {
        snprintf(err, errlen, "no key (expected lines \"id:64 hex digits\")");
        return -1;
    }

    return 0;
}


static int
mdm_secret_parse_line(mdm_secret_ring_t *ring, const char *p, size_t n,
    char *err, size_t errlen)
{
    int                i, hi, lo;
    size_t             id_len;
    const char        *colon;
    mdm_secret_key_t  *k;

    colon = memchr(p, ':', n);
    id_len = colon ? (size_t) (colon - p) : 0;

    if (!mdm_secret_valid_id(p, id_len)) {
        snprintf(err, errlen, "key id must be 1-%d of A-Z a-z 0-9 . _ -",
                 MDM_SECRET_ID_MAX);
        return -1;
    }

    if (n - id_len - 1 != 2 * MDM_SECRET_KEY_LEN) {
        snprintf(err, errlen, "key \"%.*s\" is not %d hex digits",
                 (int) id_len, p, 2 * MDM_SECRET_KEY_LEN);
        return -1;
    }

    if (mdm_secret_find(ring, (const unsigned char *) p, id_len)) {
        snprintf(err, errlen, "key id \"%.*s\" given twice", (int) id_len, p);
        return -1;
    }

    if (ring->n == MDM_SECRET_KEYS_MAX) {
        snprintf(err, errlen, "more than %d keys", MDM_SECRET_KEYS_MAX);
        return -1;
    }

    k = &ring->keys[ring->n];

    for (i = 0; i < MDM_SECRET_KEY_LEN; i++) {
        hi = OPENSSL_hexchar2int((unsigned char) colon[1 + 2 * i]);
        lo = OPENSSL_hexchar2int((unsigned char) colon[2 + 2 * i]);

        if (hi < 0 || lo < 0) {
            OPENSSL_cleanse(k, sizeof(*k));
            snprintf(err, errlen, "key \"%.*s\" is not %d hex digits",
                     (int) id_len, p, 2 * MDM_SECRET_KEY_LEN);
            return -1;
        }

        k->key[i] = (unsigned char) (hi << 4 | lo);
    }

    memcpy(k->id, p, id_len);
    k->id[id_len] = '\0';
    k->id_len = id_len;
    ring->n++;

    return 0;
}


static int
mdm_secret_valid_id(const char *id, size_t len)
{
    size_t  i;

    if (len == 0 || len > MDM_SECRET_ID_MAX) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (!((id[i] >= 'A' && id[i] <= 'Z') || (id[i] >= 'a' && id[i] <= 'z')
              || (id[i] >= '0' && id[i] <= '9') || id[i] == '.'
              || id[i] == '_' || id[i] == '-'))
        {
            return 0;
        }
    }

    return 1;
}


void
mdm_secret_clear(mdm_secret_ring_t *ring)
{
    OPENSSL_cleanse(ring, sizeof(*ring));
}


int
mdm_secret_keygen(const char *id, char *line, size_t size)
{
    int            i;
    size_t         n;
    unsigned char  key[MDM_SECRET_KEY_LEN];

    n = strlen(id);

    if (!mdm_secret_valid_id(id, n)
        || size < n + 2 + 2 * MDM_SECRET_KEY_LEN + 1
        || RAND_bytes(key, sizeof(key)) != 1)
    {
        return -1;
    }

    memcpy(line, id, n);
    line[n++] = ':';

    for (i = 0; i < MDM_SECRET_KEY_LEN; i++) {
        n += snprintf(line + n, size - n, "%02x", key[i]);
    }

    line[n++] = '\n';
    line[n] = '\0';
    OPENSSL_cleanse(key, sizeof(key));

    return 0;
}


int
mdm_secret_is_sealed(const unsigned char *v, size_t len)
{
    return len >= MDM_SECRET_MAGIC_LEN
           && memcmp(v, MDM_SECRET_MAGIC, MDM_SECRET_MAGIC_LEN) == 0;
}


static const mdm_secret_key_t *
mdm_secret_find(const mdm_secret_ring_t *ring, const unsigned char *id,
    size_t len)
{
    int  i;

    for (i = 0; i < ring->n; i++) {
        if (ring->keys[i].id_len == len
            && memcmp(ring->keys[i].id, id, len) == 0)
        {
            return &ring->keys[i];
        }
    }

    return NULL;
}


/* AAD: the header, the field name, a NUL, the enrollment id. */

static int
mdm_secret_aad(EVP_CIPHER_CTX *c, const unsigned char *header,
    size_t header_len, const char *field, const char *owner,
    size_t owner_len)
{
    int  n;

    return EVP_CipherUpdate(c, NULL, &n, header, (int) header_len) == 1
           && EVP_CipherUpdate(c, NULL, &n, (const unsigned char *) field,
                               (int) strlen(field) + 1) == 1
           && EVP_CipherUpdate(c, NULL, &n, (const unsigned char *) owner,
                               (int) owner_len) == 1;
}


int
mdm_secret_seal(const mdm_secret_ring_t *ring, const char *field,
    const char *owner, size_t owner_len, const unsigned char *in,
    size_t len, unsigned char *out, size_t *outlen)
{
    int                      n, ok;
    size_t                   h;
    unsigned char           *nonce;
    EVP_CIPHER_CTX          *c;
    const mdm_secret_key_t  *k;

    k = &ring->keys[ring->n - 1];

    memcpy(out, MDM_SECRET_MAGIC, MDM_SECRET_MAGIC_LEN);
    out[MDM_SECRET_MAGIC_LEN] = (unsigned char) k->id_len;
    memcpy(out + MDM_SECRET_MAGIC_LEN + 1, k->id, k->id_len);
    h = MDM_SECRET_MAGIC_LEN + 1 + k->id_len;
    nonce = out + h;

    if (len > 0x7fffffff - MDM_SECRET_OVERHEAD
        || RAND_bytes(nonce, MDM_SECRET_NONCE_LEN) != 1)
    {
        ERR_clear_error();
        return -1;
    }

    c = EVP_CIPHER_CTX_new();
    if (c == NULL) {
        return -1;
    }

    ok = EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, k->key, nonce) == 1
         && mdm_secret_aad(c, out, h, field, owner, owner_len)
         && EVP_EncryptUpdate(c, nonce + MDM_SECRET_NONCE_LEN, &n, in,
                              (int) len) == 1
         && EVP_EncryptFinal_ex(c, nonce + MDM_SECRET_NONCE_LEN + n, &n) == 1
         && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, MDM_SECRET_TAG_LEN,
                                nonce + MDM_SECRET_NONCE_LEN + len) == 1;

    EVP_CIPHER_CTX_free(c);
    ERR_clear_error();

    *outlen = h + MDM_SECRET_NONCE_LEN + len + MDM_SECRET_TAG_LEN;

    return ok ? 0 : -1;
}


int
mdm_secret_open(const mdm_secret_ring_t *ring, const char *field,
    const char *owner, size_t owner_len, const unsigned char *in,
    size_t len, unsigned char *out, size_t *outlen, char *err,
    size_t errlen)
{
    int                      n, ok;
    size_t                   h, id_len, ct_len;
    const unsigned char     *id, *nonce;
    EVP_CIPHER_CTX          *c;
    const mdm_secret_key_t  *k;

    if (!mdm_secret_is_sealed(in, len)) {
        memcpy(out, in, len);
        *outlen = len;
        return 0;
    }

    id_len = len > MDM_SECRET_MAGIC_LEN ? in[MDM_SECRET_MAGIC_LEN] : 0;
    id = in + MDM_SECRET_MAGIC_LEN + 1;
    h = MDM_SECRET_MAGIC_LEN + 1 + id_len;

    if (id_len == 0 || len < h + MDM_SECRET_NONCE_LEN + MDM_SECRET_TAG_LEN) {
        snprintf(err, errlen, "%s: sealed value truncated", field);
        return -1;
    }

    if (ring == NULL || ring->n == 0) {
        snprintf(err, errlen, "%s is sealed with key \"%.*s\" but no secret "
                 "key file is configured", field, (int) id_len, id);
        return -1;
    }

    k = mdm_secret_find(ring, id, id_len);
    if (k == NULL) {
        snprintf(err, errlen, "%s is sealed with key \"%.*s\", which is not "
                 "in the secret key file", field, (int) id_len, id);
        return -1;
    }

    nonce = in + h;
    ct_len = len - h - MDM_SECRET_NONCE_LEN - MDM_SECRET_TAG_LEN;

    c = EVP_CIPHER_CTX_new();
    if (c == NULL) {
        snprintf(err, errlen, "%s: out of memory", field);
        return -1;
    }

    ok = EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, k->key, nonce) == 1
         && mdm_secret_aad(c, in, h, field, owner, owner_len)
         && EVP_DecryptUpdate(c, out, &n, nonce + MDM_SECRET_NONCE_LEN,
                              (int) ct_len) == 1
         && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, MDM_SECRET_TAG_LEN,
                                (void *) (nonce + MDM_SECRET_NONCE_LEN
                                          + ct_len)) == 1
         && EVP_DecryptFinal_ex(c, out + n, &n) == 1;

    EVP_CIPHER_CTX_free(c);
    ERR_clear_error();

    if (!ok) {
        OPENSSL_cleanse(out, ct_len);
        snprintf(err, errlen, "%s does not open with key \"%.*s\": wrong "
                 "key, tampered value, or moved from another enrollment",
                 field, (int) id_len, id);
        return -1;
    }

    *outlen = ct_len;

    return 0;
}
