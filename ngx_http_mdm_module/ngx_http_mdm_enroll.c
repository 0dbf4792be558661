
/*
 * Copyright (C) The MDM module authors
 *
 * mdm_enroll: an enrollment profile per download. The template (made by
 * `mdmctl profile create --scep-url URL --scep-challenge @MDM_CHALLENGE@`)
 * is read at configuration time; each GET mints one single-use challenge
 * in Redis (FCALL mdm_scep_mint), puts it in the SCEP payload, and signs
 * the profile when mdm_enroll_sign names an identity. Who may download is
 * the operator's business (auth_basic, allow lists: conf.example).
 */


#include <openssl/pem.h>
#include <openssl/pkcs7.h>

#include "ngx_http_mdm_scep.h"


#define NGX_HTTP_MDM_ENROLL_MAX   (1024 * 1024)
#define NGX_HTTP_MDM_TAG_LEN      (sizeof(NGX_HTTP_MDM_CHALLENGE_TAG) - 1)


typedef struct {
    u_char                      challenge[33];
    ngx_http_mdm_redis_op_t    *op;
} ngx_http_mdm_enroll_ctx_t;


static void ngx_http_mdm_enroll_done(ngx_int_t rc, redisReply *reply,
    void *data);
static void ngx_http_mdm_enroll_send(ngx_http_request_t *r,
    ngx_http_mdm_enroll_ctx_t *ctx);
static ngx_int_t ngx_http_mdm_enroll_sign(ngx_http_request_t *r,
    ngx_str_t *profile);
static void ngx_http_mdm_enroll_cleanup(void *data);
static void ngx_http_mdm_enroll_refuse(ngx_http_request_t *r,
    ngx_uint_t status, const char *reason);


static ngx_str_t  ngx_http_mdm_enroll_ct =
    ngx_string("application/x-apple-aspen-config");


ngx_int_t
ngx_http_mdm_enroll_handler(ngx_http_request_t *r)
{
    u_char                        *p, *ttl;
    size_t                         len[6];
    ngx_int_t                      rc;
    ngx_uint_t                     i;
    const char                    *argv[6];
    u_char                         rnd[16];
    ngx_http_cleanup_t            *cln;
    ngx_http_mdm_srv_conf_t       *mscf;
    ngx_http_mdm_enroll_ctx_t     *ctx;
    ngx_http_mdm_scep_loc_conf_t  *lcf;
    static u_char                  hex[] = "0123456789abcdef";

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_mdm_scep_module);
    mscf = ngx_http_get_module_srv_conf(r, ngx_http_mdm_module);

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_mdm_enroll_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_set_ctx(r, ctx, ngx_http_mdm_scep_module);

    /* 128 random bits, hex: printable for every SCEP client */
    if (ngx_http_mdm_scep_random(rnd, sizeof(rnd)) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = 0; i < 16; i++) {
        ctx->challenge[2 * i] = hex[rnd[i] >> 4];
        ctx->challenge[2 * i + 1] = hex[rnd[i] & 0xf];
    }

    ttl = ngx_pnalloc(r->pool, NGX_TIME_T_LEN);
    if (ttl == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_sprintf(ttl, "%T", lcf->enroll_ttl);

    argv[0] = "FCALL";
    argv[1] = "mdm_scep_mint";
    argv[2] = "0";
    argv[3] = (char *) ttl;
    argv[4] = "";
    argv[5] = (char *) ctx->challenge;

    len[0] = 5;
    len[1] = sizeof("mdm_scep_mint") - 1;
    len[2] = 1;
    len[3] = p - ttl;
    len[4] = 0;
    len[5] = 32;

    r->main->count++;

    if (mscf->redis == NULL) {
        ngx_http_mdm_enroll_refuse(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "no mdm_redis for mdm_enroll");
        return NGX_DONE;
    }

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_mdm_redis_call(mscf->redis, 6, argv, len, mscf->timeout,
                                 r->connection->log, ngx_http_mdm_enroll_done,
                                 r, &ctx->op);
    if (rc != NGX_OK) {
        ngx_http_mdm_enroll_refuse(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "redis is not available");
        return NGX_DONE;
    }

    cln->handler = ngx_http_mdm_enroll_cleanup;
    cln->data = ctx;

    return NGX_DONE;
}


