/*
 * Unit test for ngx_http_mdm_verify.c, driven by t/40-verify-unit.t which
 * makes the certificates and signatures with openssl (t/lib/MdmSign.pm)
 * into a directory and runs
 *
 *     verify_test DIR            the checks, one "ok - ..." or
 *                                "not ok - ... # detail" line each,
 *                                then "done N"
 * (the figures come from t/unit/verify_bench.c)
 *
 * Files expected in DIR (made by the .t):
 *   ca.crt ca2.crt root.crt inter.crt      device CA, other CA, a root
 *                                          and the intermediate under it
 *   body.bin                               the signed body (1.5 KB plist)
 *   <name>.b64                             Mdm-Signature values
 *   <name>.crt <name>.sha256               certificates and their hashes
 *   dev1.notafter                          notAfter of dev1.crt (unix)
 *   dev1.escaped dev1.rfc9440              forwarded header values
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "ngx_http_mdm_cms.h"
#include "ngx_http_mdm_verify.h"
#include "unit_slurp.h"


static int          failures;
static int          checks;
static const char  *dir;


static void
check(int ok, const char *name, const char *detail)
{
    checks++;

    if (ok) {
        printf("ok - %s\n", name);
        return;
    }

    failures++;
    printf("not ok - %s # %s\n", name, detail ? detail : "");
}


static unsigned char *
slurp(const char *name, size_t *len)
{
    size_t          n;
    unsigned char  *buf;

    buf = unit_slurp(dir, name, &n);

    /* The .t writes values without a newline; be tolerant anyway. */
    while (n > 0 && buf[n - 1] == '\n' && strstr(name, ".bin") == NULL) {
        buf[--n] = '\0';
    }

    *len = n;
    return buf;
}


static char *
path_of(const char *name)
{
    static char  path[4][4096];
    static int   i;

    i = (i + 1) % 4;
    snprintf(path[i], sizeof(path[i]), "%s/%s", dir, name);

    return path[i];
}


static X509 *
load_cert(const char *name)
{
    FILE  *f;
    X509  *x;

    f = fopen(path_of(name), "r");
    if (f == NULL) {
        fprintf(stderr, "cannot open %s\n", name);
        exit(2);
    }

    x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);

    if (x == NULL) {
        fprintf(stderr, "cannot parse %s\n", name);
        exit(2);
    }

    return x;
}


static mdm_verifier_t *
verifier(const char *ca, const char *inter, size_t cache)
{
    char             err[256];
    mdm_verifier_t  *v;

    v = mdm_verifier_create(path_of(ca), inter ? path_of(inter) : NULL,
                            cache, err, sizeof(err));
    if (v == NULL) {
        fprintf(stderr, "mdm_verifier_create: %s\n", err);
        exit(2);
    }

    return v;
}


static int
same_hash(X509 *x, const char *name)
{
    int     same;
    char    hex[65], file[256];
    size_t  len;
    char   *want;

    snprintf(file, sizeof(file), "%s.sha256", name);
    want = (char *) slurp(file, &len);

    same = mdm_cert_sha256_hex(x, hex) == 0 && strcmp(hex, want) == 0;
    free(want);

    return same;
}


/*
 * Verifies signature file `sig` over the given body pieces; `want` is
 * NULL for success (then the signer must be certificate `who`) or the
 * expected reason.
 */
static void
expect_sig(mdm_verifier_t *v, const char *sig, const struct iovec *iov,
    int n, const char *want, const char *who, const char *name)
{
    int             rc;
    X509           *signer;
    size_t          len;
    char            detail[256];
    const char     *reason;
    unsigned char  *b64;

    b64 = slurp(sig, &len);
    reason = NULL;
    signer = NULL;

    rc = mdm_verify_signature(v, b64, len, iov, n, &signer, &reason);

    if (want == NULL) {
        snprintf(detail, sizeof(detail), "rc %d reason \"%s\"", rc,
                 reason ? reason : "");
        check(rc == 0 && signer != NULL && same_hash(signer, who), name,
              detail);

    } else {
        snprintf(detail, sizeof(detail), "rc %d reason \"%s\" want \"%s\"",
                 rc, reason ? reason : "(null)", want);
        check(rc == -1 && signer == NULL && reason
              && strcmp(reason, want) == 0, name, detail);
    }

    X509_free(signer);
    free(b64);
}


