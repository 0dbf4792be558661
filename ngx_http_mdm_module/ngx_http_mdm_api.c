
/*
 * Copyright (C) The MDM module authors
 *
 * mdm_api: the HTTP API for admins and their tools (NanoMDM's paths and
 * shapes, and ours). The module checks the key, reads the body and makes
 * one FCALL mdm_api, which routes and answers with { status, JSON }; only
 * PUT v1/pushcert is looked at here first (the certificate and its key are
 * checked with OpenSSL, which Redis cannot do). mdm_api is an admin
 * function: the server's mdm_redis must log in as an admin user.
 */


#include <openssl/pem.h>
#include <openssl/x509.h>

#include "ngx_http_mdm.h"


#define NGX_HTTP_MDM_API_USER    "nanomdm"


typedef struct {
    ngx_flag_t                  enabled;
    ngx_str_t                   key;         /* empty: mdm_api_key off */
    ngx_flag_t                  key_set;
} ngx_http_mdm_api_loc_conf_t;


typedef struct {
    ngx_str_t                   path;        /* relative to the location */
    ngx_str_t                   body;
    u_char                      topic[256];
    size_t                      topic_len;
    u_char                      not_after[32];
    size_t                      not_after_len;
    ngx_http_mdm_redis_op_t    *op;
} ngx_http_mdm_api_ctx_t;


static ngx_int_t ngx_http_mdm_api_handler(ngx_http_request_t *r);
static void ngx_http_mdm_api_body(ngx_http_request_t *r);
static void ngx_http_mdm_api_call(ngx_http_request_t *r,
    ngx_http_mdm_api_ctx_t *ctx);
static void ngx_http_mdm_api_done(ngx_int_t rc, redisReply *reply,
    void *data);
static ngx_int_t ngx_http_mdm_api_auth(ngx_http_request_t *r,
    ngx_http_mdm_api_loc_conf_t *alcf);
static const char *ngx_http_mdm_api_pushcert(ngx_http_mdm_api_ctx_t *ctx);
static void ngx_http_mdm_api_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *reason);
static void ngx_http_mdm_api_json(ngx_http_request_t *r, ngx_uint_t status,
    u_char *json, size_t len);
