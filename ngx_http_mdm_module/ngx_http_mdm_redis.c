
/*
 * Copyright (C) The MDM module authors
 *
 * hiredis' async API on nginx's event loop: one pipelined connection per
 * worker, opened in init_process, reconnected with jittered backoff. hiredis
 * 0.14 has no timeouts: each request arms an nginx timer and answers 503 when
 * it fires; a late reply is dropped. The fd is registered level-triggered so
 * hiredis' 16 KB reads simply re-fire.
 */


#include "ngx_http_mdm.h"


#define NGX_HTTP_MDM_DISCONNECTED     0
#define NGX_HTTP_MDM_CONNECTING       1
#define NGX_HTTP_MDM_MISMATCH         2
#define NGX_HTTP_MDM_READY            3

#define NGX_HTTP_MDM_BACKOFF_MIN      100
#define NGX_HTTP_MDM_BACKOFF_MAX      5000
#define NGX_HTTP_MDM_RECHECK          5000


typedef struct {
    ngx_http_request_t         *request;
    ngx_http_cleanup_t         *cleanup;
    ngx_event_t                 timer;
    ngx_http_mdm_reply_pt       handler;
    ngx_msec_t                  sent;
} ngx_http_mdm_op_t;


static void ngx_http_mdm_redis_connect(void);
static void ngx_http_mdm_redis_schedule(void);
static void ngx_http_mdm_redis_drop(const char *why);
static void ngx_http_mdm_redis_check_version(void);
static void ngx_http_mdm_redis_connected(const redisAsyncContext *ac,
    int status);
static void ngx_http_mdm_redis_disconnected(const redisAsyncContext *ac,
    int status);
static void ngx_http_mdm_redis_setup_reply(redisAsyncContext *ac, void *rep,
    void *data);
static void ngx_http_mdm_redis_version_reply(redisAsyncContext *ac, void *rep,
    void *data);
static void ngx_http_mdm_redis_reconnect_handler(ngx_event_t *ev);
static void ngx_http_mdm_redis_handshake_handler(ngx_event_t *ev);
static void ngx_http_mdm_redis_read_handler(ngx_event_t *ev);
static void ngx_http_mdm_redis_write_handler(ngx_event_t *ev);
static void ngx_http_mdm_redis_add_read(void *data);
static void ngx_http_mdm_redis_del_read(void *data);
static void ngx_http_mdm_redis_add_write(void *data);
static void ngx_http_mdm_redis_del_write(void *data);
static void ngx_http_mdm_redis_cleanup(void *data);
static void ngx_http_mdm_op_reply(redisAsyncContext *ac, void *rep,
    void *data);
static void ngx_http_mdm_op_cleanup(void *data);
static void ngx_http_mdm_op_timeout(ngx_event_t *ev);


static redisAsyncContext         *ngx_http_mdm_ac;
static ngx_uint_t                 ngx_http_mdm_state;
static ngx_uint_t                 ngx_http_mdm_exiting;
static ngx_msec_t                 ngx_http_mdm_backoff;
static ngx_msec_t                 ngx_http_mdm_last_reply;
static ngx_log_t                 *ngx_http_mdm_log;
static ngx_http_mdm_main_conf_t  *ngx_http_mdm_mcf;
static ngx_event_t                ngx_http_mdm_reconnect_ev;
static ngx_event_t                ngx_http_mdm_handshake_ev;
static ngx_connection_t           ngx_http_mdm_dummy;
static char                      *ngx_http_mdm_host;
static int                        ngx_http_mdm_port;