static void
ngx_http_mdm_enroll_done(ngx_int_t rc, redisReply *reply, void *data)
{
    ngx_http_request_t  *r = data;

    ngx_connection_t           *c;
    ngx_http_mdm_enroll_ctx_t  *ctx;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_mdm_scep_module);
    ctx->op = NULL;

    if (rc != NGX_HTTP_MDM_REDIS_REPLY) {
        ngx_http_mdm_enroll_refuse(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "redis did not mint the challenge");

    } else if (reply->type != REDIS_REPLY_INTEGER || reply->integer != 1) {
        ngx_log_error(NGX_LOG_ERR, c->log, 0,
                      "mdm: enroll: unexpected reply from mdm_scep_mint%s%*s",
                      reply->type == REDIS_REPLY_ERROR ? ": " : "",
                      reply->type == REDIS_REPLY_ERROR ? reply->len : 0,
                      reply->type == REDIS_REPLY_ERROR ? reply->str : "");
        ngx_http_mdm_respond(r, NGX_HTTP_INTERNAL_SERVER_ERROR, NULL, NULL,
                             0);

    } else {
        ngx_http_mdm_enroll_send(r, ctx);
    }

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_mdm_enroll_send(ngx_http_request_t *r,
    ngx_http_mdm_enroll_ctx_t *ctx)
{
    u_char                        *p, *q, *end, *hit;
    size_t                         n;
    ngx_str_t                      out;
    ngx_uint_t                     tags;
    ngx_table_elt_t               *h;
    ngx_http_mdm_scep_loc_conf_t  *lcf;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_mdm_scep_module);

    end = lcf->tpl.data + lcf->tpl.len;
    tags = 0;

    for (p = lcf->tpl.data; p < end; p = hit + NGX_HTTP_MDM_TAG_LEN) {
        hit = ngx_strlcasestrn(p, end, (u_char *) NGX_HTTP_MDM_CHALLENGE_TAG,
                               NGX_HTTP_MDM_TAG_LEN - 1);
        if (hit == NULL) {
            break;
        }

        tags++;
    }

    n = lcf->tpl.len + tags * (32 - NGX_HTTP_MDM_TAG_LEN);

    out.data = ngx_pnalloc(r->pool, n);
    if (out.data == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    q = out.data;

    for (p = lcf->tpl.data; p < end; p = hit + NGX_HTTP_MDM_TAG_LEN) {
        hit = ngx_strlcasestrn(p, end, (u_char *) NGX_HTTP_MDM_CHALLENGE_TAG,
                               NGX_HTTP_MDM_TAG_LEN - 1);
        if (hit == NULL) {
            q = ngx_cpymem(q, p, end - p);
            break;
        }

        q = ngx_cpymem(q, p, hit - p);
        q = ngx_cpymem(q, ctx->challenge, 32);
    }

    out.len = q - out.data;

    if (lcf->sign_cert && ngx_http_mdm_enroll_sign(r, &out) != NGX_OK) {
        ngx_http_mdm_enroll_refuse(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                   "cannot sign the enrollment profile");
        return;
    }

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Cache-Control");
    ngx_str_set(&h->value, "no-store");

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "mdm: enroll: profile served with a fresh challenge%s",
                  lcf->sign_cert ? ", signed" : "");

    ngx_http_mdm_respond(r, NGX_HTTP_OK, &ngx_http_mdm_enroll_ct, out.data,
                         out.len);
}


/* SignedData with the profile inside (not detached), as devices expect. */

static ngx_int_t
ngx_http_mdm_enroll_sign(ngx_http_request_t *r, ngx_str_t *profile)
{
    int                            n;
    BIO                           *in;
    PKCS7                         *p7;
    unsigned char                 *der;
    ngx_http_mdm_scep_loc_conf_t  *lcf;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_mdm_scep_module);

    in = BIO_new_mem_buf(profile->data, (int) profile->len);
    if (in == NULL) {
        return NGX_ERROR;
    }

    p7 = PKCS7_sign(lcf->sign_cert, lcf->sign_key, lcf->sign_chain, in,
                    PKCS7_BINARY | PKCS7_NOSMIMECAP);
    BIO_free(in);

    if (p7 == NULL) {
        ERR_clear_error();
        return NGX_ERROR;
    }

    der = NULL;
    n = i2d_PKCS7(p7, &der);
    PKCS7_free(p7);

    if (n <= 0) {
        ERR_clear_error();
        return NGX_ERROR;
    }

    profile->data = ngx_pnalloc(r->pool, n);
    if (profile->data == NULL) {
        OPENSSL_free(der);
        return NGX_ERROR;
    }

    ngx_memcpy(profile->data, der, n);
    profile->len = n;
    OPENSSL_free(der);

    return NGX_OK;
}


static void
ngx_http_mdm_enroll_refuse(ngx_http_request_t *r, ngx_uint_t status,
    const char *reason)
{
    ngx_uint_t  level;

    level = status >= NGX_HTTP_INTERNAL_SERVER_ERROR ? NGX_LOG_ERR
                                                     : NGX_LOG_WARN;

    ngx_log_error(level, r->connection->log, 0, "mdm: enroll %ui: %s",
                  status, reason);

    ngx_http_mdm_respond(r, status, NULL, NULL, 0);
}


static void
ngx_http_mdm_enroll_cleanup(void *data)
{
    ngx_http_mdm_enroll_ctx_t  *ctx = data;

    if (ctx->op) {
        ngx_http_mdm_redis_cancel(ctx->op);
        ctx->op = NULL;
    }
}