static void ngx_http_mdm_api_cleanup(void *data);
static char *ngx_http_mdm_api(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_mdm_api_key(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static void *ngx_http_mdm_api_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_mdm_api_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);


static ngx_command_t  ngx_http_mdm_api_commands[] = {

    { ngx_string("mdm_api"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_mdm_api,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("mdm_api_key"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_mdm_api_key,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_mdm_api_module_ctx = {
    NULL,                                  /* preconfiguration */
    NULL,                                  /* postconfiguration */
    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */
    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */
    ngx_http_mdm_api_create_loc_conf,      /* create location configuration */
    ngx_http_mdm_api_merge_loc_conf        /* merge location configuration */
};


ngx_module_t  ngx_http_mdm_api_module = {
    NGX_MODULE_V1,
    &ngx_http_mdm_api_module_ctx,          /* module context */
    ngx_http_mdm_api_commands,             /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_str_t  ngx_http_mdm_api_ct = ngx_string("application/json");


static ngx_int_t
ngx_http_mdm_api_handler(ngx_http_request_t *r)
{
    ngx_int_t                     rc;
    ngx_http_mdm_api_ctx_t       *ctx;
    ngx_http_core_loc_conf_t     *clcf;
    ngx_http_mdm_api_loc_conf_t  *alcf;

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_mdm_api_module);

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_mdm_api_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_set_ctx(r, ctx, ngx_http_mdm_api_module);

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD|NGX_HTTP_PUT|NGX_HTTP_POST
                       |NGX_HTTP_DELETE)))
    {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        r->main->count++;
        ngx_http_mdm_api_error(r, NGX_HTTP_NOT_ALLOWED,
                               "method not allowed (GET, PUT, POST, DELETE)");
        return NGX_DONE;
    }

    /* paths are relative to the location: /api/v1/push/X -> v1/push/X */
    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    ctx->path = r->uri;

    if (!clcf->regex && r->uri.len >= clcf->name.len
        && ngx_strncmp(r->uri.data, clcf->name.data, clcf->name.len) == 0)
    {
        ctx->path.data += clcf->name.len;
        ctx->path.len -= clcf->name.len;
    }

    while (ctx->path.len && ctx->path.data[0] == '/') {
        ctx->path.data++;
        ctx->path.len--;
    }

    if (ngx_http_mdm_api_auth(r, alcf) != NGX_OK) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        r->main->count++;
        ngx_http_mdm_api_error(r, NGX_HTTP_UNAUTHORIZED,
                               "missing or wrong API key");
        return NGX_DONE;
    }

    if (!(r->method & (NGX_HTTP_PUT|NGX_HTTP_POST))) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        r->main->count++;
        ngx_http_mdm_api_call(r, ctx);
        return NGX_DONE;
    }

    r->request_body_in_single_buf = 1;

    rc = ngx_http_read_client_request_body(r, ngx_http_mdm_api_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_mdm_api_body(ngx_http_request_t *r)
{
    u_char                  *p;
    size_t                   len;
    ngx_chain_t             *cl;
    const char              *err;
    ngx_http_mdm_api_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_mdm_api_module);

    if (r->request_body && r->request_body->temp_file) {
        ngx_http_mdm_api_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                               "body larger than client_body_buffer_size "
                               "(bodies are read in memory)");
        return;
    }

    len = 0;
    if (r->request_body) {
        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            len += cl->buf->last - cl->buf->pos;
        }
    }

    ctx->body.data = ngx_pnalloc(r->pool, len + 1);
    if (ctx->body.data == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    p = ctx->body.data;
    if (r->request_body) {
        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            p = ngx_cpymem(p, cl->buf->pos, cl->buf->last - cl->buf->pos);
        }
    }

    *p = '\0';
    ctx->body.len = len;

    if (r->method == NGX_HTTP_PUT && ctx->path.len == 11
        && ngx_strncmp(ctx->path.data, "v1/pushcert", 11) == 0)
    {
        err = ngx_http_mdm_api_pushcert(ctx);
        if (err) {
            ngx_http_mdm_api_error(r, NGX_HTTP_BAD_REQUEST, err);
            return;
        }
    }

    ngx_http_mdm_api_call(r, ctx);
}


static void
ngx_http_mdm_api_call(ngx_http_request_t *r, ngx_http_mdm_api_ctx_t *ctx)
{
    int                        argc;
    size_t                     len[10];
    ngx_int_t                  rc;
    const char                *argv[10];
    ngx_http_cleanup_t        *cln;
    ngx_http_mdm_srv_conf_t   *mscf;

    mscf = ngx_http_get_module_srv_conf(r, ngx_http_mdm_module);

    if (mscf->redis == NULL) {
        ngx_http_mdm_api_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                               "no mdm_redis for mdm_api");
        return;
    }

    argv[0] = "FCALL";
    argv[1] = "mdm_api";
    argv[2] = "0";
    argv[3] = (const char *) r->method_name.data;
    argv[4] = (const char *) ctx->path.data;
    argv[5] = (const char *) r->args.data;
    argv[6] = (const char *) ctx->body.data;

    len[0] = 5;
    len[1] = 7;
    len[2] = 1;
    len[3] = r->method == NGX_HTTP_HEAD ? 3 : r->method_name.len;
    len[4] = ctx->path.len;
    len[5] = r->args.len;
    len[6] = ctx->body.len;

    if (r->method == NGX_HTTP_HEAD) {
        argv[3] = "GET";
    }

    argc = 7;

    if (ctx->topic_len) {
        argv[7] = (const char *) ctx->topic;
        argv[8] = (const char *) ctx->not_after;
        len[7] = ctx->topic_len;
        len[8] = ctx->not_after_len;
        argc = 9;
    }

    /* hiredis takes lengths; a NULL pointer with length 0 is not allowed */
    if (argv[5] == NULL) {
        argv[5] = "";
    }

    if (argv[6] == NULL) {
        argv[6] = "";
    }

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    rc = ngx_http_mdm_redis_call(mscf->redis, argc, argv, len, mscf->timeout,
                                 r->connection->log, ngx_http_mdm_api_done, r,
                                 &ctx->op);
    if (rc != NGX_OK) {
        ngx_http_mdm_api_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                               "redis is not available");
        return;
    }

    cln->handler = ngx_http_mdm_api_cleanup;
    cln->data = ctx;
}


