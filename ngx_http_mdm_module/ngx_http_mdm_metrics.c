
/*
 * Copyright (C) The MDM module authors
 *
 * mdm_metrics: Prometheus text exposition of this nginx's device requests.
 *
 * Counters live in one shared memory zone, a slot per worker number, and
 * are only ever added to with atomic adds (no lock on the request path;
 * a reload's new workers share the slots of the old ones, hence atomics).
 * A scrape sums the slots. Device requests are counted in the log phase
 * from the module's request context, whatever path finalized them.
 *
 * The Redis gauges (redis-scripts/metrics.lua) are cached in the zone per
 * Redis: a scrape answers from the cache at once and, when it is older
 * than mdm_metrics_cache, one worker (whoever claims the refresh) sends
 * one FCALL_RO through the async adapter; the reply fills the cache for
 * the next scrape. Without an answer the gauges are left out and
 * mdm_redis_up says 0. Each answer also brings one slice of the census of
 * enrollments by type and enabled state; the slices are added up in the
 * zone and published when the census cursor comes back 0.
 */


#include "ngx_http_mdm.h"


#define NGX_HTTP_MDM_M_SLOTS        64   /* worker numbers, modulo */
#define NGX_HTTP_MDM_M_REDIS        16   /* distinct Redis with gauges */
#define NGX_HTTP_MDM_M_BUCKETS      11   /* the last one is +Inf */
#define NGX_HTTP_MDM_M_GAUGES       17
#define NGX_HTTP_MDM_M_FIXED        7    /* gauges before the push stats */
#define NGX_HTTP_MDM_M_BUF          (48 * 1024)


/* the $mdm_message_type values, Report split by its Status */
static const char  *ngx_http_mdm_m_types[] = {
    "other", "CheckIn", "Authenticate", "TokenUpdate", "CheckOut",
    "UserAuthenticate", "SetBootstrapToken", "GetBootstrapToken",
    "GetToken", "DeclarativeManagement", "DeviceAuth", "Report", NULL
};

#define NGX_HTTP_MDM_M_REPORT       11

static const char  *ngx_http_mdm_m_statuses[] = {
    "", "Idle", "Acknowledged", "Error", "CommandFormatError", "NotNow",
    NULL
};

#define NGX_HTTP_MDM_M_TYPES        (NGX_HTTP_MDM_M_REPORT + 6)

static const ngx_uint_t  ngx_http_mdm_m_codes[] = {
    200, 400, 403, 405, 408, 410, 413, 499, 500, 503, 0
};

#define NGX_HTTP_MDM_M_CODES        11   /* the last one is "other" */


/* refusal classes, from the status and the reason the handler logged */
#define NGX_HTTP_MDM_R_METHOD       0
#define NGX_HTTP_MDM_R_BAD_INPUT    1
#define NGX_HTTP_MDM_R_TOO_LARGE    2
#define NGX_HTTP_MDM_R_IDENTITY     3
#define NGX_HTTP_MDM_R_NOT_CONF     4
#define NGX_HTTP_MDM_R_DECLINED     5
#define NGX_HTTP_MDM_R_UNAVAILABLE  6
#define NGX_HTTP_MDM_R_INTERNAL     7
#define NGX_HTTP_MDM_R_N            8

static const char  *ngx_http_mdm_m_reasons[] = {
    "method", "bad_input", "too_large", "identity", "not_configured",
    "user_auth_declined", "unavailable", "internal"
};


/* why a 503: the reason's prefix, as the handler and store word it */
typedef struct {
    ngx_str_t                   prefix;
    const char                 *cause;
} ngx_http_mdm_m_cause_t;

static ngx_http_mdm_m_cause_t  ngx_http_mdm_m_causes[] = {
    { ngx_string("redis is not available"), "redis_not_ready" },
    { ngx_string("redis did not answer"), "redis_timeout" },
    { ngx_string("redis connection lost"), "redis_connection_lost" },
    { ngx_string("redis refused"), "redis_refused" },
    { ngx_string("deadline passed"), "deadline_passed" },
    { ngx_null_string, "other" }
};

#define NGX_HTTP_MDM_M_CAUSES       6


static ngx_uint_t  ngx_http_mdm_m_bounds[] = {     /* microseconds */
    250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000
};

static const char  *ngx_http_mdm_m_le[] = {
    "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025",
    "0.05", "0.1", "0.25", "+Inf"
};


/* the census: the enrollment hash's type, then enabled 0 or 1 */
static const char  *ngx_http_mdm_m_etypes[] = {
    "other", "Device", "User", "SharediPad", "UserEnrollmentDevice",
    "UserEnrollmentUser", NULL
};

#define NGX_HTTP_MDM_M_ETYPES       6


