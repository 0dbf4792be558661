/* h2conn.c: one HTTP/2 connection to APNs (TCP, optional CONNECT proxy,
 * TLS with ALPN h2, libnghttp2 session), non-blocking. */
#ifndef MDM_H2CONN_H
#define MDM_H2CONN_H

#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>
#include <sys/socket.h>

#include "apns.h"

enum { C_TCP = 1, C_PROXY, C_TLS, C_SETTINGS, C_READY };

typedef struct h2conn {
    mctx_t *m;
    int serial;                  /* for log lines */
    int fd;
    int state;
    SSL *ssl;
    nghttp2_session *h2;
    uint32_t ev;                 /* epoll events registered */
    qlink_t streams;             /* xfers on this connection */
    int nstreams;
    uint32_t max_streams;        /* min(--streams, the server's limit) */
    int goaway;                  /* no new streams (received or sent) */
    int32_t goaway_last;
    char goaway_reason[64];      /* APNs' JSON reason in the GOAWAY */
    int dead;                    /* failed: torn down by apns.c */
    int dead_res;
    char dead_err[200];
    int64_t connect_deadline;
    int64_t last_recv;
    int64_t idle_since;
    int64_t ping_sent;           /* 0 = no PING outstanding */
    unsigned char *out;          /* TLS plaintext not yet written */
    size_t out_len, out_off, out_cap;
    int out_blocked;             /* SSL_write wants the socket writable */
    int read_wants_write;
    struct sockaddr_storage addr[4];
    socklen_t addrlen[4];
    int naddr, iaddr;
    char pbuf[1024];             /* proxy answer */
    size_t plen;
} h2conn_t;

int h2_setup(char *err, size_t errlen);          /* parses conf.apns_url */
const char *h2_authority(void);
void *h2_ssl_ctx(ident_t *id, char *err, size_t errlen);
void h2_ssl_ctx_free(void *ctx);
h2conn_t *h2conn_open(mctx_t *m, int *later, char *err, size_t errlen);
                                                /* later: DNS under way */
void h2conn_event(h2conn_t *c, uint32_t events);
int h2conn_submit(h2conn_t *c, xfer_t *x);      /* 0 = stream started */
void h2conn_cancel(h2conn_t *c, xfer_t *x);     /* RST_STREAM CANCEL */
void h2conn_flush(h2conn_t *c);
int64_t h2conn_timer(h2conn_t *c);
void h2conn_tick(h2conn_t *c, int64_t now);
void h2conn_free(h2conn_t *c, int graceful);    /* no xfer callbacks */
void h2_cleanup(void);

static inline int h2conn_free_slots(const h2conn_t *c)
{
    if (c->state != C_READY || c->goaway || c->dead) return 0;
    return c->nstreams < (int) c->max_streams
           ? (int) c->max_streams - c->nstreams : 0;
}

#endif