static void
ngx_http_mdm_api_done(ngx_int_t rc, redisReply *reply, void *data)
{
    ngx_http_request_t  *r = data;

    u_char                  *json;
    ngx_int_t                status;
    ngx_connection_t        *c;
    ngx_http_mdm_api_ctx_t  *ctx;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_mdm_api_module);
    ctx->op = NULL;

    if (rc != NGX_HTTP_MDM_REDIS_REPLY) {
        ngx_http_mdm_api_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                               "redis is not available");
        goto done;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, c->log, 0,
                      "mdm: api: redis refused mdm_api: %*s (the server's "
                      "mdm_redis must log in as an admin user)",
                      reply->len, reply->str);
        ngx_http_mdm_api_json(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                              (u_char *) "{\"error\":\"redis refused the "
                              "call (see error_log)\"}", 50);
        goto done;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2
        || reply->element[0]->type != REDIS_REPLY_INTEGER
        || reply->element[1]->type != REDIS_REPLY_STRING)
    {
        ngx_log_error(NGX_LOG_ERR, c->log, 0,
                      "mdm: api: unexpected reply from mdm_api "
                      "(is library %s loaded?)", NGX_HTTP_MDM_LIB_VERSION);
        ngx_http_mdm_api_json(r, NGX_HTTP_INTERNAL_SERVER_ERROR, NULL, 0);
        goto done;
    }

    status = reply->element[0]->integer;

    json = ngx_pnalloc(r->pool, reply->element[1]->len);
    if (json == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        goto done;
    }

    ngx_memcpy(json, reply->element[1]->str, reply->element[1]->len);

    if (status >= 400) {
        ngx_log_error(NGX_LOG_WARN, c->log, 0,
                      "mdm: api %i %V /%V: %*s", status, &r->method_name,
                      &ctx->path, ngx_min(reply->element[1]->len, 300),
                      json);
    }

    ngx_http_mdm_api_json(r, status, json, reply->element[1]->len);

done:

    ngx_http_run_posted_requests(c);
}


/*
 * HTTP Basic with NanoMDM's user and the key, compared in constant time.
 * mdm_api_key off leaves it to nginx (auth_basic, auth_request, allow).
 */

static ngx_int_t
ngx_http_mdm_api_auth(ngx_http_request_t *r,
    ngx_http_mdm_api_loc_conf_t *alcf)
{
    u_char      *p, d;
    size_t       i, n;
    ngx_str_t    user, pass, want;

    if (alcf->key.len == 0) {
        return NGX_OK;
    }

    if (ngx_http_auth_basic_user(r) != NGX_OK) {
        return NGX_DECLINED;
    }

    user = r->headers_in.user;
    pass = r->headers_in.passwd;
    ngx_str_set(&want, NGX_HTTP_MDM_API_USER);

    if (user.len != want.len
        || ngx_strncmp(user.data, want.data, want.len) != 0)
    {
        return NGX_DECLINED;
    }

    p = pass.data;
    n = ngx_max(pass.len, alcf->key.len);
    d = (u_char) (pass.len != alcf->key.len);

    for (i = 0; i < n; i++) {
        d |= (i < pass.len ? p[i] : 0)
             ^ (i < alcf->key.len ? alcf->key.data[i] : 0);
    }

    return d == 0 ? NGX_OK : NGX_DECLINED;
}


/* The PEM certificate and unencrypted key of PUT v1/pushcert. */

