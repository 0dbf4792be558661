
/*
 * Copyright (C) The MDM module authors
 *
 * mdm_secret_key, and sealing/opening the device secrets on the request
 * path (common/mdm_secret.c does the cryptography). The key file is read
 * at configuration time only.
 */


#include "ngx_http_mdm.h"


#define NGX_HTTP_MDM_SECRET_ERR_LEN  256


static void ngx_http_mdm_secret_cleanup(void *data);


/* Apple's key -> the enrollment hash field it is stored in, sealed */
static const char  *ngx_http_mdm_secret_fields[][2] = {
    { "UnlockToken", MDM_SECRET_UNLOCK },
    { "BootstrapToken", MDM_SECRET_BOOTSTRAP },
    { NULL, NULL }
};


/* mdm_secret_key /path/to/keyfile */

char *
ngx_http_mdm_secret_key_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_mdm_main_conf_t  *mmcf = conf;

    int                  loose;
    ngx_str_t           *value, path;
    ngx_pool_cleanup_t  *cln;
    char                 err[NGX_HTTP_MDM_SECRET_ERR_LEN];

    if (mmcf->secrets) {
        return "is duplicate";
    }

    value = cf->args->elts;
    path = value[1];

    if (ngx_conf_full_name(cf->cycle, &path, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    mmcf->secrets = ngx_palloc(cf->pool, sizeof(mdm_secret_ring_t));
    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (mmcf->secrets == NULL || cln == NULL) {
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_http_mdm_secret_cleanup;
    cln->data = mmcf->secrets;

    if (mdm_secret_load(mmcf->secrets, (char *) path.data, &loose, err,
                        sizeof(err))
        != 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "mdm_secret_key: %s", err);
        return NGX_CONF_ERROR;
    }

    if (loose) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "mdm_secret_key: \"%V\" is readable by group or "
                           "others; chmod 600 it", &path);
    }

    return NGX_CONF_OK;
}


static void
ngx_http_mdm_secret_cleanup(void *data)
{
    mdm_secret_clear(data);
}


/*
 * A check-in value on its way to Redis: a secret is sealed (or, with no
 * key configured, copied as is) into the request pool, so the message's
 * plist may drop it afterwards; any other value is left alone.
 */

ngx_int_t
ngx_http_mdm_secret_seal(ngx_http_request_t *r, mdm_message_t *m,
    const char *key, ngx_str_t *val)
{
    u_char                    *p;
    size_t                     n;
    ngx_uint_t                 i;
    ngx_http_mdm_main_conf_t  *mmcf;

    for (i = 0; ngx_http_mdm_secret_fields[i][0]; i++) {
        if (ngx_strcmp(key, ngx_http_mdm_secret_fields[i][0]) == 0) {
            break;
        }
    }

    if (ngx_http_mdm_secret_fields[i][0] == NULL) {
        return NGX_OK;
    }

    if (val->len == 0) {
        ngx_str_set(val, "");
        return NGX_OK;
    }

    mmcf = ngx_http_get_module_main_conf(r, ngx_http_mdm_module);

    p = ngx_pnalloc(r->pool, val->len + MDM_SECRET_OVERHEAD);
    if (p == NULL) {
        return NGX_ERROR;
    }

    if (mmcf->secrets == NULL) {
        ngx_memcpy(p, val->data, val->len);
        val->data = p;
        return NGX_OK;
    }

    if (mdm_secret_seal(mmcf->secrets, ngx_http_mdm_secret_fields[i][1],
                        m->enrollment_id, m->enrollment_id_len, val->data,
                        val->len, p, &n)
        != 0)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "mdm: cannot seal %s", ngx_http_mdm_secret_fields[i][1]);
        return NGX_ERROR;
    }

    val->data = p;
    val->len = n;

    return NGX_OK;
}


/*
 * A stored value of field in the hash of enrollment owner, opened into
 * the request pool. Returns NULL, or the reason it does not open.
 */

const char *
ngx_http_mdm_secret_open(ngx_http_request_t *r, const char *field,
    const char *owner, size_t owner_len, ngx_str_t *val)
{
    u_char                    *p;
    size_t                     n;
    ngx_http_mdm_main_conf_t  *mmcf;
    char                       err[NGX_HTTP_MDM_SECRET_ERR_LEN];

    mmcf = ngx_http_get_module_main_conf(r, ngx_http_mdm_module);

    p = ngx_pnalloc(r->pool, val->len);
    if (p == NULL) {
        return "out of memory";
    }

    if (mdm_secret_open(mmcf->secrets, field, owner, owner_len, val->data,
                        val->len, p, &n, err, sizeof(err))
        != 0)
    {
        n = ngx_strlen(err) + 1;

        p = ngx_pnalloc(r->pool, n);
        if (p == NULL) {
            return "out of memory";
        }

        ngx_cpystrn(p, (u_char *) err, n);

        return (char *) p;
    }

    val->data = p;
    val->len = n;

    return NULL;
}
