
/*
 * Copyright (C) The MDM module authors
 *
 * The request: method, size and content type, body in memory, then
 * identity, message, store and response, in that order. Every refusal is
 * one error_log line and changes nothing in Redis.
 */


#include "ngx_http_mdm.h"


#define NGX_HTTP_MDM_CT_CHECKIN  "application/x-apple-aspen-mdm-checkin"


static ngx_str_t  ngx_http_mdm_dash = ngx_string("-");


static void ngx_http_mdm_body_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_mdm_read_body(ngx_http_request_t *r,
    ngx_http_mdm_ctx_t *ctx, const char **reason);
static ngx_int_t ngx_http_mdm_check_topic(ngx_http_request_t *r,
    ngx_http_mdm_ctx_t *ctx);
static void ngx_http_mdm_message_cleanup(void *data);
static ngx_int_t ngx_http_mdm_content_type(ngx_http_request_t *r,
    const char *prefix, size_t len);
static const char *ngx_http_mdm_too_large(ngx_http_request_t *r,
    ngx_http_mdm_ctx_t *ctx, off_t len);
static void ngx_http_mdm_log_cuts(ngx_http_request_t *r,
    ngx_http_mdm_ctx_t *ctx);


ngx_int_t
ngx_http_mdm_handler(ngx_http_request_t *r)
{
    ngx_int_t                 rc;
    const char               *reason;
    ngx_table_elt_t          *h;
    ngx_pool_cleanup_t       *cln;
    ngx_http_mdm_ctx_t       *ctx;
    ngx_http_mdm_loc_conf_t  *mlcf;

    mlcf = ngx_http_get_module_loc_conf(r, ngx_http_mdm_module);

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_mdm_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* the decoded plist is freed with the request, on every path */
    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_mdm_message_cleanup;
    cln->data = &ctx->msg;

    ngx_http_set_ctx(r, ctx, ngx_http_mdm_module);

    if (r->method != NGX_HTTP_PUT) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        /* refuse() finalizes; the content phase finalizes NGX_DONE again */
        r->main->count++;

        h = ngx_list_push(&r->headers_out.headers);
        if (h != NULL) {
            h->hash = 1;
            ngx_str_set(&h->key, "Allow");
            ngx_str_set(&h->value, "PUT");
        }

        ngx_http_mdm_refuse(r, NGX_HTTP_NOT_ALLOWED,
                            "method is not PUT");
        return NGX_DONE;
    }

    switch (mlcf->endpoint) {

    case NGX_HTTP_MDM_CHECKIN:
        ctx->kind = MDM_KIND_CHECKIN;
        break;

    case NGX_HTTP_MDM_COMMAND:
        ctx->kind = MDM_KIND_REPORT;
        break;

    default: /* NGX_HTTP_MDM_ENDPOINT: one URL for both, as NanoMDM does */
        ctx->kind = ngx_http_mdm_content_type(r, NGX_HTTP_MDM_CT_CHECKIN,
                                    sizeof(NGX_HTTP_MDM_CT_CHECKIN) - 1)
                    ? MDM_KIND_CHECKIN : MDM_KIND_REPORT;
    }

    if (ctx->kind == MDM_KIND_CHECKIN) {
        ngx_str_set(&ctx->message_type, "CheckIn");

    } else {
        ngx_str_set(&ctx->message_type, "Report");
    }

    /* refused before it is read; a chunked body is checked once read */
    reason = ngx_http_mdm_too_large(r, ctx, r->headers_in.content_length_n);

    if (reason) {
        r->keepalive = 0;

        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        r->main->count++;

        ngx_http_mdm_refuse(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, reason);
        return NGX_DONE;
    }

    r->request_body_in_single_buf = 1;

    rc = ngx_http_read_client_request_body(r, ngx_http_mdm_body_handler);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_mdm_body_handler(ngx_http_request_t *r)
{
    ngx_int_t            rc;
    const char          *reason;
    ngx_http_mdm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_mdm_module);

    /*
     * Reports are told by their endpoint and checked by their content
     * (method, body, identity, plist): clients in use send them without a
     * Content-Type or with another one, and NanoMDM and MicroMDM take them.
     */

    if (ctx->kind == MDM_KIND_CHECKIN
        && !ngx_http_mdm_content_type(r, NGX_HTTP_MDM_CT_CHECKIN,
                                      sizeof(NGX_HTTP_MDM_CT_CHECKIN) - 1))
    {
        ngx_http_mdm_refuse(r, NGX_HTTP_BAD_REQUEST,
                            "Content-Type is not " NGX_HTTP_MDM_CT_CHECKIN);
        return;
    }

    rc = ngx_http_mdm_read_body(r, ctx, &reason);
    if (rc != NGX_OK) {
        ngx_http_mdm_refuse(r, rc, reason);
        return;
    }

    reason = ngx_http_mdm_too_large(r, ctx, ctx->body.len);
    if (reason) {
        ngx_http_mdm_refuse(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, reason);
        return;
    }

    /* identity before parsing: strangers do not reach the plist parser */

    rc = ngx_http_mdm_identify(r, ctx, &reason);
    if (rc != NGX_OK) {
        ngx_http_mdm_refuse(r, rc, reason);
        return;
    }

    rc = mdm_message_parse(&ctx->msg, ctx->kind, (char *) ctx->body.data,
                           ctx->body.len, &reason);

    if (ctx->msg.enrollment_id_len) {
        ctx->enrollment_id.data = (u_char *) ctx->msg.enrollment_id;
        ctx->enrollment_id.len = ctx->msg.enrollment_id_len;
    }

    if (ctx->msg.type_name) {
        ctx->message_type.data = (u_char *) ctx->msg.type_name;
        ctx->message_type.len = ngx_strlen(ctx->msg.type_name);
    }

    if (ctx->msg.status) {
        ctx->status.data = (u_char *) ctx->msg.status;
        ctx->status.len = ctx->msg.status_len;
    }

    if (ctx->msg.command_uuid) {
        ctx->command_uuid.data = (u_char *) ctx->msg.command_uuid;
        ctx->command_uuid.len = ctx->msg.command_uuid_len;
    }

    if (ctx->msg.endpoint) {
        ctx->ddm_endpoint.data = (u_char *) ctx->msg.endpoint;
        ctx->ddm_endpoint.len = ctx->msg.endpoint_len;
    }

    if (rc != 0) {
        ngx_http_mdm_refuse(r, rc, reason);
        return;
    }

    ngx_http_mdm_log_cuts(r, ctx);

    if (ngx_http_mdm_check_cert_names(r, ctx) != NGX_OK) {
        ngx_http_mdm_refuse(r, NGX_HTTP_FORBIDDEN,
                            "device id is not the certificate's subject CN "
                            "or a SAN (mdm_require_id_in_cert)");
        return;
    }

    if (ngx_http_mdm_check_topic(r, ctx) != NGX_OK) {
        ngx_http_mdm_refuse(r, NGX_HTTP_FORBIDDEN,
                            "Topic is not one of mdm_topic");
        return;
    }

    switch (ctx->msg.type) {

    case MDM_MSG_GET_TOKEN:
        ngx_http_mdm_refuse(r, NGX_HTTP_BAD_REQUEST,
                            "GetToken: no token service is configured");
        return;

    default:
        break;
    }

    rc = ngx_http_mdm_store(r, ctx);

    if (rc == NGX_DECLINED) {
        ngx_http_mdm_refuse(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                            "redis is not available");
        return;
    }

    if (rc != NGX_OK) {
        ngx_http_mdm_refuse(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                            "cannot send to redis");
    }

    /* the reply callback finalizes the request */
}


