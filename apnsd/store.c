/* Redis: one synchronous connection used with pipelined batches, and one
 * non-blocking connection that blocks in Redis (BLMOVE q q LEFT LEFT, which
 * leaves the list unchanged) while the sender is idle. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>

#include "apnsd.h"


static redisContext *rc;
static int64_t next_try;           /* monotonic */
static int64_t backoff = 0;
static char last_err[256];

typedef struct pcmd {
    reply_cb cb;
    void *ctx;
    char *buf;
    int len;
} pcmd_t;

static pcmd_t *pq;
static int npq, capq;

int store_connected(void) { return rc != NULL; }
int64_t store_next_connect(void) { return rc ? 0 : next_try; }

static int parse_addr(char **host, int *port, char **path)
{
    const char *a = conf.redis;
    *host = *path = NULL;
    *port = 6379;
    if (!strncmp(a, "unix:", 5)) { *path = xstrdup(a + 5); return 0; }
    if (a[0] == '/') { *path = xstrdup(a); return 0; }
    if (a[0] == '[') {
        const char *e = strchr(a, ']');
        if (!e) return -1;
        *host = xstrndup(a + 1, (size_t) (e - a - 1));
        if (e[1] == ':') *port = atoi(e + 2);
        return 0;
    }
    const char *c = strrchr(a, ':');
    if (c) {
        *host = xstrndup(a, (size_t) (c - a));
        *port = atoi(c + 1);
    } else {
        *host = xstrdup(a);
    }
    return *port > 0 && *port < 65536 ? 0 : -1;
}

static redisContext *open_ctx(int blocking)
{
    char *host, *path;
    int port;
    if (parse_addr(&host, &port, &path)) {
        snprintf(last_err, sizeof last_err, "bad redis address \"%s\"", conf.redis);
        return NULL;
    }
    struct timeval tv = { conf.redis_timeout / 1000, (conf.redis_timeout % 1000) * 1000 };
    redisContext *c;
    if (path)
        c = blocking ? redisConnectUnixWithTimeout(path, tv) : redisConnectUnixNonBlock(path);
    else
        c = blocking ? redisConnectWithTimeout(host, port, tv) : redisConnectNonBlock(host, port);
    free(host);
    free(path);
    if (!c) {
        snprintf(last_err, sizeof last_err, "out of memory");
        return NULL;
    }
    if (c->err) {
        snprintf(last_err, sizeof last_err, "%s", c->errstr);
        redisFree(c);
        return NULL;
    }
    if (blocking) redisSetTimeout(c, tv);
    if (!path) redisEnableKeepAlive(c);
    return c;
}

static int check_reply(redisReply *r, const char *what)
{
    if (!r) {
        snprintf(last_err, sizeof last_err, "%s: %s", what,
                 rc && rc->err ? rc->errstr : "no reply");
        return -1;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(last_err, sizeof last_err, "%s: %s", what, r->str);
        freeReplyObject(r);
        return -1;
    }
    return 0;
}

int store_connect(void)
{
    if (rc) return 0;
    int64_t now = mono_ms();
    if (now < next_try) return -1;
    rc = open_ctx(1);
    redisReply *r;
    if (!rc) goto fail;
    if (conf.redis_password) {
        r = redisCommand(rc, "AUTH %s", conf.redis_password);
        if (check_reply(r, "AUTH")) goto fail;
        freeReplyObject(r);
    }
    if (conf.redis_db) {
        r = redisCommand(rc, "SELECT %d", (int) conf.redis_db);
        if (check_reply(r, "SELECT")) goto fail;
        freeReplyObject(r);
    }
    r = redisCommand(rc, "FCALL mdm_push_version 0");
    if (check_reply(r, "FCALL mdm_push_version (is redis-scripts/push.lua loaded?)"))
        goto fail;
    if (r->type != REDIS_REPLY_STRING || strcmp(r->str, PUSH_LIB_VERSION) != 0) {
        snprintf(last_err, sizeof last_err, "function library mdm_push has version "
                 "%s, this sender needs %s: load redis-scripts/push.lua",
                 r->type == REDIS_REPLY_STRING ? r->str : "?", PUSH_LIB_VERSION);
        freeReplyObject(r);
        goto fail;
    }
    freeReplyObject(r);
    if (backoff) log_notice("redis: connected to %s again", conf.redis);
    else log_info("redis: connected to %s", conf.redis);
    backoff = 0;
    last_err[0] = '\0';
    return 0;
fail:
    if (!backoff) log_err("redis: %s: %s (retrying)", conf.redis, last_err);
    else log_debug("redis: %s: %s", conf.redis, last_err);
    if (rc) { redisFree(rc); rc = NULL; }
    backoff = backoff ? backoff * 2 : 100;
    if (backoff > 5000) backoff = 5000;
    next_try = now + jitter(backoff, 0.2);
    return -1;
}

void store_disconnect(const char *why)
{
    if (!rc) return;
    log_err("redis: connection lost: %s", why ? why : (rc->err ? rc->errstr : "?"));
    redisFree(rc);
    rc = NULL;
    backoff = 100;
    next_try = mono_ms() + jitter(backoff, 0.2);
}

void pipe_cmd(reply_cb cb, void *ctx, int argc, const char **argv, const size_t *lens)
{
    if (npq == capq) {
        capq = capq ? capq * 2 : 256;
        pq = xrealloc(pq, sizeof *pq * (size_t) capq);
    }
    pcmd_t *c = &pq[npq++];
    c->cb = cb;
    c->ctx = ctx;
    c->buf = NULL;
    c->len = redisFormatCommandArgv(&c->buf, argc, argv, lens);
    if (c->len < 0) abort();
}

