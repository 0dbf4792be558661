
/*
 * Copyright (C) The MDM module authors
 *
 * Directives, configuration, variables and the process hooks.
 */


#include "ngx_http_mdm.h"


static ngx_int_t ngx_http_mdm_add_variables(ngx_conf_t *cf);
static void *ngx_http_mdm_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_mdm_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_mdm_create_srv_conf(ngx_conf_t *cf);
static char *ngx_http_mdm_merge_srv_conf(ngx_conf_t *cf, void *parent,
    void *child);
static void *ngx_http_mdm_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_mdm_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_mdm_redis(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_mdm_endpoint(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_mdm_policy_moved(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_mdm_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_mdm_init_process(ngx_cycle_t *cycle);
static void ngx_http_mdm_exit_process(ngx_cycle_t *cycle);


static ngx_conf_enum_t  ngx_http_mdm_user_auth[] = {
    { ngx_string("decline"), NGX_HTTP_MDM_UA_DECLINE },
    { ngx_string("accept"), NGX_HTTP_MDM_UA_ACCEPT },
    { ngx_null_string, 0 }
};


static ngx_command_t  ngx_http_mdm_commands[] = {

    { ngx_string("mdm_redis"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_CONF_1MORE,
      ngx_http_mdm_redis,
      NGX_HTTP_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("mdm_secret_key"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_mdm_secret_key_conf,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("mdm_checkin"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_mdm_endpoint,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_MDM_CHECKIN,
      NULL },

    { ngx_string("mdm_command"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_mdm_endpoint,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_MDM_COMMAND,
      NULL },

    { ngx_string("mdm_endpoint"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_mdm_endpoint,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_MDM_ENDPOINT,
      NULL },

    { ngx_string("mdm_device_auth"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_mdm_device_auth_conf,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("mdm_topic"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_conf_set_str_array_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_mdm_loc_conf_t, topics),
      NULL },

    { ngx_string("mdm_user_authenticate"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_mdm_loc_conf_t, user_auth),
      &ngx_http_mdm_user_auth },

    { ngx_string("mdm_allow_rebind"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_http_mdm_policy_moved,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      "allow_rebind" },

    { ngx_string("mdm_identity"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE12,
      ngx_http_mdm_identity_conf,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("mdm_device_ca"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE123,
      ngx_http_mdm_device_ca_conf,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("mdm_trusted_proxy"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_mdm_trusted_proxy_conf,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("mdm_require_id_in_cert"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_mdm_loc_conf_t, require_id_in_cert),
      NULL },

    { ngx_string("mdm_max_body"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_mdm_max_body_conf,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("mdm_migration"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_http_mdm_policy_moved,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      "migration" },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_mdm_module_ctx = {
    ngx_http_mdm_add_variables,            /* preconfiguration */
    ngx_http_mdm_device_auth_init,         /* postconfiguration */

    ngx_http_mdm_create_main_conf,         /* create main configuration */
    ngx_http_mdm_init_main_conf,           /* init main configuration */

    ngx_http_mdm_create_srv_conf,          /* create server configuration */
    ngx_http_mdm_merge_srv_conf,           /* merge server configuration */

    ngx_http_mdm_create_loc_conf,          /* create location configuration */
    ngx_http_mdm_merge_loc_conf            /* merge location configuration */
};


ngx_module_t  ngx_http_mdm_module = {
    NGX_MODULE_V1,
    &ngx_http_mdm_module_ctx,              /* module context */
    ngx_http_mdm_commands,                 /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_mdm_init_process,             /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_mdm_exit_process,             /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_variable_t  ngx_http_mdm_vars[] = {

    { ngx_string("mdm_enrollment_id"), NULL, ngx_http_mdm_variable,
      offsetof(ngx_http_mdm_ctx_t, enrollment_id), NGX_HTTP_VAR_NOCACHEABLE,
      0 },

    { ngx_string("mdm_message_type"), NULL, ngx_http_mdm_variable,
      offsetof(ngx_http_mdm_ctx_t, message_type), NGX_HTTP_VAR_NOCACHEABLE,
      0 },

    { ngx_string("mdm_error"), NULL, ngx_http_mdm_variable,
      offsetof(ngx_http_mdm_ctx_t, error), NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("mdm_status"), NULL, ngx_http_mdm_variable,
      offsetof(ngx_http_mdm_ctx_t, status), NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("mdm_command_uuid"), NULL, ngx_http_mdm_variable,
      offsetof(ngx_http_mdm_ctx_t, command_uuid), NGX_HTTP_VAR_NOCACHEABLE,
      0 },

    { ngx_string("mdm_request_type"), NULL, ngx_http_mdm_variable,
      offsetof(ngx_http_mdm_ctx_t, request_type), NGX_HTTP_VAR_NOCACHEABLE,
      0 },

    { ngx_string("mdm_ddm_endpoint"), NULL, ngx_http_mdm_variable,
      offsetof(ngx_http_mdm_ctx_t, ddm_endpoint), NGX_HTTP_VAR_NOCACHEABLE,
      0 },

    { ngx_string("mdm_cert_sha256"), NULL, ngx_http_mdm_variable,
      offsetof(ngx_http_mdm_ctx_t, cert), NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


static ngx_int_t
ngx_http_mdm_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_mdm_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_mdm_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    ngx_str_t           *s;
    ngx_http_mdm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_mdm_module);
    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    s = (ngx_str_t *) ((char *) ctx + data);

    if (s->len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = s->len;
    v->data = s->data;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


static void *
ngx_http_mdm_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_mdm_main_conf_t  *mmcf;

    mmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_mdm_main_conf_t));
    if (mmcf == NULL) {
        return NULL;
    }

    if (ngx_array_init(&mmcf->conns, cf->pool, 2,
                       sizeof(ngx_http_mdm_redis_conn_t *))
        != NGX_OK)
    {
        return NULL;
    }

    return mmcf;
}


static char *
ngx_http_mdm_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_mdm_main_conf_t  *mmcf = conf;

    /* an upgraded server keeps working; new secrets are stored in clear */
    if (mmcf->configured && mmcf->secrets == NULL) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "mdm: no \"mdm_secret_key\": UnlockToken and "
                           "BootstrapToken are stored in Redis in clear");
    }

    return NGX_CONF_OK;
}


static void *
ngx_http_mdm_create_srv_conf(ngx_conf_t *cf)
{
    ngx_http_mdm_srv_conf_t  *mscf;

    mscf = ngx_pcalloc(cf->pool, sizeof(ngx_http_mdm_srv_conf_t));
    if (mscf == NULL) {
        return NULL;
    }

    mscf->redis = NGX_CONF_UNSET_PTR;
    mscf->timeout = NGX_CONF_UNSET_MSEC;

    return mscf;
}


/* A server's own mdm_redis, timeout= included, or all of http's. */

static char *
ngx_http_mdm_merge_srv_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_mdm_srv_conf_t  *prev = parent;
    ngx_http_mdm_srv_conf_t  *conf = child;

    if (conf->redis == NGX_CONF_UNSET_PTR) {
        conf->redis = prev->redis;
        conf->timeout = prev->timeout;
    }

    if (conf->redis == NGX_CONF_UNSET_PTR) {
        conf->redis = NULL;
    }

    return NGX_CONF_OK;
}


static void *
ngx_http_mdm_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_mdm_loc_conf_t  *mlcf;

    mlcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_mdm_loc_conf_t));
    if (mlcf == NULL) {
        return NULL;
    }

    mlcf->topics = NGX_CONF_UNSET_PTR;
    mlcf->user_auth = NGX_CONF_UNSET_UINT;
    mlcf->identity = NGX_CONF_UNSET_UINT;
    mlcf->header = NGX_CONF_UNSET;
    mlcf->verifier = NGX_CONF_UNSET_PTR;
    mlcf->proxies = NGX_CONF_UNSET_PTR;
    mlcf->require_id_in_cert = NGX_CONF_UNSET;
    mlcf->max_checkin = NGX_CONF_UNSET_SIZE;
    mlcf->max_report = NGX_CONF_UNSET_SIZE;
    mlcf->device_auth = NGX_CONF_UNSET;

    return mlcf;
}


static char *
ngx_http_mdm_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_mdm_loc_conf_t  *prev = parent;
    ngx_http_mdm_loc_conf_t  *conf = child;

    ngx_http_mdm_srv_conf_t  *mscf;

    ngx_conf_merge_ptr_value(conf->topics, prev->topics, NULL);
    ngx_conf_merge_uint_value(conf->user_auth, prev->user_auth,
                              NGX_HTTP_MDM_UA_DECLINE);
    ngx_conf_merge_uint_value(conf->identity, prev->identity,
                              NGX_HTTP_MDM_ID_TLS);
    ngx_conf_merge_value(conf->header, prev->header, NGX_ERROR);
    ngx_conf_merge_ptr_value(conf->verifier, prev->verifier, NULL);
    ngx_conf_merge_ptr_value(conf->proxies, prev->proxies, NULL);
    ngx_conf_merge_value(conf->require_id_in_cert, prev->require_id_in_cert,
                         0);
    ngx_conf_merge_size_value(conf->max_checkin, prev->max_checkin,
                              NGX_HTTP_MDM_MAX_CHECKIN);
    ngx_conf_merge_size_value(conf->max_report, prev->max_report,
                              NGX_HTTP_MDM_MAX_REPORT);

    /* nested locations stay guarded: there is no way to turn it off */
    ngx_conf_merge_value(conf->device_auth, prev->device_auth, 0);

    if (conf->endpoint == 0 && !conf->device_auth) {
        return NGX_CONF_OK;
    }

    if (conf->endpoint && conf->device_auth) {
        return "has \"mdm_device_auth\" in a device endpoint's location "
               "(or one nested in it): endpoints check the identity "
               "themselves";
    }

    /* the srv conf is this server's, merged before its locations */
    mscf = ngx_http_conf_get_module_srv_conf(cf, ngx_http_mdm_module);

    if (mscf->redis == NULL) {
        return "needs \"mdm_redis\" in the http or server block";
    }

    if (conf->endpoint && conf->topics == NULL) {
        return "needs \"mdm_topic\": the push topics this server owns";
    }

    if (conf->identity != NGX_HTTP_MDM_ID_TLS && conf->verifier == NULL) {
        return "needs \"mdm_device_ca\" to verify signatures and "
               "forwarded certificates";
    }

    if (conf->identity == NGX_HTTP_MDM_ID_HEADER && conf->proxies == NULL) {
        return "needs \"mdm_trusted_proxy\" with \"mdm_identity header\"";
    }

    return NGX_CONF_OK;
}


/*
 * mdm_redis unix:/path | IPv4:port | [IPv6]:port [timeout=3s]
 *           [username=..] [password=..] [db=N]
 * mdm_redis sentinel=IP:port,... master=NAME [sentinel_password=..] ...
 *           [replicas=N [wait_timeout=MS]]
 *
 * The grammar of common/mdm_redis_addr.c, shared with mdm-apnsd and mdmctl.
 */

static char *
ngx_http_mdm_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_mdm_srv_conf_t  *mscf = conf;

    int                         rc;
    char                        err[256], name[256];
    ngx_str_t                  *value, s;
    ngx_uint_t                  i;
    ngx_msec_t                  timeout;
    mdm_redis_addr_t            addr;
    ngx_http_mdm_redis_conn_t  *conn, **conns;
    ngx_http_mdm_main_conf_t   *mmcf;

    if (mscf->redis != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;
    timeout = 3000;

    ngx_memzero(&addr, sizeof(mdm_redis_addr_t));

    if (mdm_redis_addr_parse(&addr, (char *) value[1].data,
                             value[1].len, err, sizeof(err))
        != 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "mdm_redis: %s", err);
        return NGX_CONF_ERROR;
    }

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "timeout=", 8) == 0) {
            s.data = value[i].data + 8;
            s.len = value[i].len - 8;
            timeout = ngx_parse_time(&s, 0);
            if (timeout == (ngx_msec_t) NGX_ERROR || timeout == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "mdm_redis: invalid parameter \"%V\"",
                                   &value[i]);
                return NGX_CONF_ERROR;
            }
            continue;
        }

        rc = mdm_redis_addr_option(&addr, (char *) value[i].data,
                                   value[i].len, err, sizeof(err));
        if (rc == 0) {
            continue;
        }

        if (rc == 1) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "mdm_redis: \"%V\" is not timeout=, "
                               MDM_REDIS_ADDR_OPTIONS, &value[i]);

        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "mdm_redis: %s", err);
        }

        return NGX_CONF_ERROR;
    }

    if (addr.username[0] && addr.password[0] == '\0') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "mdm_redis: username= needs password=");
        return NGX_CONF_ERROR;
    }

    if (mdm_redis_addr_check(&addr, err, sizeof(err)) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "mdm_redis: %s", err);
        return NGX_CONF_ERROR;
    }

    /* WAIT answers before the call's own deadline, never after it */
    if (addr.replicas && (ngx_msec_t) addr.wait_timeout >= timeout) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "mdm_redis: wait_timeout=%d must be shorter "
                           "than timeout=%M", addr.wait_timeout, timeout);
        return NGX_CONF_ERROR;
    }

    mscf->timeout = timeout;

    /* servers naming the same Redis (and user, db) share its connection */

    mmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_mdm_module);
    conns = mmcf->conns.elts;

    for (i = 0; i < mmcf->conns.nelts; i++) {
        conn = conns[i];

        /* both zeroed before parsing: padding and tails compare equal */
        if (ngx_memcmp(&conn->addr, &addr, sizeof(mdm_redis_addr_t)) == 0) {
            conn->timeout = ngx_max(conn->timeout, timeout);
            mscf->redis = conn;
            return NGX_CONF_OK;
        }
    }

    conn = ngx_pcalloc(cf->pool, sizeof(ngx_http_mdm_redis_conn_t));
    if (conn == NULL) {
        return NGX_CONF_ERROR;
    }

    conns = ngx_array_push(&mmcf->conns);
    if (conns == NULL) {
        return NGX_CONF_ERROR;
    }

    *conns = conn;

    conn->addr = addr;
    conn->timeout = timeout;

    conn->name.len = mdm_redis_addr_format(&addr, name, sizeof(name));
    conn->name.data = ngx_pnalloc(cf->pool, conn->name.len);
    if (conn->name.data == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(conn->name.data, name, conn->name.len);

    mscf->redis = conn;
    mmcf->configured = 1;

    return NGX_CONF_OK;
}


/* Policy is the administrator's, in Redis, out of reach of nginx's user. */

static char *
ngx_http_mdm_policy_moved(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                       "\"%V\" is ignored: the policy is now the field "
                       "\"%s\" of the Redis hash " MDM_KEY_POLICY
                       ", set by an administrator with "
                       "\"mdmctl conf set %s 1\"",
                       &cmd->name, (char *) cmd->post, (char *) cmd->post);

    return NGX_CONF_OK;
}


static char *
ngx_http_mdm_endpoint(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_mdm_loc_conf_t  *mlcf = conf;

    ngx_http_core_loc_conf_t  *clcf;

    if (mlcf->endpoint) {
        return "is duplicate";
    }

    mlcf->endpoint = cmd->offset;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_mdm_handler;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_mdm_init_process(ngx_cycle_t *cycle)
{
    return ngx_http_mdm_redis_init_process(cycle);
}


static void
ngx_http_mdm_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_mdm_redis_exit_process(cycle);
}
