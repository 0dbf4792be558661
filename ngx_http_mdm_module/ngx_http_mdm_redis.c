
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
 *
 * sentinel=: the primary is asked for first (DISCOVER, calls wait as in
 * SETUP), ROLE must say "master" at setup and at each re-check, and a
 * READONLY answer drops the connection. replicas=N: each FCALL is followed
 * by WAIT on the same connection; its reply is held until WAIT says enough
 * replicas have it, else the caller hears REFUSED (503, the device retries).
 */


#include "ngx_http_mdm.h"


#define NGX_HTTP_MDM_DISCONNECTED     0
#define NGX_HTTP_MDM_SETUP            1
#define NGX_HTTP_MDM_MISMATCH         2
#define NGX_HTTP_MDM_READY            3
#define NGX_HTTP_MDM_DISCOVER         4   /* asking the sentinels */

#define NGX_HTTP_MDM_BACKOFF_MIN      100
#define NGX_HTTP_MDM_BACKOFF_MAX      5000
#define NGX_HTTP_MDM_BACKOFF_SENTINEL 1000  /* a failover takes seconds */
#define NGX_HTTP_MDM_RECHECK          5000


struct ngx_http_mdm_redis_op_s {
    ngx_event_t                     timer;
    ngx_http_mdm_redis_conn_t      *conn;
    ngx_http_mdm_redis_handler_pt   handler;
    void                           *data;
    ngx_msec_t                      sent;
    uint64_t                        sent_us;  /* the round trip's start */
    ngx_queue_t                     queue;    /* in conn->waiting */
    char                           *cmd;      /* formatted, while waiting */
    int                             cmdlen;
    redisReply                     *held;     /* the FCALL's, until WAIT's */
    unsigned                        done:1;   /* reported or cancelled */
    unsigned                        waiting:1;
    unsigned                        wait:1;   /* a WAIT follows it */
    unsigned                        answered:1;   /* the FCALL's came */
    unsigned                        unconfirmed:1;    /* no WAIT went out */
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
static void ngx_http_mdm_redis_role_reply(redisAsyncContext *ac, void *rep,
    void *data);
static ngx_int_t ngx_http_mdm_redis_send_wait(ngx_http_mdm_redis_conn_t *rc,
    ngx_http_mdm_redis_op_t *op);
static void ngx_http_mdm_op_wait_reply(redisAsyncContext *ac, void *rep,
    void *data);
static void ngx_http_mdm_op_report(ngx_http_mdm_redis_op_t *op,
    redisReply *reply);
static redisReply *ngx_http_mdm_reply_copy(redisReply *r);


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

        if (rc->addr.type == MDM_REDIS_ADDR_SENTINEL) {
            ngx_http_mdm_sentinel_init(rc);
        }

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

        if (rc->addr.type == MDM_REDIS_ADDR_SENTINEL) {
            ngx_http_mdm_sentinel_stop(rc);
        }

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
    redisAsyncContext  *ac;
    mdm_redis_addr_t   *a;

    a = &rc->addr;

    if (a->type == MDM_REDIS_ADDR_SENTINEL && !rc->primary_known) {
        /* calls wait for the answer as they do for a setup */
        rc->state = NGX_HTTP_MDM_DISCOVER;
        ngx_http_mdm_sentinel_ask(rc);
        return;
    }

