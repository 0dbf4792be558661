/* Redis: both connections are opened without blocking (an IP literal or a
 * unix path, never a name to resolve) and driven by the epoll loop. Setup
 * (AUTH, SELECT, the version check) is pipelined on the new connection and
 * bounded by redis-timeout; commands queued meanwhile go out once it is
 * done. Every error Redis answers (OOM under maxmemory, LOADING, READONLY,
 * a failed setup step...) and every lost connection backs the sender off
 * (exponential, capped, jittered) until a write goes through again. A
 * second connection blocks in Redis (BLMOVE q q LEFT LEFT, which leaves the
 * list unchanged) while the sender is idle.
 * sentinel=: the primary is asked of the sentinels before each connect (a
 * blocking question, bounded by 300ms per sentinel: this process only, and
 * only while Redis is unreachable anyway), ROLE must say master in the
 * setup, and READONLY drops the connection so the next one asks again.
 * replicas=N: a WAIT follows each batch holding writes; a shortfall backs
 * the sender off like a refusal. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>

#include "apnsd.h"
#include "mdm_redis_sentinel.h"

#define SENTINEL_ASK_MS  300

#define BACKOFF_MIN  100
#define BACKOFF_MAX  5000

static redisContext *rc;
static int rc_ready;               /* setup answered: commands may go out */
static int rc_fresh;               /* became ready, not yet seen by main */
static int64_t rc_deadline;        /* setup must be answered by then */
static unsigned rc_gen;            /* bumped on every disconnect */
static int epfd_ = -1;
static int rc_out;                 /* EPOLLOUT wanted */
static int64_t next_try;           /* monotonic: next connect */
static int64_t pause_until;        /* monotonic: no commands before */
static int64_t backoff;            /* current step, 0 = no trouble */
static unsigned long long n_errors; /* errors in the current outage */
static int outage;                 /* a connect or a command failed */
static char last_err[256];

typedef struct pcmd {
    reply_cb cb;
    void *ctx;
    char *buf;
    int len;
    int write;                     /* FCALL: its success ends an outage */
} pcmd_t;

/* queued (not yet written) commands, and the ones awaiting replies */
static pcmd_t *pq;
static int npq, capq;
static pcmd_t *fifo;
static size_t fhead, ftail, fcap;   /* ring buffer [fhead, ftail) */

static void drop(const char *why);
static int write_out(void);

int store_connected(void) { return rc_ready; }
void store_set_epoll(int epfd) { epfd_ = epfd; }
static size_t fifo_len(void) { return ftail - fhead; }

int store_take_fresh(void)
{
    int f = rc_fresh;
    rc_fresh = 0;
    return f;
}

int store_paused(int64_t now) { return now < pause_until; }

/* The next time the store needs the loop: a connect, the setup deadline,
 * the end of a pause; -1 if none. */
int64_t store_next_event(int64_t now)
{
    if (!rc) return next_try;
    if (!rc_ready) return rc_deadline;
    return now < pause_until ? pause_until : -1;
}

static int64_t backoff_step(void)
{
    backoff = backoff ? backoff * 2 : BACKOFF_MIN;
    if (backoff > BACKOFF_MAX) backoff = BACKOFF_MAX;
    return jitter(backoff, 0.25);
}

/* Any error from Redis: one line per outage, then back off. */
void store_error(const char *what, const char *err)
{
    int64_t now = mono_ms(), d;
    n_errors++;
    /* the other replies of a refused pipeline are the same attempt */
    if (now < pause_until) return;
    d = backoff_step();
    pause_until = now + d;
    if (!outage)
        log_err("redis %s: %s: %s; backing off (up to %dms between attempts, "
                "outcomes kept until Redis takes them)", conf.redis_show, what,
                err, BACKOFF_MAX);
    else
        log_debug("redis: %s: %s (next attempt in %lldms)", what, err, (long long) d);
    outage = 1;
}

