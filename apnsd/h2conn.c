/* One HTTP/2 connection to APNs, driven by the epoll loop: non-blocking
 * TCP connect, an optional HTTP CONNECT proxy, TLS (OpenSSL, ALPN h2,
 * the topic's client certificate), then a libnghttp2 client session.
 * Finished streams are left closed (no RST_STREAM); a GOAWAY refuses only
 * the streams above its last_stream_id (nghttp2 closes them with
 * REFUSED_STREAM, apns.c sends them again); PING checks liveness. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "h2conn.h"

#define OUT_MAX    65536         /* plaintext gathered per SSL_write */
#define DNS_TTL_MS 60000

static char host[256], authority[300], path_prefix[256];
static char port[8];
static int host_is_ip;
static char phost[256], pport[8], pauth[512];   /* proxy */
static int use_proxy;
static int serials;
static int64_t ping_ms;                         /* APNSD_PING_MS, 0 = default */

/* resolved addresses of the first hop, cached */
static struct sockaddr_storage dns_addr[4];
static socklen_t dns_len[4];
static int dns_n;
static int64_t dns_until;

/* ---- configuration ---------------------------------------------------------- */

static int split_hostport(const char *s, size_t n, char *h, size_t hl,
                          char *p, size_t pl, const char *defport)
{
    const char *colon = NULL;
    if (n && s[0] == '[') {
        const char *e = memchr(s, ']', n);
        if (!e) return -1;
        if ((size_t) (e - s - 1) >= hl) return -1;
        memcpy(h, s + 1, (size_t) (e - s - 1));
        h[e - s - 1] = '\0';
        if (e + 1 < s + n && e[1] == ':') colon = e + 1;
        else if (e + 1 != s + n) return -1;
    } else {
        colon = memchr(s, ':', n);
        size_t hn = colon ? (size_t) (colon - s) : n;
        if (!hn || hn >= hl) return -1;
        memcpy(h, s, hn);
        h[hn] = '\0';
    }
    const char *ps = colon ? colon + 1 : defport;
    size_t pn = colon ? (size_t) (s + n - ps) : strlen(defport);
    if (!pn || pn >= pl || strspn(ps, "0123456789") < pn) return -1;
    memcpy(p, ps, pn);
    p[pn] = '\0';
    return 0;
}

int h2_setup(char *err, size_t errlen)
{
    const char *u = conf.apns_url, *e;
    const char *pe = getenv("APNSD_PING_MS");
    if (pe) ping_ms = atoll(pe);
    if (strncmp(u, "https://", 8) != 0) {
        snprintf(err, errlen, "apns URL %s is not https://", u);
        return -1;
    }
    u += 8;
    e = u + strcspn(u, "/?#");
    if (split_hostport(u, (size_t) (e - u), host, sizeof host, port, sizeof port,
                       "443")) {
        snprintf(err, errlen, "cannot parse host and port of %s", conf.apns_url);
        return -1;
    }
    snprintf(authority, sizeof authority, "%.*s", (int) (e - u), u);
    snprintf(path_prefix, sizeof path_prefix, "%s", *e == '/' ? e : "");
    {
        unsigned char buf[16];
        host_is_ip = inet_pton(AF_INET, host, buf) == 1
                     || inet_pton(AF_INET6, host, buf) == 1;
    }
    if (conf.proxy && *conf.proxy) {
        const char *p = conf.proxy, *at, *end;
        if (!strncmp(p, "http://", 7)) p += 7;
        else if (strstr(p, "://")) {
            snprintf(err, errlen, "proxy %s: only http:// (CONNECT) proxies",
                     conf.proxy);
            return -1;
        }
        end = p + strcspn(p, "/");
        at = memchr(p, '@', (size_t) (end - p));
        if (at) {
            unsigned char b64[400];
            size_t un = (size_t) (at - p);
            if (un > 290) {
                snprintf(err, errlen, "proxy credentials too long");
                return -1;
            }
            EVP_EncodeBlock(b64, (const unsigned char *) p, (int) un);
            snprintf(pauth, sizeof pauth, "Proxy-Authorization: Basic %s\r\n", b64);
            p = at + 1;
        }
        if (split_hostport(p, (size_t) (end - p), phost, sizeof phost, pport,
                           sizeof pport, "1080")) {
            snprintf(err, errlen, "cannot parse proxy %s", conf.proxy);
            return -1;
        }
        use_proxy = 1;
    }
    return 0;
}