static void
expect_raw_sig(mdm_verifier_t *v, const char *b64, const struct iovec *iov,
    const char *want, const char *name)
{
    int          rc;
    X509        *signer;
    char         detail[256];
    const char  *reason;

    reason = NULL;
    signer = NULL;
    rc = mdm_verify_signature(v, (const unsigned char *) b64, strlen(b64),
                              iov, 1, &signer, &reason);

    snprintf(detail, sizeof(detail), "rc %d reason \"%s\" want \"%s\"", rc,
             reason ? reason : "(null)", want);
    check(rc == -1 && signer == NULL && reason && strcmp(reason, want) == 0,
          name, detail);
    X509_free(signer);
}


static void
test_signatures(void)
{
    int              i;
    size_t           blen, off, len;
    char             name[128];
    struct iovec     one, pieces[9], bad, *bytes;
    unsigned char   *body, *copy, *b64;
    mdm_verifier_t  *v, *vr, *vi, *vp, *vn;

    static const struct {
        const char  *file;
        const char  *who;
    } good[] = {
        { "sha256-der.b64", "dev1" }, { "sha1-der.b64", "dev1" },
        { "sha256-ber.b64", "dev1" }, { "sha1-ber.b64", "dev1" },
        { "noattr.b64", "dev1" }, { "sha512-der.b64", "dev1" },
        { "rsa-sha256.b64", "devrsa" }, { "keyid.b64", "dev1" },
        /* What the 2012-era capture shows devices send. */
        { "rsa-sha1-ber.b64", "devrsa" },
    };

    static const struct {
        const char  *file;
        const char  *reason;
        const char  *name;
    } bad_sigs[] = {
        { "other-ca.b64", "certificate not issued by a trusted CA",
          "certificate from another CA" },
        { "expired.b64", "certificate expired", "expired certificate" },
        { "future.b64", "certificate not yet valid",
          "not yet valid certificate" },
        { "noclient.b64", "not for TLS client auth",
          "emailProtection-only certificate" },
        { "two-signers.b64", "more than one signer", "two signers" },
        { "nocerts.b64", "signer certificate not embedded",
          "signer certificate left out" },
        { "md5.b64", "unsupported digest algorithm", "MD5 digest" },
        { "attached.b64", "signature is not detached",
          "content embedded (not detached)" },
        { "truncated.b64", "signature is not CMS", "truncated DER" },
        { "trailing.b64", "trailing data after signature",
          "bytes after the DER" },
        { "not-signeddata.b64", "signature is not CMS SignedData",
          "CMS of type data" },
        { "ct-not-data.b64", "content-type attribute is not id-data",
          "content-type attribute of another type" },
        { "no-ct.b64", "no content-type attribute",
          "no content-type attribute" },
        { "no-md.b64", "no message-digest attribute",
          "no message-digest attribute" },
        { "two-md.b64", "bad message-digest attribute",
          "two message-digest attributes" },
        { "sigalg.b64", "unsupported signature algorithm",
          "unknown signature algorithm" },
        { "attrs-changed.b64", "signature does not verify",
          "signed attributes changed" },
    };

    /* Piece sizes including empty ones; the rest goes in the last one. */
    static const size_t  cuts[] = { 0, 1, 7, 0, 100, 64, 513, 2 };

    body = slurp("body.bin", &blen);
    one.iov_base = body;
    one.iov_len = blen;

    v = verifier("ca.crt", NULL, 16);

    for (i = 0; i < (int) (sizeof(good) / sizeof(good[0])); i++) {
        snprintf(name, sizeof(name), "signature %s verifies", good[i].file);
        expect_sig(v, good[i].file, &one, 1, NULL, good[i].who, name);
    }

    off = 0;
    for (i = 0; i < 8; i++) {
        len = cuts[i] < blen - off ? cuts[i] : blen - off;
        pieces[i].iov_base = body + off;
        pieces[i].iov_len = len;
        off += len;
    }
    pieces[8].iov_base = body + off;
    pieces[8].iov_len = blen - off;

    expect_sig(v, "sha256-der.b64", pieces, 9, NULL, "dev1",
               "body in 9 pieces");
    expect_sig(v, "rsa-sha256.b64", pieces, 9, NULL, "devrsa",
               "RSA signer, body in 9 pieces");

    bytes = malloc(blen * sizeof(struct iovec));
    for (off = 0; off < blen; off++) {
        bytes[off].iov_base = body + off;
        bytes[off].iov_len = 1;
    }
    expect_sig(v, "sha1-ber.b64", bytes, (int) blen, NULL, "dev1",
               "body in 1-byte pieces");
    free(bytes);
    expect_sig(v, "sha1-ber.b64", pieces, 9, NULL, "dev1",
               "BER SHA-1 signature, body in 9 pieces");
    expect_sig(v, "sha256-der.b64", pieces, 8,
               "signature does not verify", NULL, "last piece missing");
    expect_sig(v, "sha256-der.b64", pieces, 0,
               "signature does not verify", NULL, "no body");

    copy = malloc(blen);
    memcpy(copy, body, blen);
    copy[blen / 2] ^= 0x01;
    bad.iov_base = copy;
    bad.iov_len = blen;
    expect_sig(v, "sha256-der.b64", &bad, 1, "signature does not verify",
               NULL, "tampered body (one bit)");
    expect_sig(v, "noattr.b64", &bad, 1, "signature does not verify",
               NULL, "tampered body, no signed attributes");
    bad.iov_len = blen - 1;
    memcpy(copy, body, blen);
    expect_sig(v, "sha1-der.b64", &bad, 1, "signature does not verify",
               NULL, "truncated body");
    free(copy);

    for (i = 0; i < (int) (sizeof(bad_sigs) / sizeof(bad_sigs[0])); i++) {
        expect_sig(v, bad_sigs[i].file, &one, 1, bad_sigs[i].reason, NULL,
                   bad_sigs[i].name);
    }

    expect_sig(v, "wrapped.b64", &one, 1, NULL, "dev1",
               "base64 with line breaks");

    expect_raw_sig(v, "", &one, "bad base64", "empty value");
    expect_raw_sig(v, "!!!!", &one, "bad base64", "garbage characters");
    expect_raw_sig(v, "QUJD=RA==", &one, "bad base64", "data after padding");
    expect_raw_sig(v, "QUJDR", &one, "bad base64", "impossible length");
    expect_raw_sig(v, "QUJDRA===", &one, "bad base64", "three pad chars");
    expect_raw_sig(v, "QUJDRA", &one, "signature is not CMS",
                   "unpadded base64 of garbage decodes, then fails");
    expect_raw_sig(v, "MAA=", &one, "signature is not CMS",
                   "empty SEQUENCE");

    b64 = malloc(MDM_VERIFY_MAX_SIGNATURE + 2);
    memset(b64, 'A', MDM_VERIFY_MAX_SIGNATURE + 1);
    b64[MDM_VERIFY_MAX_SIGNATURE + 1] = '\0';
    expect_raw_sig(v, (char *) b64, &one, "signature too large",
                   "oversized value");
    free(b64);

    /* Intermediates: embedded in the signature, configured, or anchor. */
    vr = verifier("root.crt", NULL, 16);
    vi = verifier("root.crt", "inter.crt", 16);
    vp = verifier("inter.crt", NULL, 16);

    expect_sig(vr, "inter-embedded.b64", &one, 1, NULL, "devi",
               "intermediate embedded in the signature");
    /* vr has cached devi's chain by now: that one would pass. */
    vn = verifier("root.crt", NULL, 0);
    expect_sig(vn, "inter-bare.b64", &one, 1,
               "certificate not issued by a trusted CA", NULL,
               "intermediate unknown");
    expect_sig(vn, "inter-embedded.b64", &one, 1, NULL, "devi",
               "intermediate embedded, cache off");
    mdm_verifier_free(vn);
    expect_sig(vi, "inter-bare.b64", &one, 1, NULL, "devi",
               "intermediate from the intermediates file");
    expect_sig(vp, "inter-bare.b64", &one, 1, NULL, "devi",
               "intermediate CA as the only anchor");
    expect_sig(v, "inter-embedded.b64", &one, 1,
               "certificate not issued by a trusted CA", NULL,
               "embedded intermediate of an untrusted root");

    mdm_verifier_free(vr);
    mdm_verifier_free(vi);
    mdm_verifier_free(vp);
    mdm_verifier_free(v);
    free(body);
}