/* A write went through: the outage, if any, is over. */
static void store_ok(void)
{
    if (outage)
        log_notice("redis %s: writes accepted again (%llu errors before)",
                   conf.redis_show, n_errors);
    outage = 0;
    backoff = 0;
    n_errors = 0;
    pause_until = 0;
}

/* A non-blocking TCP connect to the IP literal: no getaddrinfo at all. */
static int tcp_connect(const char *ip, int port)
{
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof ss);
    if (strchr(ip, ':')) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *) &ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t) port);
        if (inet_pton(AF_INET6, ip, &s6->sin6_addr) != 1) return -1;
        len = sizeof *s6;
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *) &ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t) port);
        if (inet_pton(AF_INET, ip, &s4->sin_addr) != 1) return -1;
        len = sizeof *s4;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *) &ss, len) != 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static redisContext *open_ctx(void)
{
    const mdm_redis_addr_t *a = &conf.raddr;
    redisContext *c;
    char host[sizeof conf.raddr.host];
    int port;
    if (a->type == MDM_REDIS_ADDR_SENTINEL) {
        char err[256];
        if (mdm_redis_sentinel_primary(a, SENTINEL_ASK_MS, host, sizeof host,
                                       &port, err, sizeof err) != 0) {
            snprintf(last_err, sizeof last_err, "%s", err);
            return NULL;
        }
    } else if (a->type == MDM_REDIS_ADDR_TCP) {
        snprintf(host, sizeof host, "%s", a->host);
        port = a->port;
    }
    if (a->type == MDM_REDIS_ADDR_UNIX) {
        c = redisConnectUnixNonBlock(a->host);
    } else {
        int fd = tcp_connect(host, port);
        if (fd < 0) {
            snprintf(last_err, sizeof last_err, "connect: %s", strerror(errno));
            return NULL;
        }
        c = redisConnectFd(fd);
        if (!c) close(fd);
    }
    if (!c) {
        snprintf(last_err, sizeof last_err, "out of memory");
        return NULL;
    }
    if (c->err) {
        snprintf(last_err, sizeof last_err, "connect: %s", c->errstr);
        redisFree(c);
        return NULL;
    }
    /* hiredis 0.14: without REDIS_BLOCK, EAGAIN means "later" */
    c->flags &= ~REDIS_BLOCK;
    if (a->type != MDM_REDIS_ADDR_UNIX) redisEnableKeepAlive(c);
    return c;
}

/* AUTH [user] pass, SELECT: appended to a new connection's output */
static int append_setup(redisContext *c)
{
    const mdm_redis_addr_t *a = &conf.raddr;
    int n = 0;
    if (a->password[0]) {
        const char *argv[3];
        int k = 0;
        argv[k++] = "AUTH";
        if (a->username[0]) argv[k++] = a->username;
        argv[k++] = a->password;
        redisAppendCommandArgv(c, k, argv, NULL);
        n++;
    }
    if (a->db) {
        redisAppendCommand(c, "SELECT %d", a->db);
        n++;
    }
    return n;
}

static void fifo_room(size_t more)
{
    if (fifo_len() + more <= fcap) return;
    size_t ncap = fcap ? fcap : 512;
    while (ncap < fifo_len() + more) ncap *= 2;
    pcmd_t *nf = xmalloc(sizeof *nf * ncap);
    size_t n = 0;
    for (size_t i = fhead; i < ftail; i++) nf[n++] = fifo[i % fcap];
    free(fifo);
    fifo = nf;
    fcap = ncap;
    fhead = 0;
    ftail = n;
}

enum { HS_AUTH = 1, HS_SELECT, HS_ROLE, HS_VERSION };