const char *h2_authority(void) { return authority; }

void *h2_ssl_ctx(ident_t *id, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    BIO *b = NULL;
    X509 *x = NULL;
    EVP_PKEY *k = NULL;
    if (!ctx) goto fail;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE
                          | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_alpn_protos(ctx, (const unsigned char *) "\x02h2", 3);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (conf.ca_file ? !SSL_CTX_load_verify_locations(ctx, conf.ca_file, NULL)
                     : !SSL_CTX_set_default_verify_paths(ctx)) {
        ssl_err(err, errlen, conf.ca_file ? conf.ca_file : "CA store");
        SSL_CTX_free(ctx);
        return NULL;
    }
    b = BIO_new_mem_buf(id->cert_pem, (int) id->cert_len);
    if (!b || !(x = PEM_read_bio_X509(b, NULL, NULL, NULL))
        || !SSL_CTX_use_certificate(ctx, x))
        goto fail;
    X509_free(x);
    while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)))
        if (!SSL_CTX_add0_chain_cert(ctx, x)) goto fail;
    ERR_clear_error();                       /* the end of the PEM data */
    BIO_free(b);
    b = BIO_new_mem_buf(id->key_pem, (int) id->key_len);
    if (!b || !(k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL))
        || !SSL_CTX_use_PrivateKey(ctx, k) || !SSL_CTX_check_private_key(ctx))
        goto fail;
    EVP_PKEY_free(k);
    BIO_free(b);
    return ctx;
fail:
    ssl_err(err, errlen, "client certificate");
    X509_free(x);
    EVP_PKEY_free(k);
    BIO_free(b);
    SSL_CTX_free(ctx);
    return NULL;
}

void h2_ssl_ctx_free(void *ctx) { SSL_CTX_free(ctx); }

/* ---- failure -------------------------------------------------------------------- */