/* the reply of mdm_metrics after its version, then mdm:push:stats */
static const char  *ngx_http_mdm_m_push[] = {
    "sent", "recovered", "ok", "unregistered", "bad_token", "failed",
    "retry", "stopped", "gave_up", "skipped"
};


typedef struct {
    ngx_atomic_t                requests[NGX_HTTP_MDM_M_TYPES]
                                        [NGX_HTTP_MDM_M_CODES];
    ngx_atomic_t                refusals[NGX_HTTP_MDM_R_N];
    ngx_atomic_t                unavailable[NGX_HTTP_MDM_M_CAUSES];
    ngx_atomic_t                rtt[NGX_HTTP_MDM_M_BUCKETS];
    ngx_atomic_t                rtt_us;
    ngx_atomic_t                reconnects;
} ngx_http_mdm_m_slot_t;


typedef struct {
    ngx_atomic_t                busy;        /* ms of a refresh claim */
    uint32_t                    crc;         /* whose: a reload renumbers */
    ngx_uint_t                  up;
    ngx_uint_t                  complained;
    uint64_t                    updated;     /* ms, last attempt */
    uint64_t                    good;        /* ms, last answer */
    int64_t                     v[NGX_HTTP_MDM_M_GAUGES];

    /* the census: this pass so far, the last complete one */
    int64_t                     pass[NGX_HTTP_MDM_M_ETYPES][2];
    int64_t                     census[NGX_HTTP_MDM_M_ETYPES][2];
    uint64_t                    census_ms;   /* 0: none complete yet */
    size_t                      cursor_len;  /* 0: a pass starts */
    u_char                      cursor[24];  /* ZSCAN's, 64-bit decimal */
} ngx_http_mdm_m_gauges_t;


typedef struct {
    ngx_http_mdm_m_slot_t       slot[NGX_HTTP_MDM_M_SLOTS];
    ngx_http_mdm_m_gauges_t     redis[NGX_HTTP_MDM_M_REDIS];
} ngx_http_mdm_m_shm_t;


typedef struct {
    ngx_flag_t                  used;        /* any mdm_metrics */
    ngx_slab_pool_t            *shpool;
} ngx_http_mdm_metrics_main_conf_t;


typedef struct {
    ngx_msec_t                  cache;
} ngx_http_mdm_metrics_loc_conf_t;


/* the worker's view of the zone (set in the master before the fork) */
static ngx_http_mdm_m_shm_t     *ngx_http_mdm_m;
static ngx_slab_pool_t          *ngx_http_mdm_m_pool;


static void *ngx_http_mdm_metrics_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_mdm_metrics_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_mdm_metrics_merge_loc_conf(ngx_conf_t *cf,
    void *parent, void *child);
