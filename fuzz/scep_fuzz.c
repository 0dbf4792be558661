/*
 * libFuzzer target for the SCEP message reader (ngx_http_mdm_scep_msg.c):
 * a PKIOperation as raw bytes, parsed and checked against the CA in
 * $MDM_FUZZ_SCEP_CA / $MDM_FUZZ_SCEP_KEY; every reply a parse leads to (a
 * FAILURE, or the certificate and the SUCCESS CertRep) is built too.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined \
 *       -Ingx_http_mdm_module -o scep-fuzz fuzz/scep_fuzz.c \
 *       ngx_http_mdm_module/ngx_http_mdm_scep_msg.c -lcrypto
 *   MDM_FUZZ_SCEP_CA=ca.crt MDM_FUZZ_SCEP_KEY=ca.key ./scep-fuzz CORPUS
 *
 * t/28-scep-fuzz.t builds it, seeds it with real requests and runs it
 * briefly.
 */

#include <stdio.h>
#include <stdlib.h>

#include <openssl/pem.h>
#include <openssl/provider.h>

#include "ngx_http_mdm_scep_msg.h"


static mdm_scep_ca_t  ca;


int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    FILE  *f;

    (void) argc;
    (void) argv;

    OSSL_PROVIDER_load(NULL, "legacy");
    OSSL_PROVIDER_load(NULL, "default");

    f = fopen(getenv("MDM_FUZZ_SCEP_CA") ? getenv("MDM_FUZZ_SCEP_CA") : "",
              "r");
    ca.ca = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f) {
        fclose(f);
    }

    f = fopen(getenv("MDM_FUZZ_SCEP_KEY") ? getenv("MDM_FUZZ_SCEP_KEY") : "",
              "r");
    ca.key = f ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
    if (f) {
        fclose(f);
    }

    if (ca.ca == NULL || ca.key == NULL || mdm_scep_init() != 0) {
        fprintf(stderr, "scep_fuzz: set MDM_FUZZ_SCEP_CA and _KEY\n");
        exit(1);
    }

    ca.allow_des = 1;
    ca.validity = 86400;

    return 0;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int              rc;
    X509            *x;
    char             sha[65], serial[65];
    size_t           len;
    long long        na;
    const char      *reason;
    unsigned char   *out;
    mdm_scep_req_t   req;

    reason = NULL;
    rc = mdm_scep_parse(&ca, data, size, &req, &reason);

    if (rc != MDM_SCEP_OK && reason == NULL) {
        abort();                        /* every refusal says why */
    }

    x = NULL;
    if (rc == MDM_SCEP_OK) {
        x = mdm_scep_issue(&ca, &req, &reason);
        if (x && mdm_scep_cert_info(x, sha, serial, &na) != 0) {
            abort();
        }
    }

    if (rc != MDM_SCEP_NOT_SCEP) {
        out = NULL;
        if (mdm_scep_certrep(&ca, &req, x, &out, &len) == 0) {
            OPENSSL_free(out);
        }
    }

    X509_free(x);
    mdm_scep_req_free(&req);

    return 0;
}