static void fail(h2conn_t *c, int res, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail(h2conn_t *c, int res, const char *fmt, ...)
{
    va_list ap;
    if (c->dead) return;
    c->dead = 1;
    c->dead_res = res;
    va_start(ap, fmt);
    vsnprintf(c->dead_err, sizeof c->dead_err, fmt, ap);
    va_end(ap);
}

/* A TLS failure: an alert about our certificate stops the topic. */
static void fail_tls(h2conn_t *c, int ret, const char *what)
{
    int e = SSL_get_error(c->ssl, ret);
    unsigned long le = ERR_peek_last_error();
    long vr = SSL_get_verify_result(c->ssl);
    char s[200] = "";
    if (e == SSL_ERROR_SYSCALL && !le) {
        int en = errno;
        ERR_clear_error();
        if (ret == 0 || !en)
            fail(c, c->goaway ? APNS_ESTREAM : APNS_ENET,
                 "Connection closed by %s during %s", host, what);
        else
            fail(c, APNS_ENET, "%s: %s", what, strerror(en));
        return;
    }
    if (e == SSL_ERROR_ZERO_RETURN
        || ERR_GET_REASON(le) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
        ERR_clear_error();
        fail(c, c->goaway ? APNS_ESTREAM : APNS_ENET,
             "Connection closed by %s during %s", host, what);
        return;
    }
    switch (ERR_GET_REASON(le)) {
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
    case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
    case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
    case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
        ERR_error_string_n(le, s, sizeof s);
        ERR_clear_error();
        fail(c, APNS_ETLS, "%s", s);
        return;
    }
    if (le && ERR_GET_REASON(le) == SSL_R_CERTIFICATE_VERIFY_FAILED
        && vr != X509_V_OK) {
        ERR_clear_error();
        fail(c, APNS_ENET, "SSL certificate problem: %s",
             X509_verify_cert_error_string(vr));
        return;
    }
    ssl_err(s, sizeof s, what);
    fail(c, APNS_ENET, "%s", s);
}

/* ---- epoll interest ------------------------------------------------------------ */

static void want(h2conn_t *c, uint32_t ev)
{
    if (c->fd < 0 || ev == c->ev) return;
    apns_fd_set(c->fd, c, ev);
    c->ev = ev;
}

static void update_interest(h2conn_t *c)
{
    uint32_t ev = EPOLLIN;
    if (c->state == C_TCP || c->out_blocked || c->read_wants_write)
        ev |= EPOLLOUT;
    want(c, ev);
}

/* ---- nghttp2 callbacks ------------------------------------------------------ */

static xfer_t *xf(nghttp2_session *s, int32_t id)
{
    return nghttp2_session_get_stream_user_data(s, id);
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f,
                     const uint8_t *name, size_t nl, const uint8_t *val,
                     size_t vl, uint8_t flags, void *ud)
{
    xfer_t *x;
    (void) flags;
    (void) ud;
    if (f->hd.type != NGHTTP2_HEADERS || !(x = xf(s, f->hd.stream_id)))
        return 0;
    if (nl == 7 && !memcmp(name, ":status", 7)) {
        long st = 0;
        for (size_t i = 0; i < vl && i < 3; i++)
            st = st * 10 + (val[i] >= '0' && val[i] <= '9' ? val[i] - '0' : 0);
        x->status = st;
    } else if (nl == 7 && !memcmp(name, "apns-id", 7)) {
        if (vl >= sizeof x->apns_id) vl = sizeof x->apns_id - 1;
        memcpy(x->apns_id, val, vl);
        x->apns_id[vl] = '\0';
    }
    return 0;
}

static int on_data(nghttp2_session *s, uint8_t flags, int32_t id,
                   const uint8_t *data, size_t len, void *ud)
{
    xfer_t *x = xf(s, id);
    (void) flags;
    (void) ud;
    if (!x) return 0;
    if (!x->resp) x->resp = xmalloc(4097);
    size_t room = 4096 - x->resp_len;
    if (len < room) room = len;
    memcpy(x->resp + x->resp_len, data, room);
    x->resp_len += room;
    x->resp[x->resp_len] = '\0';
    return 0;
}

static void detach(h2conn_t *c, xfer_t *x)
{
    ql_remove(&x->q);
    x->c = NULL;
    if (--c->nstreams == 0) c->idle_since = mono_ms();
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t code,
                           void *ud)
{
    h2conn_t *c = ud;
    xfer_t *x = xf(s, id);
    char err[400];
    if (!x) return 0;
    nghttp2_session_set_stream_user_data(s, id, NULL);
    detach(c, x);
    if (code == NGHTTP2_NO_ERROR && x->status > 0) {
        apns_xfer_done(x, APNS_OK, NULL);
    } else if (code == NGHTTP2_REFUSED_STREAM && c->goaway_reason[0]) {
        /* APNs closes the connection with a reason (a rejected certificate):
         * the refused requests carry it as a 403 would */
        x->status = 403;
        free(x->resp);
        x->resp = xasprintf("{\"reason\":\"%s\"}", c->goaway_reason);
        x->resp_len = strlen(x->resp);
        apns_xfer_done(x, APNS_OK, NULL);
    } else if (code == NGHTTP2_REFUSED_STREAM) {
        apns_xfer_requeue(x);        /* not processed (RFC 9113 8.7) */
    } else if (x->status > 0) {
        apns_xfer_done(x, APNS_OK, NULL);
    } else {
        snprintf(err, sizeof err, "stream reset by %s (%s)", host,
                 nghttp2_http2_strerror(code));
        apns_xfer_done(x, APNS_ESTREAM, err);
    }
    return 0;
}

static void goaway_reason(h2conn_t *c, const uint8_t *d, size_t n)
{
    /* {"reason":"BadCertificate"}: only certificate trouble stops a topic */
    static const char *stop[] = { "BadCertificate", "BadCertificateEnvironment",
                                  "Forbidden", NULL };
    char buf[256];
    const char *p;
    if (!n) return;
    if (n >= sizeof buf) n = sizeof buf - 1;
    memcpy(buf, d, n);
    buf[n] = '\0';
    if (!(p = strstr(buf, "\"reason\""))) return;
    p += 8;
    p += strspn(p, " \t:");
    if (*p++ != '"') return;
    size_t l = strcspn(p, "\"");
    for (int i = 0; stop[i]; i++)
        if (strlen(stop[i]) == l && !strncmp(p, stop[i], l)) {
            snprintf(c->goaway_reason, sizeof c->goaway_reason, "%s", stop[i]);
            return;
        }
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    h2conn_t *c = ud;
    switch (f->hd.type) {
    case NGHTTP2_SETTINGS:
        if (f->hd.flags & NGHTTP2_FLAG_ACK) break;
        {
            uint32_t ms = nghttp2_session_get_remote_settings(s,
                              NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
            c->max_streams = ms < (uint32_t) conf.streams ? ms
                                                          : (uint32_t) conf.streams;
        }
        if (c->state == C_SETTINGS) {
            c->state = C_READY;
            c->idle_since = mono_ms();
            c->m->new_conns++;
            log_debug("topic %s: connection %d to %s ready, %u streams",
                      c->m->t->name, c->serial, authority, c->max_streams);
        }
        break;
    case NGHTTP2_PING:
        if (f->hd.flags & NGHTTP2_FLAG_ACK) c->ping_sent = 0;
        break;
    case NGHTTP2_GOAWAY: {
        int above = 0;
        for (qlink_t *l = c->streams.next; l != &c->streams; l = l->next)
            if (ql_entry(l, xfer_t, q)->stream_id > f->goaway.last_stream_id)
                above++;
        c->goaway = 1;
        c->goaway_last = f->goaway.last_stream_id;
        goaway_reason(c, f->goaway.opaque_data, f->goaway.opaque_data_len);
        log_info("topic %s: connection %d: GOAWAY from %s (last stream %d, %s%s%.*s): "
                 "%d streams in flight are answered on it, %d newer ones sent again",
                 c->m->t->name, c->serial, host, f->goaway.last_stream_id,
                 nghttp2_http2_strerror(f->goaway.error_code),
                 f->goaway.opaque_data_len ? ", " : "",
                 (int) (f->goaway.opaque_data_len > 100 ? 100
                        : f->goaway.opaque_data_len),
                 (const char *) f->goaway.opaque_data, c->nstreams - above, above);
        break;
    }
    }
    return 0;
}

static int on_frame_send(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    xfer_t *x;
    (void) ud;
    if (f->hd.type == NGHTTP2_HEADERS && (x = xf(s, f->hd.stream_id)))
        x->sent = 1;
    return 0;
}

static int on_frame_not_send(nghttp2_session *s, const nghttp2_frame *f,
                             int lib_error, void *ud)
{
    h2conn_t *c = ud;
    xfer_t *x;
    (void) lib_error;
    if (f->hd.type != NGHTTP2_HEADERS || !(x = xf(s, f->hd.stream_id)))
        return 0;
    nghttp2_session_set_stream_user_data(s, f->hd.stream_id, NULL);
    detach(c, x);
    apns_xfer_requeue(x);            /* never went out */
    return 0;
}

static ssize_t read_body(nghttp2_session *s, int32_t id, uint8_t *buf,
                         size_t len, uint32_t *flags, nghttp2_data_source *src,
                         void *ud)
{
    xfer_t *x = xf(s, id);
    size_t n;
    (void) src;
    (void) ud;
    if (!x) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        return 0;
    }
    n = x->body_len - x->body_off;
    if (n > len) n = len;
    memcpy(buf, x->body + x->body_off, n);
    x->body_off += n;
    if (x->body_off == x->body_len) *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t) n;
}

