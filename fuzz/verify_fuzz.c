/*
 * libFuzzer target for the attacker-facing decoders of
 * ngx_http_mdm_verify.c.  The first input byte selects the entry point:
 *
 *   'S'  the rest is an Mdm-Signature header value (base64)
 *   'D'  the rest is raw CMS bytes, base64-encoded here so that mutations
 *        reach the CMS parser instead of the base64 check
 *   'F'  the rest is a forwarded certificate header value
 *
 * The signed body is fixed; a signature made over "fuzz body\n" by a
 * certificate of the CA in $MDM_FUZZ_CA (default: a built-in CA) passes.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined \
 *       -Ingx_http_mdm_module -o fuzz/verify-fuzz fuzz/verify_fuzz.c \
 *       ngx_http_mdm_module/ngx_http_mdm_verify.c \
 *       ngx_http_mdm_module/ngx_http_mdm_cms.c -lcrypto
 *   fuzz/verify-fuzz CORPUS_DIR
 *
 * t/40-verify-unit.t builds it and does a short run when clang is there;
 * fuzz/cms_fuzz.c (t/44-cms-fuzz.t) goes deeper into the CMS reader.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "ngx_http_mdm_verify.h"


/* Any CA will do when no real one is given: chains then fail. */
static const char  builtin_ca[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBkzCCATmgAwIBAgIUQFUIx4lLHeVhGMyk9fw6M7dMfjEwCgYIKoZIzj0EAwIw\n"
    "FjEUMBIGA1UEAwwLTURNIGZ1enogQ0EwIBcNMjYxMTI4MDQ0MTM2WhgPMjEyNjEx\n"
    "MDQwNDQxMzZaMBYxFDASBgNVBAMMC01ETSBmdXp6IENBMFkwEwYHKoZIzj0CAQYI\n"
    "KoZIzj0DAQcDQgAEZ76/esqjk4hJLlquen/xLOXhxtQkjiKxzbf0w3NJ7dsuuhR6\n"
    "L6KfL1qU/CKTIASiUcdHz1uv1dpPEUPp0xmhRaNjMGEwHQYDVR0OBBYEFAFQxNNJ\n"
    "VSFVTBaijnMy/wK0mNR5MB8GA1UdIwQYMBaAFAFQxNNJVSFVTBaijnMy/wK0mNR5\n"
    "MA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgIEMAoGCCqGSM49BAMCA0gA\n"
    "MEUCIQDzoNSrirxTlGX4PP8obN61gMiZgsM5TsIGwW3NMQ0fXAIgUos2Wb5ClBRk\n"
    "iVurhj4tc8upTjUEidow6pjJwpMvohw=\n"
    "-----END CERTIFICATE-----\n";

static const char  body[] = "fuzz body\n";

static mdm_verifier_t  *verifier;


int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    int          fd;
    char         path[] = "/tmp/mdm-fuzz-ca-XXXXXX", err[256];
    const char  *ca;

    (void) argc;
    (void) argv;

    ca = getenv("MDM_FUZZ_CA");

    if (ca == NULL) {
        fd = mkstemp(path);
        if (fd == -1
            || write(fd, builtin_ca, sizeof(builtin_ca) - 1)
               != (ssize_t) sizeof(builtin_ca) - 1)
        {
            perror("verify_fuzz: CA file");
            exit(1);
        }
        close(fd);
        ca = path;
    }

    /* A small cache so that the fuzzer also goes through eviction. */
    verifier = mdm_verifier_create(ca, NULL, 4, err, sizeof(err));

    if (ca == path) {
        unlink(path);
    }

    if (verifier == NULL) {
        fprintf(stderr, "verify_fuzz: %s\n", err);
        exit(1);
    }

    return 0;
}


static void
use_cert(X509 *x)
{
    char         hex[65];
    const char  *reason;

    mdm_cert_sha256_hex(x, hex);
    (void) mdm_cert_not_after(x);
    (void) mdm_cert_names_id(x, "fuzz", 4);
    (void) mdm_verify_chain(verifier, x, time(NULL), &reason);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int             rc;
    X509           *x;
    size_t          n;
    const char     *reason;
    struct iovec    iov[2];
    unsigned char  *b64;

    if (size < 1) {
        return 0;
    }

    /* The body in two pieces, to go through the piece boundary. */
    iov[0].iov_base = (void *) body;
    iov[0].iov_len = 4;
    iov[1].iov_base = (void *) (body + 4);
    iov[1].iov_len = sizeof(body) - 1 - 4;

    x = NULL;

    switch (data[0]) {

    case 'S':
        rc = mdm_verify_signature(verifier, data + 1, size - 1, iov, 2, &x,
                                  &reason);
        break;

    case 'D':
        if (size - 1 > MDM_VERIFY_MAX_SIGNATURE / 4 * 3) {
            return 0;
        }

        b64 = malloc((size - 1 + 2) / 3 * 4 + 1);
        if (b64 == NULL) {
            return 0;
        }

        n = (size_t) EVP_EncodeBlock(b64, data + 1, (int) (size - 1));
        rc = mdm_verify_signature(verifier, b64, n, iov, 2, &x, &reason);
        free(b64);
        break;

    case 'F':
        rc = mdm_parse_forwarded_cert(data + 1, size - 1, &x, &reason);
        break;

    default:
        return 0;
    }

    if (rc == 0) {
        use_cert(x);
        X509_free(x);
    }

    return 0;
}