static char *ngx_http_mdm_metrics(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_mdm_metrics_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_mdm_metrics_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_int_t ngx_http_mdm_metrics_log(ngx_http_request_t *r);
static ngx_int_t ngx_http_mdm_metrics_handler(ngx_http_request_t *r);
static void ngx_http_mdm_metrics_refresh(ngx_http_request_t *r,
    ngx_http_mdm_m_gauges_t *g, uint64_t now, ngx_msec_t cache);
static void ngx_http_mdm_metrics_done(ngx_int_t rc, redisReply *reply,
    void *data);
static void ngx_http_mdm_metrics_store(ngx_http_mdm_m_gauges_t *g,
    redisReply *reply, const char *why);
static u_char *ngx_http_mdm_metrics_render(ngx_http_request_t *r,
    u_char *p, u_char *last, ngx_http_mdm_m_gauges_t *g);
static uint64_t ngx_http_mdm_metrics_ms(void);


static ngx_command_t  ngx_http_mdm_metrics_commands[] = {

    { ngx_string("mdm_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_mdm_metrics,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("mdm_metrics_cache"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_mdm_metrics_loc_conf_t, cache),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_mdm_metrics_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_mdm_metrics_init,             /* postconfiguration */
    ngx_http_mdm_metrics_create_main_conf, /* create main configuration */
    NULL,                                  /* init main configuration */
    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */
    ngx_http_mdm_metrics_create_loc_conf,  /* create location configuration */
    ngx_http_mdm_metrics_merge_loc_conf    /* merge location configuration */
};


ngx_module_t  ngx_http_mdm_metrics_module = {
    NGX_MODULE_V1,
    &ngx_http_mdm_metrics_module_ctx,      /* module context */
    ngx_http_mdm_metrics_commands,         /* module directives */
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


static ngx_str_t  ngx_http_mdm_metrics_zone = ngx_string("mdm_metrics");
static ngx_str_t  ngx_http_mdm_metrics_type =
    ngx_string("text/plain; version=0.0.4");


static void *
ngx_http_mdm_metrics_create_main_conf(ngx_conf_t *cf)
{
    return ngx_pcalloc(cf->pool, sizeof(ngx_http_mdm_metrics_main_conf_t));
}


static void *
ngx_http_mdm_metrics_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_mdm_metrics_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_mdm_metrics_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    conf->cache = NGX_CONF_UNSET_MSEC;

    return conf;
}


static char *
ngx_http_mdm_metrics_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child)
{
    ngx_http_mdm_metrics_loc_conf_t  *prev = parent;
    ngx_http_mdm_metrics_loc_conf_t  *conf = child;

    ngx_conf_merge_msec_value(conf->cache, prev->cache, 10000);

    return NGX_CONF_OK;
}


static char *
ngx_http_mdm_metrics(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t          *clcf;
    ngx_http_mdm_metrics_main_conf_t  *mmcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    if (clcf->handler == ngx_http_mdm_metrics_handler) {
        return "is duplicate";
    }

    clcf->handler = ngx_http_mdm_metrics_handler;

    mmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_mdm_metrics_module);
    mmcf->used = 1;

    return NGX_CONF_OK;
}


/* The zone and the log-phase counter, when anything can use them. */

static ngx_int_t
ngx_http_mdm_metrics_init(ngx_conf_t *cf)
{
    size_t                             size;
    ngx_shm_zone_t                    *shm_zone;
    ngx_http_handler_pt               *h;
    ngx_http_mdm_main_conf_t          *mdcf;
    ngx_http_core_main_conf_t         *cmcf;
    ngx_http_mdm_metrics_main_conf_t  *mmcf;

    mmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_mdm_metrics_module);
    mdcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_mdm_module);

    if (!mmcf->used && !mdcf->configured) {
        return NGX_OK;
    }

    /* a fixed size: the zone, and its counters, survive a reload */
    size = ngx_align(sizeof(ngx_http_mdm_m_shm_t), ngx_pagesize)
           + 8 * ngx_pagesize;

    shm_zone = ngx_shared_memory_add(cf, &ngx_http_mdm_metrics_zone, size,
                                     &ngx_http_mdm_metrics_module);
    if (shm_zone == NULL) {
        return NGX_ERROR;
    }

    shm_zone->init = ngx_http_mdm_metrics_init_zone;
    shm_zone->data = mmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_mdm_metrics_log;

    return NGX_OK;
}


static ngx_int_t
ngx_http_mdm_metrics_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_slab_pool_t                   *shpool;
    ngx_http_mdm_metrics_main_conf_t  *omcf = data;
    ngx_http_mdm_metrics_main_conf_t  *mmcf;

    mmcf = shm_zone->data;
    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (omcf) {
        /* a reload: the same zone, the same counters */
        mmcf->shpool = omcf->shpool;
        ngx_http_mdm_m_pool = shpool;
        ngx_http_mdm_m = shpool->data;
        return NGX_OK;
    }

    mmcf->shpool = shpool;

    if (shm_zone->shm.exists) {
        ngx_http_mdm_m_pool = shpool;
        ngx_http_mdm_m = shpool->data;
        return NGX_OK;
    }

    ngx_http_mdm_m = ngx_slab_calloc(shpool, sizeof(ngx_http_mdm_m_shm_t));
    if (ngx_http_mdm_m == NULL) {
        return NGX_ERROR;
    }

    shpool->data = ngx_http_mdm_m;
    ngx_http_mdm_m_pool = shpool;

    return NGX_OK;
}


static ngx_http_mdm_m_slot_t *
ngx_http_mdm_metrics_slot(void)
{
    return &ngx_http_mdm_m->slot[ngx_worker % NGX_HTTP_MDM_M_SLOTS];
}


/* Called by the adapter: a reply came, usec after the call went out. */

void
ngx_http_mdm_metrics_rtt(uint64_t usec)
{
    ngx_uint_t              i;
    ngx_http_mdm_m_slot_t  *s;

    if (ngx_http_mdm_m == NULL) {
        return;
    }

    for (i = 0; i < NGX_HTTP_MDM_M_BUCKETS - 1; i++) {
        if (usec <= ngx_http_mdm_m_bounds[i]) {
            break;
        }
    }

    s = ngx_http_mdm_metrics_slot();
    (void) ngx_atomic_fetch_add(&s->rtt[i], 1);
    (void) ngx_atomic_fetch_add(&s->rtt_us, (ngx_atomic_int_t) usec);
}


void
ngx_http_mdm_metrics_reconnect(void)
{
    if (ngx_http_mdm_m) {
        (void) ngx_atomic_fetch_add(&ngx_http_mdm_metrics_slot()->reconnects,
                                    1);
    }
}