static const char *
ngx_http_mdm_api_pushcert(ngx_http_mdm_api_ctx_t *ctx)
{
    int                    n, ok;
    BIO                   *bio;
    X509                  *x;
    EVP_PKEY              *pkey;
    struct tm              tm;
    X509_NAME             *name;
    const char            *err;
    const ASN1_TIME       *na;
    X509_NAME_ENTRY       *ent;
    const ASN1_STRING     *uid;

    x = NULL;
    pkey = NULL;
    err = NULL;

    bio = BIO_new_mem_buf(ctx->body.data, (int) ctx->body.len);
    if (bio) {
        x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        BIO_free(bio);
    }

    bio = BIO_new_mem_buf(ctx->body.data, (int) ctx->body.len);
    if (bio) {
        /* an empty passphrase: an encrypted key fails instead of asking */
        pkey = PEM_read_bio_PrivateKey(bio, NULL, NULL, (void *) "");
        BIO_free(bio);
    }

    ERR_clear_error();

    if (x == NULL) {
        err = "no PEM certificate in the body";
        goto done;
    }

    if (pkey == NULL) {
        err = "no unencrypted PEM private key in the body";
        goto done;
    }

    ok = X509_check_private_key(x, pkey);
    ERR_clear_error();

    if (ok != 1) {
        err = "the private key does not match the certificate";
        goto done;
    }

    /* the APNs topic is the subject's UID attribute */
    name = X509_get_subject_name(x);
    n = X509_NAME_get_index_by_NID(name, NID_userId, -1);
    ent = n >= 0 ? X509_NAME_get_entry(name, n) : NULL;
    uid = ent ? X509_NAME_ENTRY_get_data(ent) : NULL;

    if (uid == NULL || ASN1_STRING_length(uid) <= 0
        || ASN1_STRING_length(uid) >= (int) sizeof(ctx->topic))
    {
        err = "the certificate has no UID (topic): not an APNs certificate";
        goto done;
    }

    ctx->topic_len = ASN1_STRING_length(uid);
    ngx_memcpy(ctx->topic, ASN1_STRING_get0_data(uid), ctx->topic_len);

    for (n = 0; n < (int) ctx->topic_len; n++) {
        if (ctx->topic[n] <= ' ' || ctx->topic[n] >= 0x7f) {
            ctx->topic_len = 0;
            err = "the certificate's UID (topic) is not printable";
            goto done;
        }
    }

    na = X509_get0_notAfter(x);

    if (ASN1_TIME_to_tm(na, &tm) != 1) {
        ctx->topic_len = 0;
        err = "the certificate's notAfter cannot be read";
        goto done;
    }

    ctx->not_after_len = ngx_sprintf(ctx->not_after,
                                     "%4d-%02d-%02dT%02d:%02d:%02dZ",
                                     tm.tm_year + 1900, tm.tm_mon + 1,
                                     tm.tm_mday, tm.tm_hour, tm.tm_min,
                                     tm.tm_sec)
                         - ctx->not_after;

done:

    X509_free(x);
    EVP_PKEY_free(pkey);
    ERR_clear_error();

    return err;
}


static void
ngx_http_mdm_api_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *reason)
{
    u_char              *json, *p;
    size_t               len;
    ngx_uint_t           level;
    ngx_table_elt_t     *h;

    level = status >= NGX_HTTP_INTERNAL_SERVER_ERROR ? NGX_LOG_ERR
                                                     : NGX_LOG_WARN;

    ngx_log_error(level, r->connection->log, 0, "mdm: api %ui %V: %s",
                  status, &r->uri, reason);

    if (status == NGX_HTTP_UNAUTHORIZED) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h != NULL) {
            h->hash = 1;
            ngx_str_set(&h->key, "WWW-Authenticate");
            ngx_str_set(&h->value, "Basic realm=\"mdm\"");
        }
    }

    len = ngx_strlen(reason);
    json = ngx_pnalloc(r->pool, sizeof("{\"error\":\"\"}") - 1
                                + len + ngx_escape_json(NULL, (u_char *) reason,
                                                        len));
    if (json == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    p = ngx_cpymem(json, "{\"error\":\"", 10);
    p = (u_char *) ngx_escape_json(p, (u_char *) reason, len);
    p = ngx_cpymem(p, "\"}", 2);

    ngx_http_mdm_api_json(r, status, json, p - json);
}