/* The whole body in one contiguous buffer in memory. */

static ngx_int_t
ngx_http_mdm_read_body(ngx_http_request_t *r, ngx_http_mdm_ctx_t *ctx,
    const char **reason)
{
    u_char       *p;
    size_t        len;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        *reason = "empty body";
        return NGX_HTTP_BAD_REQUEST;
    }

    if (r->request_body->temp_file) {
        *reason = "body larger than client_body_buffer_size; raise it to "
                  "client_max_body_size";
        return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
    }

    cl = r->request_body->bufs;

    if (cl->next == NULL) {
        b = cl->buf;
        ctx->body.data = b->pos;
        ctx->body.len = b->last - b->pos;

    } else {
        len = 0;
        for ( /* void */ ; cl; cl = cl->next) {
            len += cl->buf->last - cl->buf->pos;
        }

        p = ngx_pnalloc(r->pool, len);
        if (p == NULL) {
            *reason = "out of memory";
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ctx->body.data = p;
        ctx->body.len = len;

        /* a chunked body ends with an empty buffer whose pos is NULL */
        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            if (cl->buf->last != cl->buf->pos) {
                p = ngx_cpymem(p, cl->buf->pos,
                               cl->buf->last - cl->buf->pos);
            }
        }
    }

    if (ctx->body.len == 0) {
        *reason = "empty body";
        return NGX_HTTP_BAD_REQUEST;
    }

    return NGX_OK;
}