uint64_t
ngx_http_mdm_metrics_now_us(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}


static ngx_uint_t
ngx_http_mdm_metrics_index(const char **names, ngx_str_t *s)
{
    ngx_uint_t  i;

    /* not known (a refused request): the first entry, without strncmp */
    if (s->len == 0) {
        return 0;
    }

    for (i = 0; names[i]; i++) {
        if (ngx_strlen(names[i]) == s->len
            && ngx_strncmp(names[i], s->data, s->len) == 0)
        {
            return i;
        }
    }

    return 0;
}


/* Every device request once, as it is logged. */

static ngx_int_t
ngx_http_mdm_metrics_log(ngx_http_request_t *r)
{
    ngx_uint_t               type, code, status, i, reason;
    ngx_http_mdm_ctx_t      *ctx;
    ngx_http_mdm_m_slot_t   *s;
    ngx_http_mdm_m_cause_t  *c;

    ctx = ngx_http_get_module_ctx(r, ngx_http_mdm_module);
    if (ctx == NULL || ngx_http_mdm_m == NULL) {
        return NGX_OK;
    }

    type = ngx_http_mdm_metrics_index(ngx_http_mdm_m_types,
                                      &ctx->message_type);
    if (type == NGX_HTTP_MDM_M_REPORT) {
        type += ngx_http_mdm_metrics_index(ngx_http_mdm_m_statuses,
                                           &ctx->status);
    }

    status = r->err_status ? r->err_status : r->headers_out.status;

    for (code = 0; code < NGX_HTTP_MDM_M_CODES - 1; code++) {
        if (ngx_http_mdm_m_codes[code] == status) {
            break;
        }
    }

    s = ngx_http_mdm_metrics_slot();
    (void) ngx_atomic_fetch_add(&s->requests[type][code], 1);

    if (ctx->error.len == 0) {
        return NGX_OK;
    }

    switch (status) {

    case NGX_HTTP_NOT_ALLOWED:
        reason = NGX_HTTP_MDM_R_METHOD;
        break;

    case NGX_HTTP_BAD_REQUEST:
        reason = ngx_strlcasestrn(ctx->error.data,
                                  ctx->error.data + ctx->error.len,
                                  (u_char *) "configured", 10 - 1)
                 ? NGX_HTTP_MDM_R_NOT_CONF : NGX_HTTP_MDM_R_BAD_INPUT;
        break;

    case NGX_HTTP_REQUEST_ENTITY_TOO_LARGE:
        reason = NGX_HTTP_MDM_R_TOO_LARGE;
        break;

    case NGX_HTTP_FORBIDDEN:
        reason = NGX_HTTP_MDM_R_IDENTITY;
        break;

    case 410:   /* UserAuthenticate declined */
        reason = NGX_HTTP_MDM_R_DECLINED;
        break;

    case NGX_HTTP_SERVICE_UNAVAILABLE:
        reason = NGX_HTTP_MDM_R_UNAVAILABLE;

        for (i = 0, c = ngx_http_mdm_m_causes; c->prefix.len; i++, c++) {
            if (ctx->error.len >= c->prefix.len
                && ngx_strncmp(ctx->error.data, c->prefix.data,
                               c->prefix.len) == 0)
            {
                break;
            }
        }

        (void) ngx_atomic_fetch_add(&s->unavailable[i], 1);
        break;

    default:
        reason = NGX_HTTP_MDM_R_INTERNAL;
    }

    (void) ngx_atomic_fetch_add(&s->refusals[reason], 1);

    return NGX_OK;
}


