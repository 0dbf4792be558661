/*
 * Copyright (C) The MDM module authors
 *
 * mdm_redis sentinel=IP:port,... master=NAME: which Redis is the primary,
 * asked of the sentinels in turn (SENTINEL get-master-addr-by-name) on
 * each connect, and a subscription to +switch-master on one of them so a
 * failover is followed at once rather than at the next error. Both are
 * hiredis async contexts on nginx's loop, like the primary's; a sentinel
 * that is down or slow only moves the question to the next one, and all
 * of them down while the primary is fine changes nothing.
 */


#include "ngx_http_mdm.h"


#define NGX_HTTP_MDM_SENTINEL_ASK     1000    /* ms, per sentinel */
#define NGX_HTTP_MDM_SENTINEL_RESUB   1000    /* ms, after a lost one */


static redisAsyncContext *ngx_http_mdm_sentinel_open(
    ngx_http_mdm_redis_conn_t *rc, ngx_uint_t i);
static void ngx_http_mdm_sentinel_ask_next(ngx_http_mdm_redis_conn_t *rc);
static void ngx_http_mdm_sentinel_ask_reply(redisAsyncContext *ac, void *rep,
    void *data);
static void ngx_http_mdm_sentinel_ask_timeout(ngx_event_t *ev);
static void ngx_http_mdm_sentinel_subscribe(ngx_http_mdm_redis_conn_t *rc);
static void ngx_http_mdm_sentinel_sub_reply(redisAsyncContext *ac,
    void *rep, void *data);
static void ngx_http_mdm_sentinel_sub_lost(ngx_http_mdm_redis_conn_t *rc);
static void ngx_http_mdm_sentinel_sub_handler(ngx_event_t *ev);
static void ngx_http_mdm_sentinel_connected(const redisAsyncContext *ac,
    int status);
static ngx_int_t ngx_http_mdm_sentinel_is(redisReply *r, const char *s);
static ngx_int_t ngx_http_mdm_sentinel_names(redisReply *m, const char *ip,
    int port);


void
ngx_http_mdm_sentinel_init(ngx_http_mdm_redis_conn_t *rc)
{
    rc->ask_ev.handler = ngx_http_mdm_sentinel_ask_timeout;
    rc->ask_ev.log = rc->reconnect_ev.log;
    rc->ask_ev.data = &rc->dummy;
    rc->ask_ev.cancelable = 1;

    rc->sub_ev.handler = ngx_http_mdm_sentinel_sub_handler;
    rc->sub_ev.log = rc->reconnect_ev.log;
    rc->sub_ev.data = &rc->dummy;
    rc->sub_ev.cancelable = 1;

    ngx_http_mdm_sentinel_subscribe(rc);
}


/* A new round of questions, from the sentinel that answered last. */

void
ngx_http_mdm_sentinel_ask(ngx_http_mdm_redis_conn_t *rc)
{
    if (rc->sac) {
        return;
    }

    rc->tried = 0;
    ngx_http_mdm_sentinel_ask_next(rc);
}


void
ngx_http_mdm_sentinel_stop(ngx_http_mdm_redis_conn_t *rc)
{
    redisAsyncContext  *ac;

    if (rc->ask_ev.timer_set) {
        ngx_del_timer(&rc->ask_ev);
    }

    if (rc->sub_ev.timer_set) {
        ngx_del_timer(&rc->sub_ev);
    }

    ac = rc->sac;
    if (ac) {
        rc->sac = NULL;
        redisAsyncFree(ac);
    }

    ac = rc->sub;
    if (ac) {
        rc->sub = NULL;
        redisAsyncFree(ac);
    }
}


/* An async connect to sentinel i, AUTH queued first when configured. */

static redisAsyncContext *
ngx_http_mdm_sentinel_open(ngx_http_mdm_redis_conn_t *rc, ngx_uint_t i)
{
    mdm_redis_node_t   *n;
    redisAsyncContext  *ac;

    n = &rc->addr.sentinels[i];

    ac = redisAsyncConnect(n->host, n->port);
    if (ac == NULL || ac->err
        || ngx_http_mdm_redis_attach(ac, rc->reconnect_ev.log) != NGX_OK)
    {
        ngx_log_error(NGX_LOG_WARN, rc->reconnect_ev.log, 0,
                      "mdm: redis \"%V\": cannot connect to sentinel "
                      "%s:%d: %s", &rc->name, n->host, n->port,
                      ac ? ac->errstr : "out of memory");
        if (ac) {
            redisAsyncFree(ac);
        }
        return NULL;
    }

    ac->data = rc;
    redisAsyncSetConnectCallback(ac, ngx_http_mdm_sentinel_connected);

    if (rc->addr.sentinel_password[0]) {
        /* a refusal shows as NOAUTH in the answer behind it */
        redisAsyncCommand(ac, NULL, NULL, "AUTH %s",
                          rc->addr.sentinel_password);
    }

    return ac;
}