    if (a->type == MDM_REDIS_ADDR_UNIX) {
        ac = redisAsyncConnectUnix(a->host);

    } else if (a->type == MDM_REDIS_ADDR_SENTINEL) {
        /* an IP literal, checked in the sentinel's answer */
        ac = redisAsyncConnect(rc->primary, rc->primary_port);

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

    if (ngx_http_mdm_redis_attach(ac, ngx_http_mdm_log) != NGX_OK) {
        redisAsyncFree(ac);
        ngx_http_mdm_redis_schedule(rc);
        return;
    }

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


/* Puts a hiredis context on nginx's event loop (ac->data is the caller's). */

ngx_int_t
ngx_http_mdm_redis_attach(redisAsyncContext *ac, ngx_log_t *log)
{
    ngx_connection_t  *c;

    c = ngx_get_connection(ac->c.fd, log);
    if (c == NULL) {
        return NGX_ERROR;
    }

    c->data = ac;
    c->log = log;
    c->read->log = log;
    c->write->log = log;
    c->read->handler = ngx_http_mdm_redis_read_handler;
    c->write->handler = ngx_http_mdm_redis_write_handler;

    ac->ev.data = c;
    ac->ev.addRead = ngx_http_mdm_redis_add_read;
    ac->ev.delRead = ngx_http_mdm_redis_del_read;
    ac->ev.addWrite = ngx_http_mdm_redis_add_write;
    ac->ev.delWrite = ngx_http_mdm_redis_del_write;
    ac->ev.cleanup = ngx_http_mdm_redis_cleanup;

    return NGX_OK;
}


/* The sentinels named the primary: connect to it now. */

void
ngx_http_mdm_redis_found(ngx_http_mdm_redis_conn_t *rc)
{
    if (ngx_http_mdm_exiting || rc->ac) {
        return;
    }

    rc->primary_known = 1;
    ngx_http_mdm_redis_connect(rc);
}


/* No sentinel answered: calls waiting hear DOWN, try again later. */

void
ngx_http_mdm_redis_unfound(ngx_http_mdm_redis_conn_t *rc)
{
    ngx_http_mdm_redis_schedule(rc);
    ngx_http_mdm_redis_flush(rc, 0);
}


/* +switch-master: leave the old primary now and ask again at once. */

void
ngx_http_mdm_redis_switched(ngx_http_mdm_redis_conn_t *rc)
{
    ngx_http_mdm_redis_drop(rc, "has a new primary (sentinel "
                            "+switch-master)");

    if (ngx_http_mdm_exiting || rc->sac) {
        return;
    }

    if (rc->reconnect_ev.timer_set) {
        ngx_del_timer(&rc->reconnect_ev);
    }

    rc->backoff = NGX_HTTP_MDM_BACKOFF_MIN;
    rc->primary_known = 0;
    ngx_http_mdm_metrics_reconnect();
    ngx_http_mdm_redis_connect(rc);
}


/*
 * Asks for the library version, with a deadline for the answer; through
 * sentinels, ROLE first: a demoted primary is left at once.
 */

static void
ngx_http_mdm_redis_check_version(ngx_http_mdm_redis_conn_t *rc)
{
    if (rc->addr.type == MDM_REDIS_ADDR_SENTINEL
        && redisAsyncCommand(rc->ac, ngx_http_mdm_redis_role_reply, NULL,
                             "ROLE")
           != REDIS_OK)
    {
        return;
    }

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
    ngx_msec_t  delay, max;

    rc->state = NGX_HTTP_MDM_DISCONNECTED;

    if (ngx_http_mdm_exiting || rc->reconnect_ev.timer_set) {
        return;
    }

    delay = rc->backoff;
    delay += (ngx_msec_t) (ngx_random() % (delay / 2 + 1)) - delay / 4;

    max = (rc->addr.type == MDM_REDIS_ADDR_SENTINEL)
          ? NGX_HTTP_MDM_BACKOFF_SENTINEL : NGX_HTTP_MDM_BACKOFF_MAX;

    rc->backoff = ngx_min(rc->backoff * 2, max);

    ngx_add_timer(&rc->reconnect_ev, delay);
}


/* Forgets the connection's state; hiredis owns the context's end. */

static void
ngx_http_mdm_redis_reset(ngx_http_mdm_redis_conn_t *rc)
{
    rc->ac = NULL;
    rc->checking = 0;
    rc->primary_known = 0;     /* ask the sentinels again */

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


/* Through sentinels, a primary that is not "master" (any more) is left. */

static void
ngx_http_mdm_redis_role_reply(redisAsyncContext *ac, void *rep, void *data)
{
    ngx_http_mdm_redis_conn_t  *rc = ac->data;

    redisReply  *reply = rep, *role;

    if (reply == NULL || ac != rc->ac) {
        return;
    }

    role = (reply->type == REDIS_REPLY_ARRAY && reply->elements > 0)
           ? reply->element[0] : NULL;

    if (role && role->type == REDIS_REPLY_STRING && role->len == 6
        && ngx_strncmp(role->str, "master", 6) == 0)
    {
        return;
    }

    ngx_log_error(NGX_LOG_ERR, ngx_http_mdm_log, 0,
                  "mdm: redis \"%V\": %s:%d is not the primary (ROLE "
                  "\"%*s\"), asking the sentinels again",
                  &rc->name, rc->primary, rc->primary_port,
                  (size_t) (role && role->str ? role->len : 0),
                  role && role->str ? role->str : "");

    /* the version reply behind it is never seen: no READY on a replica */
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

    if (ngx_http_mdm_exiting || rc->ac || rc->sac) {
        return;
    }

    ngx_http_mdm_metrics_reconnect();
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
        if (ac != rc->ac) {
            ngx_http_mdm_sentinel_stop(rc);
            return;
        }

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

    wait = (rc->state == NGX_HTTP_MDM_SETUP
            || rc->state == NGX_HTTP_MDM_DISCOVER);

    if (!wait && (rc->ac == NULL || rc->state != NGX_HTTP_MDM_READY)) {
        return NGX_DECLINED;
    }

    /* the op outlives its caller when the caller cancels */
    op = ngx_calloc(sizeof(ngx_http_mdm_redis_op_t), log);
    if (op == NULL) {
        return NGX_ERROR;
    }

    /* replicas=N: writes only; FCALL_RO and the rest need no WAIT */
    op->wait = rc->addr.replicas > 0 && argvlen[0] == 5
               && ngx_strncasecmp((u_char *) argv[0], (u_char *) "FCALL", 5)
                  == 0;

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

    } else {
        ngx_http_mdm_redis_send_wait(rc, op);
    }

    op->conn = rc;
    op->handler = handler;
    op->data = data;
    op->sent = ngx_current_msec;
    op->sent_us = ngx_http_mdm_metrics_now_us();

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
            op->sent_us = ngx_http_mdm_metrics_now_us();
            ngx_http_mdm_redis_send_wait(rc, op);
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


/*
 * replicas=N: WAIT right behind the FCALL, on the same connection, so its
 * count covers that write. A WAIT that cannot go out leaves the op
 * unconfirmed: it reports REFUSED.
 */

static ngx_int_t
ngx_http_mdm_redis_send_wait(ngx_http_mdm_redis_conn_t *rc,
    ngx_http_mdm_redis_op_t *op)
{
    if (!op->wait) {
        return NGX_OK;
    }

    if (redisAsyncCommand(rc->ac, ngx_http_mdm_op_wait_reply, op,
                          "WAIT %d %d", rc->addr.replicas,
                          rc->addr.wait_timeout)
        != REDIS_OK)
    {
        op->wait = 0;
        op->unconfirmed = 1;
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_mdm_op_reply(redisAsyncContext *ac, void *rep, void *data)
{
    ngx_http_mdm_redis_op_t  *op = data;

    redisReply                 *reply = rep;
    ngx_http_mdm_redis_conn_t  *rc = op->conn;

    if (reply) {
        rc->last_reply = ngx_current_msec;
        ngx_http_mdm_metrics_rtt(ngx_http_mdm_metrics_now_us() - op->sent_us);
    }

    if (op->wait) {
        /* held until WAIT answers, which frees the op */
        op->answered = 1;
        if (reply && !op->done) {
            op->held = ngx_http_mdm_reply_copy(reply);
        }

    } else {
        ngx_http_mdm_op_report(op, reply);
        ngx_free(op);
    }

    /* a primary turned replica under us: the sentinels know the new one */
    if (rc->addr.type == MDM_REDIS_ADDR_SENTINEL
        && reply && reply->type == REDIS_REPLY_ERROR && reply->len >= 9
        && ngx_strncmp(reply->str, "READONLY ", 9) == 0 && rc->ac == ac)
    {
        ngx_http_mdm_redis_drop(rc, "answered READONLY");
    }
}


static void
ngx_http_mdm_op_wait_reply(redisAsyncContext *ac, void *rep, void *data)
{
    ngx_http_mdm_redis_op_t  *op = data;

    redisReply   *reply = rep, *held;
    static char   noreplicas[] = "NOREPLICAS fewer replicas than replicas= "
                                 "confirmed the write in wait_timeout=";
    redisReply    refused = { REDIS_REPLY_ERROR, 0, sizeof(noreplicas) - 1,
                              noreplicas, 0, NULL };

    if (reply) {
        op->conn->last_reply = ngx_current_msec;
    }

    held = op->held;
    op->held = NULL;

    if (held == NULL || held->type == REDIS_REPLY_ERROR) {
        /* lost, or nothing written: WAIT adds nothing */
        ngx_http_mdm_op_report(op, held);

    } else if (reply && reply->type == REDIS_REPLY_INTEGER
               && reply->integer >= op->conn->addr.replicas)
    {
        ngx_http_mdm_op_report(op, held);

    } else {
        ngx_http_mdm_op_report(op, &refused);
    }

    if (held) {
        freeReplyObject(held);
    }

    ngx_free(op);
}


/* The caller hears of its call once, unless it cancelled. */

static void
ngx_http_mdm_op_report(ngx_http_mdm_redis_op_t *op, redisReply *reply)
{
    ngx_int_t  rv;

    if (op->timer.timer_set) {
        ngx_del_timer(&op->timer);
    }

    if (op->done || ngx_http_mdm_exiting) {
        return;
    }

    op->done = 1;

    if (reply == NULL) {
        rv = NGX_HTTP_MDM_REDIS_DOWN;

    } else if (op->unconfirmed
               || (reply->type == REDIS_REPLY_ERROR
                   && ngx_http_mdm_redis_is_transient(reply)))
    {
        rv = NGX_HTTP_MDM_REDIS_REFUSED;

    } else {
        rv = NGX_HTTP_MDM_REDIS_REPLY;
    }

    op->handler(rv, reply, op->data);
}


/* A reply kept past its callback: hiredis frees the one it passed. */

static redisReply *
ngx_http_mdm_reply_copy(redisReply *r)
{
    size_t       i;
    redisReply  *c;

    c = calloc(1, sizeof(redisReply));
    if (c == NULL) {
        return NULL;
    }

    c->type = r->type;
    c->integer = r->integer;
    c->len = r->len;

    if (r->str) {
        c->str = malloc(r->len + 1);
        if (c->str == NULL) {
            freeReplyObject(c);
            return NULL;
        }

        ngx_memcpy(c->str, r->str, r->len);
        c->str[r->len] = '\0';
    }

    if (r->type == REDIS_REPLY_ARRAY && r->elements) {
        c->element = calloc(r->elements, sizeof(redisReply *));
        if (c->element == NULL) {
            freeReplyObject(c);
            return NULL;
        }

        c->elements = r->elements;

        for (i = 0; i < r->elements; i++) {
            c->element[i] = ngx_http_mdm_reply_copy(r->element[i]);
            if (c->element[i] == NULL) {
                freeReplyObject(c);
                return NULL;
            }
        }
    }

    return c;
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