static nghttp2_session_callbacks *cbs;

static int start_session(h2conn_t *c)
{
    nghttp2_settings_entry iv[] = {
        { NGHTTP2_SETTINGS_ENABLE_PUSH, 0 },
        { NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 0 },   /* no pushed streams */
        { NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 16 },
    };
    if (!cbs) {
        nghttp2_session_callbacks_new(&cbs);
        nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data);
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
        nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
        nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs,
                                                                 on_frame_not_send);
    }
    if (nghttp2_session_client_new(&c->h2, cbs, c) != 0) return -1;
    return nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv,
                                   sizeof iv / sizeof iv[0]);
}

/* ---- opening ----------------------------------------------------------------- */

static void dns_store(struct addrinfo *res)
{
    int n = 0;
    for (struct addrinfo *a = res; a && n < 4; a = a->ai_next) {
        if (a->ai_addrlen > sizeof dns_addr[0]) continue;
        memcpy(&dns_addr[n], a->ai_addr, a->ai_addrlen);
        dns_len[n++] = a->ai_addrlen;
    }
    if (n) {
        dns_n = n;
        dns_until = mono_ms() + DNS_TTL_MS;
    }
}

/* 0: addresses in dns_*, 1: lookup under way (try again), -1: error. A
 * name is looked up with getaddrinfo_a (glibc's resolver thread), polled
 * from the loop; an expired entry is used while it is refreshed. */
