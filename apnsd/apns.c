/* libcurl multi (socket API) on our epoll loop: one multi handle per topic
 * and certificate, HTTP/2 multiplexed over a few long-lived connections. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>

#include "apnsd.h"
#include "apns.h"

static int epfd = -1;
static mctx_t *all;                 /* every live multi context */
static mctx_t **fdmap;              /* socket fd -> multi context */
static uint32_t *fdev;              /* socket fd -> epoll events registered */
static int nfdmap;
static CURL **pool;                 /* idle easy handles */
static int npool, cappool;
static complete_fn on_complete;

void apns_init(int ep, complete_fn cb)
{
    epfd = ep;
    on_complete = cb;
}

static void fd_set_ctx(int fd, mctx_t *m)
{
    if (fd >= nfdmap) {
        int n = nfdmap ? nfdmap : 256;
        while (n <= fd) n *= 2;
        fdmap = xrealloc(fdmap, sizeof *fdmap * (size_t) n);
        memset(fdmap + nfdmap, 0, sizeof *fdmap * (size_t) (n - nfdmap));
        fdev = xrealloc(fdev, sizeof *fdev * (size_t) n);
        memset(fdev + nfdmap, 0, sizeof *fdev * (size_t) (n - nfdmap));
        nfdmap = n;
    }
    fdmap[fd] = m;
}

static int sock_cb(CURL *e, curl_socket_t s, int what, void *userp, void *sockp)
{
    (void) e;
    mctx_t *m = userp;
    struct epoll_event ev = { 0 };
    ev.data.u64 = ((uint64_t) EV_CURL << 32) | (uint32_t) s;
    if (what == CURL_POLL_REMOVE) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, s, NULL);
        if (s < nfdmap) fdmap[s] = NULL;
        curl_multi_assign(m->multi, s, NULL);
        return 0;
    }
    ev.events = (what & CURL_POLL_IN ? EPOLLIN : 0) | (what & CURL_POLL_OUT ? EPOLLOUT : 0);
    if (!sockp) {
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, s, &ev) && errno == EEXIST)
            epoll_ctl(epfd, EPOLL_CTL_MOD, s, &ev);
        curl_multi_assign(m->multi, s, m);
    } else if (s >= nfdmap || fdev[s] != ev.events) {
        epoll_ctl(epfd, EPOLL_CTL_MOD, s, &ev);      /* only real changes */
    }
    fd_set_ctx(s, m);
    fdev[s] = ev.events;
    return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void) multi;
    mctx_t *m = userp;
    m->timer_ms = timeout_ms < 0 ? -1 : mono_ms() + timeout_ms;
    return 0;
}

mctx_t *mctx_new(topic_t *t, ident_t *id)
{
    mctx_t *m = xcalloc(1, sizeof *m);
    m->multi = curl_multi_init();
    m->t = t;
    m->ident = id;
    id->refs++;
    m->timer_ms = -1;
    curl_multi_setopt(m->multi, CURLMOPT_PIPELINING, (long) CURLPIPE_MULTIPLEX);
    curl_multi_setopt(m->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long) conf.connections);
    curl_multi_setopt(m->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long) conf.connections);
    curl_multi_setopt(m->multi, CURLMOPT_MAX_CONCURRENT_STREAMS, (long) conf.streams);
    curl_multi_setopt(m->multi, CURLMOPT_MAXCONNECTS, (long) conf.connections);
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
    m->next = all;
    all = m;
    return m;
}

static void mctx_free(mctx_t *m)
{
    for (mctx_t **pp = &all; *pp; pp = &(*pp)->next)
        if (*pp == m) { *pp = m->next; break; }
    curl_multi_cleanup(m->multi);      /* closes its connections */
    for (int fd = 0; fd < nfdmap; fd++)
        if (fdmap[fd] == m) {
            epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
            fdmap[fd] = NULL;
        }
    ident_unref(m->ident);
    free(m);
}

