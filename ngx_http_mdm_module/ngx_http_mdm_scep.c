
/*
 * Copyright (C) The MDM module authors
 *
 * mdm_scep: a SCEP server location (RFC 8894). GetCACaps and GetCACert
 * answer from memory; a PKIOperation (GET ?message= or POST) is checked
 * and the certificate signed on the worker (bounded: one signature), then
 * one FCALL mdm_scep_issue consumes the challenge and records it before
 * the CertRep leaves. Every refusal is one log line and changes nothing.
 */


#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rand.h>

#include "ngx_http_mdm_scep.h"


typedef struct {
    mdm_scep_req_t              req;
    X509                       *issued;
    char                        sha256[65];
    char                        serial[65];
    ngx_http_mdm_redis_op_t    *op;
} ngx_http_mdm_scep_ctx_t;


static ngx_int_t ngx_http_mdm_scep_preconf(ngx_conf_t *cf);
static void *ngx_http_mdm_scep_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_mdm_scep_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_mdm_scep(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_mdm_scep_ca(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_mdm_scep_des(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_mdm_scep_handler(ngx_http_request_t *r);
static void ngx_http_mdm_scep_body(ngx_http_request_t *r);
static void ngx_http_mdm_scep_get(ngx_http_request_t *r, ngx_str_t *op);
static void ngx_http_mdm_scep_pki(ngx_http_request_t *r, u_char *der,
    size_t len);
static void ngx_http_mdm_scep_done(ngx_int_t rc, redisReply *reply,
    void *data);
static void ngx_http_mdm_scep_reply(ngx_http_request_t *r,
    ngx_http_mdm_scep_ctx_t *ctx, X509 *issued);
static void ngx_http_mdm_scep_fail(ngx_http_request_t *r, ngx_uint_t status,
    const char *reason);
static void ngx_http_mdm_scep_cleanup(void *data);
static void ngx_http_mdm_scep_op_cleanup(void *data);


static ngx_command_t  ngx_http_mdm_scep_commands[] = {

    { ngx_string("mdm_scep"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_mdm_scep,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("mdm_scep_ca"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE2,
      ngx_http_mdm_scep_ca,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("mdm_scep_validity"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_mdm_scep_loc_conf_t, validity),
      NULL },

    { ngx_string("mdm_scep_challenge"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_mdm_scep_loc_conf_t, challenge),
      NULL },

    { ngx_string("mdm_scep_des"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_http_mdm_scep_des,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_mdm_scep_loc_conf_t, des),
      NULL },

    { ngx_string("mdm_enroll"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE12,
      ngx_http_mdm_enroll_conf,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("mdm_enroll_sign"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE23,
      ngx_http_mdm_enroll_sign_conf,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_mdm_scep_module_ctx = {
    ngx_http_mdm_scep_preconf,             /* preconfiguration */
    NULL,                                  /* postconfiguration */
    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */
    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */
    ngx_http_mdm_scep_create_loc_conf,     /* create location configuration */
    ngx_http_mdm_scep_merge_loc_conf       /* merge location configuration */
};


ngx_module_t  ngx_http_mdm_scep_module = {
    NGX_MODULE_V1,
    &ngx_http_mdm_scep_module_ctx,         /* module context */
    ngx_http_mdm_scep_commands,            /* module directives */
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


static u_char  ngx_http_mdm_scep_caps[] =
    "POSTPKIOperation\nSHA-256\nSHA-512\nAES\nSCEPStandard\nRenewal\n";

static ngx_str_t  ngx_http_mdm_scep_text = ngx_string("text/plain");
static ngx_str_t  ngx_http_mdm_scep_ca_ct =
    ngx_string("application/x-x509-ca-cert");
static ngx_str_t  ngx_http_mdm_scep_pki_ct =
    ngx_string("application/x-pki-message");


static ngx_int_t
ngx_http_mdm_scep_preconf(ngx_conf_t *cf)
{
    if (mdm_scep_init() != 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "mdm: cannot register the SCEP attribute OIDs");
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void *
ngx_http_mdm_scep_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_mdm_scep_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_mdm_scep_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    conf->validity = NGX_CONF_UNSET;
    conf->des = NGX_CONF_UNSET;
    conf->enroll_ttl = NGX_CONF_UNSET;
    conf->ca.allow_des = -1;

    return conf;
}


static char *
ngx_http_mdm_scep_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_mdm_scep_loc_conf_t  *prev = parent;
    ngx_http_mdm_scep_loc_conf_t  *conf = child;

    if (conf->ca.ca == NULL) {
        conf->ca.ca = prev->ca.ca;
        conf->ca.key = prev->ca.key;
        conf->ca_der = prev->ca_der;
    }

    ngx_conf_merge_sec_value(conf->validity, prev->validity, 365 * 86400);
    ngx_conf_merge_value(conf->des, prev->des, 0);
    ngx_conf_merge_str_value(conf->challenge, prev->challenge, "");

    if (conf->sign_cert == NULL) {
        conf->sign_cert = prev->sign_cert;
        conf->sign_key = prev->sign_key;
        conf->sign_chain = prev->sign_chain;
    }

    conf->ca.validity = (long) conf->validity;
    conf->ca.allow_des = (int) conf->des;

    if (conf->challenge.len && conf->challenge.len < 8) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "mdm_scep_challenge must be at least 8 "
                           "characters");
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_mdm_scep(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler) {
        return "is duplicate or conflicts with another handler";
    }

    clcf->handler = ngx_http_mdm_scep_handler;

    return NGX_CONF_OK;
}


/* mdm_scep_ca CERT KEY: read once here, never at request time. */

static char *
ngx_http_mdm_scep_ca(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_mdm_scep_loc_conf_t *lcf = conf;

    int                  n;
    BIO                 *bio;
    X509                *x;
    EVP_PKEY            *pk;
    ngx_str_t           *value;
    unsigned char       *der;
    ngx_pool_cleanup_t  *cln;

    if (lcf->ca.ca) {
        return "is duplicate";
    }

    value = cf->args->elts;

    for (n = 1; n <= 2; n++) {
        if (ngx_conf_full_name(cf->cycle, &value[n], 1) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
    }

    bio = BIO_new_file((char *) value[1].data, "r");
    x = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);

    if (x == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "mdm_scep_ca: cannot read a PEM certificate "
                           "from \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        X509_free(x);
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_http_mdm_scep_free_x509;
    cln->data = x;

    bio = BIO_new_file((char *) value[2].data, "r");
    pk = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);

    if (pk == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "mdm_scep_ca: cannot read a PEM private key "
                           "from \"%V\"", &value[2]);
        return NGX_CONF_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        EVP_PKEY_free(pk);
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_http_mdm_scep_free_pkey;
    cln->data = pk;

    /* requesters encrypt to this key: RSA key transport only */
    if (EVP_PKEY_get_base_id(pk) != EVP_PKEY_RSA
        || X509_check_private_key(x, pk) != 1)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "mdm_scep_ca: the key is not RSA or does not "
                           "match the certificate");
        return NGX_CONF_ERROR;
    }

    der = NULL;
    n = i2d_X509(x, &der);
    if (n <= 0) {
        return NGX_CONF_ERROR;
    }

    lcf->ca_der.data = ngx_pnalloc(cf->pool, n);
    if (lcf->ca_der.data == NULL) {
        OPENSSL_free(der);
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(lcf->ca_der.data, der, n);
    lcf->ca_der.len = n;
    OPENSSL_free(der);

    lcf->ca.ca = x;
    lcf->ca.key = pk;

    return NGX_CONF_OK;
}


/*
 * mdm_scep_des on: single DES and 3DES envelopes, which older clients
 * (Debian's scepclient among them) send; OpenSSL 3 keeps DES in its legacy
 * provider, loaded here once.
 */

static char *
ngx_http_mdm_scep_des(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char                  *rv;
    ngx_flag_t            *fp;
    static ngx_uint_t      loaded;

    rv = ngx_conf_set_flag_slot(cf, cmd, conf);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    fp = (ngx_flag_t *) ((char *) conf + cmd->offset);

    if (*fp && !loaded) {
        if (OSSL_PROVIDER_load(NULL, "legacy") == NULL
            || OSSL_PROVIDER_load(NULL, "default") == NULL)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "mdm_scep_des: cannot load OpenSSL's legacy "
                               "provider");
            return NGX_CONF_ERROR;
        }

        loaded = 1;
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_mdm_scep_handler(ngx_http_request_t *r)
{
    ngx_int_t                      rc;
    ngx_str_t                      op;
    ngx_pool_cleanup_t            *cln;
    ngx_http_mdm_scep_ctx_t       *ctx;
    ngx_http_mdm_scep_loc_conf_t  *lcf;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_mdm_scep_module);

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_mdm_scep_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_mdm_scep_cleanup;
    cln->data = ctx;

    ngx_http_set_ctx(r, ctx, ngx_http_mdm_scep_module);

    if (lcf->ca.ca == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "mdm: scep: no mdm_scep_ca for this location");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_arg(r, (u_char *) "operation", 9, &op) != NGX_OK) {
        op.len = 0;
    }

    if (r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD)) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        /* every path finalizes; the content phase finalizes NGX_DONE */
        r->main->count++;
        ngx_http_mdm_scep_get(r, &op);

        return NGX_DONE;
    }

    if (r->method != NGX_HTTP_POST
        || op.len != 12 || ngx_strncmp(op.data, "PKIOperation", 12) != 0)
    {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        r->main->count++;
        ngx_http_mdm_scep_fail(r, NGX_HTTP_BAD_REQUEST,
                               "POST is for operation=PKIOperation only");
        return NGX_DONE;
    }

    if (r->headers_in.content_length_n > MDM_SCEP_MAX_MSG) {
        r->keepalive = 0;

        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        r->main->count++;
        ngx_http_mdm_scep_fail(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                               "PKIOperation body over 64 KB");
        return NGX_DONE;
    }

    r->request_body_in_single_buf = 1;

    rc = ngx_http_read_client_request_body(r, ngx_http_mdm_scep_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_mdm_scep_body(ngx_http_request_t *r)
{
    u_char       *p, *der;
    size_t        len;
    ngx_chain_t  *cl;

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        ngx_http_mdm_scep_fail(r, NGX_HTTP_BAD_REQUEST, "empty PKIOperation");
        return;
    }

    if (r->request_body->temp_file) {
        ngx_http_mdm_scep_fail(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                               "PKIOperation larger than "
                               "client_body_buffer_size");
        return;
    }

    len = 0;
    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        len += cl->buf->last - cl->buf->pos;
    }

    if (len > MDM_SCEP_MAX_MSG) {
        ngx_http_mdm_scep_fail(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                               "PKIOperation body over 64 KB");
        return;
    }

    der = ngx_pnalloc(r->pool, len + 1);
    if (der == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    p = der;
    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        if (cl->buf->last != cl->buf->pos) {
            p = ngx_cpymem(p, cl->buf->pos, cl->buf->last - cl->buf->pos);
        }
    }

    ngx_http_mdm_scep_pki(r, der, len);
}


static void
ngx_http_mdm_scep_get(ngx_http_request_t *r, ngx_str_t *op)
{
    u_char                        *dst, *src;
    ngx_str_t                      msg, der;
    ngx_http_mdm_scep_loc_conf_t  *lcf;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_mdm_scep_module);

    if (op->len == 9 && ngx_strncmp(op->data, "GetCACaps", 9) == 0) {
        ngx_http_mdm_respond(r, NGX_HTTP_OK, &ngx_http_mdm_scep_text,
                             ngx_http_mdm_scep_caps,
                             sizeof(ngx_http_mdm_scep_caps) - 1);
        return;
    }

    if (op->len == 9 && ngx_strncmp(op->data, "GetCACert", 9) == 0) {
        ngx_http_mdm_respond(r, NGX_HTTP_OK, &ngx_http_mdm_scep_ca_ct,
                             lcf->ca_der.data, lcf->ca_der.len);
        return;
    }

    if (op->len != 12 || ngx_strncmp(op->data, "PKIOperation", 12) != 0) {
        ngx_http_mdm_scep_fail(r, NGX_HTTP_BAD_REQUEST,
                               "unknown SCEP operation (GetCACaps, "
                               "GetCACert, PKIOperation)");
        return;
    }

    if (ngx_http_arg(r, (u_char *) "message", 7, &msg) != NGX_OK
        || msg.len == 0 || msg.len > ngx_base64_encoded_length(MDM_SCEP_MAX_MSG)
                                     * 3)
    {
        ngx_http_mdm_scep_fail(r, NGX_HTTP_BAD_REQUEST,
                               "PKIOperation without a valid message=");
        return;
    }

    /* the base64 arrives URL-encoded ('+', '/', '=' as %2B, %2F, %3D) */
    src = msg.data;
    dst = ngx_pnalloc(r->pool, msg.len);
    if (dst == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    msg.data = dst;
    ngx_unescape_uri(&dst, &src, msg.len, 0);
    msg.len = dst - msg.data;

    der.data = ngx_pnalloc(r->pool, ngx_base64_decoded_length(msg.len));
    if (der.data == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (ngx_decode_base64(&der, &msg) != NGX_OK) {
        ngx_http_mdm_scep_fail(r, NGX_HTTP_BAD_REQUEST,
                               "PKIOperation message= is not base64");
        return;
    }

    ngx_http_mdm_scep_pki(r, der.data, der.len);
}


static void
ngx_http_mdm_scep_pki(ngx_http_request_t *r, u_char *der, size_t len)
{
    int                            rc;
    u_char                        *p, *dl, *na, *nonce;
    char                           subject[256], signer[65], sserial[65];
    size_t                         alen[14];
    ngx_int_t                      n;
    ngx_uint_t                     i, is_static;
    ngx_msec_t                     margin;
    ngx_time_t                    *tp;
    long long                      not_after, sna;
    const char                    *reason, *argv[14];
    ngx_http_cleanup_t            *cln;
    ngx_http_mdm_scep_ctx_t       *ctx;
    ngx_http_mdm_srv_conf_t       *mscf;
    ngx_http_mdm_scep_loc_conf_t  *lcf;
    static u_char                  hex[] = "0123456789abcdef";

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_mdm_scep_module);
    mscf = ngx_http_get_module_srv_conf(r, ngx_http_mdm_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_mdm_scep_module);

    reason = "PKIOperation refused";
    rc = mdm_scep_parse(&lcf->ca, der, len, &ctx->req, &reason);

    if (rc == MDM_SCEP_NOT_SCEP) {
        ngx_http_mdm_scep_fail(r, NGX_HTTP_BAD_REQUEST, reason);
        return;
    }

    if (rc == MDM_SCEP_FAIL) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "mdm: scep FAILURE failInfo=%d txid=\"%s\": %s",
                      ctx->req.fail_info, ctx->req.txid, reason);
        ngx_http_mdm_scep_reply(r, ctx, NULL);
        return;
    }

    is_static = 0;
    n = ngx_strlen(ctx->req.challenge);

    if (lcf->challenge.len && (size_t) n == lcf->challenge.len
        && CRYPTO_memcmp(ctx->req.challenge, lcf->challenge.data, n) == 0)
    {
        is_static = 1;
    }

    ctx->issued = mdm_scep_issue(&lcf->ca, &ctx->req, &reason);

    if (ctx->issued == NULL
        || mdm_scep_cert_info(ctx->issued, ctx->sha256, ctx->serial,
                              &not_after) != 0)
    {
        ngx_http_mdm_scep_fail(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                               "cannot build the certificate");
        return;
    }

    if (mdm_scep_cert_info(ctx->req.signer, signer, sserial, &sna) != 0) {
        ngx_http_mdm_scep_fail(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                               "cannot read the signer's certificate");
        return;
    }

    if (X509_NAME_oneline(X509_get_subject_name(ctx->issued), subject,
                          sizeof(subject))
        == NULL)
    {
        subject[0] = '\0';
    }

    p = ngx_pnalloc(r->pool, 32 + 2 * NGX_INT64_LEN + 2);
    if (p == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    nonce = p;
    for (i = 0; i < 16; i++) {
        *p++ = hex[ctx->req.nonce[i] >> 4];
        *p++ = hex[ctx->req.nonce[i] & 0xf];
    }

    na = p;
    p = ngx_sprintf(na, "%L", (int64_t) not_after);

    /* past our 503 the function refuses to run (mdm.lua late()) */
    margin = ngx_min(mscf->timeout / 4, 500);
    tp = ngx_timeofday();
    dl = p;
    p = ngx_sprintf(dl, "%uM", (uint64_t) tp->sec * 1000 + tp->msec
                               + mscf->timeout - margin);
    alen[11] = p - dl;

    argv[0] = "FCALL";
    argv[1] = "mdm_scep_issue";
    argv[2] = "0";
    argv[3] = ctx->req.type == MDM_SCEP_RENEWALREQ ? "17" : "19";
    argv[4] = ctx->req.challenge;
    argv[5] = is_static ? "1" : "0";
    argv[6] = (char *) nonce;
    argv[7] = ctx->req.txid;
    argv[8] = ctx->sha256;
    argv[9] = ctx->serial;
    argv[10] = subject;
    argv[11] = (char *) na;
    argv[12] = signer;
    argv[13] = (char *) dl;

    /* the nonce hex is not NUL-terminated: the numbers follow it */
    for (i = 0; i < 11; i++) {
        alen[i] = (i == 6) ? 32 : ngx_strlen(argv[i]);
    }

    alen[11] = dl - na;
    alen[12] = 64;
    alen[13] = p - dl;

    if (mscf->redis == NULL) {
        ngx_http_mdm_scep_fail(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                               "no mdm_redis for the SCEP server");
        return;
    }

    /* a request that goes first detaches, so a late reply finds nothing */
    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    n = ngx_http_mdm_redis_call(mscf->redis, 14, argv, alen, mscf->timeout,
                                r->connection->log, ngx_http_mdm_scep_done,
                                r, &ctx->op);

    if (n == NGX_DECLINED) {
        ngx_http_mdm_scep_fail(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                               "redis is not available");
        return;
    }

    if (n != NGX_OK) {
        ngx_http_mdm_scep_fail(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                               "cannot send to redis");
        return;
    }

    cln->handler = ngx_http_mdm_scep_op_cleanup;
    cln->data = ctx;

    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_request_empty_handler;
}


static void
ngx_http_mdm_scep_done(ngx_int_t rc, redisReply *reply, void *data)
{
    ngx_http_request_t  *r = data;

    ngx_connection_t         *c;
    ngx_http_mdm_scep_ctx_t  *ctx;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_mdm_scep_module);
    ctx->op = NULL;

    if (rc != NGX_HTTP_MDM_REDIS_REPLY) {
        ngx_http_mdm_scep_fail(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                               rc == NGX_HTTP_MDM_REDIS_TIMEOUT
                               ? "redis did not answer in time"
                               : "redis unavailable or refused the call");

    } else if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3
               || reply->element[0]->type != REDIS_REPLY_INTEGER
               || reply->element[1]->type != REDIS_REPLY_STRING
               || reply->element[2]->type != REDIS_REPLY_STRING)
    {
        ngx_log_error(NGX_LOG_ERR, c->log, 0,
                      "mdm: scep: unexpected reply from mdm_scep_issue%s%*s",
                      reply->type == REDIS_REPLY_ERROR ? ": " : "",
                      reply->type == REDIS_REPLY_ERROR ? reply->len : 0,
                      reply->type == REDIS_REPLY_ERROR ? reply->str : "");
        ngx_http_mdm_respond(r, NGX_HTTP_INTERNAL_SERVER_ERROR, NULL, NULL,
                             0);

    } else if (reply->element[0]->integer != 1) {
        ctx->req.fail_info = MDM_SCEP_BAD_REQUEST;
        ngx_log_error(NGX_LOG_WARN, c->log, 0,
                      "mdm: scep FAILURE failInfo=%d txid=\"%s\": %*s",
                      ctx->req.fail_info, ctx->req.txid,
                      reply->element[1]->len, reply->element[1]->str);
        ngx_http_mdm_scep_reply(r, ctx, NULL);

    } else {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "mdm: scep issued serial=%s sha256=%s device=\"%*s\" "
                      "%s", ctx->serial, ctx->sha256,
                      reply->element[2]->len, reply->element[2]->str,
                      ctx->req.type == MDM_SCEP_RENEWALREQ ? "RenewalReq"
                                                           : "PKCSReq");
        ngx_http_mdm_scep_reply(r, ctx, ctx->issued);
    }

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_mdm_scep_reply(ngx_http_request_t *r, ngx_http_mdm_scep_ctx_t *ctx,
    X509 *issued)
{
    u_char                        *p;
    size_t                         len;
    unsigned char                 *der;
    ngx_http_mdm_scep_loc_conf_t  *lcf;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_mdm_scep_module);

    der = NULL;

    if (mdm_scep_certrep(&lcf->ca, &ctx->req, issued, &der, &len) != 0) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "mdm: scep: cannot build the CertRep");
        ngx_http_mdm_respond(r, NGX_HTTP_INTERNAL_SERVER_ERROR, NULL, NULL,
                             0);
        return;
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        OPENSSL_free(der);
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_memcpy(p, der, len);
    OPENSSL_free(der);

    ngx_http_mdm_respond(r, NGX_HTTP_OK, &ngx_http_mdm_scep_pki_ct, p, len);
}