static ngx_int_t
ngx_http_mdm_metrics_handler(ngx_http_request_t *r)
{
    u_char                           *p;
    uint64_t                          now;
    uint32_t                          crc;
    ngx_int_t                         rc;
    ngx_buf_t                        *b;
    ngx_uint_t                        i;
    ngx_chain_t                       out;
    ngx_table_elt_t                  *h;
    ngx_http_mdm_m_gauges_t          *g, snap;
    ngx_http_mdm_srv_conf_t          *mscf;
    ngx_http_mdm_main_conf_t         *mdcf;
    ngx_http_mdm_redis_conn_t       **conns;
    ngx_http_mdm_metrics_loc_conf_t  *mlcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h != NULL) {
            h->hash = 1;
            ngx_str_set(&h->key, "Allow");
            ngx_str_set(&h->value, "GET, HEAD");
        }

        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_http_mdm_m == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* this server's Redis: its slot in the zone, refreshed when stale */

    g = NULL;
    mscf = ngx_http_get_module_srv_conf(r, ngx_http_mdm_module);
    mdcf = ngx_http_get_module_main_conf(r, ngx_http_mdm_module);
    conns = mdcf->conns.elts;

    for (i = 0; mscf->redis && i < mdcf->conns.nelts; i++) {
        if (conns[i] == mscf->redis && i < NGX_HTTP_MDM_M_REDIS) {
            g = &ngx_http_mdm_m->redis[i];
            break;
        }
    }

    if (g) {
        crc = ngx_crc32_short(mscf->redis->name.data, mscf->redis->name.len);

        ngx_shmtx_lock(&ngx_http_mdm_m_pool->mutex);

        if (g->crc != crc) {
            ngx_memzero(g, sizeof(ngx_http_mdm_m_gauges_t));
            g->crc = crc;
        }

        ngx_shmtx_unlock(&ngx_http_mdm_m_pool->mutex);

        mlcf = ngx_http_get_module_loc_conf(r, ngx_http_mdm_metrics_module);
        now = ngx_http_mdm_metrics_ms();

        if (now - g->updated >= mlcf->cache) {
            ngx_http_mdm_metrics_refresh(r, g, now, mlcf->cache);
        }

        ngx_shmtx_lock(&ngx_http_mdm_m_pool->mutex);
        snap = *g;
        ngx_shmtx_unlock(&ngx_http_mdm_m_pool->mutex);

        g = &snap;
    }

    b = ngx_create_temp_buf(r->pool, NGX_HTTP_MDM_M_BUF);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_http_mdm_metrics_render(r, b->pos, b->end, g);
    b->last = p;
    b->last_buf = (r == r->main);
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;
    r->headers_out.content_type = ngx_http_mdm_metrics_type;
    r->headers_out.content_type_len = ngx_http_mdm_metrics_type.len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* One worker claims the refresh; a claim older than the timeout is dead. */

static void
ngx_http_mdm_metrics_refresh(ngx_http_request_t *r,
    ngx_http_mdm_m_gauges_t *g, uint64_t now, ngx_msec_t cache)
{
    u_char                      cursor[24];
    size_t                      len[4];
    ngx_int_t                   rc;
    const char                 *argv[4];
    ngx_atomic_uint_t           busy;
    ngx_http_mdm_srv_conf_t    *mscf;
    ngx_http_mdm_redis_op_t    *op;

    mscf = ngx_http_get_module_srv_conf(r, ngx_http_mdm_module);

    busy = g->busy;

    if (busy && now - busy < mscf->timeout + 1000) {
        return;
    }

    if (!ngx_atomic_cmp_set(&g->busy, busy, (ngx_atomic_uint_t) now)) {
        return;
    }

    /* another worker's refresh may have ended since we looked */
    if (now - g->updated < cache) {
        g->busy = 0;
        return;
    }

    argv[0] = "FCALL_RO";
    len[0] = 8;
    argv[1] = "mdm_metrics";
    len[1] = 11;
    argv[2] = "0";
    len[2] = 1;

    ngx_shmtx_lock(&ngx_http_mdm_m_pool->mutex);

    len[3] = g->cursor_len;
    ngx_memcpy(cursor, g->cursor, g->cursor_len);

    ngx_shmtx_unlock(&ngx_http_mdm_m_pool->mutex);

    if (len[3] == 0) {
        cursor[0] = '0';
        len[3] = 1;
    }

    argv[3] = (char *) cursor;

    rc = ngx_http_mdm_redis_call(mscf->redis, 4, argv, len, mscf->timeout,
                                 ngx_cycle->log, ngx_http_mdm_metrics_done,
                                 g, &op);
    if (rc != NGX_OK) {
        ngx_http_mdm_metrics_store(g, NULL, "redis is not available");
    }
}


static void
ngx_http_mdm_metrics_done(ngx_int_t rc, redisReply *reply, void *data)
{
    ngx_http_mdm_m_gauges_t  *g = data;

    switch (rc) {

    case NGX_HTTP_MDM_REDIS_REPLY:
        ngx_http_mdm_metrics_store(g, reply, NULL);
        break;

    case NGX_HTTP_MDM_REDIS_REFUSED:
        ngx_http_mdm_metrics_store(g, NULL, reply->str);
        break;

    case NGX_HTTP_MDM_REDIS_TIMEOUT:
        ngx_http_mdm_metrics_store(g, NULL, "redis did not answer in time");
        break;

    default:
        ngx_http_mdm_metrics_store(g, NULL, "redis connection lost");
    }
}


/* The reply into the cache, or the gauges out until the next answer. */