static void
expect_fwd(const char *value, size_t len, const char *want, const char *who,
    const char *name)
{
    int          rc;
    X509        *x;
    char         detail[256];
    const char  *reason;

    x = NULL;
    reason = NULL;
    rc = mdm_parse_forwarded_cert((const unsigned char *) value, len, &x,
                                  &reason);

    if (want == NULL) {
        snprintf(detail, sizeof(detail), "rc %d reason \"%s\"", rc,
                 reason ? reason : "");
        check(rc == 0 && x && same_hash(x, who), name, detail);

    } else {
        snprintf(detail, sizeof(detail), "rc %d reason \"%s\" want \"%s\"",
                 rc, reason ? reason : "(null)", want);
        check(rc == -1 && x == NULL && reason && strcmp(reason, want) == 0,
              name, detail);
    }

    X509_free(x);
}


static void
test_forwarded(void)
{
    X509            *x;
    char            *esc, *rfc, *buf, *line;
    size_t           elen, rlen, n;
    const char      *reason;
    mdm_verifier_t  *v;

    esc = (char *) slurp("dev1.escaped", &elen);
    rfc = (char *) slurp("dev1.rfc9440", &rlen);
    buf = malloc(elen + rlen + 64);

    expect_fwd(esc, elen, NULL, "dev1", "escaped PEM");
    expect_fwd(rfc, rlen, NULL, "dev1", "RFC 9440");

    n = (size_t) sprintf(buf, "  %s\t", rfc);
    expect_fwd(buf, n, NULL, "dev1", "RFC 9440 with whitespace around");

    /* Without the final escaped newline, as some proxies trim it. */
    n = elen - 3;
    expect_fwd(esc, n, NULL, "dev1", "escaped PEM without final newline");

    n = (size_t) sprintf(buf, "%sgarbage", esc);
    expect_fwd(buf, n, "trailing data after certificate", NULL,
               "escaped PEM followed by garbage");

    memcpy(buf, esc, elen);
    buf[elen / 2] = '%';
    buf[elen / 2 + 1] = 'Z';
    expect_fwd(buf, elen, "bad URL escape", NULL, "bad %-escape");
    expect_fwd(esc, elen - 1, "bad URL escape", NULL, "cut in an escape");

    /* A line start past the middle: no escape gets cut there. */
    line = strstr(esc + elen / 2, "%0A") + 3;

    memcpy(buf, esc, elen);
    memcpy(buf + (line - esc), "!!!!", 4);
    expect_fwd(buf, elen, "bad PEM certificate", NULL, "corrupted PEM body");

    expect_fwd(esc, line - esc, "bad PEM certificate", NULL,
               "escaped PEM cut in half");

    n = (size_t) sprintf(buf, "%.*s", (int) rlen - 1, rfc);
    expect_fwd(buf, n, "bad RFC 9440 certificate", NULL,
               "RFC 9440 without the closing colon");

    n = (size_t) sprintf(buf, "%.*s=AAAA:", (int) rlen - 1, rfc);
    expect_fwd(buf, n, "bad base64", NULL, "RFC 9440 data after padding");

    expect_fwd("", 0, "empty forwarded certificate", NULL, "empty value");
    expect_fwd("   ", 3, "empty forwarded certificate", NULL, "blanks");
    expect_fwd(":", 1, "bad RFC 9440 certificate", NULL, "lone colon");
    expect_fwd("::", 2, "bad base64", NULL, "empty byte sequence");
    expect_fwd(":!!!!:", 6, "bad base64", NULL, "RFC 9440 garbage");
    expect_fwd(":Zm9vYmFy:", 10, "bad DER certificate", NULL,
               "RFC 9440 of non-DER");
    expect_fwd("garbage", 7, "bad PEM certificate", NULL, "plain garbage");
    expect_fwd("%00%00", 6, "bad PEM certificate", NULL, "escaped NULs");

    /* Parsing does not verify; the chain check is separate. */
    v = verifier("ca.crt", NULL, 0);
    x = NULL;
    reason = NULL;
    mdm_parse_forwarded_cert((unsigned char *) rfc, rlen, &x, &reason);
    check(x && mdm_verify_chain(v, x, time(NULL), &reason) == 0,
          "forwarded certificate chain verifies", reason);
    X509_free(x);

    x = load_cert("devother.crt");
    check(mdm_verify_chain(v, x, time(NULL), &reason) == -1
          && strcmp(reason, "certificate not issued by a trusted CA") == 0,
          "forwarded certificate of another CA refused", reason);
    X509_free(x);

    mdm_verifier_free(v);
    free(esc);
    free(rfc);
    free(buf);
}


