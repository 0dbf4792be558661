
/*
 * Copyright (C) The MDM module authors
 *
 * SCEP (RFC 8894) messages on OpenSSL's PKCS7 API: the PKIOperation
 * request parsed and checked, the certificate issued, the CertRep built.
 * No nginx types: the fuzzer links this file alone.
 */


#ifndef _NGX_HTTP_MDM_SCEP_MSG_H_INCLUDED_
#define _NGX_HTTP_MDM_SCEP_MSG_H_INCLUDED_


#include <stddef.h>
#include <openssl/x509.h>
#include <openssl/pkcs7.h>


#define MDM_SCEP_MAX_MSG         (64 * 1024)
#define MDM_SCEP_MIN_RSA_BITS    2048
#define MDM_SCEP_MAX_RSA_BITS    8192

/* messageType */
#define MDM_SCEP_CERTREP         3
#define MDM_SCEP_RENEWALREQ      17
#define MDM_SCEP_PKCSREQ         19

/* what mdm_scep_parse() found: a FAILURE reply, or not SCEP at all */
#define MDM_SCEP_OK              0
#define MDM_SCEP_FAIL            1      /* reply FAILURE with fail_info */
#define MDM_SCEP_NOT_SCEP        2      /* 400: nothing to reply to */

/* failInfo */
#define MDM_SCEP_BAD_ALG         0
#define MDM_SCEP_BAD_MESSAGE     1
#define MDM_SCEP_BAD_REQUEST     2
#define MDM_SCEP_BAD_TIME        3
#define MDM_SCEP_BAD_CERT_ID     4


typedef struct {
    int              type;              /* messageType */
    char             txid[129];         /* transactionID, printable */
    unsigned char    nonce[16];         /* senderNonce */
    int              has_nonce;
    X509            *signer;            /* the message's signer */
    X509_REQ        *csr;
    char             challenge[129];    /* challengePassword, or "" */
    const EVP_CIPHER *cipher;           /* of the request's envelope */
    int              fail_info;
} mdm_scep_req_t;


typedef struct {
    X509            *ca;
    EVP_PKEY        *key;
    int              allow_des;         /* mdm_scep_des */
    long             validity;          /* seconds */
} mdm_scep_ca_t;


int mdm_scep_init(void);
int mdm_scep_parse(mdm_scep_ca_t *ca, const unsigned char *der, size_t len,
    mdm_scep_req_t *req, const char **reason);
void mdm_scep_req_free(mdm_scep_req_t *req);
X509 *mdm_scep_issue(mdm_scep_ca_t *ca, mdm_scep_req_t *req,
    const char **reason);
int mdm_scep_certrep(mdm_scep_ca_t *ca, mdm_scep_req_t *req, X509 *issued,
    unsigned char **out, size_t *outlen);
int mdm_scep_cert_info(X509 *x, char sha256[65], char serial[65],
    long long *not_after);


#endif /* _NGX_HTTP_MDM_SCEP_MSG_H_INCLUDED_ */