static void
ngx_http_mdm_scep_fail(ngx_http_request_t *r, ngx_uint_t status,
    const char *reason)
{
    ngx_uint_t  level;

    level = status >= NGX_HTTP_INTERNAL_SERVER_ERROR ? NGX_LOG_ERR
                                                     : NGX_LOG_WARN;

    ngx_log_error(level, r->connection->log, 0, "mdm: scep %ui: %s",
                  status, reason);

    ngx_http_mdm_respond(r, status, NULL, NULL, 0);
}


static void
ngx_http_mdm_scep_cleanup(void *data)
{
    ngx_http_mdm_scep_ctx_t  *ctx = data;

    mdm_scep_req_free(&ctx->req);
    X509_free(ctx->issued);
    ctx->issued = NULL;
}


static void
ngx_http_mdm_scep_op_cleanup(void *data)
{
    ngx_http_mdm_scep_ctx_t  *ctx = data;

    if (ctx->op) {
        ngx_http_mdm_redis_cancel(ctx->op);
        ctx->op = NULL;
    }
}


ngx_int_t
ngx_http_mdm_scep_random(u_char *out, size_t n)
{
    return RAND_bytes(out, (int) n) == 1 ? NGX_OK : NGX_ERROR;
}


void
ngx_http_mdm_scep_free_x509(void *data)
{
    X509_free(data);
}


void
ngx_http_mdm_scep_free_pkey(void *data)
{
    EVP_PKEY_free(data);
}