static void
test_cert_helpers(void)
{
    X509    *x;
    char     hex[65], *want, detail[128];
    size_t   len;
    time_t   na;

    x = load_cert("dev1.crt");

    want = (char *) slurp("dev1.sha256", &len);
    check(mdm_cert_sha256_hex(x, hex) == 0 && strcmp(hex, want) == 0
          && strlen(hex) == 64, "sha256 hex matches openssl", hex);
    free(want);

    want = (char *) slurp("dev1.notafter", &len);
    na = mdm_cert_not_after(x);
    snprintf(detail, sizeof(detail), "got %lld want %s", (long long) na,
             want);
    check(na == (time_t) atoll(want), "notAfter matches openssl", detail);
    free(want);

    check(mdm_cert_names_id(x, "dev1", 4) == 1, "CN names the id", NULL);
    check(mdm_cert_names_id(x, "dev", 3) == 0, "CN prefix does not", NULL);
    check(mdm_cert_names_id(x, "dev12", 5) == 0, "longer id does not", NULL);
    check(mdm_cert_names_id(x, "", 0) == 0, "empty id does not", NULL);
    X509_free(x);

    x = load_cert("devsan.crt");
    check(mdm_cert_names_id(x, "UDID-SAN-1", 10) == 1, "CN of SAN cert",
          NULL);
    check(mdm_cert_names_id(x, "dev.example.com", 15) == 1, "SAN DNS", NULL);
    check(mdm_cert_names_id(x, "urn:udid:A1B2", 13) == 1, "SAN URI", NULL);
    check(mdm_cert_names_id(x, "dev@example.com", 15) == 1, "SAN email",
          NULL);
    check(mdm_cert_names_id(x, "127.0.0.1", 9) == 0, "SAN IP is not a name",
          NULL);
    check(mdm_cert_names_id(x, "udid-san-1", 10) == 0, "match is exact",
          NULL);
    check(mdm_cert_names_id(x, "DEV.example.com", 15) == 0,
          "SAN match is exact", NULL);
    X509_free(x);
}


