/*
 * Device identity verification: the Mdm-Signature header (detached CMS
 * SignedData over the raw request body), certificates forwarded by a
 * trusted TLS terminator, and chain verification against the device CA
 * with a small per-process cache.
 *
 * Plain C + OpenSSL only (no nginx types) so that it can be unit-tested
 * and fuzzed on its own.  Not thread-safe: each nginx worker is a
 * single-threaded process and owns its verifier.
 *
 * Functions returning int return 0 on success and -1 on failure; on
 * failure *reason (when the argument is not NULL) points to a short static
 * English string meant for a log line, e.g. "certificate expired".  The
 * OpenSSL error queue is left empty on return.
 *
 * From nginx: create the verifier at configuration time (the workers
 * inherit it on fork, each then fills its own cache) and free it from a
 * cycle pool cleanup.  The body pieces are the in-memory buffers of
 * r->request_body->bufs; a body spooled to a file must be read in first
 * (or kept in memory with client_body_buffer_size >= client_max_body_size).
 */

#ifndef _NGX_HTTP_MDM_VERIFY_H_INCLUDED_
#define _NGX_HTTP_MDM_VERIFY_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <sys/uio.h>
#include <openssl/x509.h>


/* Size limits for attacker-supplied header values (before decoding). */
#define MDM_VERIFY_MAX_SIGNATURE    (64 * 1024)
#define MDM_VERIFY_MAX_FORWARDED    (32 * 1024)

/* Cached chain results live at most this long unless changed. */
#define MDM_VERIFY_DEFAULT_TTL      3600


typedef struct mdm_verifier_s  mdm_verifier_t;

typedef struct {
    uint64_t  chain_builds;     /* X509_verify_cert() calls */
    uint64_t  cache_hits;
    uint64_t  cache_misses;     /* lookups that found nothing usable */
    uint64_t  cache_expired;    /* lookups that found an expired entry */
    uint64_t  cache_evictions;  /* live entries pushed out by new ones */
    uint64_t  cache_entries;    /* entries currently stored */
    uint64_t  cert_decodes;     /* signer certificates decoded (misses) */
} mdm_verify_stats_t;


/*
 * ca_file: PEM file with the device CA certificate(s); every certificate
 * in it is a trust anchor, even one that is not self-signed (partial
 * chains are accepted, like Go's x509 root pools).
 * intermediates_file: optional (NULL) PEM file with untrusted
 * intermediates used to build chains.
 * cache_size: number of cached chain results, 0 disables the cache; each
 * entry holds its decoded certificate (about 5 KB: the default 4096
 * entries of the module cost up to about 20 MB per worker).
 * On failure returns NULL and writes a message into err.
 */
mdm_verifier_t *mdm_verifier_create(const char *ca_file,
    const char *intermediates_file, size_t cache_size, char *err,
    size_t errlen);
void mdm_verifier_free(mdm_verifier_t *v);

/* Upper bound in seconds for a cached chain result (default 3600). */
void mdm_verifier_set_cache_ttl(mdm_verifier_t *v, time_t ttl);
void mdm_verifier_get_stats(mdm_verifier_t *v, mdm_verify_stats_t *st);

/*
 * Mdm-Signature: base64 of a detached CMS SignedData (DER, or with the
 * indefinite-length envelope devices send; see ngx_http_mdm_cms.h), SHA-1
 * or SHA-2 digest, RSA or ECDSA, exactly one signer whose certificate is
 * embedded.  The signed content is the exact body, given as nbody pieces
 * that are read in order and never copied or re-encoded.  After the
 * signature, the signer certificate's chain is verified as by
 * mdm_verify_chain() at the current time; other certificates embedded in
 * the signature serve as untrusted intermediates.  A certificate found in
 * the cache (by the SHA-256 of its bytes in the message) is neither
 * decoded nor chain-verified again until its entry expires.  On success
 * *signer is a new reference the caller must X509_free().
 */
int mdm_verify_signature(mdm_verifier_t *v, const unsigned char *b64,
    size_t len, const struct iovec *body, int nbody, X509 **signer,
    const char **reason);

/* The same, with validity and the cache judged at `now` (tests). */
int mdm_verify_signature_at(mdm_verifier_t *v, const unsigned char *b64,
    size_t len, const struct iovec *body, int nbody, time_t now,
    X509 **signer, const char **reason);

/*
 * A certificate forwarded by a TLS terminator: nginx's
 * $ssl_client_escaped_cert (URL-escaped PEM) or RFC 9440
 * (":base64-of-DER:").  Parses only; verify the chain separately.
 * On success *cert is a new reference.
 */
int mdm_parse_forwarded_cert(const unsigned char *value, size_t len,
    X509 **cert, const char **reason);

/*
 * Chain of cert to a configured CA (plus the configured intermediates)
 * with the TLS client purpose, validity checked at `now` for every
 * certificate in the chain.  Successful results are cached, with a
 * reference to the certificate, under the SHA-256 of the certificate DER
 * until the earliest notAfter of the chain or the TTL, whichever comes
 * first (and not before the latest notBefore).  Failures are not cached.  An entry
 * says "this certificate chains to a configured CA", however the chain was
 * found (configured or embedded intermediates).
 */
int mdm_verify_chain(mdm_verifier_t *v, X509 *cert, time_t now,
    const char **reason);

/* SHA-256 of the DER as 64 lowercase hex digits plus NUL (memoized). */
int mdm_cert_sha256_hex(X509 *cert, char out[65]);

/* notAfter as unix time, (time_t) -1 on error. */
time_t mdm_cert_not_after(X509 *cert);

/*
 * 1 if id (exact bytes) is a subject commonName or a DNS, URI or email
 * subjectAltName of cert, 0 otherwise.
 */
int mdm_cert_names_id(X509 *cert, const char *id, size_t idlen);


#endif /* _NGX_HTTP_MDM_VERIFY_H_INCLUDED_ */