static void
ngx_http_mdm_metrics_store(ngx_http_mdm_m_gauges_t *g, redisReply *reply,
    const char *why)
{
    size_t        i, j, n, t, en, clen;
    u_char        cursor[24];
    int64_t       v[NGX_HTTP_MDM_M_GAUGES];
    int64_t       slice[NGX_HTTP_MDM_M_ETYPES][2];
    ngx_str_t     s;
    redisReply  **e;

    ngx_memzero(v, sizeof(v));
    ngx_memzero(slice, sizeof(slice));
    clen = 0;
    n = 0;

    if (reply && why == NULL) {
        e = reply->element;

        if (reply->type == REDIS_REPLY_ERROR) {
            why = reply->str;

        } else if (reply->type != REDIS_REPLY_ARRAY
                   || reply->elements < 3 + NGX_HTTP_MDM_M_FIXED
                   || e[0]->type != REDIS_REPLY_STRING
                   || e[0]->len != 1 || e[0]->str[0] != '1'
                   || e[8]->type != REDIS_REPLY_STRING
                   || e[8]->len > sizeof(cursor)
                   || e[9]->type != REDIS_REPLY_INTEGER
                   || e[9]->integer < 0
                   || (size_t) e[9]->integer
                      > (reply->elements - 10) / 3)
        {
            why = "mdm_metrics is not version 1: load "
                  "redis-scripts/metrics.lua";

        } else {
            for (i = 0; i < NGX_HTTP_MDM_M_FIXED; i++) {
                v[i] = e[1 + i]->type == REDIS_REPLY_INTEGER
                       ? e[1 + i]->integer : -1;
            }

            clen = e[8]->len;
            ngx_memcpy(cursor, e[8]->str, clen);
            n = (size_t) e[9]->integer;

            for (i = 10; i < 10 + 3 * n; i += 3) {
                if (e[i]->type != REDIS_REPLY_STRING
                    || e[i + 1]->type != REDIS_REPLY_STRING
                    || e[i + 2]->type != REDIS_REPLY_INTEGER)
                {
                    continue;
                }

                s.data = (u_char *) e[i]->str;
                s.len = e[i]->len;
                t = ngx_http_mdm_metrics_index(ngx_http_mdm_m_etypes, &s);
                en = (e[i + 1]->len == 1 && e[i + 1]->str[0] == '1');
                slice[t][en] += e[i + 2]->integer;
            }

            for (i = 10 + 3 * n; i + 1 < reply->elements; i += 2) {
                if (e[i]->type != REDIS_REPLY_STRING
                    || e[i + 1]->type != REDIS_REPLY_STRING)
                {
                    continue;
                }

                for (j = 0; j < NGX_HTTP_MDM_M_GAUGES - NGX_HTTP_MDM_M_FIXED;
                     j++)
                {
                    if (ngx_strlen(ngx_http_mdm_m_push[j]) == e[i]->len
                        && ngx_strncmp(ngx_http_mdm_m_push[j], e[i]->str,
                                       e[i]->len) == 0)
                    {
                        v[NGX_HTTP_MDM_M_FIXED + j] =
                            ngx_atoi((u_char *) e[i + 1]->str,
                                     e[i + 1]->len);
                        break;
                    }
                }
            }
        }
    }

    ngx_shmtx_lock(&ngx_http_mdm_m_pool->mutex);

    g->updated = ngx_http_mdm_metrics_ms();

    if (why == NULL) {
        ngx_memcpy(g->v, v, sizeof(v));
        g->good = g->updated;
        g->up = 1;
        g->complained = 0;

        for (t = 0; t < NGX_HTTP_MDM_M_ETYPES; t++) {
            g->pass[t][0] += slice[t][0];
            g->pass[t][1] += slice[t][1];
        }

        if (clen == 1 && cursor[0] == '0') {
            ngx_memcpy(g->census, g->pass, sizeof(g->pass));
            ngx_memzero(g->pass, sizeof(g->pass));
            g->census_ms = g->updated;
            clen = 0;
        }

        ngx_memcpy(g->cursor, cursor, clen);
        g->cursor_len = clen;

    } else {
        /* a pass is counted against one data set: start again */
        ngx_memzero(g->pass, sizeof(g->pass));
        g->cursor_len = 0;
        g->up = 0;

        /* one line per outage, not one per refresh */
        if (g->complained) {
            why = NULL;
        }

        g->complained = 1;
    }

    g->busy = 0;

    ngx_shmtx_unlock(&ngx_http_mdm_m_pool->mutex);

    if (why) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "mdm: metrics: the Redis gauges are left out: %s",
                      why);
    }
}


#define ngx_http_mdm_m_head(p, last, name, type, help)                        \
    ngx_slprintf(p, last, "# HELP " name " " help "\n# TYPE " name " "       \
                 type "\n")