ngx_int_t
ngx_http_mdm_redis_init_process(ngx_cycle_t *cycle)
{
    u_char                    *p;
    ngx_str_t                 *a;
    ngx_http_mdm_main_conf_t  *mmcf;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    mmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_mdm_module);
    if (mmcf == NULL || !mmcf->configured) {
        return NGX_OK;
    }

    ngx_http_mdm_mcf = mmcf;
    ngx_http_mdm_log = cycle->log;
    a = &mmcf->addr;

    /* addresses were checked at configuration time */

    if (a->len > 5 && ngx_strncmp(a->data, "unix:", 5) == 0) {
        ngx_http_mdm_host = ngx_pcalloc(cycle->pool, a->len - 4);
        if (ngx_http_mdm_host == NULL) {
            return NGX_ERROR;
        }
        ngx_memcpy(ngx_http_mdm_host, a->data + 5, a->len - 5);
        ngx_http_mdm_port = -1;

    } else {
        p = ngx_strlchr(a->data, a->data + a->len, ':');
        ngx_http_mdm_host = ngx_pcalloc(cycle->pool, p - a->data + 1);
        if (ngx_http_mdm_host == NULL) {
            return NGX_ERROR;
        }
        ngx_memcpy(ngx_http_mdm_host, a->data, p - a->data);
        ngx_http_mdm_port = ngx_atoi(p + 1, a->data + a->len - p - 1);
    }

    /* timers need a connection-like data pointer for their log */
    ngx_http_mdm_dummy.fd = (ngx_socket_t) -1;

    ngx_http_mdm_reconnect_ev.handler = ngx_http_mdm_redis_reconnect_handler;
    ngx_http_mdm_reconnect_ev.log = cycle->log;
    ngx_http_mdm_reconnect_ev.data = &ngx_http_mdm_dummy;
    ngx_http_mdm_reconnect_ev.cancelable = 1;

    ngx_http_mdm_handshake_ev.handler = ngx_http_mdm_redis_handshake_handler;
    ngx_http_mdm_handshake_ev.log = cycle->log;
    ngx_http_mdm_handshake_ev.data = &ngx_http_mdm_dummy;
    ngx_http_mdm_handshake_ev.cancelable = 1;

    ngx_http_mdm_backoff = NGX_HTTP_MDM_BACKOFF_MIN;

    ngx_http_mdm_redis_connect();

    return NGX_OK;
}


void
ngx_http_mdm_redis_exit_process(ngx_cycle_t *cycle)
{
    redisAsyncContext  *ac;

    ngx_http_mdm_exiting = 1;

    if (ngx_http_mdm_reconnect_ev.timer_set) {
        ngx_del_timer(&ngx_http_mdm_reconnect_ev);
    }

    if (ngx_http_mdm_handshake_ev.timer_set) {
        ngx_del_timer(&ngx_http_mdm_handshake_ev);
    }

    ac = ngx_http_mdm_ac;
    if (ac) {
        ngx_http_mdm_ac = NULL;
        redisAsyncFree(ac);
    }
}


ngx_int_t
ngx_http_mdm_redis_ready(void)
{
    return ngx_http_mdm_state == NGX_HTTP_MDM_READY;
}


static void
ngx_http_mdm_redis_connect(void)
{
    ngx_connection_t   *c;
    redisAsyncContext  *ac;

    if (ngx_http_mdm_port == -1) {
        ac = redisAsyncConnectUnix(ngx_http_mdm_host);

    } else {
        /* an IP literal: no resolver call, so this does not block */
        ac = redisAsyncConnect(ngx_http_mdm_host, ngx_http_mdm_port);
    }

    if (ac == NULL || ac->err) {
        ngx_log_error(NGX_LOG_ERR, ngx_http_mdm_log, 0,
                      "mdm: cannot connect to redis \"%V\": %s",
                      &ngx_http_mdm_mcf->addr,
                      ac ? ac->errstr : "out of memory");
        if (ac) {
            redisAsyncFree(ac);
        }
        ngx_http_mdm_redis_schedule();
        return;
    }

    c = ngx_get_connection(ac->c.fd, ngx_http_mdm_log);
    if (c == NULL) {
        redisAsyncFree(ac);
        ngx_http_mdm_redis_schedule();
        return;
    }

    c->data = ac;
    c->log = ngx_http_mdm_log;
    c->read->log = ngx_http_mdm_log;
    c->write->log = ngx_http_mdm_log;
    c->read->handler = ngx_http_mdm_redis_read_handler;
    c->write->handler = ngx_http_mdm_redis_write_handler;

    ac->ev.data = c;
    ac->ev.addRead = ngx_http_mdm_redis_add_read;
    ac->ev.delRead = ngx_http_mdm_redis_del_read;
    ac->ev.addWrite = ngx_http_mdm_redis_add_write;
    ac->ev.delWrite = ngx_http_mdm_redis_del_write;
    ac->ev.cleanup = ngx_http_mdm_redis_cleanup;

    ngx_http_mdm_ac = ac;
    ngx_http_mdm_state = NGX_HTTP_MDM_CONNECTING;

    redisAsyncSetConnectCallback(ac, ngx_http_mdm_redis_connected);
    redisAsyncSetDisconnectCallback(ac, ngx_http_mdm_redis_disconnected);

    /* commands queue up until the socket connects */

    if (ngx_http_mdm_mcf->password.len) {
        redisAsyncCommand(ac, ngx_http_mdm_redis_setup_reply, "AUTH",
                          "AUTH %b", ngx_http_mdm_mcf->password.data,
                          ngx_http_mdm_mcf->password.len);
    }

    if (ngx_http_mdm_mcf->db > 0) {
        redisAsyncCommand(ac, ngx_http_mdm_redis_setup_reply, "SELECT",
                          "SELECT %d", (int) ngx_http_mdm_mcf->db);
    }

    ngx_http_mdm_redis_check_version();

    ngx_add_timer(&ngx_http_mdm_handshake_ev,
                  ngx_max(ngx_http_mdm_mcf->timeout, 1000));
}