static void
expect_stats(mdm_verifier_t *v, uint64_t builds, uint64_t hits,
    uint64_t expired, uint64_t evictions, uint64_t entries, const char *name)
{
    char                detail[256];
    mdm_verify_stats_t  st;

    mdm_verifier_get_stats(v, &st);

    snprintf(detail, sizeof(detail),
             "builds %llu/%llu hits %llu/%llu expired %llu/%llu "
             "evictions %llu/%llu entries %llu/%llu",
             (unsigned long long) st.chain_builds, (unsigned long long) builds,
             (unsigned long long) st.cache_hits, (unsigned long long) hits,
             (unsigned long long) st.cache_expired,
             (unsigned long long) expired,
             (unsigned long long) st.cache_evictions,
             (unsigned long long) evictions,
             (unsigned long long) st.cache_entries,
             (unsigned long long) entries);

    check(st.chain_builds == builds && st.cache_hits == hits
          && st.cache_expired == expired && st.cache_evictions == evictions
          && st.cache_entries == entries, name, detail);
}


static void
test_cache(void)
{
    X509            *a, *b, *c, *s, *f, *other, *signer;
    time_t           now, na;
    size_t           blen, slen;
    const char      *reason;
    struct iovec     one;
    unsigned char   *body, *sig;
    mdm_verifier_t  *v;

    a = load_cert("dev1.crt");
    b = load_cert("dev2.crt");
    c = load_cert("devsan.crt");
    s = load_cert("devshort.crt");
    f = load_cert("devfuture.crt");
    other = load_cert("devother.crt");
    now = time(NULL);
    na = mdm_cert_not_after(s);

    v = verifier("ca.crt", NULL, 64);
    mdm_verifier_set_cache_ttl(v, 100);
    expect_stats(v, 0, 0, 0, 0, 0, "fresh verifier");

    check(mdm_verify_chain(v, a, now, &reason) == 0, "cold chain", reason);
    expect_stats(v, 1, 0, 0, 0, 1, "cold: one chain build");

    check(mdm_verify_chain(v, a, now + 50, &reason) == 0, "warm chain",
          reason);
    expect_stats(v, 1, 1, 0, 0, 1, "warm: no chain build (cache hit)");

    check(mdm_verify_chain(v, a, now + 100, &reason) == 0,
          "chain after TTL", reason);
    expect_stats(v, 2, 1, 1, 0, 1, "TTL expiry rebuilds the chain");

    check(mdm_verify_chain(v, other, now, &reason) == -1
          && mdm_verify_chain(v, other, now, &reason) == -1,
          "untrusted twice", reason);
    expect_stats(v, 4, 1, 1, 0, 1, "failures are not cached");

    mdm_verifier_set_cache_ttl(v, 86400 * 365);

    /* devshort expires long before the CA, so it bounds the chain. */
    check(mdm_verify_chain(v, s, na - 10, &reason) == 0,
          "chain 10 s before notAfter", reason);
    check(mdm_verify_chain(v, s, na - 5, &reason) == 0,
          "chain 5 s before notAfter", reason);
    expect_stats(v, 5, 2, 1, 0, 2, "cached near notAfter");

    check(mdm_verify_chain(v, s, na, &reason) == -1
          && strcmp(reason, "certificate expired") == 0,
          "expired certificate not served from the cache", reason);
    expect_stats(v, 6, 2, 2, 0, 1, "notAfter bounds a cached entry");

    /* devfuture becomes valid in 10 days (while the CA is valid). */
    check(mdm_verify_chain(v, f, now + 86400 * 11, &reason) == 0,
          "future certificate at day 11", reason);
    check(mdm_verify_chain(v, f, now + 86400 * 12, &reason) == 0,
          "future certificate at day 12", reason);
    expect_stats(v, 7, 3, 2, 0, 2, "future certificate cached");
    check(mdm_verify_chain(v, f, now + 86400 * 9, &reason) == -1
          && strcmp(reason, "certificate not yet valid") == 0,
          "time before notBefore not served from the cache", reason);
    expect_stats(v, 8, 3, 3, 0, 1, "notBefore bounds a cached entry");
    mdm_verifier_free(v);

    /* LRU: two entries, three certificates. */
    v = verifier("ca.crt", NULL, 2);
    mdm_verify_chain(v, a, now, &reason);
    mdm_verify_chain(v, b, now, &reason);
    mdm_verify_chain(v, a, now, &reason);
    expect_stats(v, 2, 1, 0, 0, 2, "two entries cached");
    mdm_verify_chain(v, c, now, &reason);
    expect_stats(v, 3, 1, 0, 1, 2, "third certificate evicts one");
    mdm_verify_chain(v, a, now, &reason);
    expect_stats(v, 3, 2, 0, 1, 2, "most recently used entry kept");
    mdm_verify_chain(v, b, now, &reason);
    expect_stats(v, 4, 2, 0, 2, 2, "least recently used entry evicted");
    mdm_verifier_free(v);

    /* Cache off. */
    v = verifier("ca.crt", NULL, 0);
    mdm_verify_chain(v, a, now, &reason);
    mdm_verify_chain(v, a, now, &reason);
    expect_stats(v, 2, 0, 0, 0, 0, "cache off: every call builds");
    mdm_verifier_free(v);

    /* The signature path goes through the same cache. */
    v = verifier("ca.crt", NULL, 64);
    body = slurp("body.bin", &blen);
    sig = slurp("sha256-der.b64", &slen);
    one.iov_base = body;
    one.iov_len = blen;

    signer = NULL;
    mdm_verify_signature(v, sig, slen, &one, 1, &signer, &reason);
    X509_free(signer);
    signer = NULL;
    check(mdm_verify_signature(v, sig, slen, &one, 1, &signer, &reason) == 0,
          "second signature verifies", reason);
    X509_free(signer);
    expect_stats(v, 1, 1, 0, 0, 1, "signature path: one chain build");

    check(mdm_verify_chain(v, a, now, &reason) == 0, "same cert from TLS",
          reason);
    expect_stats(v, 1, 2, 0, 0, 1, "TLS path hits the signature's entry");

    mdm_verifier_free(v);
    free(body);
    free(sig);

    X509_free(a);
    X509_free(b);
    X509_free(c);
    X509_free(s);
    X509_free(f);
    X509_free(other);
}