static void
ngx_http_mdm_sentinel_ask_next(ngx_http_mdm_redis_conn_t *rc)
{
    ngx_uint_t          i, n;
    redisAsyncContext  *ac;

    n = rc->addr.nsentinels;

    while (rc->tried < n) {
        i = (rc->next_sentinel + rc->tried) % n;
        rc->tried++;

        ac = ngx_http_mdm_sentinel_open(rc, i);
        if (ac == NULL) {
            continue;
        }

        if (redisAsyncCommand(ac, ngx_http_mdm_sentinel_ask_reply,
                              (void *) (uintptr_t) i,
                              "SENTINEL get-master-addr-by-name %s",
                              rc->addr.master)
            != REDIS_OK)
        {
            redisAsyncFree(ac);
            continue;
        }

        rc->sac = ac;
        ngx_add_timer(&rc->ask_ev,
                      ngx_min(rc->timeout, NGX_HTTP_MDM_SENTINEL_ASK));
        return;
    }

    ngx_log_error(NGX_LOG_ERR, rc->reconnect_ev.log, 0,
                  "mdm: redis \"%V\": no sentinel named the primary, "
                  "answering 503, asking again", &rc->name);

    ngx_http_mdm_redis_unfound(rc);
}


/* [ip, port], or nil when the sentinel does not know master= */

static void
ngx_http_mdm_sentinel_ask_reply(redisAsyncContext *ac, void *rep,
    void *data)
{
    ngx_http_mdm_redis_conn_t  *rc = ac->data;

    int             port;
    char            host[46];
    ngx_int_t       n;
    ngx_uint_t      i;
    redisReply     *reply = rep, *h, *p;
    unsigned char   buf[16];

    if (ac != rc->sac) {
        return;
    }

    rc->sac = NULL;

    if (rc->ask_ev.timer_set) {
        ngx_del_timer(&rc->ask_ev);
    }

    i = (uintptr_t) data;

    if (reply == NULL) {
        /* hiredis frees the context: it is closing */
        ngx_http_mdm_sentinel_ask_next(rc);
        return;
    }

    redisAsyncFree(ac);

    h = NULL;
    p = NULL;
    port = 0;

    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2) {
        h = reply->element[0];
        p = reply->element[1];
    }

    if (h && p && h->type == REDIS_REPLY_STRING
        && p->type == REDIS_REPLY_STRING && h->len < sizeof(host))
    {
        ngx_memcpy(host, h->str, h->len);
        host[h->len] = '\0';

        n = ngx_atoi((u_char *) p->str, p->len);
        port = (n > 0 && n <= 65535) ? n : 0;

        /* an IP, never a name: resolving it would block the worker */
        if (inet_pton(AF_INET, host, buf) != 1
            && inet_pton(AF_INET6, host, buf) != 1)
        {
            port = 0;
        }
    }

    if (port == 0) {
        ngx_log_error(NGX_LOG_WARN, rc->reconnect_ev.log, 0,
                      "mdm: redis \"%V\": sentinel %s:%d gave no usable "
                      "address for master \"%s\"%s%*s",
                      &rc->name, rc->addr.sentinels[i].host,
                      rc->addr.sentinels[i].port, rc->addr.master,
                      reply->type == REDIS_REPLY_ERROR ? ": " : "",
                      (size_t) (reply->type == REDIS_REPLY_ERROR
                                ? reply->len : 0),
                      reply->type == REDIS_REPLY_ERROR ? reply->str : "");
        ngx_http_mdm_sentinel_ask_next(rc);
        return;
    }

    if (ngx_strcmp(host, rc->primary) != 0 || port != rc->primary_port) {
        ngx_log_error(NGX_LOG_NOTICE, rc->reconnect_ev.log, 0,
                      "mdm: redis \"%V\": primary is %s:%d (sentinel %s:%d)",
                      &rc->name, host, port, rc->addr.sentinels[i].host,
                      rc->addr.sentinels[i].port);
    }

    ngx_memcpy(rc->primary, host, sizeof(host));
    rc->primary_port = port;
    rc->next_sentinel = i;

    ngx_http_mdm_redis_found(rc);
}


static void
ngx_http_mdm_sentinel_ask_timeout(ngx_event_t *ev)
{
    ngx_connection_t           *dummy = ev->data;
    ngx_http_mdm_redis_conn_t  *rc = dummy->data;

    redisAsyncContext  *ac;

    ac = rc->sac;
    if (ac == NULL) {
        return;
    }

    rc->sac = NULL;
    redisAsyncFree(ac);

    ngx_http_mdm_sentinel_ask_next(rc);
}


static void
ngx_http_mdm_sentinel_subscribe(ngx_http_mdm_redis_conn_t *rc)
{
    ngx_uint_t          i;
    redisAsyncContext  *ac;

    i = rc->sub_next++ % rc->addr.nsentinels;

    ac = ngx_http_mdm_sentinel_open(rc, i);
    if (ac == NULL) {
        ngx_http_mdm_sentinel_sub_lost(rc);
        return;
    }

    if (redisAsyncCommand(ac, ngx_http_mdm_sentinel_sub_reply,
                          (void *) (uintptr_t) i,
                          "SUBSCRIBE +switch-master")
        != REDIS_OK)
    {
        redisAsyncFree(ac);
        ngx_http_mdm_sentinel_sub_lost(rc);
        return;
    }

    rc->sub = ac;
}