static void
ngx_http_mdm_redis_check_version(void)
{
    redisAsyncCommand(ngx_http_mdm_ac, ngx_http_mdm_redis_version_reply, NULL,
                      "FCALL_RO mdm_version 0");
}


/* The next attempt after a jittered, doubling delay. */

static void
ngx_http_mdm_redis_schedule(void)
{
    ngx_msec_t  delay;

    if (ngx_http_mdm_exiting || ngx_http_mdm_reconnect_ev.timer_set) {
        return;
    }

    ngx_http_mdm_state = NGX_HTTP_MDM_DISCONNECTED;

    delay = ngx_http_mdm_backoff;
    delay += (ngx_msec_t) (ngx_random() % (delay / 2 + 1)) - delay / 4;

    ngx_http_mdm_backoff = ngx_min(ngx_http_mdm_backoff * 2,
                                   NGX_HTTP_MDM_BACKOFF_MAX);

    ngx_add_timer(&ngx_http_mdm_reconnect_ev, delay);
}


/* Closes the connection; pending callbacks see a NULL reply. */

static void
ngx_http_mdm_redis_drop(const char *why)
{
    redisAsyncContext  *ac;

    ac = ngx_http_mdm_ac;
    if (ac == NULL) {
        return;
    }

    ngx_log_error(NGX_LOG_ERR, ngx_http_mdm_log, 0,
                  "mdm: redis \"%V\" %s, reconnecting",
                  &ngx_http_mdm_mcf->addr, why);

    ngx_http_mdm_ac = NULL;
    ngx_http_mdm_state = NGX_HTTP_MDM_DISCONNECTED;
    redisAsyncFree(ac);
    ngx_http_mdm_redis_schedule();
}


static void
ngx_http_mdm_redis_connected(const redisAsyncContext *ac, int status)
{
    if (status != REDIS_OK) {
        ngx_log_error(NGX_LOG_ERR, ngx_http_mdm_log, 0,
                      "mdm: cannot connect to redis \"%V\": %s",
                      &ngx_http_mdm_mcf->addr, ac->errstr);
    }
}


static void
ngx_http_mdm_redis_disconnected(const redisAsyncContext *ac, int status)
{
    if (ngx_http_mdm_ac == ac) {
        ngx_http_mdm_ac = NULL;

        if (!ngx_http_mdm_exiting && status != REDIS_OK) {
            ngx_log_error(NGX_LOG_ERR, ngx_http_mdm_log, 0,
                          "mdm: lost redis \"%V\": %s, reconnecting",
                          &ngx_http_mdm_mcf->addr, ac->errstr);
        }
    }

    if (ngx_http_mdm_handshake_ev.timer_set) {
        ngx_del_timer(&ngx_http_mdm_handshake_ev);
    }

    ngx_http_mdm_redis_schedule();
}


static void
ngx_http_mdm_redis_setup_reply(redisAsyncContext *ac, void *rep, void *data)
{
    redisReply  *reply = rep;

    if (reply && reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ngx_http_mdm_log, 0,
                      "mdm: redis %s failed: %s", (char *) data, reply->str);
    }
}


