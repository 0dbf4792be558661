/* The APNs client: per topic and certificate a context with a few
 * long-lived HTTP/2 connections (h2conn.c), a queue of requests waiting for
 * a stream, request timeouts, reconnects with backoff. Completed requests
 * go to main.c through the complete callback. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#include <nghttp2/nghttp2ver.h>
#include <openssl/opensslv.h>

#include "apnsd.h"
#include "apns.h"
#include "h2conn.h"

#define REQUEUE_MAX 5                /* refused unprocessed, then an error */

static int epfd = -1;
static mctx_t *all;                  /* every live context */
static h2conn_t **fdmap;             /* socket fd -> connection */
static int nfdmap;
static complete_fn on_complete;
static int setup_ok;
static char setup_err[200];

void apns_init(int ep, complete_fn cb)
{
    epfd = ep;
    on_complete = cb;
    if (h2_setup(setup_err, sizeof setup_err) == 0) setup_ok = 1;
    else log_crit("%s", setup_err);
}

const char *apns_version(void)
{
    return "nghttp2 " NGHTTP2_VERSION ", " OPENSSL_VERSION_TEXT;
}

void apns_fd_set(int fd, h2conn_t *c, uint32_t events)
{
    struct epoll_event ev = { 0 };
    ev.events = events;
    ev.data.u64 = ((uint64_t) EV_APNS << 32) | (uint32_t) fd;
    if (fd >= nfdmap) {
        int n = nfdmap ? nfdmap : 256;
        while (n <= fd) n *= 2;
        fdmap = xrealloc(fdmap, sizeof *fdmap * (size_t) n);
        memset(fdmap + nfdmap, 0, sizeof *fdmap * (size_t) (n - nfdmap));
        nfdmap = n;
    }
    if (!fdmap[fd]) {
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) && errno == EEXIST)
            epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev);
    } else {
        epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev);
    }
    fdmap[fd] = c;
}

void apns_fd_del(int fd)
{
    if (fd < nfdmap && fdmap[fd]) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
        fdmap[fd] = NULL;
    }
}

mctx_t *mctx_new(topic_t *t, ident_t *id)
{
    char err[256];
    mctx_t *m = xcalloc(1, sizeof *m);
    m->t = t;
    m->ident = id;
    id->refs++;
    m->timer_ms = -1;
    ql_init(&m->all);
    ql_init(&m->pending);
    m->ssl_ctx = h2_ssl_ctx(id, err, sizeof err);
    if (!m->ssl_ctx) log_err("topic %s: %s", t->name, err);
    m->next = all;
    all = m;
    return m;
}

/* {"mdm":"<PushMagic>"} with JSON escaping */
static char *mdm_body(const char *magic)
{
    size_t n = strlen(magic);
    char *b = xmalloc(n * 6 + 16), *p = b;
    p += sprintf(p, "{\"mdm\":\"");
    for (const unsigned char *s = (const unsigned char *) magic; *s; s++) {
        if (*s == '"' || *s == '\\') { *p++ = '\\'; *p++ = (char) *s; }
        else if (*s < 0x20) p += sprintf(p, "\\u%04x", *s);
        else *p++ = (char) *s;
    }
    strcpy(p, "\"}");
    return b;
}

static void unlink_xfer(xfer_t *x);

void xfer_free(xfer_t *x)
{
    if (!x) return;
    if (x->all.next && x->all.next != &x->all) unlink_xfer(x);   /* in flight */
    free(x->body);
    free(x->resp);
    free(x);
}

/* Takes x off its stream or the pending queue and its context. */
static void unlink_xfer(xfer_t *x)
{
    mctx_t *m = x->m;
    if (x->c) h2conn_cancel(x->c, x);
    else if (x->q.next != &x->q) {
        ql_remove(&x->q);
        m->npending--;
    }
    ql_remove(&x->all);
    m->inflight--;
    x->item->x = NULL;
}

void apns_xfer_done(xfer_t *x, int res, const char *err)
{
    mctx_t *m = x->m;
    item_t *it = x->item;
    long nc = m->new_conns;
    unlink_xfer(x);
    m->new_conns = 0;
    if (res == APNS_OK) m->fails = 0;
    else snprintf(x->errbuf, sizeof x->errbuf, "%s", err ? err : "error");
    on_complete(it, x, m, res, res == APNS_OK ? x->status : 0, 2, nc);
    xfer_free(x);
}