static int resolve(char *err, size_t errlen)
{
    static struct gaicb gcb;
    static struct addrinfo ghints;
    static int gbusy;
    static int64_t gstart;
    const char *h = use_proxy ? phost : host, *p = use_proxy ? pport : port;
    int rc;
    if (dns_n && mono_ms() < dns_until) return 0;
    if (host_is_ip && !use_proxy) {
        struct addrinfo hints = { 0 }, *res = NULL;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
        if ((rc = getaddrinfo(h, p, &hints, &res)) != 0) {
            snprintf(err, errlen, "bad address %s (%s)", h, gai_strerror(rc));
            return -1;
        }
        dns_store(res);
        freeaddrinfo(res);
        return dns_n ? 0 : -1;
    }
    if (!gbusy) {
        struct gaicb *list[1] = { &gcb };
        struct sigevent sev;
        memset(&gcb, 0, sizeof gcb);
        memset(&ghints, 0, sizeof ghints);
        memset(&sev, 0, sizeof sev);
        ghints.ai_socktype = SOCK_STREAM;
        ghints.ai_flags = AI_ADDRCONFIG;
        gcb.ar_name = h;
        gcb.ar_service = p;
        gcb.ar_request = &ghints;
        sev.sigev_notify = SIGEV_NONE;
        if ((rc = getaddrinfo_a(GAI_NOWAIT, list, 1, &sev)) != 0) {
            snprintf(err, errlen, "Could not resolve host: %s (%s)", h, gai_strerror(rc));
            return dns_n ? 0 : -1;
        }
        gbusy = 1;
        gstart = mono_ms();
    }
    rc = gai_error(&gcb);
    if (rc == EAI_INPROGRESS) {
        if (dns_n) return 0;                   /* stale, refreshed meanwhile */
        if (mono_ms() - gstart < conf.connect_timeout) return 1;
        snprintf(err, errlen, "Could not resolve host: %s (no answer in %lld ms)", h,
                 (long long) conf.connect_timeout);
        return -1;                            /* the lookup goes on */
    }
    gbusy = 0;
    if (rc == 0) {
        dns_store(gcb.ar_result);
        freeaddrinfo(gcb.ar_result);
        gcb.ar_result = NULL;
        if (dns_n) return 0;
        rc = EAI_NONAME;
    }
    snprintf(err, errlen, "Could not resolve host: %s (%s)", h, gai_strerror(rc));
    return dns_n ? 0 : -1;
}

static int tcp_start(h2conn_t *c)
{
    while (c->iaddr < c->naddr) {
        struct sockaddr *sa = (struct sockaddr *) &c->addr[c->iaddr];
        int one = 1;
        if (c->fd >= 0) {
            apns_fd_del(c->fd);
            close(c->fd);
            c->ev = 0;
        }
        c->fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0) return -1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(c->fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
        if (connect(c->fd, sa, c->addrlen[c->iaddr]) == 0 || errno == EINPROGRESS) {
            c->state = C_TCP;
            update_interest(c);
            return 0;
        }
        c->iaddr++;
    }
    return -1;
}

