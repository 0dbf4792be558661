
/*
 * Copyright (C) The MDM module authors
 *
 * One Redis Function call per device request (redis-scripts/mdm.lua does
 * every read and write of it atomically), and the translation of its reply
 * into the HTTP response.
 *
 * Reply of mdm_checkin / mdm_report: { status, kind, payload, reason,
 * command uuid, request type }; kind is "" (empty body), "command" (payload
 * is the command plist), "bootstrap" (payload is the raw token), "digest"
 * (an empty DigestChallenge), "json" (a DDM reply body) or "rts" (payload
 * is Enabled, "1" or "0"; when "1", elements 7 to 9 are the Wi-Fi profile,
 * the MDM profile and the sealed BootstrapToken, "" for none).
 */


#include "ngx_http_mdm.h"


#define NGX_HTTP_MDM_ARGS_MAX   (18 + 2 * MDM_KV_MAX)


static void ngx_http_mdm_store_done(ngx_int_t rc, redisReply *reply,
    void *data);
static void ngx_http_mdm_store_reply(ngx_http_request_t *r,
    redisReply *reply);
static ngx_int_t ngx_http_mdm_bootstrap_plist(ngx_http_request_t *r,
    u_char *token, size_t len, ngx_str_t *out);
static void ngx_http_mdm_rts(ngx_http_request_t *r, redisReply *reply);
static ngx_int_t ngx_http_mdm_binary(ngx_http_request_t *r,
    ngx_http_mdm_ctx_t *ctx, ngx_str_t *out);
static ngx_int_t ngx_http_mdm_adopt(ngx_http_request_t *r, char *buf,
    uint32_t n, ngx_str_t *out);


static ngx_str_t  ngx_http_mdm_xml = ngx_string("application/xml");
static ngx_str_t  ngx_http_mdm_json = ngx_string("application/json");