/* "message" "+switch-master" "NAME old-ip old-port new-ip new-port" */

static void
ngx_http_mdm_sentinel_sub_reply(redisAsyncContext *ac, void *rep,
    void *data)
{
    ngx_http_mdm_redis_conn_t  *rc = ac->data;

    size_t       n;
    ngx_uint_t   i;
    redisReply  *reply = rep, *m;

    if (ac != rc->sub) {
        return;
    }

    i = (uintptr_t) data;

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        if (reply) {
            ngx_log_error(NGX_LOG_WARN, rc->reconnect_ev.log, 0,
                          "mdm: redis \"%V\": sentinel %s:%d refused "
                          "SUBSCRIBE: %*s", &rc->name,
                          rc->addr.sentinels[i].host,
                          rc->addr.sentinels[i].port,
                          (size_t) (reply->str ? reply->len : 0),
                          reply->str ? reply->str : "");
            rc->sub = NULL;
            redisAsyncFree(ac);

        } else {
            rc->sub = NULL;
        }

        ngx_http_mdm_sentinel_sub_lost(rc);
        return;
    }

    if (reply->elements != 3) {
        return;
    }

    if (ngx_http_mdm_sentinel_is(reply->element[0], "subscribe")) {
        ngx_log_error(NGX_LOG_INFO, rc->reconnect_ev.log, 0,
                      "mdm: redis \"%V\": following failovers through "
                      "sentinel %s:%d", &rc->name,
                      rc->addr.sentinels[i].host,
                      rc->addr.sentinels[i].port);
        return;
    }

    m = reply->element[2];
    n = ngx_strlen(rc->addr.master);

    if (!ngx_http_mdm_sentinel_is(reply->element[0], "message")
        || m->type != REDIS_REPLY_STRING || m->len <= n
        || ngx_strncmp(m->str, rc->addr.master, n) != 0
        || m->str[n] != ' ')
    {
        /* another master's, or not for us */
        return;
    }

    /* already on the new primary (a lost connection got there first) */
    if (rc->primary_known
        && ngx_http_mdm_sentinel_names(m, rc->primary, rc->primary_port))
    {
        return;
    }

    ngx_http_mdm_redis_switched(rc);
}


/* Whether "NAME old-ip old-port new-ip new-port" ends in ip and port. */

static ngx_int_t
ngx_http_mdm_sentinel_names(redisReply *m, const char *ip, int port)
{
    u_char  *p, *end, *sp;
    char     tail[64];
    size_t   n;

    end = (u_char *) m->str + m->len;
    p = end;
    sp = NULL;

    /* back over "new-port", then "new-ip" */
    for (n = 0; p > (u_char *) m->str; p--) {
        if (p[-1] == ' ' && ++n == 2) {
            sp = p;
            break;
        }
    }

    if (sp == NULL) {
        return 0;
    }

    n = ngx_snprintf((u_char *) tail, sizeof(tail), "%s %d", ip, port)
        - (u_char *) tail;

    return (size_t) (end - sp) == n && ngx_strncmp(sp, tail, n) == 0;
}


static void
ngx_http_mdm_sentinel_sub_lost(ngx_http_mdm_redis_conn_t *rc)
{
    if (!rc->sub_ev.timer_set) {
        ngx_add_timer(&rc->sub_ev, NGX_HTTP_MDM_SENTINEL_RESUB);
    }
}


static void
ngx_http_mdm_sentinel_sub_handler(ngx_event_t *ev)
{
    ngx_connection_t           *dummy = ev->data;
    ngx_http_mdm_redis_conn_t  *rc = dummy->data;

    if (rc->sub == NULL) {
        ngx_http_mdm_sentinel_subscribe(rc);
    }
}


/* A failed connect: hiredis frees the context when this returns. */

static void
ngx_http_mdm_sentinel_connected(const redisAsyncContext *ac, int status)
{
    ngx_http_mdm_redis_conn_t  *rc = ac->data;

    if (status == REDIS_OK) {
        return;
    }

    if (ac == rc->sac) {
        rc->sac = NULL;

        if (rc->ask_ev.timer_set) {
            ngx_del_timer(&rc->ask_ev);
        }

        ngx_http_mdm_sentinel_ask_next(rc);
        return;
    }

    if (ac == rc->sub) {
        rc->sub = NULL;
        ngx_http_mdm_sentinel_sub_lost(rc);
    }
}


static ngx_int_t
ngx_http_mdm_sentinel_is(redisReply *r, const char *s)
{
    size_t  n;

    n = ngx_strlen(s);

    return r->type == REDIS_REPLY_STRING && r->len == n
           && ngx_strncmp(r->str, s, n) == 0;
}