h2conn_t *h2conn_open(mctx_t *m, int *later, char *err, size_t errlen)
{
    h2conn_t *c;
    int r;
    *later = 0;
    if (!m->ssl_ctx) {
        snprintf(err, errlen, "client certificate unusable");
        return NULL;
    }
    if ((r = resolve(err, errlen)) != 0) {
        *later = r == 1;
        return NULL;
    }
    c = xcalloc(1, sizeof *c);
    c->m = m;
    c->fd = -1;
    c->serial = ++serials;
    ql_init(&c->streams);
    c->connect_deadline = mono_ms() + conf.connect_timeout;
    c->naddr = dns_n;
    memcpy(c->addr, dns_addr, sizeof dns_addr);
    memcpy(c->addrlen, dns_len, sizeof dns_len);
    if (tcp_start(c)) {
        snprintf(err, errlen, "Failed to connect to %s port %s: %s",
                 use_proxy ? phost : host, use_proxy ? pport : port, strerror(errno));
        if (c->fd >= 0) close(c->fd);
        free(c);
        return NULL;
    }
    return c;
}

static void tls_start(h2conn_t *c)
{
    c->ssl = SSL_new(c->m->ssl_ctx);
    if (!c->ssl) {
        fail(c, APNS_ENET, "SSL_new failed");
        return;
    }
    SSL_set_fd(c->ssl, c->fd);
    if (host_is_ip) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), host);
    } else {
        SSL_set_tlsext_host_name(c->ssl, host);
        SSL_set1_host(c->ssl, host);
    }
    c->state = C_TLS;
}

static void proxy_send(h2conn_t *c)
{
    char req[1200];
    int n = snprintf(req, sizeof req, "CONNECT %s:%s HTTP/1.1\r\nHost: %s:%s\r\n"
                     "%sUser-Agent: mdm-apnsd/%s\r\n\r\n", host, port, host, port,
                     pauth, APNSD_VERSION);
    /* a fresh socket takes a few hundred bytes at once */
    if (send(c->fd, req, (size_t) n, MSG_NOSIGNAL) != n) {
        fail(c, APNS_ENET, "proxy %s: %s", phost, strerror(errno));
        return;
    }
    c->state = C_PROXY;
}

static void proxy_read(h2conn_t *c)
{
    ssize_t n = recv(c->fd, c->pbuf + c->plen, sizeof c->pbuf - 1 - c->plen, 0);
    char *e;
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) {
        fail(c, APNS_ENET, "proxy %s closed the connection", phost);
        return;
    }
    c->plen += (size_t) n;
    c->pbuf[c->plen] = '\0';
    if (!(e = strstr(c->pbuf, "\r\n\r\n"))) {
        if (c->plen >= sizeof c->pbuf - 1)
            fail(c, APNS_ENET, "proxy %s: answer too long", phost);
        return;
    }
    if (strncmp(c->pbuf, "HTTP/1.", 7) || strncmp(c->pbuf + 8, " 200", 4)) {
        c->pbuf[strcspn(c->pbuf, "\r\n")] = '\0';
        fail(c, APNS_ENET, "proxy %s refused CONNECT: %s", phost, c->pbuf);
        return;
    }
    if (e + 4 != c->pbuf + c->plen) {
        fail(c, APNS_ENET, "proxy %s sent data after its answer", phost);
        return;
    }
    tls_start(c);
}