/* mdm_enroll TEMPLATE [ttl=1h] */

char *
ngx_http_mdm_enroll_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_mdm_scep_loc_conf_t *lcf = conf;

    ssize_t                    n;
    ngx_fd_t                   fd;
    ngx_str_t                 *value, s;
    ngx_file_info_t            fi;
    ngx_http_core_loc_conf_t  *clcf;

    if (lcf->tpl.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    lcf->enroll_ttl = 3600;

    if (cf->args->nelts == 3) {
        if (ngx_strncmp(value[2].data, "ttl=", 4) != 0) {
            return "takes TEMPLATE [ttl=TIME]";
        }

        s.data = value[2].data + 4;
        s.len = value[2].len - 4;

        lcf->enroll_ttl = ngx_parse_time(&s, 1);
        if (lcf->enroll_ttl == (time_t) NGX_ERROR || lcf->enroll_ttl < 10
            || lcf->enroll_ttl > 30 * 86400)
        {
            return "ttl= must be 10s to 30d";
        }
    }

    if (ngx_conf_full_name(cf->cycle, &value[1], 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    fd = ngx_open_file(value[1].data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "mdm_enroll: cannot open \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR
        || ngx_file_size(&fi) <= 0
        || ngx_file_size(&fi) > NGX_HTTP_MDM_ENROLL_MAX)
    {
        ngx_close_file(fd);
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "mdm_enroll: \"%V\" is empty, unreadable or over "
                           "1 MB", &value[1]);
        return NGX_CONF_ERROR;
    }

    lcf->tpl.len = ngx_file_size(&fi);
    lcf->tpl.data = ngx_pnalloc(cf->pool, lcf->tpl.len);
    if (lcf->tpl.data == NULL) {
        ngx_close_file(fd);
        return NGX_CONF_ERROR;
    }

    n = ngx_read_fd(fd, lcf->tpl.data, lcf->tpl.len);
    ngx_close_file(fd);

    if (n != (ssize_t) lcf->tpl.len) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "mdm_enroll: short read of \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (ngx_strlcasestrn(lcf->tpl.data, lcf->tpl.data + lcf->tpl.len,
                         (u_char *) NGX_HTTP_MDM_CHALLENGE_TAG,
                         NGX_HTTP_MDM_TAG_LEN - 1)
        == NULL)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "mdm_enroll: \"%V\" has no " 
                           NGX_HTTP_MDM_CHALLENGE_TAG " (make it with "
                           "mdmctl profile create --scep-url URL "
                           "--scep-challenge " NGX_HTTP_MDM_CHALLENGE_TAG ")",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler) {
        return "conflicts with another handler";
    }

    clcf->handler = ngx_http_mdm_enroll_handler;

    return NGX_CONF_OK;
}


/* mdm_enroll_sign CERT KEY [CHAIN] */

char *
ngx_http_mdm_enroll_sign_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_mdm_scep_loc_conf_t *lcf = conf;

    BIO                 *bio;
    X509                *x;
    ngx_str_t           *value;
    ngx_uint_t           i;
    ngx_pool_cleanup_t  *cln;

    if (lcf->sign_cert) {
        return "is duplicate";
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {
        if (ngx_conf_full_name(cf->cycle, &value[i], 1) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
    }

    bio = BIO_new_file((char *) value[1].data, "r");
    lcf->sign_cert = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_http_mdm_scep_free_x509;
    cln->data = lcf->sign_cert;

    bio = BIO_new_file((char *) value[2].data, "r");
    lcf->sign_key = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL)
                        : NULL;
    BIO_free(bio);

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_http_mdm_scep_free_pkey;
    cln->data = lcf->sign_key;

    if (lcf->sign_cert == NULL || lcf->sign_key == NULL
        || X509_check_private_key(lcf->sign_cert, lcf->sign_key) != 1)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "mdm_enroll_sign: cannot read a matching PEM "
                           "certificate and key from \"%V\" and \"%V\"",
                           &value[1], &value[2]);
        return NGX_CONF_ERROR;
    }

    if (cf->args->nelts == 4) {
        lcf->sign_chain = sk_X509_new_null();
        bio = BIO_new_file((char *) value[3].data, "r");

        if (lcf->sign_chain == NULL || bio == NULL) {
            BIO_free(bio);
            return NGX_CONF_ERROR;
        }

        while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
            sk_X509_push(lcf->sign_chain, x);

            cln = ngx_pool_cleanup_add(cf->pool, 0);
            if (cln == NULL) {
                BIO_free(bio);
                return NGX_CONF_ERROR;
            }

            cln->handler = ngx_http_mdm_scep_free_x509;
            cln->data = x;
        }

        BIO_free(bio);
        ERR_clear_error();
    }

    return NGX_CONF_OK;
}
