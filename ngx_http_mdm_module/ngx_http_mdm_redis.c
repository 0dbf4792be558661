
/*
 * Copyright (C) The MDM module authors
 *
 * The Redis transport: hiredis' async API on nginx's event loop, one
 * pipelined connection per worker and distinct Redis (mdm_redis in http or
 * a server: tenants), each opened in init_process and reconnected with its
 * own jittered backoff. It knows nothing of HTTP: a call reports to its
 * caller's handler exactly once (reply, transient refusal, timeout or lost
 * connection) unless the caller cancels it first.
 *
 * Setup: AUTH, SELECT and the library version check, pipelined; any failure
 * drops the connection. Calls made meanwhile (a new worker after a reload)
 * wait for it within their own timeout and go out once the library is
 * known to be the right one. While connected the version is checked again
 * every NGX_HTTP_MDM_RECHECK ms, each check with its own deadline.
 *
 * hiredis 0.14 has no timeouts: each call arms an nginx timer; a late reply
 * only frees the op. The fd is registered level-triggered so hiredis' 16 KB
 * reads simply re-fire.
 */


#include "ngx_http_mdm.h"


#define NGX_HTTP_MDM_DISCONNECTED     0
#define NGX_HTTP_MDM_SETUP            1
#define NGX_HTTP_MDM_MISMATCH         2
#define NGX_HTTP_MDM_READY            3

#define NGX_HTTP_MDM_BACKOFF_MIN      100
#define NGX_HTTP_MDM_BACKOFF_MAX      5000
#define NGX_HTTP_MDM_RECHECK          5000


struct ngx_http_mdm_redis_op_s {
    ngx_event_t                     timer;
    ngx_http_mdm_redis_conn_t      *conn;
    ngx_http_mdm_redis_handler_pt   handler;
    void                           *data;
    ngx_msec_t                      sent;
    ngx_queue_t                     queue;    /* in conn->waiting */
    char                           *cmd;      /* formatted, while waiting */
    int                             cmdlen;
    unsigned                        done:1;   /* reported or cancelled */
    unsigned                        waiting:1;
};


static void ngx_http_mdm_redis_connect(ngx_http_mdm_redis_conn_t *rc);
static void ngx_http_mdm_redis_schedule(ngx_http_mdm_redis_conn_t *rc);
static void ngx_http_mdm_redis_drop(ngx_http_mdm_redis_conn_t *rc,
    const char *why);
static void ngx_http_mdm_redis_reset(ngx_http_mdm_redis_conn_t *rc);
static void ngx_http_mdm_redis_check_version(ngx_http_mdm_redis_conn_t *rc);
static void ngx_http_mdm_redis_connected(const redisAsyncContext *ac,
    int status);
static void ngx_http_mdm_redis_disconnected(const redisAsyncContext *ac,
    int status);
static void ngx_http_mdm_redis_setup_reply(redisAsyncContext *ac, void *rep,
    void *data);
static void ngx_http_mdm_redis_version_reply(redisAsyncContext *ac, void *rep,
    void *data);
static void ngx_http_mdm_redis_reconnect_handler(ngx_event_t *ev);
static void ngx_http_mdm_redis_check_handler(ngx_event_t *ev);
static void ngx_http_mdm_redis_read_handler(ngx_event_t *ev);
static void ngx_http_mdm_redis_write_handler(ngx_event_t *ev);
static void ngx_http_mdm_redis_add_read(void *data);
static void ngx_http_mdm_redis_del_read(void *data);
static void ngx_http_mdm_redis_add_write(void *data);
static void ngx_http_mdm_redis_del_write(void *data);
static void ngx_http_mdm_redis_cleanup(void *data);
static void ngx_http_mdm_op_reply(redisAsyncContext *ac, void *rep,
    void *data);
static void ngx_http_mdm_op_timeout(ngx_event_t *ev);
static void ngx_http_mdm_redis_flush(ngx_http_mdm_redis_conn_t *rc,
    ngx_uint_t send);


static ngx_uint_t                 ngx_http_mdm_exiting;
static ngx_log_t                 *ngx_http_mdm_log;