static void tls_step(h2conn_t *c)
{
    const unsigned char *alpn = NULL;
    unsigned alen = 0;
    int r = SSL_connect(c->ssl);
    if (r <= 0) {
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ) { c->read_wants_write = 0; return; }
        if (e == SSL_ERROR_WANT_WRITE) { c->read_wants_write = 1; return; }
        fail_tls(c, r, "TLS handshake");
        return;
    }
    c->read_wants_write = 0;
    SSL_get0_alpn_selected(c->ssl, &alpn, &alen);
    if (alen != 2 || memcmp(alpn, "h2", 2)) {
        fail(c, APNS_ENET, "%s did not select HTTP/2 (ALPN)", authority);
        return;
    }
    if (start_session(c)) {
        fail(c, APNS_ENET, "nghttp2 session failed");
        return;
    }
    c->state = C_SETTINGS;
    c->last_recv = mono_ms();
    h2conn_flush(c);
}

/* ---- I/O ------------------------------------------------------------------------- */

static void conn_read(h2conn_t *c)
{
    unsigned char buf[16384];
    c->read_wants_write = 0;
    while (!c->dead) {
        int n = SSL_read(c->ssl, buf, sizeof buf);
        if (n > 0) {
            ssize_t r;
            c->last_recv = mono_ms();
            r = nghttp2_session_mem_recv(c->h2, buf, (size_t) n);
            if (r < 0) fail(c, APNS_ENET, "HTTP/2: %s", nghttp2_strerror((int) r));
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ) break;
        if (e == SSL_ERROR_WANT_WRITE) {
            c->read_wants_write = 1;
            break;
        }
        fail_tls(c, n, "recv");
    }
}

void h2conn_flush(h2conn_t *c)
{
    if (!c->h2 || c->dead) return;
    while (!c->dead) {
        if (c->out_off == c->out_len) {
            c->out_off = c->out_len = 0;
            while (c->out_len < OUT_MAX) {
                const uint8_t *d;
                ssize_t n = nghttp2_session_mem_send(c->h2, &d);
                if (n < 0) {
                    fail(c, APNS_ENET, "HTTP/2: %s", nghttp2_strerror((int) n));
                    return;
                }
                if (n == 0) break;
                if (c->out_len + (size_t) n > c->out_cap) {
                    c->out_cap = c->out_len + (size_t) n + OUT_MAX;
                    c->out = xrealloc(c->out, c->out_cap);
                }
                memcpy(c->out + c->out_len, d, (size_t) n);
                c->out_len += (size_t) n;
            }
            if (!c->out_len) break;
        }
        int n = SSL_write(c->ssl, c->out + c->out_off, (int) (c->out_len - c->out_off));
        if (n > 0) {
            c->out_off += (size_t) n;
            c->out_blocked = 0;
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_WRITE) { c->out_blocked = 1; break; }
        if (e == SSL_ERROR_WANT_READ) break;
        fail_tls(c, n, "send");
    }
    if (!c->dead) update_interest(c);
}

void h2conn_event(h2conn_t *c, uint32_t events)
{
    if (c->state == C_TCP) {
        int err = 0;
        socklen_t l = sizeof err;
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) {
            c->iaddr++;
            if (tcp_start(c))
                fail(c, APNS_ENET, "Failed to connect to %s port %s: %s",
                     use_proxy ? phost : host, use_proxy ? pport : port,
                     strerror(err));
            return;
        }
        if (use_proxy) proxy_send(c);
        else tls_start(c);
        if (c->state == C_TLS) tls_step(c);
        if (!c->dead) update_interest(c);
        return;
    }
    if (c->state == C_PROXY) {
        proxy_read(c);
        if (c->state == C_TLS) tls_step(c);
    } else if (c->state == C_TLS) {
        tls_step(c);
    } else {
        if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)
            || (c->read_wants_write && events & EPOLLOUT))
            conn_read(c);
        /* otherwise apns_reap writes, after this loop iteration */
        if (c->out_blocked && events & EPOLLOUT) h2conn_flush(c);
    }
    if (!c->dead) update_interest(c);
}