static void hs_cb(redisReply *r, void *ctx)
{
    int step = (int) (intptr_t) ctx;
    const char *what = step == HS_AUTH ? "AUTH" : step == HS_SELECT ? "SELECT"
        : step == HS_ROLE ? "ROLE"
        : "FCALL mdm_push_version (is redis-scripts/push.lua loaded?)";
    if (!r) return;                 /* lost: drop() reports it */
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(last_err, sizeof last_err, "%s: %s", what, r->str);
        drop(NULL);
        return;
    }
    if (step == HS_ROLE
        && (r->type != REDIS_REPLY_ARRAY || r->elements == 0
            || r->element[0]->type != REDIS_REPLY_STRING
            || strcmp(r->element[0]->str, "master") != 0)) {
        snprintf(last_err, sizeof last_err, "not the primary (ROLE %s): asking "
                 "the sentinels again", r->type == REDIS_REPLY_ARRAY
                 && r->elements && r->element[0]->str ? r->element[0]->str : "?");
        drop(NULL);
        return;
    }
    if (step != HS_VERSION) return;
    if (r->type != REDIS_REPLY_STRING || strcmp(r->str, PUSH_LIB_VERSION) != 0) {
        snprintf(last_err, sizeof last_err, "function library mdm_push has version "
                 "%s, this sender needs %s: load redis-scripts/push.lua",
                 r->type == REDIS_REPLY_STRING ? r->str : "?", PUSH_LIB_VERSION);
        drop(NULL);
        return;
    }
    rc_ready = 1;
    rc_fresh = 1;
    if (outage) log_notice("redis: connected to %s again", conf.redis_show);
    else log_info("redis: connected to %s", conf.redis_show);
    last_err[0] = '\0';
}

static void hs_push(int step)
{
    fifo_room(1);
    fifo[ftail++ % fcap] = (pcmd_t) { hs_cb, (void *) (intptr_t) step, NULL, 0, 0 };
}

static void start_connect(int64_t now)
{
    rc = open_ctx();
    if (!rc) {
        drop(NULL);
        return;
    }
    rc_ready = 0;
    rc_out = 0;
    rc_deadline = now + conf.redis_timeout;
    if (conf.raddr.password[0]) hs_push(HS_AUTH);
    if (conf.raddr.db) hs_push(HS_SELECT);
    append_setup(rc);
    if (conf.raddr.type == MDM_REDIS_ADDR_SENTINEL) {
        redisAppendCommand(rc, "ROLE");
        hs_push(HS_ROLE);
    }
    redisAppendCommand(rc, "FCALL mdm_push_version 0");
    hs_push(HS_VERSION);
    if (epfd_ >= 0) {
        struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT,
                                  .data.u64 = ((uint64_t) EV_REDIS << 32) | (uint32_t) rc->fd };
        epoll_ctl(epfd_, EPOLL_CTL_ADD, rc->fd, &ev);
    }
    rc_out = 1;                     /* the connect completes with EPOLLOUT */
}

/* Starts a connect when due and checks the setup deadline; never blocks.
 * 0 = ready. */
int store_connect(void)
{
    int64_t now = mono_ms();
    if (rc_ready) return 0;
    if (rc) {
        if (now >= rc_deadline) {
            snprintf(last_err, sizeof last_err, "no answer to the connect and setup "
                     "within %lldms (redis-timeout)", (long long) conf.redis_timeout);
            drop(NULL);
        }
        return -1;
    }
    if (now < next_try) return -1;
    start_connect(now);
    return -1;
}

