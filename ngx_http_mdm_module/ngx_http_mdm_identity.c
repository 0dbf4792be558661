
/*
 * Copyright (C) The MDM module authors
 *
 * Who is asking: the device identity certificate of the request. nginx has
 * verified a TLS peer certificate already (ssl_verify_client); we check the
 * verification result again, as optional_no_ca would let others through.
 * The binding of the certificate to an enrollment is checked atomically in
 * Redis by the store.
 */


#include "ngx_http_mdm.h"

#include <openssl/x509.h>
#include <openssl/evp.h>


static ngx_int_t ngx_http_mdm_cert_facts(ngx_http_mdm_ctx_t *ctx, X509 *cert);


ngx_int_t
ngx_http_mdm_identify(ngx_http_request_t *r, ngx_http_mdm_ctx_t *ctx,
    const char **reason)
{
#if (NGX_HTTP_SSL)
    long        rc;
    X509       *cert;
    ngx_int_t   n;

    if (r->connection->ssl == NULL) {
        *reason = "not a TLS connection, no device identity";
        return NGX_HTTP_FORBIDDEN;
    }

    cert = SSL_get_peer_certificate(r->connection->ssl->connection);
    if (cert == NULL) {
        *reason = "no client certificate";
        return NGX_HTTP_FORBIDDEN;
    }

    rc = SSL_get_verify_result(r->connection->ssl->connection);
    if (rc != X509_V_OK) {
        X509_free(cert);
        *reason = X509_verify_cert_error_string(rc);
        return NGX_HTTP_FORBIDDEN;
    }

    n = ngx_http_mdm_cert_facts(ctx, cert);
    X509_free(cert);

    if (n != NGX_OK) {
        *reason = "cannot hash the client certificate";
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_OK;
#else
    *reason = "built without TLS";
    return NGX_HTTP_FORBIDDEN;
#endif
}


/* SHA-256 of the DER (the binding key) and the expiry date. */

static ngx_int_t
ngx_http_mdm_cert_facts(ngx_http_mdm_ctx_t *ctx, X509 *cert)
{
    struct tm      tm;
    unsigned int   len;
    unsigned char  md[EVP_MAX_MD_SIZE];

    if (X509_digest(cert, EVP_sha256(), md, &len) != 1 || len != 32) {
        return NGX_ERROR;
    }

    ngx_hex_dump(ctx->cert_sha256, md, len);
    ctx->cert_sha256[64] = '\0';

    ctx->cert_not_after = 0;

    if (ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm) == 1) {
        ctx->cert_not_after = timegm(&tm);
    }

    return NGX_OK;
}
