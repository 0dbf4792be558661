
/*
 * Copyright (C) The MDM module authors
 *
 * Who is asking: the device identity certificate of the request, from one
 * of three sources (mdm_identity):
 *   tls        the TLS peer certificate nginx verified (ssl_verify_client);
 *   signature  the Mdm-Signature header, a detached CMS signature over the
 *              exact body, verified with the device CA by this module;
 *   header     a certificate forwarded by a trusted TLS terminator,
 *              accepted only from mdm_trusted_proxy addresses and chain-
 *              verified here;
 *   auto       the signature when the header is present, else TLS.
 * The binding of the certificate to an enrollment is checked atomically in
 * Redis by the store, the same way for every source.
 */


#include "ngx_http_mdm.h"

#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/evp.h>


#define NGX_HTTP_MDM_VERIFY_CACHE  4096


/* What a TLS connection's peer certificate hashes to, computed once. */
typedef struct {
    u_char                      sha256[65];
    time_t                      not_after;
} ngx_http_mdm_tls_facts_t;


static X509 *ngx_http_mdm_tls_cert(ngx_http_request_t *r,
    const char **reason, ngx_int_t *status);
static X509 *ngx_http_mdm_signature_cert(ngx_http_request_t *r,
    ngx_http_mdm_ctx_t *ctx, ngx_table_elt_t *sig, const char **reason);
static X509 *ngx_http_mdm_header_cert(ngx_http_request_t *r,
    const char **reason);
static ngx_table_elt_t *ngx_http_mdm_signature_header(ngx_http_request_t *r);
static ngx_int_t ngx_http_mdm_cert_facts(ngx_http_mdm_ctx_t *ctx, X509 *cert);
static ngx_int_t ngx_http_mdm_tls_facts(ngx_http_request_t *r,
    ngx_http_mdm_ctx_t *ctx, ngx_uint_t store);
static void ngx_http_mdm_cert_cleanup(void *data);
static void ngx_http_mdm_verifier_cleanup(void *data);


static ngx_str_t  ngx_http_mdm_sig_name = ngx_string("Mdm-Signature");


