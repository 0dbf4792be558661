
/*
 * Copyright (C) The MDM module authors
 *
 * Secrets at rest: the UnlockToken and BootstrapToken a device sends are
 * stored in Redis sealed with AES-256-GCM. Shared by the nginx module and
 * mdmctl, so plain C and OpenSSL only (no nginx types).
 *
 * Key file: one key per line, "id:hex" (id: 1-32 of [A-Za-z0-9._-], hex:
 * 64 digits); '#' starts a comment line. The last key seals, every key
 * opens, so a key is rotated by appending a new line.
 *
 * Sealed value:
 *
 *   "mdmS" 0x01 | n (1 byte) | key id (n bytes) | nonce (12) | ciphertext
 *   | tag (16)
 *
 * The tag covers the header (magic to key id), the field name and the
 * enrollment id of the hash holding the value, so a sealed value copied to
 * another field or device does not open. A value without the magic is a
 * plaintext one written before sealing was configured: it opens as is.
 */


#ifndef _MDM_SECRET_H_INCLUDED_
#define _MDM_SECRET_H_INCLUDED_


#include <stddef.h>


#define MDM_SECRET_UNLOCK       "unlock_token"
#define MDM_SECRET_BOOTSTRAP    "bootstrap_token"

#define MDM_SECRET_ID_MAX       32
#define MDM_SECRET_KEYS_MAX     16
#define MDM_SECRET_KEY_LEN      32

/* the largest growth of a sealed value over its plaintext */
#define MDM_SECRET_OVERHEAD     (5 + 1 + MDM_SECRET_ID_MAX + 12 + 16)


typedef struct {
    size_t          id_len;
    char            id[MDM_SECRET_ID_MAX + 1];
    unsigned char   key[MDM_SECRET_KEY_LEN];
} mdm_secret_key_t;


typedef struct {
    int                 n;
    mdm_secret_key_t    keys[MDM_SECRET_KEYS_MAX];   /* keys[n - 1] seals */
} mdm_secret_ring_t;


/*
 * Reads a key file into ring. Returns 0, or -1 with a reason in err.
 * *loose is set when the file is readable by group or others.
 */
int mdm_secret_load(mdm_secret_ring_t *ring, const char *path, int *loose,
    char *err, size_t errlen);
int mdm_secret_parse(mdm_secret_ring_t *ring, const char *text, size_t len,
    char *err, size_t errlen);
void mdm_secret_clear(mdm_secret_ring_t *ring);

/* One key-file line "id:hex\n" with a fresh random key; 0 or -1. */
int mdm_secret_keygen(const char *id, char *line, size_t size);

/*
 * Seals in under the ring's current key into out (room for len +
 * MDM_SECRET_OVERHEAD bytes). field and owner (the enrollment id of the
 * hash) bind the value to its place. Returns 0, or -1.
 */
int mdm_secret_seal(const mdm_secret_ring_t *ring, const char *field,
    const char *owner, size_t owner_len, const unsigned char *in,
    size_t len, unsigned char *out, size_t *outlen);

/*
 * Opens a stored value into out (room for len bytes); a plaintext value is
 * copied as is. ring may be NULL (no key configured). Returns 0, or -1
 * with a reason for a log line in err.
 */
int mdm_secret_open(const mdm_secret_ring_t *ring, const char *field,
    const char *owner, size_t owner_len, const unsigned char *in,
    size_t len, unsigned char *out, size_t *outlen, char *err,
    size_t errlen);

int mdm_secret_is_sealed(const unsigned char *v, size_t len);


#endif /* _MDM_SECRET_H_INCLUDED_ */
