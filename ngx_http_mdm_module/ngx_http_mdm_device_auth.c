
/*
 * Copyright (C) The MDM module authors
 *
 * mdm_device_auth: a location that nginx itself serves (static files with
 * their ranges and caching headers, a proxy, ...) answers devices only.
 * An access phase handler takes the device identity as the endpoints do
 * (the location's mdm_identity, mdm_device_ca, mdm_trusted_proxy) and asks
 * Redis in one FCALL_RO mdm_device_auth whether the certificate is the one
 * bound to a device whose device channel is enabled and not revoked. The
 * phase engine waits for the reply and then runs this handler again, which
 * answers the verdict; from there on $mdm_enrollment_id is the device id.
 *
 * Only GET and HEAD. With mdm_identity signature (or auto with the header)
 * the signed content is the request body, empty here: the signature is
 * checked over empty content, so any earlier one of the same certificate
 * over nothing passes too (there is no nonce). TLS client certificates,
 * directly or forwarded by a trusted proxy, are the identity for files.
 */


#include "ngx_http_mdm.h"


static ngx_int_t ngx_http_mdm_device_auth_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_mdm_device_auth_ask(ngx_http_request_t *r,
    ngx_http_mdm_ctx_t *ctx);
static void ngx_http_mdm_device_auth_done(ngx_int_t rc, redisReply *reply,
    void *data);
static ngx_uint_t ngx_http_mdm_device_auth_verdict(ngx_http_request_t *r,
    ngx_http_mdm_ctx_t *ctx, redisReply *reply);
static ngx_int_t ngx_http_mdm_device_auth_refuse(ngx_http_request_t *r,
    ngx_http_mdm_ctx_t *ctx, ngx_uint_t status, const char *reason);


static ngx_int_t
ngx_http_mdm_device_auth_handler(ngx_http_request_t *r)
{
    ngx_int_t                 rc;
    const char               *reason;
    ngx_table_elt_t          *h;
    ngx_http_mdm_ctx_t       *ctx;
    ngx_http_mdm_loc_conf_t  *mlcf;

    mlcf = ngx_http_get_module_loc_conf(r, ngx_http_mdm_module);

    if (!mlcf->device_auth) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_mdm_module);

    if (ctx) {
        if (ctx->auth == 0) {
            return NGX_AGAIN;            /* the reply is still awaited */
        }

        return ctx->auth == NGX_HTTP_OK ? NGX_OK : (ngx_int_t) ctx->auth;
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_mdm_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_set_ctx(r, ctx, ngx_http_mdm_module);
    ngx_str_set(&ctx->message_type, "DeviceAuth");

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h != NULL) {
            h->hash = 1;
            ngx_str_set(&h->key, "Allow");
            ngx_str_set(&h->value, "GET, HEAD");
        }

        return ngx_http_mdm_device_auth_refuse(r, ctx, NGX_HTTP_NOT_ALLOWED,
                                               "method is not GET or HEAD");
    }

    /* ctx->body stays empty: what a signature of a GET covers */
    rc = ngx_http_mdm_identify(r, ctx, &reason);
    if (rc != NGX_OK) {
        return ngx_http_mdm_device_auth_refuse(r, ctx, rc, reason);
    }

    rc = ngx_http_mdm_device_auth_ask(r, ctx);

    if (rc == NGX_DECLINED) {
        return ngx_http_mdm_device_auth_refuse(r, ctx,
                                               NGX_HTTP_SERVICE_UNAVAILABLE,
                                               "redis is not available");
    }

    if (rc != NGX_OK) {
        return ngx_http_mdm_device_auth_refuse(r, ctx,
                                               NGX_HTTP_INTERNAL_SERVER_ERROR,
                                               "cannot send to redis");
    }

    /* held until the reply: it resumes the phases (or a cleanup detaches) */
    r->main->count++;

    return NGX_DONE;
}


/* FCALL_RO mdm_device_auth 1 <cert key> <cert sha256> <deadline ms> */