/* mdm_max_body: NULL when len is within the endpoint's limit. */

static const char *
ngx_http_mdm_too_large(ngx_http_request_t *r, ngx_http_mdm_ctx_t *ctx,
    off_t len)
{
    u_char                   *p;
    size_t                    max;
    ngx_http_mdm_loc_conf_t  *mlcf;

    mlcf = ngx_http_get_module_loc_conf(r, ngx_http_mdm_module);
    max = ctx->kind == MDM_KIND_CHECKIN ? mlcf->max_checkin
                                        : mlcf->max_report;

    if (len <= (off_t) max) {
        return NULL;
    }

    p = ngx_pnalloc(r->pool, 80 + 2 * NGX_OFF_T_LEN);
    if (p == NULL) {
        return "body over mdm_max_body";
    }

    *ngx_sprintf(p, "body of %O bytes is over \"mdm_max_body %s=%uz\"",
                 len, ctx->kind == MDM_KIND_CHECKIN ? "checkin" : "report",
                 max) = '\0';

    return (char *) p;
}


/* One line for each device-chosen name that was cut to its limit. */

static void
ngx_http_mdm_log_cuts(ngx_http_request_t *r, ngx_http_mdm_ctx_t *ctx)
{
    int  i;

    for (i = 0; i < ctx->msg.ntrunc; i++) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "mdm: %V id=\"%V\": %s of %uz bytes cut to %d bytes",
                      &ctx->message_type, &ctx->enrollment_id,
                      ctx->msg.trunc[i].key, ctx->msg.trunc[i].len,
                      MDM_NAME_MAX);
    }
}


/* mdm_max_body [checkin=size] [report=size] */

char *
ngx_http_mdm_max_body_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_mdm_loc_conf_t  *mlcf = conf;

    size_t      *sp;
    ngx_str_t   *value, s;
    ngx_uint_t   i;

    if (mlcf->max_checkin != NGX_CONF_UNSET_SIZE
        || mlcf->max_report != NGX_CONF_UNSET_SIZE)
    {
        return "is duplicate";
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "checkin=", 8) == 0) {
            sp = &mlcf->max_checkin;
            s.data = value[i].data + 8;
            s.len = value[i].len - 8;

        } else if (ngx_strncmp(value[i].data, "report=", 7) == 0) {
            sp = &mlcf->max_report;
            s.data = value[i].data + 7;
            s.len = value[i].len - 7;

        } else {
            goto invalid;
        }

        *sp = ngx_parse_size(&s);
        if (*sp == (size_t) NGX_ERROR || *sp == 0) {
            goto invalid;
        }
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "mdm_max_body: invalid parameter \"%V\"", &value[i]);
    return NGX_CONF_ERROR;
}