void apns_xfer_requeue(xfer_t *x)
{
    mctx_t *m = x->m;
    if (++x->requeued > REQUEUE_MAX) {
        apns_xfer_done(x, APNS_ESTREAM, "refused unprocessed by APNs again and again");
        return;
    }
    x->c = NULL;
    x->sent = 0;
    x->status = 0;
    x->resp_len = 0;
    x->apns_id[0] = '\0';
    /* at the head: it is older than whatever waits */
    x->q.next = m->pending.next;
    x->q.prev = &m->pending;
    m->pending.next->prev = &x->q;
    m->pending.next = &x->q;
    m->npending++;
    m->dirty = 1;
}

int apns_send(item_t *item, mctx_t *m)
{
    xfer_t *x = xcalloc(1, sizeof *x);
    x->item = item;
    x->m = m;
    x->body = mdm_body(item->magic);
    x->body_len = strlen(x->body);
    x->deadline = mono_ms() + conf.request_timeout;
    ql_init(&x->q);
    ql_push(&m->all, &x->all);
    ql_push(&m->pending, &x->q);
    m->npending++;
    m->inflight++;
    m->dirty = 1;
    item->x = x;
    return 0;
}

static int64_t backoff(int fails)
{
    int64_t d = 100LL << (fails > 5 ? 5 : fails - 1);
    if (d > 3000) d = 3000;
    return jitter(d, 0.2);
}

static void fail_pending(mctx_t *m, int res, const char *err)
{
    while (m->npending) {
        xfer_t *x = ql_entry(m->pending.next, xfer_t, q);
        apns_xfer_done(x, res, err);
    }
}

static void conn_remove(mctx_t *m, int i)
{
    m->conns[i] = m->conns[--m->nconns];
    m->conns[m->nconns] = NULL;
}

/* A failed connection: requests it never sent wait for another one, those
 * it sent get the error (their outcome is unknown). */
static void conn_gone(mctx_t *m, int i)
{
    h2conn_t *c = m->conns[i];
    int was_ready = c->state == C_READY, usable = 0;
    while (!ql_empty(&c->streams)) {
        xfer_t *x = ql_entry(c->streams.next, xfer_t, q);
        h2conn_cancel(c, x);
        if (!x->sent) apns_xfer_requeue(x);
        else apns_xfer_done(x, c->dead_res, c->dead_err);
    }
    if (was_ready || c->dead_res == APNS_ESTREAM) {
        log_info("topic %s: connection %d closed: %s", m->t->name, c->serial,
                 c->dead_err);
    } else {
        m->fails++;
        m->next_connect = mono_ms() + backoff(m->fails);
    }
    conn_remove(m, i);
    for (int j = 0; j < m->nconns; j++)
        if (!m->conns[j]->dead && !m->conns[j]->goaway) usable = 1;
    /* no other way out: the waiting requests fail now (main.c backs off) */
    if (!was_ready && !usable) fail_pending(m, c->dead_res, c->dead_err);
    h2conn_free(c, 0);
}

/* Dead connections torn down, drained ones closed. */
static void conns_check(mctx_t *m)
{
    for (int i = m->nconns - 1; i >= 0; i--) {
        h2conn_t *c = m->conns[i];
        if (i >= m->nconns) continue;
        if (c->dead) conn_gone(m, i);
        else if (c->goaway && !c->nstreams) {
            conn_remove(m, i);
            h2conn_free(c, 1);
        }
    }
}

/* Waiting requests onto streams, the emptiest connection first; a new
 * connection when they do not fit. */
static void pump(mctx_t *m)
{
    char err[256];
    int live = 0, opening = 0;
    m->dirty = 0;
    while (m->npending) {
        h2conn_t *best = NULL;
        int bf = 0;
        for (int i = 0; i < m->nconns; i++) {
            int f = h2conn_free_slots(m->conns[i]);
            if (f > bf) { bf = f; best = m->conns[i]; }
        }
        if (!best) break;
        xfer_t *x = ql_entry(m->pending.next, xfer_t, q);
        ql_remove(&x->q);
        m->npending--;
        if (h2conn_submit(best, x) != 0)
            apns_xfer_done(x, APNS_ENET, "nghttp2_submit_request failed");
    }
    for (int i = 0; i < m->nconns; i++) {
        h2conn_t *c = m->conns[i];
        if (c->dead || c->goaway) continue;
        live++;
        if (c->state != C_READY) opening = 1;
    }
    if (m->npending && m->draining && !live) {
        /* a replaced or stopped certificate opens no new connection */
        fail_pending(m, APNS_ENET, "connection closed (certificate replaced "
                     "or topic stopped)");
    } else if (m->npending && !opening && live < conf.connections
               && m->nconns < APNS_MAX_CONNS && mono_ms() >= m->next_connect) {
        int later = 0;
        h2conn_t *c = setup_ok ? h2conn_open(m, &later, err, sizeof err) : NULL;
        if (c) {
            m->conns[m->nconns++] = c;
        } else if (later) {
            m->next_connect = mono_ms() + 5;       /* poll the lookup */
        } else {
            if (!setup_ok) snprintf(err, sizeof err, "%s", setup_err);
            m->fails++;
            m->next_connect = mono_ms() + backoff(m->fails);
            if (!live) fail_pending(m, APNS_ENET, err);
        }
    }
}