static void
ngx_http_mdm_redis_version_reply(redisAsyncContext *ac, void *rep,
    void *data)
{
    redisReply  *reply = rep;

    if (reply == NULL || ac != ngx_http_mdm_ac) {
        return;
    }

    ngx_http_mdm_last_reply = ngx_current_msec;

    if (ngx_http_mdm_handshake_ev.timer_set) {
        ngx_del_timer(&ngx_http_mdm_handshake_ev);
    }

    if (reply->type == REDIS_REPLY_STRING
        && reply->len == sizeof(NGX_HTTP_MDM_LIB_VERSION) - 1
        && ngx_strncmp(reply->str, NGX_HTTP_MDM_LIB_VERSION, reply->len) == 0)
    {
        ngx_http_mdm_state = NGX_HTTP_MDM_READY;
        ngx_http_mdm_backoff = NGX_HTTP_MDM_BACKOFF_MIN;

        ngx_log_error(NGX_LOG_NOTICE, ngx_http_mdm_log, 0,
                      "mdm: redis ready \"%V\"", &ngx_http_mdm_mcf->addr);
        return;
    }

    if (ngx_http_mdm_state != NGX_HTTP_MDM_MISMATCH
        && reply->type == REDIS_REPLY_ERROR)
    {
        ngx_log_error(NGX_LOG_ERR, ngx_http_mdm_log, 0,
                      "mdm: redis \"%V\": FCALL_RO mdm_version failed: %s; "
                      "is redis-scripts/mdm.lua loaded and mdm_redis "
                      "password= right? answering 503 until then",
                      &ngx_http_mdm_mcf->addr, reply->str);

    } else if (ngx_http_mdm_state != NGX_HTTP_MDM_MISMATCH) {
        ngx_log_error(NGX_LOG_ERR, ngx_http_mdm_log, 0,
                      "mdm: redis \"%V\" has the wrong Functions library: "
                      "mdm_version answered \"%*s\", need \"%s\"; load "
                      "redis-scripts/mdm.lua with FUNCTION LOAD REPLACE; "
                      "answering 503 until then",
                      &ngx_http_mdm_mcf->addr,
                      (size_t) (reply->str ? reply->len : 0),
                      reply->str ? reply->str : "", NGX_HTTP_MDM_LIB_VERSION);
    }

    ngx_http_mdm_state = NGX_HTTP_MDM_MISMATCH;

    /* ask again later on the same connection */
    ngx_add_timer(&ngx_http_mdm_handshake_ev, NGX_HTTP_MDM_RECHECK);
}


static void
ngx_http_mdm_redis_reconnect_handler(ngx_event_t *ev)
{
    if (ngx_http_mdm_exiting || ngx_http_mdm_ac) {
        return;
    }

    ngx_http_mdm_redis_connect();
}


/* Connect or version check overdue, or time to re-check the version. */

static void
ngx_http_mdm_redis_handshake_handler(ngx_event_t *ev)
{
    if (ngx_http_mdm_exiting || ngx_http_mdm_ac == NULL) {
        return;
    }

    if (ngx_http_mdm_state == NGX_HTTP_MDM_MISMATCH) {
        ngx_http_mdm_redis_check_version();
        return;
    }

    ngx_http_mdm_redis_drop("did not answer the handshake in time");
}


static void
ngx_http_mdm_redis_read_handler(ngx_event_t *ev)
{
    ngx_connection_t  *c = ev->data;

    if (c->close) {
        /* worker_shutdown_timeout */
        ngx_http_mdm_redis_drop("closed on shutdown");
        return;
    }

    redisAsyncHandleRead(c->data);
}


static void
ngx_http_mdm_redis_write_handler(ngx_event_t *ev)
{
    ngx_connection_t  *c = ev->data;

    redisAsyncHandleWrite(c->data);
}


static void
ngx_http_mdm_redis_add_read(void *data)
{
    ngx_connection_t  *c = data;

    if (!c->read->active) {
        (void) ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT);
    }
}


static void
ngx_http_mdm_redis_del_read(void *data)
{
    ngx_connection_t  *c = data;

    if (c->read->active) {
        (void) ngx_del_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT);
    }
}