/* Hex with blanks into bytes; returns the length. */
static size_t
unhex(const char *hex, unsigned char *out)
{
    size_t        n;
    unsigned int  b;

    n = 0;

    while (*hex) {
        if (*hex == ' ') {
            hex++;
            continue;
        }

        sscanf(hex, "%2x", &b);
        out[n++] = (unsigned char) b;
        hex += 2;
    }

    return n;
}


#define SD_OID    "06092a864886f70d010702"
#define DATA_OID  "06092a864886f70d010701"

static void
test_cms_reader(void)
{
    int              i, rc;
    char             detail[256];
    size_t           len;
    X509            *x;
    mdm_cms_t        cms;
    const char      *reason;
    struct iovec     one;
    unsigned char    der[512], b64[1024];
    mdm_verifier_t  *v;

    static const struct {
        const char  *hex;
        const char  *reason;        /* NULL: parses */
        const char  *name;
    } cases[] = {
        { "3080" SD_OID "a080 3080 020101 3100 300b" DATA_OID " 3100"
          " 0000 0000 0000", NULL, "indefinite envelope, no signer" },
        { "3080" SD_OID "a080 3080 020101 3180 0000 3080" DATA_OID " 0000"
          " a080 0000 3180 0000 0000 0000 0000", NULL,
          "indefinite sets and encapContentInfo" },
        { "3080" SD_OID "a080 3080 020101 3100 300b" DATA_OID " 3100"
          " 0000 0000 0000 00", "trailing data after signature",
          "a byte after the last end-of-contents" },
        { "3080" SD_OID "a080 3080 020101 3100 300b" DATA_OID " 3100"
          " 0000 0000", "signature is not CMS", "end-of-contents missing" },
        { "3080" SD_OID "a080 3080 020101 3100 300b" DATA_OID " 3100"
          " 0000 0000 00", "signature is not CMS",
          "end-of-contents cut in half" },
        { "3080" SD_OID "a080 3080 020102 3100 300b" DATA_OID " 3100"
          " 0000 0000 0000", "unsupported SignedData version",
          "SignedData version 2" },
        { "3080" SD_OID "a080 3080 020101 3180 3080 0609608648016503040201"
          " 0000 0000 300b" DATA_OID " 3100 0000 0000 0000",
          "signature is not CMS", "indefinite AlgorithmIdentifier" },
        { "3080" SD_OID "a080 3080 0280 01 0000", "signature is not CMS",
          "indefinite primitive" },
        { "3080" SD_OID "a080 3080 020101 3100 300b" SD_OID " 3100"
          " 0000 0000 0000", "signed content type is not id-data",
          "signed content is not id-data" },
        { "3080" SD_OID "a080 3080 020101 3100 300b" DATA_OID " 3180 0000"
          " 0000 0000 0000", NULL, "indefinite empty signerInfos" },
        { "3080" SD_OID "a080 3080 020101 3100 300b" DATA_OID " 3180"
          " 3080 020101 0000 0000 0000 0000 0000", "signature is not CMS",
          "SignerInfo cut short" },
        { "3080" SD_OID "a080 3080 020101 3100 300b" DATA_OID " a080 3100"
          " 0000 3100 0000 0000 0000", "bad certificate in signature",
          "a SET where a certificate belongs" },
        { "3080" SD_OID "a080 3080 020101 3100 300b" DATA_OID " 3100"
          " 0000 0000", "signature is not CMS", "short by one EOC" },
        { "308103 060100", "signature is not CMS",
          "non-minimal length" },
        { "3085 0000000003 060100", "signature is not CMS",
          "five length octets" },
        { "30847fffffff 06", "signature is not CMS",
          "length beyond the buffer" },
        { "3080" SD_OID "a080 3080 020101 3100 300b" DATA_OID " 3100 0000"
          " 0000", "signature is not CMS", "EOC one level short" },
        { "3080 0000", "signature is not CMS", "empty indefinite" },
        { "1f8101 00", "signature is not CMS", "high tag number" },
        { "3080" SD_OID "a080 3080 020101 3100 300b" DATA_OID " 3100"
          " 0000 0000 0000 0000", "trailing data after signature",
          "an extra end-of-contents" },
    };

    for (i = 0; i < (int) (sizeof(cases) / sizeof(cases[0])); i++) {
        len = unhex(cases[i].hex, der);
        reason = NULL;
        rc = mdm_cms_parse(der, len, &cms, &reason);
        snprintf(detail, sizeof(detail), "rc %d reason \"%s\"", rc,
                 reason ? reason : "(null)");

        if (cases[i].reason == NULL) {
            check(rc == 0 && cms.nsigners == 0 && cms.ncerts == 0
                  && cms.detached, cases[i].name, detail);
        } else {
            check(rc == -1 && reason && strcmp(reason, cases[i].reason) == 0,
                  cases[i].name, detail);
        }
    }

    /* Well formed but empty: the verifier says why. */
    v = verifier("ca.crt", NULL, 4);
    len = unhex(cases[0].hex, der);
    len = (size_t) EVP_EncodeBlock(b64, der, (int) len);
    one.iov_base = (void *) "x";
    one.iov_len = 1;
    x = NULL;
    reason = NULL;
    rc = mdm_verify_signature(v, b64, len, &one, 1, &x, &reason);
    check(rc == -1 && x == NULL && reason && strcmp(reason, "no signer") == 0,
          "a SignedData without signer", reason);
    mdm_verifier_free(v);

    /* Nesting deeper than the bound: refused, not recursed into. */
    len = 0;
    for (i = 0; i < 40; i++) {
        der[len++] = 0x30;
        der[len++] = 0x80;
    }
    memset(der + len, 0, 80);
    len += 80;
    reason = NULL;
    check(mdm_cms_parse(der, len, &cms, &reason) == -1 && reason
          && strcmp(reason, "signature is not CMS") == 0,
          "deep indefinite nesting", reason);
}