static void
ngx_http_mdm_api_json(ngx_http_request_t *r, ngx_uint_t status,
    u_char *json, size_t len)
{
    ngx_table_elt_t  *h;

    if (status == NGX_HTTP_NOT_ALLOWED) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h != NULL) {
            h->hash = 1;
            ngx_str_set(&h->key, "Allow");
            ngx_str_set(&h->value, "GET, PUT, POST, DELETE");
        }
    }

    ngx_http_mdm_respond(r, status, &ngx_http_mdm_api_ct, json, len);
}


static void
ngx_http_mdm_api_cleanup(void *data)
{
    ngx_http_mdm_api_ctx_t  *ctx = data;

    if (ctx->op) {
        ngx_http_mdm_redis_cancel(ctx->op);
        ctx->op = NULL;
    }
}


static char *
ngx_http_mdm_api(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_mdm_api_loc_conf_t *alcf = conf;

    ngx_http_core_loc_conf_t  *clcf;

    if (alcf->enabled == 1) {
        return "is duplicate";
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler) {
        return "conflicts with another handler";
    }

    clcf->handler = ngx_http_mdm_api_handler;
    alcf->enabled = 1;

    return NGX_CONF_OK;
}


/* mdm_api_key KEY | file:PATH | off */

static char *
ngx_http_mdm_api_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_mdm_api_loc_conf_t *alcf = conf;

    u_char           *p;
    ssize_t           n;
    ngx_fd_t          fd;
    ngx_str_t        *value, path;
    ngx_file_info_t   fi;

    if (alcf->key_set) {
        return "is duplicate";
    }

    value = cf->args->elts;
    alcf->key_set = 1;

    if (value[1].len == 3 && ngx_strncmp(value[1].data, "off", 3) == 0) {
        ngx_str_null(&alcf->key);
        return NGX_CONF_OK;
    }

    if (value[1].len <= 5 || ngx_strncmp(value[1].data, "file:", 5) != 0) {
        if (value[1].len < 16) {
            return "must be at least 16 characters (or file:PATH, or off)";
        }

        alcf->key = value[1];
        return NGX_CONF_OK;
    }

    path.data = value[1].data + 5;
    path.len = value[1].len - 5;

    if (ngx_conf_full_name(cf->cycle, &path, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    fd = ngx_open_file(path.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "mdm_api_key: cannot open \"%V\"", &path);
        return NGX_CONF_ERROR;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR || ngx_file_size(&fi) > 4096) {
        ngx_close_file(fd);
        return "file is unreadable or over 4 KB";
    }

    p = ngx_pnalloc(cf->pool, ngx_file_size(&fi) + 1);
    if (p == NULL) {
        ngx_close_file(fd);
        return NGX_CONF_ERROR;
    }

    n = ngx_read_fd(fd, p, ngx_file_size(&fi));
    ngx_close_file(fd);

    if (n < 0) {
        return "file cannot be read";
    }

    /* one line: the trailing newline is not part of the key */
    while (n > 0 && (p[n - 1] == '\n' || p[n - 1] == '\r')) {
        n--;
    }

    if (n < 16) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "mdm_api_key: the key in \"%V\" must be at least "
                           "16 characters", &path);
        return NGX_CONF_ERROR;
    }

    alcf->key.data = p;
    alcf->key.len = n;

    return NGX_CONF_OK;
}


static void *
ngx_http_mdm_api_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_mdm_api_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_mdm_api_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    conf->enabled = NGX_CONF_UNSET;
    conf->key_set = 0;

    return conf;
}


static char *
ngx_http_mdm_api_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_mdm_api_loc_conf_t *prev = parent;
    ngx_http_mdm_api_loc_conf_t *conf = child;

    if (!conf->key_set && prev->key_set) {
        conf->key = prev->key;
        conf->key_set = 1;
    }

    if (conf->enabled == 1 && !conf->key_set) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "mdm_api needs mdm_api_key: a key, file:PATH, or "
                           "off to leave authentication to nginx");
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}