static void
ngx_http_mdm_redis_add_write(void *data)
{
    ngx_connection_t  *c = data;

    if (!c->write->active) {
        (void) ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT);
    }
}


static void
ngx_http_mdm_redis_del_write(void *data)
{
    ngx_connection_t  *c = data;

    if (c->write->active) {
        (void) ngx_del_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT);
    }
}


/*
 * Called by hiredis while it frees the context: close the fd once, through
 * nginx, and stop redisFree() from closing the number again.
 */

static void
ngx_http_mdm_redis_cleanup(void *data)
{
    ngx_connection_t   *c = data;
    redisAsyncContext  *ac;

    ac = c->data;
    ngx_close_connection(c);
    ac->c.fd = -1;
}


ngx_int_t
ngx_http_mdm_redis_call(ngx_http_request_t *r, int argc, const char **argv,
    const size_t *argvlen, ngx_msec_t timeout, ngx_http_mdm_reply_pt handler)
{
    ngx_http_cleanup_t  *cln;
    ngx_http_mdm_op_t   *op;

    if (ngx_http_mdm_state != NGX_HTTP_MDM_READY || ngx_http_mdm_ac == NULL) {
        return NGX_DECLINED;
    }

    /* the op outlives the request when the client goes away */
    op = ngx_calloc(sizeof(ngx_http_mdm_op_t), r->connection->log);
    if (op == NULL) {
        return NGX_ERROR;
    }

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        ngx_free(op);
        return NGX_ERROR;
    }

    if (redisAsyncCommandArgv(ngx_http_mdm_ac, ngx_http_mdm_op_reply, op,
                              argc, argv, argvlen)
        != REDIS_OK)
    {
        ngx_free(op);
        return NGX_DECLINED;
    }

    cln->handler = ngx_http_mdm_op_cleanup;
    cln->data = op;

    op->request = r;
    op->cleanup = cln;
    op->handler = handler;
    op->sent = ngx_current_msec;

    /* not cancelable: a graceful quit waits for the reply */
    op->timer.handler = ngx_http_mdm_op_timeout;
    op->timer.data = op;
    op->timer.log = r->connection->log;
    ngx_add_timer(&op->timer, timeout);

    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_request_empty_handler;

    return NGX_OK;
}


static void
ngx_http_mdm_op_reply(redisAsyncContext *ac, void *rep, void *data)
{
    ngx_http_mdm_op_t      *op = data;
    ngx_connection_t       *c;
    ngx_http_request_t     *r;
    ngx_http_mdm_reply_pt   handler;

    if (rep) {
        ngx_http_mdm_last_reply = ngx_current_msec;
    }

    if (op->timer.timer_set) {
        ngx_del_timer(&op->timer);
    }

    r = op->request;
    handler = op->handler;

    if (op->cleanup) {
        op->cleanup->handler = NULL;
    }

    ngx_free(op);

    if (r == NULL || ngx_http_mdm_exiting) {
        return;
    }

    c = r->connection;
    handler(r, rep);
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_mdm_op_cleanup(void *data)
{
    ngx_http_mdm_op_t  *op = data;

    if (op->timer.timer_set) {
        ngx_del_timer(&op->timer);
    }

    op->request = NULL;
    op->cleanup = NULL;
}


static void
ngx_http_mdm_op_timeout(ngx_event_t *ev)
{
    ngx_http_mdm_op_t   *op = ev->data;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = op->request;
    op->request = NULL;

    if (op->cleanup) {
        op->cleanup->handler = NULL;
        op->cleanup = NULL;
    }

    if (r) {
        c = r->connection;
        ngx_http_mdm_refuse(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                            "redis did not answer in time");
        ngx_http_run_posted_requests(c);
    }

    /*
     * Nothing came back since this command went out: the connection is
     * stuck (Redis paused or a dead peer). Start over; pending callbacks
     * get NULL and their requests a 503.
     */

    if ((ngx_msec_int_t) (ngx_http_mdm_last_reply - op->sent) < 0) {
        ngx_http_mdm_redis_drop("did not answer in time");
    }

    /* the op itself is freed by its (NULL) reply callback */
}