void pipe_cmdf(reply_cb cb, void *ctx, ...)
{
    const char *argv[32];
    size_t lens[32];
    int argc = 0;
    const char *a;
    va_list ap;
    va_start(ap, ctx);
    while ((a = va_arg(ap, const char *)) != NULL) {
        if (argc == 32) abort();
        argv[argc] = a;
        lens[argc++] = strlen(a);
    }
    va_end(ap);
    pipe_cmd(cb, ctx, argc, argv, lens);
}

int pipe_pending(void) { return npq; }

int pipe_flush(void)
{
    int n = npq, i = 0, rc_ok = 0;
    if (!n) return 0;
    /* the callbacks may queue new commands: work on a private copy */
    pcmd_t *cmds = pq;
    pq = NULL;
    npq = capq = 0;
    if (rc) {
        for (i = 0; i < n; i++)
            if (redisAppendFormattedCommand(rc, cmds[i].buf, (size_t) cmds[i].len) != REDIS_OK)
                break;
        if (i < n) {
            store_disconnect(NULL);
            i = 0;
        } else {
            for (i = 0; i < n; i++) {
                void *r = NULL;
                if (redisGetReply(rc, &r) != REDIS_OK) {
                    store_disconnect(NULL);
                    break;
                }
                if (cmds[i].cb) cmds[i].cb(r, cmds[i].ctx);
                freeReplyObject(r);
                free(cmds[i].buf);
            }
        }
    }
    if (i < n) rc_ok = -1;
    for (; i < n; i++) {
        if (cmds[i].cb) cmds[i].cb(NULL, cmds[i].ctx);
        free(cmds[i].buf);
    }
    free(cmds);
    return rc_ok;
}

redisReply *store_command(int argc, const char **argv)
{
    if (!rc) return NULL;
    redisReply *r = redisCommandArgv(rc, argc, argv, NULL);
    if (!r) store_disconnect(NULL);
    return r;
}

/* ---- waiter -------------------------------------------------------------- */

static redisContext *wc;
static int w_expect;        /* replies still expected; the last is BLMOVE's */
static int w_out;           /* waiting for EPOLLOUT */

int waiter_fd(void) { return wc ? wc->fd : -1; }

void waiter_close(int epfd)
{
    if (!wc) return;
    epoll_ctl(epfd, EPOLL_CTL_DEL, wc->fd, NULL);
    redisFree(wc);
    wc = NULL;
    w_expect = 0;
    w_out = 0;
}

static int w_write(int epfd)
{
    int done = 0;
    if (redisBufferWrite(wc, &done) != REDIS_OK) return -1;
    int want = done ? EPOLLIN : EPOLLIN | EPOLLOUT;
    if (want != (w_out ? (EPOLLIN | EPOLLOUT) : EPOLLIN)) {
        struct epoll_event ev = { .events = (uint32_t) want,
                                  .data.u64 = ((uint64_t) EV_WAITER << 32) | (uint32_t) wc->fd };
        epoll_ctl(epfd, EPOLL_CTL_MOD, wc->fd, &ev);
        w_out = !done;
    }
    return 0;
}

int waiter_arm(int epfd)
{
    if (w_expect) return 0;
    if (!rc) return -1;
    if (!wc) {
        wc = open_ctx(0);
        if (!wc) return -1;
        struct epoll_event ev = { .events = EPOLLIN,
                                  .data.u64 = ((uint64_t) EV_WAITER << 32) | (uint32_t) wc->fd };
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, wc->fd, &ev)) {
            redisFree(wc);
            wc = NULL;
            return -1;
        }
        if (conf.redis_password) {
            redisAppendCommand(wc, "AUTH %s", conf.redis_password);
            w_expect++;
        }
        if (conf.redis_db) {
            redisAppendCommand(wc, "SELECT %d", (int) conf.redis_db);
            w_expect++;
        }
    }
    /* the timeout only bounds how long a dead connection goes unnoticed */
    redisAppendCommand(wc, "BLMOVE %s %s LEFT LEFT 30", K_Q, K_Q);
    w_expect++;
    if (w_write(epfd)) {
        waiter_close(epfd);
        return -1;
    }
    return 0;
}

/* -1: still waiting; 0: BLMOVE timed out (queue empty); 1: the queue has
 * items, or the connection broke (then the caller just claims) */
int waiter_event(int epfd, uint32_t events)
{
    if (!wc) return 1;
    if ((events & EPOLLOUT) && w_write(epfd)) goto broken;
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        if (redisBufferRead(wc) != REDIS_OK) goto broken;
        void *r;
        while (w_expect) {
            r = NULL;
            if (redisGetReplyFromReader(wc, &r) != REDIS_OK) goto broken;
            if (!r) break;
            redisReply *rep = r;
            w_expect--;
            int err = rep->type == REDIS_REPLY_ERROR;
            if (err) log_err("redis: waiter: %s", rep->str);
            int got = rep->type == REDIS_REPLY_STRING;
            freeReplyObject(rep);
            if (err) goto broken;
            if (!w_expect) return got;
        }
    }
    return -1;
broken:
    waiter_close(epfd);
    return 1;   /* let the main loop claim (and re-arm) */
}