static u_char *
ngx_http_mdm_metrics_render(ngx_http_request_t *r, u_char *p, u_char *last,
    ngx_http_mdm_m_gauges_t *g)
{
    uint64_t                sum[NGX_HTTP_MDM_M_TYPES][NGX_HTTP_MDM_M_CODES];
    uint64_t                ref[NGX_HTTP_MDM_R_N];
    uint64_t                una[NGX_HTTP_MDM_M_CAUSES];
    uint64_t                rtt[NGX_HTTP_MDM_M_BUCKETS];
    uint64_t                us, rec, n, cum;
    ngx_uint_t              w, t, c, i;
    ngx_http_mdm_m_slot_t  *s;

    ngx_memzero(sum, sizeof(sum));
    ngx_memzero(ref, sizeof(ref));
    ngx_memzero(una, sizeof(una));
    ngx_memzero(rtt, sizeof(rtt));
    us = 0;
    rec = 0;

    for (w = 0; w < NGX_HTTP_MDM_M_SLOTS; w++) {
        s = &ngx_http_mdm_m->slot[w];

        for (t = 0; t < NGX_HTTP_MDM_M_TYPES; t++) {
            for (c = 0; c < NGX_HTTP_MDM_M_CODES; c++) {
                sum[t][c] += s->requests[t][c];
            }
        }

        for (i = 0; i < NGX_HTTP_MDM_R_N; i++) {
            ref[i] += s->refusals[i];
        }

        for (i = 0; i < NGX_HTTP_MDM_M_CAUSES; i++) {
            una[i] += s->unavailable[i];
        }

        for (i = 0; i < NGX_HTTP_MDM_M_BUCKETS; i++) {
            rtt[i] += s->rtt[i];
        }

        us += s->rtt_us;
        rec += s->reconnects;
    }

    p = ngx_http_mdm_m_head(p, last, "mdm_requests_total", "counter",
                            "Device requests by message type, report "
                            "status and HTTP status code.");

    for (t = 0; t < NGX_HTTP_MDM_M_TYPES; t++) {
        for (c = 0; c < NGX_HTTP_MDM_M_CODES; c++) {
            if (sum[t][c] == 0) {
                continue;
            }

            p = ngx_slprintf(p, last, "mdm_requests_total{type=\"%s\"",
                             ngx_http_mdm_m_types[ngx_min(t,
                                                  NGX_HTTP_MDM_M_REPORT)]);

            if (t > NGX_HTTP_MDM_M_REPORT) {
                p = ngx_slprintf(p, last, ",status=\"%s\"",
                          ngx_http_mdm_m_statuses[t - NGX_HTTP_MDM_M_REPORT]);
            }

            if (ngx_http_mdm_m_codes[c]) {
                p = ngx_slprintf(p, last, ",code=\"%ui\"} %uL\n",
                                 ngx_http_mdm_m_codes[c], sum[t][c]);

            } else {
                p = ngx_slprintf(p, last, ",code=\"other\"} %uL\n",
                                 sum[t][c]);
            }
        }
    }

    p = ngx_http_mdm_m_head(p, last, "mdm_refusals_total", "counter",
                            "Device requests refused, by reason class.");

    for (i = 0; i < NGX_HTTP_MDM_R_N; i++) {
        p = ngx_slprintf(p, last, "mdm_refusals_total{reason=\"%s\"} %uL\n",
                         ngx_http_mdm_m_reasons[i], ref[i]);
    }

    p = ngx_http_mdm_m_head(p, last, "mdm_unavailable_total", "counter",
                            "Device requests answered 503, by cause.");

    for (i = 0; i < NGX_HTTP_MDM_M_CAUSES; i++) {
        p = ngx_slprintf(p, last,
                         "mdm_unavailable_total{cause=\"%s\"} %uL\n",
                         ngx_http_mdm_m_causes[i].cause, una[i]);
    }

    p = ngx_http_mdm_m_head(p, last, "mdm_redis_round_trip_seconds",
                            "histogram", "Redis call round trips seen by "
                            "the workers, send to reply.");

    cum = 0;

    for (i = 0; i < NGX_HTTP_MDM_M_BUCKETS; i++) {
        cum += rtt[i];
        p = ngx_slprintf(p, last, "mdm_redis_round_trip_seconds_bucket"
                         "{le=\"%s\"} %uL\n", ngx_http_mdm_m_le[i], cum);
    }

    p = ngx_slprintf(p, last, "mdm_redis_round_trip_seconds_sum %uL.%06uL\n"
                     "mdm_redis_round_trip_seconds_count %uL\n",
                     us / 1000000, us % 1000000, cum);

    p = ngx_http_mdm_m_head(p, last, "mdm_redis_reconnects_total", "counter",
                            "Reconnect attempts after a lost, refused or "
                            "failed Redis connection.");
    p = ngx_slprintf(p, last, "mdm_redis_reconnects_total %uL\n", rec);

    /* nothing to say before the first refresh has come back */
    if (g == NULL || g->updated == 0) {
        return p;
    }

    p = ngx_http_mdm_m_head(p, last, "mdm_redis_up", "gauge",
                            "1 if the last gauge refresh from this "
                            "server's Redis succeeded.");
    p = ngx_slprintf(p, last, "mdm_redis_up %ui\n", g->up);

    if (!g->up) {
        return p;
    }

    n = ngx_http_mdm_metrics_ms() - g->good;

    p = ngx_http_mdm_m_head(p, last, "mdm_redis_gauges_age_seconds",
                            "gauge", "Age of the cached Redis gauges.");
    p = ngx_slprintf(p, last, "mdm_redis_gauges_age_seconds %uL.%03uL\n",
                     n / 1000, n % 1000);

    p = ngx_http_mdm_m_head(p, last, "mdm_enrollments", "gauge",
                            "Enrollments (mdm:enrollments).");
    p = ngx_slprintf(p, last, "mdm_enrollments %L\n", g->v[0]);

    if (g->census_ms) {
        p = ngx_http_mdm_m_head(p, last, "mdm_enrollments_by_type", "gauge",
                                "Enrollments by type and enabled state, "
                                "from the last complete census.");

        for (i = 0; i < NGX_HTTP_MDM_M_ETYPES; i++) {
            p = ngx_slprintf(p, last,
                             "mdm_enrollments_by_type{type=\"%s\","
                             "enabled=\"0\"} %L\n"
                             "mdm_enrollments_by_type{type=\"%s\","
                             "enabled=\"1\"} %L\n",
                             ngx_http_mdm_m_etypes[i], g->census[i][0],
                             ngx_http_mdm_m_etypes[i], g->census[i][1]);
        }

        n = ngx_http_mdm_metrics_ms() - g->census_ms;

        p = ngx_http_mdm_m_head(p, last,
                                "mdm_enrollments_census_age_seconds",
                                "gauge", "Age of the last complete census "
                                "of enrollments.");
        p = ngx_slprintf(p, last,
                         "mdm_enrollments_census_age_seconds %uL.%03uL\n",
                         n / 1000, n % 1000);
    }

    p = ngx_http_mdm_m_head(p, last, "mdm_commands", "gauge",
                            "Commands with a body still queued somewhere.");
    p = ngx_slprintf(p, last, "mdm_commands %L\n", g->v[1]);

    if (g->v[2] >= 0) {
        p = ngx_http_mdm_m_head(p, last, "mdm_queued_commands", "gauge",
                                "Command queue items over all enrollments.");
        p = ngx_slprintf(p, last, "mdm_queued_commands %L\n", g->v[2]);
    }

    p = ngx_http_mdm_m_head(p, last, "mdm_push_queue_length", "gauge",
                            "Push requests waiting for the sender.");
    p = ngx_slprintf(p, last, "mdm_push_queue_length %L\n", g->v[3]);

    p = ngx_http_mdm_m_head(p, last, "mdm_push_pending", "gauge",
                            "Enrollments with a push request not yet "
                            "taken.");
    p = ngx_slprintf(p, last, "mdm_push_pending %L\n", g->v[4]);

    p = ngx_http_mdm_m_head(p, last, "mdm_stream_length", "gauge",
                            "Entries in the event streams.");
    p = ngx_slprintf(p, last, "mdm_stream_length{stream=\"events\"} %L\n"
                     "mdm_stream_length{stream=\"audit\"} %L\n",
                     g->v[5], g->v[6]);

    p = ngx_http_mdm_m_head(p, last, "mdm_pushes_sent_total", "counter",
                            "APNs answers and transport errors "
                            "(mdm:push:stats sent).");
    p = ngx_slprintf(p, last, "mdm_pushes_sent_total %L\n", g->v[7]);

    p = ngx_http_mdm_m_head(p, last, "mdm_pushes_recovered_total", "counter",
                            "Pushes taken back from a dead sender.");
    p = ngx_slprintf(p, last, "mdm_pushes_recovered_total %L\n", g->v[8]);

    p = ngx_http_mdm_m_head(p, last, "mdm_pushes_total", "counter",
                            "Push outcomes by result (mdm:push:stats).");

    for (i = 9; i < NGX_HTTP_MDM_M_GAUGES; i++) {
        p = ngx_slprintf(p, last, "mdm_pushes_total{result=\"%s\"} %L\n",
                         ngx_http_mdm_m_push[i - NGX_HTTP_MDM_M_FIXED],
                         g->v[i]);
    }

    return p;
}


static uint64_t
ngx_http_mdm_metrics_ms(void)
{
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    return (uint64_t) tp->sec * 1000 + tp->msec;
}
