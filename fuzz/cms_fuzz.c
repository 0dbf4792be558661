/*
 * libFuzzer target for the Mdm-Signature fast path: the CMS reader
 * (ngx_http_mdm_cms.c) on raw bytes, then the whole verification
 * (ngx_http_mdm_verify.c, with its certificate cache) on the same bytes
 * as a header value.
 *
 * Every slice the reader returns must lie inside the input (checked here
 * and read, so that ASan sees any stray pointer).  The signed body is
 * fixed; a signature made over "fuzz body\n" by a certificate of the CA
 * in $MDM_FUZZ_CA verifies, so the cached path is reached too.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined \
 *       -Ingx_http_mdm_module -o cms-fuzz fuzz/cms_fuzz.c \
 *       ngx_http_mdm_module/ngx_http_mdm_cms.c \
 *       ngx_http_mdm_module/ngx_http_mdm_verify.c -lcrypto
 *   MDM_FUZZ_CA=ca.crt ./cms-fuzz CORPUS_DIR
 *
 * t/44-cms-fuzz.t builds it, seeds it and runs it briefly.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "ngx_http_mdm_cms.h"
#include "ngx_http_mdm_verify.h"


static const char  body[] = "fuzz body\n";

static mdm_verifier_t  *verifier;
static volatile unsigned  sink;


int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char         err[256];
    const char  *ca;

    (void) argc;
    (void) argv;

    ca = getenv("MDM_FUZZ_CA");
    if (ca == NULL) {
        fprintf(stderr, "cms_fuzz: set MDM_FUZZ_CA to a CA file\n");
        exit(1);
    }

    /* A small cache: the fuzzer goes through hits, misses and eviction. */
    verifier = mdm_verifier_create(ca, NULL, 4, err, sizeof(err));
    if (verifier == NULL) {
        fprintf(stderr, "cms_fuzz: %s\n", err);
        exit(1);
    }

    return 0;
}


static void
touch(const uint8_t *data, size_t size, const mdm_cms_slice_t *s)
{
    size_t  i;

    if (s->len == 0) {
        return;
    }

    if (s->data < data || s->data > data + size
        || s->len > (size_t) (data + size - s->data))
    {
        fprintf(stderr, "cms_fuzz: slice outside the input\n");
        abort();
    }

    for (i = 0; i < s->len; i++) {
        sink += s->data[i];
    }
}


static void
reader(const uint8_t *data, size_t size)
{
    int                      i;
    mdm_cms_t                cms;
    const char              *reason;
    mdm_cms_slice_t          issuer, serial, ski;
    const mdm_cms_signer_t  *s;

    reason = NULL;

    if (mdm_cms_parse(data, size, &cms, &reason) != 0) {
        if (reason == NULL) {
            abort();
        }
        return;
    }

    if (cms.ncerts > MDM_CMS_MAX_CERTS || cms.nsigners < 0
        || cms.nsigners > MDM_CMS_MAX_SIGNERS)
    {
        abort();
    }

    for (i = 0; i < cms.ncerts; i++) {
        touch(data, size, &cms.certs[i]);

        if (mdm_cms_cert_ids(cms.certs[i].data, cms.certs[i].len, &issuer,
                             &serial, &ski)
            == 0)
        {
            touch(data, size, &issuer);
            touch(data, size, &serial);
            touch(data, size, &ski);
        }
    }

    if (cms.nsigners == 0) {
        return;
    }

    s = &cms.signer;
    touch(data, size, &s->issuer);
    touch(data, size, &s->serial);
    touch(data, size, &s->ski);
    touch(data, size, &s->signed_attrs);
    touch(data, size, &s->message_digest);
    touch(data, size, &s->signing_time);
    touch(data, size, &s->signature);

    if (s->signed_attrs.len && s->signed_attrs.data[0] != 0xa0) {
        abort();
    }

    i = mdm_cms_find_signer(&cms);
    if (i < -1 || i >= cms.ncerts) {
        abort();
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    X509           *x;
    size_t          n;
    const char     *reason;
    struct iovec    iov[2];
    unsigned char  *b64;
    char            hex[65];

    reader(data, size);

    if (size == 0 || size > MDM_VERIFY_MAX_SIGNATURE / 4 * 3) {
        return 0;
    }

    b64 = malloc((size + 2) / 3 * 4 + 1);
    if (b64 == NULL) {
        return 0;
    }

    n = (size_t) EVP_EncodeBlock(b64, data, (int) size);

    /* The body in two pieces, to go through the piece boundary. */
    iov[0].iov_base = (void *) body;
    iov[0].iov_len = 4;
    iov[1].iov_base = (void *) (body + 4);
    iov[1].iov_len = sizeof(body) - 1 - 4;

    x = NULL;
    reason = NULL;

    if (mdm_verify_signature(verifier, b64, n, iov, 2, &x, &reason) == 0) {
        mdm_cert_sha256_hex(x, hex);
        (void) mdm_cert_not_after(x);
        X509_free(x);

    } else if (reason == NULL || x != NULL) {
        abort();
    }

    free(b64);

    return 0;
}