/*
 * Errors Redis answers while it cannot run the call now but may soon: the
 * caller answers 503 and the device retries. Anything else from our own
 * functions is a bug (500).
 */

static ngx_str_t  ngx_http_mdm_transient[] = {
    ngx_string("OOM "),
    ngx_string("LOADING "),
    ngx_string("READONLY "),
    ngx_string("BUSY "),
    ngx_string("MASTERDOWN "),
    ngx_string("NOREPLICAS "),
    ngx_string("TRYAGAIN "),
    ngx_string("CLUSTERDOWN "),
    ngx_string("MISCONF "),
    ngx_string("NOSCRIPT "),
    ngx_string("NOAUTH "),
    ngx_string("NOPERM "),
    ngx_string("ERR Function not found"),
    ngx_string("ERR Library not found"),
    /* an ACL that lets nginx's user FCALL but not what the function calls */
    ngx_string("ERR The user executing the script can't run"),
    ngx_null_string
};


ngx_int_t
ngx_http_mdm_redis_init_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                  i;
    ngx_http_mdm_redis_conn_t  *rc, **conns;
    ngx_http_mdm_main_conf_t   *mmcf;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    mmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_mdm_module);
    if (mmcf == NULL || !mmcf->configured) {
        return NGX_OK;
    }

    ngx_http_mdm_log = cycle->log;

    conns = mmcf->conns.elts;

    for (i = 0; i < mmcf->conns.nelts; i++) {
        rc = conns[i];

        /* timers need a connection-like data pointer for their log */
        rc->dummy.fd = (ngx_socket_t) -1;
        rc->dummy.data = rc;

        rc->reconnect_ev.handler = ngx_http_mdm_redis_reconnect_handler;
        rc->reconnect_ev.log = cycle->log;
        rc->reconnect_ev.data = &rc->dummy;
        rc->reconnect_ev.cancelable = 1;

        rc->check_ev.handler = ngx_http_mdm_redis_check_handler;
        rc->check_ev.log = cycle->log;
        rc->check_ev.data = &rc->dummy;
        rc->check_ev.cancelable = 1;

        rc->backoff = NGX_HTTP_MDM_BACKOFF_MIN;
        ngx_queue_init(&rc->waiting);

        ngx_http_mdm_redis_connect(rc);
    }

    return NGX_OK;
}


void
ngx_http_mdm_redis_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                  i;
    redisAsyncContext          *ac;
    ngx_http_mdm_redis_conn_t  *rc, **conns;
    ngx_http_mdm_main_conf_t   *mmcf;

    ngx_http_mdm_exiting = 1;

    mmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_mdm_module);
    if (mmcf == NULL || !mmcf->configured) {
        return;
    }

    conns = mmcf->conns.elts;

    for (i = 0; i < mmcf->conns.nelts; i++) {
        rc = conns[i];

        if (rc->reconnect_ev.timer_set) {
            ngx_del_timer(&rc->reconnect_ev);
        }

        if (rc->check_ev.timer_set) {
            ngx_del_timer(&rc->check_ev);
        }

        ngx_http_mdm_redis_flush(rc, 0);

        ac = rc->ac;
        if (ac) {
            rc->ac = NULL;
            redisAsyncFree(ac);
        }
    }
}