static u_char  ngx_http_mdm_digest[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" "
    "\"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n"
    "<plist version=\"1.0\">\n<dict>\n"
    "\t<key>DigestChallenge</key>\n\t<string></string>\n"
    "</dict>\n</plist>\n";


ngx_int_t
ngx_http_mdm_store(ngx_http_request_t *r, ngx_http_mdm_ctx_t *ctx)
{
    int                        argc, i;
    u_char                    *p, *flags, *enr, *cert, *na, *dl;
    ngx_int_t                  rc;
    ngx_str_t                  raw, v;
    size_t                     len[NGX_HTTP_MDM_ARGS_MAX];
    const char                *argv[NGX_HTTP_MDM_ARGS_MAX];
    mdm_message_t             *m;
    ngx_http_cleanup_t        *cln;
    ngx_http_mdm_loc_conf_t   *mlcf;
    ngx_http_mdm_srv_conf_t   *mscf;

    m = &ctx->msg;
    mlcf = ngx_http_get_module_loc_conf(r, ngx_http_mdm_module);
    mscf = ngx_http_get_module_srv_conf(r, ngx_http_mdm_module);

    len[3] = MDM_KEY_ENR_FIXED + m->device_id_len + m->enrollment_id_len;
    enr = ngx_pnalloc(r->pool, len[3] + MDM_KEY_CERT_FIXED + 64
                               + 1 + 2 * NGX_INT64_LEN);
    if (enr == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(enr, MDM_KEY_ENR_NGX, m->device_id_len, m->device_id,
                    m->enrollment_id_len, m->enrollment_id);

    cert = p;
    p = ngx_sprintf(cert, MDM_KEY_CERT_NGX, (size_t) 64, ctx->cert_sha256);
    len[4] = p - cert;

    /* rebind and migration are policy in Redis (K_POLICY), not ARGV */
    flags = p;
    if (mlcf->user_auth == NGX_HTTP_MDM_UA_ACCEPT) {
        *p++ = 'a';
    }
    len[10] = p - flags;

    na = p;
    p = ngx_sprintf(na, "%T", ctx->cert_not_after);
    len[11] = p - na;

    dl = p;
    p = ngx_http_mdm_deadline(mscf, dl);
    len[13] = p - dl;

    argv[0] = "FCALL";
    len[0] = 5;

    if (m->type == MDM_MSG_REPORT) {
        argv[1] = "mdm_report";
        len[1] = sizeof("mdm_report") - 1;

    } else {
        argv[1] = "mdm_checkin";
        len[1] = sizeof("mdm_checkin") - 1;
    }

    argv[2] = "3";
    len[2] = 1;
    argv[3] = (char *) enr;
    argv[4] = (char *) cert;
    argv[5] = MDM_KEY_EVENTS;
    len[5] = sizeof(MDM_KEY_EVENTS) - 1;
    argv[6] = m->type_name;
    len[6] = ngx_strlen(m->type_name);
    argv[7] = m->enrollment_id;
    len[7] = m->enrollment_id_len;
    argv[8] = m->device_id;
    len[8] = m->device_id_len;
    argv[9] = m->channel;
    len[9] = ngx_strlen(m->channel);
    argv[10] = (char *) flags;
    argv[11] = (char *) na;
    argv[12] = (char *) ctx->cert_sha256;
    len[12] = 64;
    argv[13] = (char *) dl;
    argc = 14;

    if (m->type == MDM_MSG_REPORT) {
        argv[argc] = m->status;
        len[argc++] = m->status_len;
        argv[argc] = m->command_uuid ? m->command_uuid : "";
        len[argc++] = m->command_uuid_len;
        argv[argc] = (char *) ctx->body.data;
        len[argc++] = ctx->body.len;

    } else {
        for (i = 0; i < m->nkv; i++) {
            v.data = (u_char *) m->kv[i].val;
            v.len = m->kv[i].len;

            if (ngx_http_mdm_secret_seal(r, m, m->kv[i].key, &v) != NGX_OK) {
                return NGX_ERROR;
            }

            m->kv[i].val = (char *) v.data;
            m->kv[i].len = v.len;

            argv[argc] = m->kv[i].key;
            len[argc++] = ngx_strlen(m->kv[i].key);
            argv[argc] = m->kv[i].val;
            len[argc++] = m->kv[i].len;
        }

        if (m->type == MDM_MSG_AUTHENTICATE
            || m->type == MDM_MSG_TOKEN_UPDATE)
        {
            if (ngx_http_mdm_binary(r, ctx, &raw) != NGX_OK) {
                return NGX_ERROR;
            }

            argv[argc] = "Raw";
            len[argc++] = 3;
            argv[argc] = (char *) raw.data;
            len[argc++] = raw.len;
        }
    }

    /* a request that goes first detaches, so a late reply finds nothing */
    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    rc = ngx_http_mdm_redis_call(mscf->redis, argc, argv, len, mscf->timeout,
                                 r->connection->log, ngx_http_mdm_store_done,
                                 r, &ctx->op);
    if (rc != NGX_OK) {
        return rc;
    }

    cln->handler = ngx_http_mdm_op_cleanup;
    cln->data = ctx;

    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_request_empty_handler;

    return NGX_OK;
}


/*
 * The deadline argument (Unix ms) of a device call: the function refuses
 * to run past the moment our timer answers 503 (less a margin for the trip
 * back), so a timed-out request changes nothing. Writes at most
 * NGX_INT64_LEN bytes at p; returns their end.
 */

u_char *
ngx_http_mdm_deadline(ngx_http_mdm_srv_conf_t *mscf, u_char *p)
{
    ngx_msec_t   margin;
    ngx_time_t  *tp;

    margin = ngx_min(mscf->timeout / 4, 500);
    tp = ngx_timeofday();

    return ngx_sprintf(p, "%uM", (uint64_t) tp->sec * 1000 + tp->msec
                                 + mscf->timeout - margin);
}


/* A request that goes first detaches its call (a cleanup of ctx). */

void
ngx_http_mdm_op_cleanup(void *data)
{
    ngx_http_mdm_ctx_t  *ctx = data;

    if (ctx->op) {
        ngx_http_mdm_redis_cancel(ctx->op);
        ctx->op = NULL;
    }
}


/* The transport's report: the request's answer, then its posted work. */

static void
ngx_http_mdm_store_done(ngx_int_t rc, redisReply *reply, void *data)
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
        /* the call may still run: mdm.lua refuses it past our deadline */
        ngx_http_mdm_refuse(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                            "redis did not answer in time");
        break;

    case NGX_HTTP_MDM_REDIS_DOWN:
        ngx_http_mdm_refuse(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                            "redis connection lost");
        break;

    case NGX_HTTP_MDM_REDIS_REFUSED:
        reason = ngx_http_mdm_copy(r, reply, &n, "redis refused the call, "
                                   "retry later: ");
        ngx_http_mdm_refuse(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                            reason ? (char *) reason : "redis refused");
        break;

    default:
        ngx_http_mdm_store_reply(r, reply);
    }

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_mdm_store_reply(ngx_http_request_t *r, redisReply *reply)
{
    size_t               n;
    u_char              *payload, *reason;
    ngx_str_t            body;
    ngx_uint_t           status;
    redisReply         **e;
    ngx_http_mdm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_mdm_module);

    if (reply->type == REDIS_REPLY_ERROR) {
        reason = ngx_http_mdm_copy(r, reply, &n, "unexpected error from "
                                   "mdm.lua: ");
        ngx_http_mdm_refuse(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                            reason ? (char *) reason : "redis error");
        return;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 4
        || reply->element[0]->type != REDIS_REPLY_INTEGER)
    {
        ngx_http_mdm_refuse(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                            "unexpected reply from mdm.lua");
        return;
    }

    e = reply->element;
    status = (ngx_uint_t) e[0]->integer;

    /* hiredis frees the reply when we return: copy what we keep */

    if (reply->elements >= 6 && e[4]->len) {
        ctx->command_uuid.data = ngx_http_mdm_copy(r, e[4],
                                                   &ctx->command_uuid.len,
                                                   NULL);
        ctx->request_type.data = ngx_http_mdm_copy(r, e[5],
                                                   &ctx->request_type.len,
                                                   NULL);
    }

    if (status != NGX_HTTP_OK) {
        reason = ngx_http_mdm_copy(r, e[3], &n, NULL);
        ngx_http_mdm_refuse(r, status, reason ? (char *) reason : "refused");
        return;
    }

    if (e[1]->len == 0) {
        ngx_http_mdm_respond(r, NGX_HTTP_OK, NULL, NULL, 0);
        return;
    }

    payload = ngx_http_mdm_copy(r, e[2], &n, NULL);
    if (payload == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    switch (e[1]->str[0]) {

    case 'c': /* command */
        ngx_http_mdm_respond(r, NGX_HTTP_OK, &ngx_http_mdm_xml, payload, n);
        return;

    case 'b': /* bootstrap */
        if (n == 0) {
            ngx_http_mdm_respond(r, NGX_HTTP_OK, NULL, NULL, 0);
            return;
        }

        /* the device may ask again once the key file is fixed */
        body.data = payload;
        body.len = n;
        reason = (u_char *) ngx_http_mdm_secret_open(r, MDM_SECRET_BOOTSTRAP,
                                                     ctx->msg.device_id,
                                                     ctx->msg.device_id_len,
                                                     &body);
        if (reason) {
            ngx_http_mdm_refuse(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                (char *) reason);
            return;
        }

        if (ngx_http_mdm_bootstrap_plist(r, body.data, body.len, &body)
            != NGX_OK)
        {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
            return;
        }

        ngx_http_mdm_respond(r, NGX_HTTP_OK, &ngx_http_mdm_xml, body.data,
                             body.len);
        return;

    case 'j': /* json: DDM */
        ngx_http_mdm_respond(r, NGX_HTTP_OK, &ngx_http_mdm_json, payload, n);
        return;

    case 'r': /* rts */
        ngx_http_mdm_rts(r, reply);
        return;

    case 'd': /* digest */
        ngx_http_mdm_respond(r, NGX_HTTP_OK, &ngx_http_mdm_xml,
                             ngx_http_mdm_digest,
                             sizeof(ngx_http_mdm_digest) - 1);
        return;

    default:
        ngx_http_mdm_refuse(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                            "unknown reply kind from mdm.lua");
    }
}


/*
 * {ReturnToService: {Enabled, WiFiProfileData?, MDMProfileData?,
 * BootstrapToken?}} (returntoservice.yaml); only Enabled when it is false.
 */

static void
ngx_http_mdm_rts(ngx_http_request_t *r, redisReply *reply)
{
    char                *xml;
    size_t               i;
    plist_t              root, dict;
    uint32_t             n;
    ngx_str_t            body, bt;
    ngx_uint_t           on;
    const char          *reason;
    redisReply         **e;
    ngx_http_mdm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_mdm_module);
    e = reply->element;

    on = e[2]->type == REDIS_REPLY_STRING && e[2]->len == 1
         && e[2]->str[0] == '1';

    for (i = 6; on && i < 9; i++) {
        if (i >= reply->elements || e[i]->type != REDIS_REPLY_STRING) {
            ngx_http_mdm_refuse(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                "unexpected ReturnToService reply from "
                                "mdm.lua");
            return;
        }
    }

    bt.len = 0;

    if (on && e[8]->len) {
        bt.data = (u_char *) e[8]->str;
        bt.len = e[8]->len;

        /* as GetBootstrapToken: asked again once the key file is fixed */
        reason = ngx_http_mdm_secret_open(r, MDM_SECRET_BOOTSTRAP,
                                          ctx->msg.device_id,
                                          ctx->msg.device_id_len, &bt);
        if (reason) {
            ngx_http_mdm_refuse(r, NGX_HTTP_SERVICE_UNAVAILABLE, reason);
            return;
        }
    }

    root = plist_new_dict();
    dict = plist_new_dict();
    if (root == NULL || dict == NULL) {
        plist_free(root);
        plist_free(dict);
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    plist_dict_set_item(dict, "Enabled", plist_new_bool(on));

    if (on) {
        if (e[6]->len) {
            plist_dict_set_item(dict, "WiFiProfileData",
                                plist_new_data(e[6]->str, e[6]->len));
        }

        if (e[7]->len) {
            plist_dict_set_item(dict, "MDMProfileData",
                                plist_new_data(e[7]->str, e[7]->len));
        }

        if (bt.len) {
            plist_dict_set_item(dict, "BootstrapToken",
                                plist_new_data((char *) bt.data, bt.len));
        }
    }

    plist_dict_set_item(root, "ReturnToService", dict);

    xml = NULL;
    plist_to_xml(root, &xml, &n);
    plist_free(root);

    if (ngx_http_mdm_adopt(r, xml, n, &body) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_http_mdm_respond(r, NGX_HTTP_OK, &ngx_http_mdm_xml, body.data,
                         body.len);
}


/*
 * The raw message as a binary plist: the same content in about half the
 * bytes, which keeps an enrollment within 2 KB of Redis. The UnlockToken
 * is left out: its one copy is the sealed unlock_token field (the store
 * has already copied it out of the plist).
 */

static ngx_int_t
ngx_http_mdm_binary(ngx_http_request_t *r, ngx_http_mdm_ctx_t *ctx,
    ngx_str_t *out)
{
    char      *bin;
    uint32_t   n;

    if (plist_dict_get_item(ctx->msg.root, "UnlockToken")) {
        plist_dict_remove_item(ctx->msg.root, "UnlockToken");

    } else if (plist_is_binary((char *) ctx->body.data, ctx->body.len)) {
        *out = ctx->body;
        return NGX_OK;
    }

    bin = NULL;
    plist_to_bin(ctx->msg.root, &bin, &n);

    return ngx_http_mdm_adopt(r, bin, n, out);
}


/* Moves a buffer libplist allocated into the request pool. */

static ngx_int_t
ngx_http_mdm_adopt(ngx_http_request_t *r, char *buf, uint32_t n,
    ngx_str_t *out)
{
    if (buf == NULL) {
        return NGX_ERROR;
    }

    out->data = ngx_pnalloc(r->pool, n);
    if (out->data != NULL) {
        ngx_memcpy(out->data, buf, n);
        out->len = n;
    }

    free(buf);

    return out->data ? NGX_OK : NGX_ERROR;
}


/*
 * A NUL-terminated copy of a string reply element in the request pool,
 * after an optional prefix (*len counts the element alone).
 */

u_char *
ngx_http_mdm_copy(ngx_http_request_t *r, redisReply *e, size_t *len,
    const char *prefix)
{
    u_char  *p, *q;
    size_t   plen;

    *len = 0;

    if (e->type != REDIS_REPLY_STRING && e->type != REDIS_REPLY_STATUS
        && e->type != REDIS_REPLY_ERROR)
    {
        return NULL;
    }

    plen = prefix ? ngx_strlen(prefix) : 0;

    p = ngx_pnalloc(r->pool, plen + e->len + 1);
    if (p == NULL) {
        return NULL;
    }

    q = plen ? ngx_cpymem(p, prefix, plen) : p;
    ngx_memcpy(q, e->str, e->len);
    q[e->len] = '\0';
    *len = e->len;

    return p;
}


static ngx_int_t
ngx_http_mdm_bootstrap_plist(ngx_http_request_t *r, u_char *token,
    size_t len, ngx_str_t *out)
{
    char      *xml;
    plist_t    dict;
    uint32_t   n;

    dict = plist_new_dict();
    if (dict == NULL) {
        return NGX_ERROR;
    }

    plist_dict_set_item(dict, "BootstrapToken",
                        plist_new_data((char *) token, len));

    xml = NULL;
    plist_to_xml(dict, &xml, &n);
    plist_free(dict);

    return ngx_http_mdm_adopt(r, xml, n, out);
}