ngx_int_t
ngx_http_mdm_identify(ngx_http_request_t *r, ngx_http_mdm_ctx_t *ctx,
    const char **reason)
{
    X509                     *cert, *tls;
    ngx_int_t                 status;
    ngx_uint_t                from_tls;
    ngx_table_elt_t          *sig;
    ngx_pool_cleanup_t       *cln;
    ngx_http_mdm_loc_conf_t  *mlcf;

    mlcf = ngx_http_get_module_loc_conf(r, ngx_http_mdm_module);
    status = NGX_HTTP_FORBIDDEN;
    from_tls = 0;

    switch (mlcf->identity) {

    case NGX_HTTP_MDM_ID_SIGNATURE:
        sig = ngx_http_mdm_signature_header(r);
        if (sig == NULL) {
            *reason = "no Mdm-Signature header (mdm_identity signature)";
            return NGX_HTTP_FORBIDDEN;
        }
        cert = ngx_http_mdm_signature_cert(r, ctx, sig, reason);
        break;

    case NGX_HTTP_MDM_ID_HEADER:
        cert = ngx_http_mdm_header_cert(r, reason);
        break;

    case NGX_HTTP_MDM_ID_AUTO:
        sig = ngx_http_mdm_signature_header(r);
        if (sig == NULL) {
            cert = ngx_http_mdm_tls_cert(r, reason, &status);
            from_tls = 1;
            break;
        }

        cert = ngx_http_mdm_signature_cert(r, ctx, sig, reason);
        if (cert == NULL) {
            break;
        }

        /* one identity per request: never mix two devices' certificates */
        tls = r->connection->ssl
              ? SSL_get_peer_certificate(r->connection->ssl->connection)
              : NULL;

        if (tls) {
            if (X509_cmp(tls, cert) != 0) {
                X509_free(tls);
                X509_free(cert);
                *reason = "Mdm-Signature signer is not the TLS client "
                          "certificate";
                return NGX_HTTP_FORBIDDEN;
            }
            X509_free(tls);
        }
        break;

    default: /* NGX_HTTP_MDM_ID_TLS */
        cert = ngx_http_mdm_tls_cert(r, reason, &status);
        from_tls = 1;
    }

    if (cert == NULL) {
        return status;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        X509_free(cert);
        *reason = "out of memory";
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_mdm_cert_cleanup;
    cln->data = cert;
    ctx->x509 = cert;

    /* keep-alive requests reuse the connection's hash (no digest fetch) */
    if (from_tls && ngx_http_mdm_tls_facts(r, ctx, 0) == NGX_OK) {
        return NGX_OK;
    }

    if (ngx_http_mdm_cert_facts(ctx, cert) != NGX_OK) {
        *reason = "cannot hash the client certificate";
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (from_tls) {
        (void) ngx_http_mdm_tls_facts(r, ctx, 1);
    }

    return NGX_OK;
}


/* mdm_require_id_in_cert: the device id is the subject CN or a SAN. */

ngx_int_t
ngx_http_mdm_check_cert_names(ngx_http_request_t *r, ngx_http_mdm_ctx_t *ctx)
{
    ngx_http_mdm_loc_conf_t  *mlcf;

    mlcf = ngx_http_get_module_loc_conf(r, ngx_http_mdm_module);

    if (!mlcf->require_id_in_cert) {
        return NGX_OK;
    }

    return mdm_cert_names_id(ctx->x509, ctx->msg.device_id,
                             ctx->msg.device_id_len)
           ? NGX_OK : NGX_DECLINED;
}


static X509 *
ngx_http_mdm_tls_cert(ngx_http_request_t *r, const char **reason,
    ngx_int_t *status)
{
#if (NGX_HTTP_SSL)
    long   rc;
    X509  *cert;

    if (r->connection->ssl == NULL) {
        *reason = "not a TLS connection, no device identity";
        return NULL;
    }

    cert = SSL_get_peer_certificate(r->connection->ssl->connection);
    if (cert == NULL) {
        *reason = "no client certificate";
        return NULL;
    }

    /* again: optional_no_ca lets unverified certificates through */
    rc = SSL_get_verify_result(r->connection->ssl->connection);
    if (rc != X509_V_OK) {
        X509_free(cert);
        *reason = X509_verify_cert_error_string(rc);
        return NULL;
    }

    return cert;
#else
    *reason = "built without TLS";
    return NULL;
#endif
}


static X509 *
ngx_http_mdm_signature_cert(ngx_http_request_t *r, ngx_http_mdm_ctx_t *ctx,
    ngx_table_elt_t *sig, const char **reason)
{
    X509                     *cert;
    struct iovec              iov;
    ngx_http_mdm_loc_conf_t  *mlcf;

    mlcf = ngx_http_get_module_loc_conf(r, ngx_http_mdm_module);

    if (mlcf->verifier == NULL) {
        *reason = "Mdm-Signature needs mdm_device_ca";
        return NULL;
    }

    iov.iov_base = ctx->body.data;
    iov.iov_len = ctx->body.len;

    if (mdm_verify_signature(mlcf->verifier, sig->value.data, sig->value.len,
                             &iov, 1, &cert, reason)
        != 0)
    {
        return NULL;
    }

    return cert;
}


static X509 *
ngx_http_mdm_header_cert(ngx_http_request_t *r, const char **reason)
{
    X509                       *cert;
    ngx_http_variable_value_t  *v;
    ngx_http_mdm_loc_conf_t    *mlcf;

    mlcf = ngx_http_get_module_loc_conf(r, ngx_http_mdm_module);

    v = ngx_http_get_indexed_variable(r, mlcf->header);

    if (v == NULL || v->not_found || v->len == 0) {
        *reason = "no forwarded client certificate";
        return NULL;
    }

    if (mlcf->proxies == NULL
        || ngx_cidr_match(r->connection->sockaddr, mlcf->proxies) != NGX_OK)
    {
        *reason = "forwarded certificate from an address that is not an "
                  "mdm_trusted_proxy: ignored";
        return NULL;
    }

    if (mdm_parse_forwarded_cert(v->data, v->len, &cert, reason) != 0) {
        return NULL;
    }

    if (mdm_verify_chain(mlcf->verifier, cert, ngx_time(), reason) != 0) {
        X509_free(cert);
        return NULL;
    }

    return cert;
}


static ngx_table_elt_t *
ngx_http_mdm_signature_header(ngx_http_request_t *r)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NULL;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == ngx_http_mdm_sig_name.len
            && ngx_strncasecmp(h[i].key.data, ngx_http_mdm_sig_name.data,
                               h[i].key.len) == 0)
        {
            return &h[i];
        }
    }
}


/* SHA-256 of the DER (the binding key) and the expiry date. */

static ngx_int_t
ngx_http_mdm_cert_facts(ngx_http_mdm_ctx_t *ctx, X509 *cert)
{
    time_t  t;

    if (mdm_cert_sha256_hex(cert, (char *) ctx->cert_sha256) != 0) {
        return NGX_ERROR;
    }

    ctx->cert.data = ctx->cert_sha256;
    ctx->cert.len = 64;

    t = mdm_cert_not_after(cert);
    ctx->cert_not_after = (t == (time_t) -1) ? 0 : t;

    return NGX_OK;
}


/*
 * The peer certificate of a TLS connection does not change (nginx allows
 * no renegotiation), so its hash is kept with the SSL object, in memory of
 * the connection's pool. store: remember ctx's facts; else fill ctx.
 */