static void
ngx_http_mdm_redis_connect(ngx_http_mdm_redis_conn_t *rc)
{
    int                 n;
    const char         *argv[3];
    size_t              len[3];
    ngx_connection_t   *c;
    redisAsyncContext  *ac;
    mdm_redis_addr_t   *a;

    a = &rc->addr;

    if (a->type == MDM_REDIS_ADDR_UNIX) {
        ac = redisAsyncConnectUnix(a->host);

    } else {
        /* an IP literal (checked at configuration): no DNS, no blocking */
        ac = redisAsyncConnect(a->host, a->port);
    }

    if (ac == NULL || ac->err) {
        ngx_log_error(NGX_LOG_ERR, ngx_http_mdm_log, 0,
                      "mdm: cannot connect to redis \"%V\": %s",
                      &rc->name,
                      ac ? ac->errstr : "out of memory");
        if (ac) {
            redisAsyncFree(ac);
        }
        ngx_http_mdm_redis_schedule(rc);
        return;
    }

    c = ngx_get_connection(ac->c.fd, ngx_http_mdm_log);
    if (c == NULL) {
        redisAsyncFree(ac);
        ngx_http_mdm_redis_schedule(rc);
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

    ac->data = rc;
    rc->ac = ac;
    rc->state = NGX_HTTP_MDM_SETUP;

    redisAsyncSetConnectCallback(ac, ngx_http_mdm_redis_connected);
    redisAsyncSetDisconnectCallback(ac, ngx_http_mdm_redis_disconnected);

    /* commands queue up until the socket connects */

    if (a->password[0]) {
        n = 0;
        argv[n] = "AUTH";
        len[n++] = 4;

        if (a->username[0]) {
            argv[n] = a->username;
            len[n++] = ngx_strlen(a->username);
        }

        argv[n] = a->password;
        len[n++] = ngx_strlen(a->password);

        redisAsyncCommandArgv(ac, ngx_http_mdm_redis_setup_reply, "AUTH",
                              n, argv, len);
    }

    if (a->db > 0) {
        redisAsyncCommand(ac, ngx_http_mdm_redis_setup_reply, "SELECT",
                          "SELECT %d", a->db);
    }

    /* its deadline covers the connect and the steps before it */
    ngx_http_mdm_redis_check_version(rc);
}


/* Asks for the library version, with a deadline for the answer. */

static void
ngx_http_mdm_redis_check_version(ngx_http_mdm_redis_conn_t *rc)
{
    if (redisAsyncCommand(rc->ac, ngx_http_mdm_redis_version_reply,
                          NULL, "FCALL_RO mdm_version 0")
        != REDIS_OK)
    {
        return;
    }

    rc->checking = 1;

    if (rc->check_ev.timer_set) {
        ngx_del_timer(&rc->check_ev);
    }

    ngx_add_timer(&rc->check_ev, ngx_max(rc->timeout, 1000));
}


/* The next attempt after a jittered, doubling delay. */

static void
ngx_http_mdm_redis_schedule(ngx_http_mdm_redis_conn_t *rc)
{
    ngx_msec_t  delay;

    rc->state = NGX_HTTP_MDM_DISCONNECTED;

    if (ngx_http_mdm_exiting || rc->reconnect_ev.timer_set) {
        return;
    }

    delay = rc->backoff;
    delay += (ngx_msec_t) (ngx_random() % (delay / 2 + 1)) - delay / 4;

    rc->backoff = ngx_min(rc->backoff * 2, NGX_HTTP_MDM_BACKOFF_MAX);

    ngx_add_timer(&rc->reconnect_ev, delay);
}


/* Forgets the connection's state; hiredis owns the context's end. */

static void
ngx_http_mdm_redis_reset(ngx_http_mdm_redis_conn_t *rc)
{
    rc->ac = NULL;
    rc->checking = 0;

    if (rc->check_ev.timer_set) {
        ngx_del_timer(&rc->check_ev);
    }

    ngx_http_mdm_redis_schedule(rc);
    ngx_http_mdm_redis_flush(rc, 0);
}


/*
 * Closes the connection (at once, or when the hiredis callback running now
 * returns); pending calls report NGX_HTTP_MDM_REDIS_DOWN.
 */

static void
ngx_http_mdm_redis_drop(ngx_http_mdm_redis_conn_t *rc, const char *why)
{
    redisAsyncContext  *ac;

    ac = rc->ac;
    if (ac == NULL) {
        return;
    }

    if (why) {
        ngx_log_error(NGX_LOG_ERR, ngx_http_mdm_log, 0,
                      "mdm: redis \"%V\" %s, reconnecting",
                      &rc->name, why);
    }

    ngx_http_mdm_redis_reset(rc);
    redisAsyncFree(ac);
}


/*
 * A failed connect: hiredis 0.14 frees the context when this returns,
 * without calling the disconnect callback.
 */

static void
ngx_http_mdm_redis_connected(const redisAsyncContext *ac, int status)
{
    ngx_http_mdm_redis_conn_t  *rc = ac->data;

    if (status == REDIS_OK) {
        return;
    }

    ngx_log_error(NGX_LOG_ERR, ngx_http_mdm_log, 0,
                  "mdm: cannot connect to redis \"%V\": %s",
                  &rc->name, ac->errstr);

    if (rc->ac == ac) {
        ngx_http_mdm_redis_reset(rc);
    }
}


static void
ngx_http_mdm_redis_disconnected(const redisAsyncContext *ac, int status)
{
    ngx_http_mdm_redis_conn_t  *rc = ac->data;

    if (rc->ac != ac) {
        /* dropped by us, or exiting */
        return;
    }

    if (status != REDIS_OK) {
        ngx_log_error(NGX_LOG_ERR, ngx_http_mdm_log, 0,
                      "mdm: lost redis \"%V\": %s, reconnecting",
                      &rc->name, ac->errstr);
    }

    ngx_http_mdm_redis_reset(rc);
}


/* AUTH or SELECT: a refusal is a configuration error, never ignored. */

static void
ngx_http_mdm_redis_setup_reply(redisAsyncContext *ac, void *rep, void *data)
{
    ngx_http_mdm_redis_conn_t  *rc = ac->data;

    redisReply  *reply = rep;

    if (reply == NULL || ac != rc->ac
        || reply->type != REDIS_REPLY_ERROR)
    {
        return;
    }

    ngx_log_error(NGX_LOG_ERR, ngx_http_mdm_log, 0,
                  "mdm: redis \"%V\": %s failed: %s; check mdm_redis %s; "
                  "answering 503, reconnecting",
                  &rc->name, (char *) data, reply->str,
                  ngx_strcmp(data, "AUTH") == 0 ? "username= and password="
                                                 : "db=");

    /* the version reply behind it is never seen: no database 0 by mistake */
    ngx_http_mdm_redis_drop(rc, NULL);
}


static void
ngx_http_mdm_redis_version_reply(redisAsyncContext *ac, void *rep,
    void *data)
{
    ngx_http_mdm_redis_conn_t  *rc = ac->data;

    redisReply  *reply = rep;

    if (reply == NULL || ac != rc->ac) {
        return;
    }

    rc->last_reply = ngx_current_msec;
    rc->checking = 0;

    if (rc->check_ev.timer_set) {
        ngx_del_timer(&rc->check_ev);
    }

    ngx_add_timer(&rc->check_ev, NGX_HTTP_MDM_RECHECK);

    if (reply->type == REDIS_REPLY_STRING
        && reply->len == sizeof(NGX_HTTP_MDM_LIB_VERSION) - 1
        && ngx_strncmp(reply->str, NGX_HTTP_MDM_LIB_VERSION, reply->len) == 0)
    {
        if (rc->state != NGX_HTTP_MDM_READY) {
            ngx_log_error(NGX_LOG_NOTICE, ngx_http_mdm_log, 0,
                          "mdm: redis ready \"%V\"", &rc->name);
        }

        rc->state = NGX_HTTP_MDM_READY;
        rc->backoff = NGX_HTTP_MDM_BACKOFF_MIN;
        rc->complained = 0;
        ngx_http_mdm_redis_flush(rc, 1);
        return;
    }

    rc->state = NGX_HTTP_MDM_MISMATCH;
    ngx_http_mdm_redis_flush(rc, 0);

    /* one line per episode, not one per re-check */

    if (rc->complained) {
        return;
    }

    rc->complained = 1;

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ngx_http_mdm_log, 0,
                      "mdm: redis \"%V\": FCALL_RO mdm_version failed: %s; "
                      "is redis-scripts/mdm.lua loaded and mdm_redis "
                      "password= right? answering 503 until then",
                      &rc->name, reply->str);
        return;
    }

    ngx_log_error(NGX_LOG_ERR, ngx_http_mdm_log, 0,
                  "mdm: redis \"%V\" has the wrong Functions library: "
                  "mdm_version answered \"%*s\", need \"%s\"; load "
                  "redis-scripts/mdm.lua with FUNCTION LOAD REPLACE; "
                  "answering 503 until then",
                  &rc->name,
                  (size_t) (reply->str ? reply->len : 0),
                  reply->str ? reply->str : "", NGX_HTTP_MDM_LIB_VERSION);
}


