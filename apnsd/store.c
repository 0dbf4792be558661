/* Redis: the main connection is opened and checked synchronously (bounded by
 * redis-timeout), then driven non-blocking by the epoll loop: commands are
 * pipelined and their callbacks run in order as replies arrive. A second
 * non-blocking connection blocks in Redis (BLMOVE q q LEFT LEFT, which leaves
 * the list unchanged) while the sender is idle. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>

#include "apnsd.h"

static redisContext *rc;
static unsigned rc_gen;            /* bumped on every disconnect */
static int epfd_ = -1;
static int rc_out;                 /* EPOLLOUT registered */
static int64_t next_try;           /* monotonic */
static int64_t backoff = 0;
static char last_err[256];

typedef struct pcmd {
    reply_cb cb;
    void *ctx;
    char *buf;
    int len;
} pcmd_t;

/* queued (not yet written) commands, and the ones awaiting replies */
static pcmd_t *pq;
static int npq, capq;
static pcmd_t *fifo;
static size_t fhead, ftail, fcap;   /* ring buffer [fhead, ftail) */

int store_connected(void) { return rc != NULL; }
int64_t store_next_connect(void) { return rc ? 0 : next_try; }
void store_set_epoll(int epfd) { epfd_ = epfd; }
static size_t fifo_len(void) { return ftail - fhead; }

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
    /* from here on non-blocking, driven by the epoll loop (hiredis 0.14:
     * without REDIS_BLOCK, EAGAIN means "later" in redisBuffer{Read,Write}) */
    if (epfd_ >= 0) {
        int fl = fcntl(rc->fd, F_GETFL);
        fcntl(rc->fd, F_SETFL, fl | O_NONBLOCK);
        rc->flags &= ~REDIS_BLOCK;
        struct epoll_event ev = { .events = EPOLLIN,
                                  .data.u64 = ((uint64_t) EV_REDIS << 32) | (uint32_t) rc->fd };
        epoll_ctl(epfd_, EPOLL_CTL_ADD, rc->fd, &ev);
        rc_out = 0;
    }
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

static void fail_all(void)
{
    /* callbacks may queue new commands: take the lists first */
    while (fifo_len()) {
        pcmd_t c = fifo[fhead++ % fcap];
        if (c.cb) c.cb(NULL, c.ctx);
        free(c.buf);
    }
    fhead = ftail = 0;
    pcmd_t *q = pq;
    int n = npq;
    pq = NULL;
    npq = capq = 0;
    for (int i = 0; i < n; i++) {
        if (q[i].cb) q[i].cb(NULL, q[i].ctx);
        free(q[i].buf);
    }
    free(q);
}

void store_disconnect(const char *why)
{
    if (!rc) return;
    log_err("redis: connection lost: %s", why ? why : (rc->err ? rc->errstr : "?"));
    if (epfd_ >= 0) epoll_ctl(epfd_, EPOLL_CTL_DEL, rc->fd, NULL);
    redisFree(rc);
    rc = NULL;
    rc_gen++;
    backoff = 100;
    next_try = mono_ms() + jitter(backoff, 0.2);
    fail_all();
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

static void want_out(int on)
{
    if (epfd_ < 0 || !rc || on == rc_out) return;
    struct epoll_event ev = { .events = EPOLLIN | (on ? EPOLLOUT : 0),
                              .data.u64 = ((uint64_t) EV_REDIS << 32) | (uint32_t) rc->fd };
    epoll_ctl(epfd_, EPOLL_CTL_MOD, rc->fd, &ev);
    rc_out = on;
}

static int write_out(void)
{
    int done = 0;
    if (redisBufferWrite(rc, &done) != REDIS_OK) {
        store_disconnect(NULL);
        return -1;
    }
    want_out(!done);
    return 0;
}

/* Hands the queued commands to Redis; replies arrive through store_event. */
int pipe_send(void)
{
    if (!npq) return 0;
    if (!rc) {
        fail_all();
        return -1;
    }
    if (fifo_len() + (size_t) npq > fcap) {
        size_t ncap = fcap ? fcap : 512;
        while (ncap < fifo_len() + (size_t) npq) ncap *= 2;
        pcmd_t *nf = xmalloc(sizeof *nf * ncap);
        size_t n = 0;
        for (size_t i = fhead; i < ftail; i++) nf[n++] = fifo[i % fcap];
        free(fifo);
        fifo = nf;
        fcap = ncap;
        fhead = 0;
        ftail = n;
    }
    for (int i = 0; i < npq; i++) {
        redisAppendFormattedCommand(rc, pq[i].buf, (size_t) pq[i].len);
        free(pq[i].buf);
        pq[i].buf = NULL;
        fifo[ftail++ % fcap] = pq[i];
    }
    npq = 0;
    return write_out();
}

/* Readiness of the Redis socket: write what is left, run reply callbacks. */
void store_event(uint32_t events)
{
    if (!rc) return;
    if ((events & EPOLLOUT) && write_out()) return;
    if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP))) return;
    if (redisBufferRead(rc) != REDIS_OK) {
        store_disconnect(NULL);
        return;
    }
    unsigned gen = rc_gen;
    while (rc && gen == rc_gen && fifo_len()) {
        void *r = NULL;
        if (redisGetReplyFromReader(rc, &r) != REDIS_OK) {
            store_disconnect(NULL);
            return;
        }
        if (!r) break;
        pcmd_t cmd = fifo[fhead++ % fcap];
        if (cmd.cb) cmd.cb(r, cmd.ctx);   /* may disconnect: checked above */
        freeReplyObject(r);
    }
}

/* Sends everything and waits for every reply (shutdown). 0 = all answered. */
int pipe_flush_sync(int64_t timeout_ms)
{
    int64_t until = mono_ms() + timeout_ms;
    pipe_send();
    while (rc && fifo_len()) {
        int64_t left = until - mono_ms();
        if (left <= 0) return -1;
        struct pollfd p = { .fd = rc->fd, .events = POLLIN | (rc_out ? POLLOUT : 0) };
        int n = poll(&p, 1, (int) left);
        if (n < 0 && errno != EINTR) return -1;
        if (n > 0)
            store_event((p.revents & POLLIN ? EPOLLIN : 0) | (p.revents & POLLOUT ? EPOLLOUT : 0)
                        | (p.revents & (POLLERR | POLLHUP) ? EPOLLERR : 0));
    }
    return rc ? 0 : -1;
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