static ngx_int_t
ngx_http_mdm_tls_facts(ngx_http_request_t *r, ngx_http_mdm_ctx_t *ctx,
    ngx_uint_t store)
{
    SSL                       *ssl;
    ngx_http_mdm_tls_facts_t  *f;

    static int                 idx = -1;

    if (idx == -1) {
        idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
        if (idx == -1) {
            return NGX_ERROR;
        }
    }

    ssl = r->connection->ssl->connection;
    f = SSL_get_ex_data(ssl, idx);

    if (store) {
        if (f == NULL) {
            f = ngx_palloc(r->connection->pool,
                           sizeof(ngx_http_mdm_tls_facts_t));
            if (f == NULL || SSL_set_ex_data(ssl, idx, f) != 1) {
                return NGX_ERROR;
            }
        }

        ngx_memcpy(f->sha256, ctx->cert_sha256, sizeof(f->sha256));
        f->not_after = ctx->cert_not_after;
        return NGX_OK;
    }

    if (f == NULL) {
        return NGX_DECLINED;
    }

    ngx_memcpy(ctx->cert_sha256, f->sha256, sizeof(f->sha256));
    ctx->cert_not_after = f->not_after;
    ctx->cert.data = ctx->cert_sha256;
    ctx->cert.len = 64;

    return NGX_OK;
}


static void
ngx_http_mdm_cert_cleanup(void *data)
{
    X509_free(data);
}


/* mdm_identity tls | signature | header $variable | auto */

char *
ngx_http_mdm_identity_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_mdm_loc_conf_t  *mlcf = conf;

    ngx_str_t  *value, name;

    if (mlcf->identity != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "tls") == 0) {
        mlcf->identity = NGX_HTTP_MDM_ID_TLS;

    } else if (ngx_strcmp(value[1].data, "signature") == 0) {
        mlcf->identity = NGX_HTTP_MDM_ID_SIGNATURE;

    } else if (ngx_strcmp(value[1].data, "auto") == 0) {
        mlcf->identity = NGX_HTTP_MDM_ID_AUTO;

    } else if (ngx_strcmp(value[1].data, "header") == 0) {
        if (cf->args->nelts != 3 || value[2].data[0] != '$') {
            return "header needs a variable, e.g. "
                   "\"header $http_x_client_cert\"";
        }

        name.data = value[2].data + 1;
        name.len = value[2].len - 1;

        mlcf->header = ngx_http_get_variable_index(cf, &name);
        if (mlcf->header == NGX_ERROR) {
            return NGX_CONF_ERROR;
        }

        mlcf->identity = NGX_HTTP_MDM_ID_HEADER;
        return NGX_CONF_OK;

    } else {
        return "must be tls, signature, header $variable or auto";
    }

    if (cf->args->nelts != 2) {
        return "takes a variable only with \"header\"";
    }

    return NGX_CONF_OK;
}


/* mdm_device_ca <ca.pem> [<intermediates.pem>] [cache=N] */

char *
ngx_http_mdm_device_ca_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_mdm_loc_conf_t  *mlcf = conf;

    char                 err[256];
    ngx_str_t           *value, ca, im;
    ngx_int_t            cache;
    ngx_uint_t           i;
    ngx_pool_cleanup_t  *cln;

    if (mlcf->verifier != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;
    ca = value[1];
    ngx_str_null(&im);
    cache = NGX_HTTP_MDM_VERIFY_CACHE;

    if (ngx_conf_full_name(cf->cycle, &ca, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "cache=", 6) == 0) {
            cache = ngx_atoi(value[i].data + 6, value[i].len - 6);
            if (cache == NGX_ERROR) {
                return "has an invalid \"cache=\" (a number of entries)";
            }
            continue;
        }

        if (im.len) {
            return "takes one intermediates file";
        }

        im = value[i];
        if (ngx_conf_full_name(cf->cycle, &im, 1) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        return NGX_CONF_ERROR;
    }

    /* built here, inherited by the workers; each fills its own cache */
    mlcf->verifier = mdm_verifier_create((char *) ca.data,
                                         im.len ? (char *) im.data : NULL,
                                         (size_t) cache, err, sizeof(err));
    if (mlcf->verifier == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "mdm_device_ca: %s", err);
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_http_mdm_verifier_cleanup;
    cln->data = mlcf->verifier;

    return NGX_CONF_OK;
}


/* mdm_trusted_proxy <cidr> ... */

char *
ngx_http_mdm_trusted_proxy_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_mdm_loc_conf_t  *mlcf = conf;

    ngx_int_t    rc;
    ngx_str_t   *value;
    ngx_uint_t   i;
    ngx_cidr_t  *cidr;

    if (mlcf->proxies == NGX_CONF_UNSET_PTR) {
        mlcf->proxies = ngx_array_create(cf->pool, 2, sizeof(ngx_cidr_t));
        if (mlcf->proxies == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {
        cidr = ngx_array_push(mlcf->proxies);
        if (cidr == NULL) {
            return NGX_CONF_ERROR;
        }

        rc = ngx_ptocidr(&value[i], cidr);

        if (rc == NGX_ERROR) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "mdm_trusted_proxy: invalid address \"%V\"",
                               &value[i]);
            return NGX_CONF_ERROR;
        }

        if (rc == NGX_DONE) {
            ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                               "mdm_trusted_proxy: low address bits of "
                               "\"%V\" are meaningless", &value[i]);
        }
    }

    return NGX_CONF_OK;
}


static void
ngx_http_mdm_verifier_cleanup(void *data)
{
    mdm_verifier_free(data);
}