static void mctx_free(mctx_t *m)
{
    for (mctx_t **pp = &all; *pp; pp = &(*pp)->next)
        if (*pp == m) { *pp = m->next; break; }
    while (!ql_empty(&m->all)) {             /* only at shutdown */
        xfer_t *x = ql_entry(m->all.next, xfer_t, all);
        unlink_xfer(x);
        xfer_free(x);
    }
    while (m->nconns) {
        h2conn_t *c = m->conns[--m->nconns];
        h2conn_free(c, 1);
    }
    h2_ssl_ctx_free(m->ssl_ctx);
    ident_unref(m->ident);
    free(m);
}

/* The context of a replaced or stopped certificate: no new requests; freed
 * by apns_reap (never from inside the loops below) once idle. */
void mctx_release(mctx_t *m)
{
    if (m) m->draining = 1;
}

void apns_reap(void)
{
    mctx_t *m = all, *next;
    for (; m; m = next) {
        next = m->next;
        if (m->draining && !m->inflight) {
            mctx_free(m);
            continue;
        }
        conns_check(m);
        if (m->dirty) pump(m);
        /* one write per connection and loop iteration: the answers read
         * and the requests dispatched since the last one, in few records */
        for (int i = 0; i < m->nconns; i++) h2conn_flush(m->conns[i]);
    }
}

void apns_socket_event(int fd, uint32_t events)
{
    if (fd < 0 || fd >= nfdmap || !fdmap[fd]) return;
    h2conn_t *c = fdmap[fd];
    mctx_t *m = c->m;
    h2conn_event(c, events);
    conns_check(m);
    pump(m);
}

int64_t apns_next_timer(void)
{
    int64_t t = -1;
    for (mctx_t *m = all; m; m = m->next) {
        int64_t mt = -1;
        if (!ql_empty(&m->all)) mt = ql_entry(m->all.next, xfer_t, all)->deadline;
        for (int i = 0; i < m->nconns; i++) {
            int64_t ct = h2conn_timer(m->conns[i]);
            if (mt < 0 || ct < mt) mt = ct;
        }
        if (m->npending && m->next_connect && (mt < 0 || m->next_connect < mt))
            mt = m->next_connect;
        if (mt >= 0 && (t < 0 || mt < t)) t = mt;
    }
    return t;
}

void apns_run_timers(int64_t now)
{
    mctx_t *m = all, *next;
    char err[96];
    for (; m; m = next) {
        next = m->next;
        for (int i = 0; i < m->nconns; i++) h2conn_tick(m->conns[i], now);
        while (!ql_empty(&m->all)) {
            xfer_t *x = ql_entry(m->all.next, xfer_t, all);
            if (x->deadline > now) break;
            snprintf(err, sizeof err, "Operation timed out after %lld milliseconds",
                     (long long) conf.request_timeout);
            apns_xfer_done(x, APNS_ENET, err);
        }
        conns_check(m);
        if (m->npending && now >= m->next_connect) m->dirty = 1;
        pump(m);
    }
}

/* Abandons a request in flight (shutdown deadline): its id stays in the
 * processing list and goes back to the queue. */
void apns_abort(item_t *it)
{
    xfer_t *x = it->x;
    if (!x) return;
    mctx_t *m = x->m;
    unlink_xfer(x);
    xfer_free(x);
    for (int i = 0; i < m->nconns; i++) h2conn_flush(m->conns[i]);
}

void apns_shutdown(void)
{
    while (all) mctx_free(all);
    free(fdmap);
    fdmap = NULL;
    nfdmap = 0;
    h2_cleanup();
}

void ident_unref(ident_t *id)
{
    if (id && --id->refs <= 0) ident_free(id);
}