static void
ngx_http_mdm_redis_reconnect_handler(ngx_event_t *ev)
{
    ngx_connection_t           *dummy = ev->data;
    ngx_http_mdm_redis_conn_t  *rc = dummy->data;

    if (ngx_http_mdm_exiting || rc->ac) {
        return;
    }

    ngx_http_mdm_redis_connect(rc);
}


/* A version check overdue (drop), or the time for the next one. */

static void
ngx_http_mdm_redis_check_handler(ngx_event_t *ev)
{
    ngx_connection_t           *dummy = ev->data;
    ngx_http_mdm_redis_conn_t  *rc = dummy->data;

    if (ngx_http_mdm_exiting || rc->ac == NULL) {
        return;
    }

    if (!rc->checking) {
        ngx_http_mdm_redis_check_version(rc);
        return;
    }

    ngx_http_mdm_redis_drop(rc, rc->state == NGX_HTTP_MDM_SETUP
                            ? "did not answer the handshake in time"
                            : "did not answer the version check in time");
}


static void
ngx_http_mdm_redis_read_handler(ngx_event_t *ev)
{
    ngx_connection_t           *c = ev->data;
    redisAsyncContext          *ac = c->data;
    ngx_http_mdm_redis_conn_t  *rc = ac->data;

    if (c->close) {
        /* worker_shutdown_timeout */
        ngx_http_mdm_redis_drop(rc, "closed on shutdown");
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


/*
 * NGX_OK: the handler will be called once, unless the op is cancelled;
 * NGX_DECLINED: no ready connection, nothing was sent.
 */

ngx_int_t
ngx_http_mdm_redis_call(ngx_http_mdm_redis_conn_t *rc, int argc,
    const char **argv, const size_t *argvlen, ngx_msec_t timeout,
    ngx_log_t *log, ngx_http_mdm_redis_handler_pt handler, void *data,
    ngx_http_mdm_redis_op_t **opp)
{
    ngx_uint_t                wait;
    ngx_http_mdm_redis_op_t  *op;

    if (rc->ac == NULL
        || (rc->state != NGX_HTTP_MDM_READY
            && rc->state != NGX_HTTP_MDM_SETUP))
    {
        return NGX_DECLINED;
    }

    wait = (rc->state == NGX_HTTP_MDM_SETUP);

    /* the op outlives its caller when the caller cancels */
    op = ngx_calloc(sizeof(ngx_http_mdm_redis_op_t), log);
    if (op == NULL) {
        return NGX_ERROR;
    }

    if (wait) {
        op->cmdlen = redisFormatCommandArgv(&op->cmd, argc, argv, argvlen);
        if (op->cmdlen < 0) {
            ngx_free(op);
            return NGX_ERROR;
        }

        op->waiting = 1;
        ngx_queue_insert_tail(&rc->waiting, &op->queue);

    } else if (redisAsyncCommandArgv(rc->ac, ngx_http_mdm_op_reply, op,
                                     argc, argv, argvlen)
               != REDIS_OK)
    {
        ngx_free(op);
        return NGX_DECLINED;
    }

    op->conn = rc;
    op->handler = handler;
    op->data = data;
    op->sent = ngx_current_msec;

    /* not cancelable: a graceful quit waits for the reply */
    op->timer.handler = ngx_http_mdm_op_timeout;
    op->timer.data = op;
    op->timer.log = log;
    ngx_add_timer(&op->timer, timeout);

    *opp = op;

    return NGX_OK;
}


/*
 * The end of a setup: the calls that waited for it go out (send), or
 * report DOWN to callers still there. Either way they leave the queue.
 */

static void
ngx_http_mdm_redis_flush(ngx_http_mdm_redis_conn_t *rc, ngx_uint_t send)
{
    ngx_queue_t              *q;
    ngx_http_mdm_redis_op_t  *op;

    while (!ngx_queue_empty(&rc->waiting)) {
        q = ngx_queue_head(&rc->waiting);
        ngx_queue_remove(q);
        op = ngx_queue_data(q, ngx_http_mdm_redis_op_t, queue);
        op->waiting = 0;

        if (send && !op->done && rc->ac
            && redisAsyncFormattedCommand(rc->ac, ngx_http_mdm_op_reply, op,
                                          op->cmd, op->cmdlen)
               == REDIS_OK)
        {
            /* its deadline stays the one the caller armed */
            redisFreeCommand(op->cmd);
            op->cmd = NULL;
            op->sent = ngx_current_msec;
            continue;
        }

        redisFreeCommand(op->cmd);
        op->cmd = NULL;

        if (op->timer.timer_set) {
            ngx_del_timer(&op->timer);
        }

        if (!op->done && !ngx_http_mdm_exiting) {
            op->done = 1;
            op->handler(NGX_HTTP_MDM_REDIS_DOWN, NULL, op->data);
        }

        ngx_free(op);
    }
}


/* The caller goes away: its handler is never called; the op is freed later. */

void
ngx_http_mdm_redis_cancel(ngx_http_mdm_redis_op_t *op)
{
    op->done = 1;

    if (op->timer.timer_set) {
        ngx_del_timer(&op->timer);
    }
}


/* Whether an error reply means "not now" rather than "wrong". */

static ngx_int_t
ngx_http_mdm_redis_is_transient(redisReply *reply)
{
    ngx_str_t  *t;

    for (t = ngx_http_mdm_transient; t->len; t++) {
        if (reply->len >= t->len
            && ngx_strncmp(reply->str, t->data, t->len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


static void
ngx_http_mdm_op_reply(redisAsyncContext *ac, void *rep, void *data)
{
    ngx_http_mdm_redis_op_t  *op = data;

    ngx_int_t                   rv;
    redisReply                 *reply = rep;
    ngx_http_mdm_redis_conn_t  *rc = op->conn;

    if (reply) {
        rc->last_reply = ngx_current_msec;
    }

    if (op->timer.timer_set) {
        ngx_del_timer(&op->timer);
    }

    if (!op->done && !ngx_http_mdm_exiting) {
        op->done = 1;

        if (reply == NULL) {
            rv = NGX_HTTP_MDM_REDIS_DOWN;

        } else if (reply->type == REDIS_REPLY_ERROR
                   && ngx_http_mdm_redis_is_transient(reply))
        {
            rv = NGX_HTTP_MDM_REDIS_REFUSED;

        } else {
            rv = NGX_HTTP_MDM_REDIS_REPLY;
        }

        op->handler(rv, reply, op->data);
    }

    ngx_free(op);
}


static void
ngx_http_mdm_op_timeout(ngx_event_t *ev)
{
    ngx_http_mdm_redis_op_t  *op = ev->data;

    ngx_uint_t                  stuck;
    ngx_http_mdm_redis_conn_t  *rc = op->conn;

    /*
     * Nothing came back since this command went out: the connection is
     * stuck (Redis paused or a dead peer). Start over; pending calls
     * report DOWN. The op itself is freed by its (NULL) reply callback.
     */

    if (op->waiting) {
        /* never sent: nothing will come back for it */
        ngx_queue_remove(&op->queue);
        redisFreeCommand(op->cmd);

        if (!op->done) {
            op->handler(NGX_HTTP_MDM_REDIS_TIMEOUT, NULL, op->data);
        }

        ngx_free(op);
        return;
    }

    stuck = (ngx_msec_int_t) (rc->last_reply - op->sent) < 0;

    if (!op->done) {
        op->done = 1;
        op->handler(NGX_HTTP_MDM_REDIS_TIMEOUT, NULL, op->data);
    }

    if (stuck) {
        ngx_http_mdm_redis_drop(rc, "did not answer in time");
    }
}