static ngx_int_t
ngx_http_mdm_device_auth_ask(ngx_http_request_t *r, ngx_http_mdm_ctx_t *ctx)
{
    u_char                   *key, *dl, *p;
    ngx_int_t                 rc;
    size_t                    len[6];
    const char               *argv[6];
    ngx_http_cleanup_t       *cln;
    ngx_http_mdm_srv_conf_t  *mscf;

    mscf = ngx_http_get_module_srv_conf(r, ngx_http_mdm_module);

    key = ngx_pnalloc(r->pool, MDM_KEY_CERT_FIXED + 64 + NGX_INT64_LEN);
    if (key == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(key, MDM_KEY_CERT_NGX, (size_t) 64, ctx->cert_sha256);

    dl = p;
    p = ngx_http_mdm_deadline(mscf, dl);

    /* a request that goes first detaches, so a late reply finds nothing */
    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    argv[0] = "FCALL_RO";
    len[0] = sizeof("FCALL_RO") - 1;
    argv[1] = "mdm_device_auth";
    len[1] = sizeof("mdm_device_auth") - 1;
    argv[2] = "1";
    len[2] = 1;
    argv[3] = (char *) key;
    len[3] = dl - key;
    argv[4] = (char *) ctx->cert_sha256;
    len[4] = 64;
    argv[5] = (char *) dl;
    len[5] = p - dl;

    rc = ngx_http_mdm_redis_call(mscf->redis, 6, argv, len, mscf->timeout,
                                 r->connection->log,
                                 ngx_http_mdm_device_auth_done, r, &ctx->op);
    if (rc != NGX_OK) {
        return rc;
    }

    cln->handler = ngx_http_mdm_op_cleanup;
    cln->data = ctx;

    /* a client that goes away ends the request; nothing else runs it */
    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_request_empty_handler;

    return NGX_OK;
}


/* The transport's report: the verdict, then the phases go on. */

static void
ngx_http_mdm_device_auth_done(ngx_int_t rc, redisReply *reply, void *data)
{
    ngx_http_request_t  *r = data;

    size_t               n;
    u_char              *reason;
    ngx_connection_t    *c;
    ngx_http_mdm_ctx_t  *ctx;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_mdm_module);
    ctx->op = NULL;

    switch (rc) {

    case NGX_HTTP_MDM_REDIS_TIMEOUT:
        (void) ngx_http_mdm_device_auth_refuse(r, ctx,
                                               NGX_HTTP_SERVICE_UNAVAILABLE,
                                               "redis did not answer in time");
        break;

    case NGX_HTTP_MDM_REDIS_DOWN:
        (void) ngx_http_mdm_device_auth_refuse(r, ctx,
                                               NGX_HTTP_SERVICE_UNAVAILABLE,
                                               "redis connection lost");
        break;

    case NGX_HTTP_MDM_REDIS_REFUSED:
        reason = ngx_http_mdm_copy(r, reply, &n, "redis refused the call, "
                                   "retry later: ");
        (void) ngx_http_mdm_device_auth_refuse(r, ctx,
                                 NGX_HTTP_SERVICE_UNAVAILABLE,
                                 reason ? (char *) reason : "redis refused");
        break;

    default:
        ctx->auth = ngx_http_mdm_device_auth_verdict(r, ctx, reply);
    }

    /* the reference the handler took; the phase engine has its own */
    r->main->count--;

    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_core_run_phases;

    ngx_http_core_run_phases(r);
    ngx_http_run_posted_requests(c);
}


/* { status, device id, reason } -> an HTTP status, the refusal logged. */

static ngx_uint_t
ngx_http_mdm_device_auth_verdict(ngx_http_request_t *r,
    ngx_http_mdm_ctx_t *ctx, redisReply *reply)
{
    size_t       n;
    u_char      *reason, *id;
    ngx_uint_t   status;
    redisReply **e;

    if (reply->type == REDIS_REPLY_ERROR) {
        reason = ngx_http_mdm_copy(r, reply, &n, "unexpected error from "
                                   "mdm.lua: ");
        return ngx_http_mdm_device_auth_refuse(r, ctx,
                                   NGX_HTTP_INTERNAL_SERVER_ERROR,
                                   reason ? (char *) reason : "redis error");
    }

    e = reply->element;

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3
        || e[0]->type != REDIS_REPLY_INTEGER
        || e[1]->type != REDIS_REPLY_STRING
        || e[2]->type != REDIS_REPLY_STRING)
    {
        return ngx_http_mdm_device_auth_refuse(r, ctx,
                                           NGX_HTTP_INTERNAL_SERVER_ERROR,
                                           "unexpected reply from mdm.lua");
    }

    /* hiredis frees the reply when we return: copy what we keep */

    id = ngx_http_mdm_copy(r, e[1], &n, NULL);
    if (id == NULL) {
        return ngx_http_mdm_device_auth_refuse(r, ctx,
                                           NGX_HTTP_INTERNAL_SERVER_ERROR,
                                           "out of memory");
    }

    /* named on refusals too, for the log line */
    ctx->enrollment_id.data = id;
    ctx->enrollment_id.len = n;

    status = (ngx_uint_t) e[0]->integer;

    if (status != NGX_HTTP_OK) {
        reason = ngx_http_mdm_copy(r, e[2], &n, NULL);
        return ngx_http_mdm_device_auth_refuse(r, ctx, status,
                                   reason ? (char *) reason : "refused");
    }

    ctx->msg.device_id = (char *) id;
    ctx->msg.device_id_len = n;

    if (ngx_http_mdm_check_cert_names(r, ctx) != NGX_OK) {
        return ngx_http_mdm_device_auth_refuse(r, ctx, NGX_HTTP_FORBIDDEN,
                             "device id is not the certificate's subject CN "
                             "or a SAN (mdm_require_id_in_cert)");
    }

    return NGX_HTTP_OK;
}


/*
 * One error_log line; the status goes back through the phase engine, so
 * nginx answers it (error_page, satisfy any). A 503 says when to retry.
 */

static ngx_int_t
ngx_http_mdm_device_auth_refuse(ngx_http_request_t *r,
    ngx_http_mdm_ctx_t *ctx, ngx_uint_t status, const char *reason)
{
    ngx_table_elt_t  *h;

    ngx_http_mdm_refuse_log(r, status, reason);

    if (status == NGX_HTTP_SERVICE_UNAVAILABLE) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h != NULL) {
            h->hash = 1;
            ngx_str_set(&h->key, "Retry-After");
            ngx_str_set(&h->value, NGX_HTTP_MDM_RETRY_AFTER);
        }
    }

    ctx->auth = status;

    return status;
}


/* mdm_device_auth; */

char *
ngx_http_mdm_device_auth_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_mdm_loc_conf_t  *mlcf = conf;

    if (mlcf->device_auth != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    mlcf->device_auth = 1;

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_mdm_device_auth_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_ACCESS_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_mdm_device_auth_handler;

    return NGX_OK;
}