int h2conn_submit(h2conn_t *c, xfer_t *x)
{
    char path[700], exp[24], prio[8], clen[16];
    item_t *it = x->item;
    int32_t id;
    nghttp2_data_provider dp = { .source.ptr = x, .read_callback = read_body };
#define NV(n, v) { (uint8_t *) (n), (uint8_t *) (v), sizeof (n) - 1, strlen(v), \
                   NGHTTP2_NV_FLAG_NO_COPY_NAME }
    snprintf(path, sizeof path, "%s/3/device/%s", path_prefix, it->token);
    snprintf(exp, sizeof exp, "%lld",
             conf.expiration ? (long long) (now_ms() + conf.expiration) / 1000 : 0LL);
    snprintf(prio, sizeof prio, "%d", (int) conf.priority);
    snprintf(clen, sizeof clen, "%zu", x->body_len);
    nghttp2_nv nv[] = {
        NV(":method", "POST"), NV(":scheme", "https"), NV(":authority", authority),
        NV(":path", path), NV("apns-push-type", "mdm"),
        NV("apns-topic", c->m->t->name), NV("apns-expiration", exp),
        NV("apns-priority", prio), NV("content-type", "application/json"),
        NV("content-length", clen), NV("user-agent", "mdm-apnsd/" APNSD_VERSION),
    };
#undef NV
    x->body_off = 0;
    id = nghttp2_submit_request(c->h2, NULL, nv, sizeof nv / sizeof nv[0], &dp, x);
    if (id < 0) return -1;
    x->stream_id = id;
    x->c = c;
    ql_push(&c->streams, &x->q);
    c->nstreams++;
    return 0;
}

void h2conn_cancel(h2conn_t *c, xfer_t *x)
{
    if (c->h2 && x->stream_id > 0) {
        nghttp2_session_set_stream_user_data(c->h2, x->stream_id, NULL);
        nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, x->stream_id,
                                  NGHTTP2_CANCEL);
    }
    detach(c, x);
}

/* ---- timers -------------------------------------------------------------------- */

static int64_t ping_after(const h2conn_t *c)
{
    return ping_ms ? ping_ms : c->nstreams ? 5000 : 60000;
}

static int64_t ping_timeout(void)
{
    return ping_ms ? ping_ms : conf.connect_timeout;
}

int64_t h2conn_timer(h2conn_t *c)
{
    int64_t t;
    if (c->dead) return 0;
    if (c->state != C_READY) return c->connect_deadline;
    if (c->ping_sent) return c->ping_sent + ping_timeout();
    t = c->last_recv + ping_after(c);
    if (!c->nstreams && c->idle_since + conf.idle_keep < t)
        t = c->idle_since + conf.idle_keep;
    return t;
}

void h2conn_tick(h2conn_t *c, int64_t now)
{
    if (c->dead) return;
    if (c->state != C_READY) {
        if (now >= c->connect_deadline)
            fail(c, APNS_ENET, "Connection timed out after %lld milliseconds",
                 (long long) conf.connect_timeout);
        return;
    }
    if (c->ping_sent) {
        if (now >= c->ping_sent + ping_timeout())
            fail(c, APNS_ENET, "no answer to a PING from %s in %lld ms", host,
                 (long long) ping_timeout());
        return;
    }
    if (!c->nstreams && !c->goaway && now >= c->idle_since + conf.idle_keep) {
        c->goaway = 1;                /* apns.c closes it */
        return;
    }
    if (now >= c->last_recv + ping_after(c)) {
        nghttp2_submit_ping(c->h2, NGHTTP2_FLAG_NONE, NULL);
        c->ping_sent = now;
        h2conn_flush(c);
    }
}

void h2conn_free(h2conn_t *c, int graceful)
{
    if (graceful && c->h2 && !c->dead && c->state == C_READY) {
        nghttp2_session_terminate_session(c->h2, NGHTTP2_NO_ERROR);
        h2conn_flush(c);             /* best effort: our GOAWAY */
    }
    if (c->ssl && graceful && !c->dead) SSL_shutdown(c->ssl);
    if (c->h2) nghttp2_session_del(c->h2);
    if (c->ssl) SSL_free(c->ssl);
    if (c->fd >= 0) {
        apns_fd_del(c->fd);
        close(c->fd);
    }
    ERR_clear_error();
    free(c->out);
    free(c);
}

void h2_cleanup(void)
{
    if (cbs) nghttp2_session_callbacks_del(cbs);
    cbs = NULL;
}