static int
sig_at(mdm_verifier_t *v, const unsigned char *sig, size_t len,
    const struct iovec *body, const char **reason, time_t t)
{
    X509  *x;

    x = NULL;
    *reason = NULL;

    if (mdm_verify_signature_at(v, sig, len, body, 1, t, &x, reason) != 0) {
        return -1;
    }

    X509_free(x);
    return 0;
}


/* The signature path's cache: no decoding when warm, bounded by validity. */
static void
test_signature_cache(void)
{
    X509                *x;
    time_t               now, na;
    size_t               blen, slen, flen;
    char                 detail[128];
    const char          *reason;
    struct iovec         one;
    unsigned char       *body, *sig, *fsig;
    mdm_verifier_t      *v;
    mdm_verify_stats_t   st;

    reason = NULL;
    body = slurp("body.bin", &blen);
    sig = slurp("short.b64", &slen);
    fsig = slurp("future.b64", &flen);
    one.iov_base = body;
    one.iov_len = blen;

    x = load_cert("devshort.crt");
    na = mdm_cert_not_after(x);
    X509_free(x);

    now = time(NULL);
    v = verifier("ca.crt", NULL, 16);
    mdm_verifier_set_cache_ttl(v, 86400 * 365);

    check(sig_at(v, sig, slen, &one, &reason, now) == 0, "signature, cold", reason);
    check(sig_at(v, sig, slen, &one, &reason, now + 60) == 0, "signature, warm", reason);
    check(sig_at(v, sig, slen, &one, &reason, na - 5) == 0, "signature 5 s before notAfter",
          reason);
    mdm_verifier_get_stats(v, &st);
    snprintf(detail, sizeof(detail), "decodes %llu builds %llu hits %llu",
             (unsigned long long) st.cert_decodes,
             (unsigned long long) st.chain_builds,
             (unsigned long long) st.cache_hits);
    check(st.cert_decodes == 1 && st.chain_builds == 1 && st.cache_hits == 2,
          "warm signatures decode no certificate and build no chain",
          detail);

    check(sig_at(v, sig, slen, &one, &reason, na) == -1
          && strcmp(reason, "certificate expired") == 0,
          "cached signer not used at its notAfter", reason);
    mdm_verifier_get_stats(v, &st);
    check(st.cert_decodes == 2 && st.chain_builds == 2
          && st.cache_expired == 1,
          "expired entry: decoded and chain-checked again", NULL);

    check(sig_at(v, sig, slen, &one, &reason, now) == 0 && sig_at(v, sig, slen, &one, &reason, now) == 0,
          "signer cached again after a failure", reason);
    check(sig_at(v, fsig, flen, &one, &reason, now + 86400 * 11) == 0,
          "future certificate, day 11", reason);
    check(sig_at(v, fsig, flen, &one, &reason, now + 86400 * 9) == -1
          && strcmp(reason, "certificate not yet valid") == 0,
          "cached signer not used before its notBefore", reason);

    /* A tampered body fails on the cached path too. */
    check(sig_at(v, sig, slen, &one, &reason, now) == 0, "warm again", reason);
    body[10] ^= 1;
    check(sig_at(v, sig, slen, &one, &reason, now) == -1
          && strcmp(reason, "signature does not verify") == 0,
          "tampered body with the signer cached", reason);
    body[10] ^= 1;

    mdm_verifier_free(v);
    free(body);
    free(sig);
    free(fsig);
}


static void
test_create_errors(void)
{
    char             err[256];
    mdm_verifier_t  *v;

    v = mdm_verifier_create(path_of("missing.crt"), NULL, 0, err,
                            sizeof(err));
    check(v == NULL && strstr(err, "missing.crt") != NULL,
          "missing CA file reported", err);

    v = mdm_verifier_create(path_of("body.bin"), NULL, 0, err, sizeof(err));
    check(v == NULL && err[0], "CA file without certificates", err);

    v = mdm_verifier_create(path_of("ca.crt"), path_of("body.bin"), 0, err,
                            sizeof(err));
    check(v == NULL && strstr(err, "intermediates") != NULL,
          "intermediates file without certificates", err);

    v = mdm_verifier_create(path_of("ca.crt"), path_of("nope.crt"), 0, err,
                            sizeof(err));
    check(v == NULL && strstr(err, "nope.crt") != NULL,
          "missing intermediates file", err);
}


int
main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }

    dir = argv[1];

    test_signatures();
    test_forwarded();
    test_cert_helpers();
    test_cache();
    test_cms_reader();
    test_signature_cache();
    test_create_errors();

    printf("done %d\n", checks);

    return failures ? 1 : 0;
}