static ngx_int_t
ngx_http_mdm_check_topic(ngx_http_request_t *r, ngx_http_mdm_ctx_t *ctx)
{
    ngx_str_t                *t;
    ngx_uint_t                i;
    ngx_http_mdm_loc_conf_t  *mlcf;

    if (ctx->msg.topic == NULL) {
        return NGX_OK;
    }

    mlcf = ngx_http_get_module_loc_conf(r, ngx_http_mdm_module);
    t = mlcf->topics->elts;

    for (i = 0; i < mlcf->topics->nelts; i++) {
        if (t[i].len == ctx->msg.topic_len
            && ngx_strncmp(t[i].data, ctx->msg.topic, t[i].len) == 0)
        {
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_mdm_content_type(ngx_http_request_t *r, const char *prefix,
    size_t len)
{
    ngx_table_elt_t  *h;

    h = r->headers_in.content_type;

    if (h == NULL || h->value.len < len
        || ngx_strncasecmp(h->value.data, (u_char *) prefix, len) != 0)
    {
        return 0;
    }

    /* the type ends there: a parameter or nothing may follow */
    return h->value.len == len || h->value.data[len] == ';'
           || h->value.data[len] == ' ';
}


static void
ngx_http_mdm_message_cleanup(void *data)
{
    mdm_message_free(data);
}


/* One log line, an empty body, no state touched. */

void
ngx_http_mdm_refuse(ngx_http_request_t *r, ngx_uint_t status,
    const char *reason)
{
    ngx_http_mdm_refuse_log(r, status, reason);
    ngx_http_mdm_respond(r, status, NULL, NULL, 0);
}


/* The refusal's line (and $mdm_error), for callers that answer otherwise. */

void
ngx_http_mdm_refuse_log(ngx_http_request_t *r, ngx_uint_t status,
    const char *reason)
{
    ngx_uint_t           level;
    ngx_http_mdm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_mdm_module);

    if (ctx) {
        ctx->error.data = (u_char *) reason;
        ctx->error.len = ngx_strlen(reason);
    }

    level = (status == NGX_HTTP_SERVICE_UNAVAILABLE
             || status >= NGX_HTTP_INTERNAL_SERVER_ERROR)
            ? NGX_LOG_ERR : NGX_LOG_WARN;

    ngx_log_error(level, r->connection->log, 0,
                  "mdm: %ui %V id=\"%V\" cert=%s: %s", status,
                  (ctx && ctx->message_type.len) ? &ctx->message_type
                                                 : &ngx_http_mdm_dash,
                  ctx ? &ctx->enrollment_id : &ngx_http_mdm_dash,
                  (ctx && ctx->cert_sha256[0]) ? (char *) ctx->cert_sha256
                                               : "-",
                  reason);
}


void
ngx_http_mdm_respond(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *ct, u_char *body, size_t len)
{
    ngx_int_t         rc;
    ngx_buf_t        *b;
    ngx_chain_t       out;
    ngx_table_elt_t  *h;

    r->headers_out.status = status;
    r->headers_out.content_length_n = len;

    if (ct) {
        r->headers_out.content_type = *ct;
        r->headers_out.content_type_len = ct->len;
    }

    if (status == NGX_HTTP_SERVICE_UNAVAILABLE) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h != NULL) {
            h->hash = 1;
            ngx_str_set(&h->key, "Retry-After");
            ngx_str_set(&h->value, NGX_HTTP_MDM_RETRY_AFTER);
        }
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only || len == 0) {
        ngx_http_finalize_request(r, rc == NGX_ERROR || rc > NGX_OK
                                     ? rc : ngx_http_send_special(r,
                                                            NGX_HTTP_LAST));
        return;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }

    b->pos = body;
    b->last = body + len;
    b->memory = 1;
    b->last_buf = (r == r->main);
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    ngx_http_finalize_request(r, ngx_http_output_filter(r, &out));
}