/* Check mode and shutdown only: drives the connect until ready or until. */
int store_wait_ready(int64_t until)
{
    for (;;) {
        int64_t now = mono_ms();
        if (store_connect() == 0) return 0;
        if (now >= until) return -1;
        int64_t t = rc ? rc_deadline : next_try;
        if (t > until) t = until;
        int ms = t > now ? (int) (t - now) : 0;
        if (!rc) {
            poll(NULL, 0, ms);
            continue;
        }
        struct pollfd p = { .fd = rc->fd, .events = POLLIN | (rc_out ? POLLOUT : 0) };
        int n = poll(&p, 1, ms);
        if (n > 0)
            store_event((p.revents & POLLIN ? EPOLLIN : 0)
                        | (p.revents & POLLOUT ? EPOLLOUT : 0)
                        | (p.revents & (POLLERR | POLLHUP) ? EPOLLERR : 0));
    }
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

/* Closes the connection (lost, or a setup step failed) and schedules the
 * next connect after a backoff step. */
static void drop(const char *why)
{
    int64_t d = backoff_step();
    int was_ready = rc_ready;
    if (rc) {
        if (!why) why = last_err[0] ? last_err : rc->err ? rc->errstr : "?";
        if (was_ready) {
            log_err("redis: connection lost: %s (reconnecting in %lldms)", why,
                    (long long) d);
        } else if (!outage) {
            log_err("redis: %s: %s (retrying)", conf.redis_show, why);
        } else {
            log_debug("redis: %s: %s", conf.redis_show, why);
        }
        if (epfd_ >= 0) epoll_ctl(epfd_, EPOLL_CTL_DEL, rc->fd, NULL);
        redisFree(rc);
        rc = NULL;
    } else {
        if (!outage) log_err("redis: %s: %s (retrying)", conf.redis_show, last_err);
        else log_debug("redis: %s: %s", conf.redis_show, last_err);
    }
    outage = 1;
    n_errors++;
    rc_ready = 0;
    rc_fresh = 0;
    rc_gen++;
    last_err[0] = '\0';
    next_try = mono_ms() + d;
    fail_all();
}

void store_disconnect(const char *why)
{
    if (!rc) return;
    drop(why);
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
    c->write = !strcmp(argv[0], "FCALL");
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
    if (!rc || on == rc_out) return;
    rc_out = on;
    if (epfd_ < 0) return;
    struct epoll_event ev = { .events = EPOLLIN | (on ? EPOLLOUT : 0),
                              .data.u64 = ((uint64_t) EV_REDIS << 32) | (uint32_t) rc->fd };
    epoll_ctl(epfd_, EPOLL_CTL_MOD, rc->fd, &ev);
}

static int write_out(void)
{
    int done = 0;
    if (redisBufferWrite(rc, &done) != REDIS_OK) {
        drop(NULL);
        return -1;
    }
    want_out(!done);
    return 0;
}

static void wait_cb(redisReply *r, void *ctx);

/* Hands the queued commands to Redis; replies arrive through store_event. */
int pipe_send(void)
{
    if (!npq) return 0;
    if (!rc) {
        fail_all();
        return -1;
    }
    if (!rc_ready) return 0;        /* sent once the setup is answered */
    fifo_room((size_t) npq + 1);
    int writes = 0;
    for (int i = 0; i < npq; i++) {
        redisAppendFormattedCommand(rc, pq[i].buf, (size_t) pq[i].len);
        free(pq[i].buf);
        pq[i].buf = NULL;
        writes += pq[i].write;
        fifo[ftail++ % fcap] = pq[i];
    }
    npq = 0;
    if (writes && conf.raddr.replicas) {
        /* one WAIT covers every write before it on this connection */
        redisAppendCommand(rc, "WAIT %d %d", conf.raddr.replicas,
                           conf.raddr.wait_timeout);
        fifo[ftail++ % fcap] = (pcmd_t) { wait_cb, NULL, NULL, 0, 0 };
    }
    return write_out();
}

/* replicas=N: fewer replicas than N have the batch before it */
static void wait_cb(redisReply *r, void *ctx)
{
    (void) ctx;
    if (!r || r->type != REDIS_REPLY_INTEGER) return;
    if (r->integer < conf.raddr.replicas) {
        char err[128];
        snprintf(err, sizeof err, "%lld of replicas=%d confirmed the outcomes "
                 "within %dms", r->integer, conf.raddr.replicas,
                 conf.raddr.wait_timeout);
        store_error("WAIT", err);
    }
}

/* Readiness of the Redis socket: write what is left, run reply callbacks. */
void store_event(uint32_t events)
{
    if (!rc) return;
    if ((events & EPOLLOUT) && write_out()) return;
    if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP))) return;
    if (redisBufferRead(rc) != REDIS_OK) {
        drop(NULL);
        return;
    }
    unsigned gen = rc_gen;
    int oks = 0, errs = 0;
    while (rc && gen == rc_gen && fifo_len()) {
        void *r = NULL;
        if (redisGetReplyFromReader(rc, &r) != REDIS_OK) {
            drop(NULL);
            return;
        }
        if (!r) break;
        pcmd_t cmd = fifo[fhead++ % fcap];
        redisReply *rep = r;
        if (rep->type == REDIS_REPLY_ERROR && cmd.cb != hs_cb) {
            /* an enrollment key of the wrong type is skipped, a name
             * conflict ends the process: every other error backs off */
            if ((cmd.write || strncmp(rep->str, "WRONGTYPE", 9))
                && strncmp(rep->str, "NAMECONFLICT", 12)) {
                store_error("command refused", rep->str);
                errs++;
            }
        } else if (cmd.write) {
            oks++;
        }
        int demoted = rep->type == REDIS_REPLY_ERROR
                      && conf.raddr.type == MDM_REDIS_ADDR_SENTINEL
                      && !strncmp(rep->str, "READONLY ", 9);
        if (cmd.cb) cmd.cb(r, cmd.ctx);   /* may disconnect: checked above */
        freeReplyObject(r);
        if (demoted && rc && gen == rc_gen) {
            drop("the primary became a replica (READONLY)");
            return;
        }
    }
    /* only replies without any refusal end an outage: one record Redis keeps
     * refusing among accepted ones must not hold the backoff at its minimum */
    if (oks && !errs && gen == rc_gen) store_ok();
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
    if (w_out != !done) {
        struct epoll_event ev = { .events = EPOLLIN | (done ? 0 : EPOLLOUT),
                                  .data.u64 = ((uint64_t) EV_WAITER << 32) | (uint32_t) wc->fd };
        epoll_ctl(epfd, EPOLL_CTL_MOD, wc->fd, &ev);
        w_out = !done;
    }
    return 0;
}

