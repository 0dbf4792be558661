/*
 * CPU cost of device identity verification (ngx_http_mdm_verify.c), run
 * by t/40-verify-unit.t:
 *
 *     verify_bench DIR [SECONDS]
 *
 * prints, per case, the process CPU time per request with the
 * certificate cache off ("cold": every request decodes the certificate
 * and builds the chain) and warm (a known device).  A request is what the
 * module does for it: verify, then the certificate's SHA-256 and
 * notAfter.  Uses only the API that predates the CMS reader, so that the
 * same harness measures an older ngx_http_mdm_verify.c too.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/pem.h>

#include "ngx_http_mdm_verify.h"
#include "unit_slurp.h"


static const char  *dir;


static unsigned char *
slurp(const char *name, size_t *len)
{
    return unit_slurp(dir, name, len);
}


typedef struct {
    mdm_verifier_t  *v;
    unsigned char   *sig;
    size_t           slen;
    struct iovec     body;
    X509            *cert;
    unsigned char   *fwd;
    size_t           flen;
} bench_t;


static int
facts(X509 *x)
{
    char  hex[65];

    return mdm_cert_sha256_hex(x, hex) == 0
           && mdm_cert_not_after(x) != (time_t) -1 ? 0 : -1;
}


static int
bench_sig(bench_t *b)
{
    int          rc;
    X509        *signer;
    const char  *reason;

    rc = mdm_verify_signature(b->v, b->sig, b->slen, &b->body, 1, &signer,
                              &reason);
    if (rc == 0) {
        rc = facts(signer);
        X509_free(signer);
    }

    return rc;
}


static int
bench_chain(bench_t *b)
{
    const char  *reason;

    return mdm_verify_chain(b->v, b->cert, time(NULL), &reason);
}


static int
bench_fwd(bench_t *b)
{
    int          rc;
    X509        *x;
    const char  *reason;

    rc = mdm_parse_forwarded_cert(b->fwd, b->flen, &x, &reason);
    if (rc == 0) {
        rc = mdm_verify_chain(b->v, x, time(NULL), &reason);
        if (rc == 0) {
            rc = facts(x);
        }
        X509_free(x);
    }

    return rc;
}


static double
cpu_sec(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}


/* CPU microseconds per call of fn, run for `secs` of CPU time. */
static double
cost(int (*fn)(bench_t *), bench_t *b, double secs)
{
    long    n;
    double  start, used;

    /* one call first: a warm case starts with its entry cached */
    if (fn(b) != 0) {
        fprintf(stderr, "bench: verification failed\n");
        exit(1);
    }

    start = cpu_sec();
    used = 0;

    for (n = 1; n < 10000000; n++) {
        if (fn(b) != 0) {
            fprintf(stderr, "bench: verification failed\n");
            exit(1);
        }

        if ((n & 15) == 0) {
            used = cpu_sec() - start;
            if (used >= secs) {
                break;
            }
        }
    }

    used = cpu_sec() - start;

    return used * 1e6 / n;
}


static mdm_verifier_t *
verifier(size_t cache)
{
    char             err[256], path[4096];
    mdm_verifier_t  *v;

    snprintf(path, sizeof(path), "%s/ca.crt", dir);

    v = mdm_verifier_create(path, NULL, cache, err, sizeof(err));
    if (v == NULL) {
        fprintf(stderr, "mdm_verifier_create: %s\n", err);
        exit(2);
    }

    return v;
}


int
main(int argc, char **argv)
{
    int              i;
    FILE            *f;
    char             path[4096];
    double           cold, warm, secs;
    size_t           blen;
    bench_t          b;
    mdm_verifier_t  *vw, *vc;

    static const struct {
        const char  *name;
        int        (*fn)(bench_t *);
        const char  *sig;
    } cases[] = {
        { "Mdm-Signature P-256 SHA-256 DER", bench_sig, "sha256-der.b64" },
        { "Mdm-Signature P-256 SHA-1 BER", bench_sig, "sha1-ber.b64" },
        { "Mdm-Signature RSA-2048 SHA-256 DER", bench_sig,
          "rsa-sha256.b64" },
        { "Mdm-Signature RSA-2048 SHA-1 BER", bench_sig,
          "rsa-sha1-ber.b64" },
        { "chain only (P-256)", bench_chain, NULL },
        { "RFC 9440 header + chain (P-256)", bench_fwd, NULL },
    };

    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR [SECONDS]\n", argv[0]);
        return 2;
    }

    dir = argv[1];
    secs = argc > 2 ? atof(argv[2]) : 1.0;

    vw = verifier(1024);
    vc = verifier(0);

    b.body.iov_base = slurp("body.bin", &blen);
    b.body.iov_len = blen;
    b.fwd = slurp("dev1.rfc9440", &b.flen);
    b.sig = NULL;

    snprintf(path, sizeof(path), "%s/dev1.crt", dir);
    f = fopen(path, "r");
    b.cert = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f) {
        fclose(f);
    }
    if (b.cert == NULL) {
        fprintf(stderr, "cannot read %s\n", path);
        return 2;
    }

    printf("bench: body %zu bytes, CPU time per request\n", blen);

    for (i = 0; i < (int) (sizeof(cases) / sizeof(cases[0])); i++) {
        if (cases[i].sig) {
            free(b.sig);
            b.sig = slurp(cases[i].sig, &b.slen);
        }

        b.v = vc;
        cold = cost(cases[i].fn, &b, secs);
        b.v = vw;
        warm = cost(cases[i].fn, &b, secs);

        printf("bench: %-36s cold %8.1f us  warm %8.1f us\n",
               cases[i].name, cold, warm);
    }

    X509_free(b.cert);
    free(b.body.iov_base);
    free(b.sig);
    free(b.fwd);
    mdm_verifier_free(vw);
    mdm_verifier_free(vc);

    return 0;
}