/* The context of a replaced or stopped certificate: no new transfers; freed
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
        if (m->draining && !m->inflight) mctx_free(m);
    }
}

static size_t hdr_cb(char *buf, size_t size, size_t n, void *userp)
{
    xfer_t *it = userp;
    size_t len = size * n;
    if (len > 8 && strncasecmp(buf, "apns-id:", 8) == 0) {
        const char *v = buf + 8;
        size_t vl = len - 8;
        while (vl && (*v == ' ' || *v == '\t')) { v++; vl--; }
        while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' ')) vl--;
        if (vl >= sizeof it->apns_id) vl = sizeof it->apns_id - 1;
        memcpy(it->apns_id, v, vl);
        it->apns_id[vl] = '\0';
    }
    return len;
}

static size_t body_cb(char *buf, size_t size, size_t n, void *userp)
{
    xfer_t *it = userp;
    size_t len = size * n, room = 4096 - it->resp_len;
    if (!it->resp) it->resp = xmalloc(4097);
    if (len < room) room = len;
    memcpy(it->resp + it->resp_len, buf, room);
    it->resp_len += room;
    it->resp[it->resp_len] = '\0';
    return len;
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

void xfer_free(xfer_t *x)
{
    if (!x) return;
    curl_slist_free_all(x->hdrs);
    free(x->body);
    free(x->resp);
    free(x);
}

int apns_send(item_t *item, mctx_t *m)
{
    CURL *e = npool ? pool[--npool] : curl_easy_init();
    if (!e) return -1;
    char buf[512];
    xfer_t *it = xcalloc(1, sizeof *it);
    it->body = mdm_body(item->magic);
    it->hdrs = curl_slist_append(it->hdrs, "apns-push-type: mdm");
    snprintf(buf, sizeof buf, "apns-topic: %s", m->t->name);
    it->hdrs = curl_slist_append(it->hdrs, buf);
    snprintf(buf, sizeof buf, "apns-expiration: %lld",
             conf.expiration ? (long long) (now_ms() + conf.expiration) / 1000 : 0LL);
    it->hdrs = curl_slist_append(it->hdrs, buf);
    snprintf(buf, sizeof buf, "apns-priority: %d", (int) conf.priority);
    it->hdrs = curl_slist_append(it->hdrs, buf);
    it->hdrs = curl_slist_append(it->hdrs, "content-type: application/json");
    it->hdrs = curl_slist_append(it->hdrs, "Accept:");
    char *url = xasprintf("%s/3/device/%s", conf.apns_url, item->token);

    struct curl_blob cert = { m->ident->cert_pem, m->ident->cert_len, CURL_BLOB_NOCOPY };
    struct curl_blob key = { m->ident->key_pem, m->ident->key_len, CURL_BLOB_NOCOPY };
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, it->errbuf);
    curl_easy_setopt(e, CURLOPT_URL, url);
    free(url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(e, CURLOPT_PROXY, conf.proxy ? conf.proxy : "");  /* no env lookups */
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, it->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long) strlen(it->body));
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, it->hdrs);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "mdm-apnsd/" APNSD_VERSION);
    curl_easy_setopt(e, CURLOPT_SSLCERT_BLOB, &cert);
    curl_easy_setopt(e, CURLOPT_SSLCERTTYPE, "PEM");
    curl_easy_setopt(e, CURLOPT_SSLKEY_BLOB, &key);
    curl_easy_setopt(e, CURLOPT_SSLKEYTYPE, "PEM");
    if (conf.ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, conf.ca_file);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long) conf.request_timeout);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long) conf.connect_timeout);
    curl_easy_setopt(e, CURLOPT_MAXAGE_CONN, (long) (conf.idle_keep / 1000));
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 4096L);     /* answers are tiny */
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PRIVATE, item);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, hdr_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, it);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, body_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, it);
    if (getenv("APNSD_CURL_VERBOSE")) curl_easy_setopt(e, CURLOPT_VERBOSE, 1L);
    if (curl_multi_add_handle(m->multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        xfer_free(it);
        return -1;
    }
    it->easy = e;
    it->m = m;
    item->x = it;
    m->inflight++;
    return 0;
}

/* Idle handles keep their options (apns_send sets every one of them again)
 * and their buffers: curl_easy_reset would free and re-allocate those for
 * every push. */
static void release_easy(CURL *e)
{
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, NULL);     /* it is freed with the xfer */
    if (npool == cappool) {
        cappool = cappool ? cappool * 2 : 64;
        pool = xrealloc(pool, sizeof *pool * (size_t) cappool);
    }
    pool[npool++] = e;
}

/* Takes the request of `it` off its multi handle; the xfer stays with the
 * caller. */
static void detach(item_t *it)
{
    xfer_t *x = it->x;
    curl_multi_remove_handle(x->m->multi, x->easy);
    release_easy(x->easy);
    x->m->inflight--;
    x->easy = NULL;
    it->x = NULL;
}

/* Completed transfers of m. */
static void check_done(mctx_t *m)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m->multi, &left))) {
        if (msg->msg != CURLMSG_DONE) continue;
        CURL *e = msg->easy_handle;
        CURLcode res = msg->data.result;
        item_t *it = NULL;
        long status = 0, httpv = 0, nconn = 0;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **) &it);
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(e, CURLINFO_HTTP_VERSION, &httpv);
        curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &nconn);
        xfer_t *x = it->x;
        detach(it);
        on_complete(it, x, m, res, status, httpv, nconn);   /* may free it */
        xfer_free(x);
    }
}

void apns_socket_event(int fd, uint32_t events)
{
    if (fd < 0 || fd >= nfdmap || !fdmap[fd]) return;
    mctx_t *m = fdmap[fd];
    int flags = 0, running;
    if (events & EPOLLIN) flags |= CURL_CSELECT_IN;
    if (events & EPOLLOUT) flags |= CURL_CSELECT_OUT;
    if (events & (EPOLLERR | EPOLLHUP)) flags |= CURL_CSELECT_ERR;
    curl_multi_socket_action(m->multi, fd, flags, &running);
    check_done(m);
}

int64_t apns_next_timer(void)
{
    int64_t t = -1;
    for (mctx_t *m = all; m; m = m->next)
        if (m->timer_ms >= 0 && (t < 0 || m->timer_ms < t)) t = m->timer_ms;
    return t;
}

void apns_run_timers(int64_t now)
{
    mctx_t *m = all, *next;
    for (; m; m = next) {
        next = m->next;
        if (m->timer_ms < 0 || m->timer_ms > now) continue;
        int running;
        m->timer_ms = -1;
        curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        check_done(m);
    }
}

/* Abandons a transfer in flight (shutdown deadline): its id stays in the
 * processing list and goes back to the queue. */
void apns_abort(item_t *it)
{
    xfer_t *x = it->x;
    if (!x) return;
    detach(it);
    xfer_free(x);
}

void apns_shutdown(void)
{
    while (all) mctx_free(all);
    while (npool) curl_easy_cleanup(pool[--npool]);
    free(pool);
    free(fdmap);
    free(fdev);
    pool = NULL;
    fdmap = NULL;
    fdev = NULL;
    nfdmap = cappool = 0;
}

void ident_unref(ident_t *id)
{
    if (id && --id->refs <= 0) ident_free(id);
}