/* Only while the main connection is ready and Redis is not refusing. */
int waiter_arm(int epfd)
{
    if (w_expect) return 0;
    if (!rc_ready || store_paused(mono_ms())) return -1;
    if (!wc) {
        wc = open_ctx();
        if (!wc) {
            store_error("waiter", last_err);
            return -1;
        }
        /* EPOLLOUT: the non-blocking connect completes */
        struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT,
                                  .data.u64 = ((uint64_t) EV_WAITER << 32) | (uint32_t) wc->fd };
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, wc->fd, &ev)) {
            redisFree(wc);
            wc = NULL;
            return -1;
        }
        w_out = 1;
        w_expect += append_setup(wc);
    }
    /* the timeout only bounds how long a dead connection goes unnoticed */
    redisAppendCommand(wc, "BLMOVE %s %s LEFT LEFT 30", MDM_KEY_PUSH_Q, MDM_KEY_PUSH_Q);
    w_expect++;
    if (w_write(epfd)) {
        store_error("waiter", wc->errstr);
        waiter_close(epfd);
        return -1;
    }
    return 0;
}

/* -1: still waiting; 0: BLMOVE timed out (queue empty) or Redis refused
 * (then the sender backs off before arming again); 1: the queue has
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
            if (rep->type == REDIS_REPLY_ERROR) {
                /* e.g. OOM: BLMOVE is denyoom. The connection stays; a
                 * failed setup step closes it. */
                store_error("waiter", rep->str);
                freeReplyObject(rep);
                if (w_expect) {
                    waiter_close(epfd);
                    return 0;
                }
                return 0;
            }
            int got = rep->type == REDIS_REPLY_STRING;
            freeReplyObject(rep);
            if (!w_expect) return got;
        }
    }
    return -1;
broken:
    store_error("waiter", wc->err ? wc->errstr : "connection lost");
    waiter_close(epfd);
    return 1;   /* let the main loop claim (and re-arm) */
}
