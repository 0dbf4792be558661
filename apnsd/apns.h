/* apns.c + h2conn.c: the APNs client, HTTP/2 (libnghttp2) over TLS
 * (OpenSSL) on the daemon's epoll loop. */
#ifndef MDM_APNS_H
#define MDM_APNS_H

#include "apnsd.h"

#define EV_APNS   1
#define EV_CURL   EV_APNS        /* the name main.c's loop uses */
#define EV_SIGNAL 2
/* EV_WAITER 3 is in store.c */

#define APNS_MAX_CONNS 64        /* per topic context (--connections max) */

/* Outcome of a request besides the HTTP status. */
enum apns_res {
    APNS_OK = 0,
    APNS_ENET,           /* connect, DNS, TLS handshake, lost connection,
                            timeout: feeds the breaker */
    APNS_ETLS,           /* the server refused our certificate (TLS alert) */
    APNS_ESTREAM         /* stream reset or not answered after a GOAWAY: the
                            server rotating, not down */
};

struct h2conn;

/* One request, from apns_send to its completion. */
typedef struct xfer {
    item_t *item;
    struct mctx *m;
    struct h2conn *c;            /* while on a stream */
    int32_t stream_id;
    qlink_t all;                 /* m->all, in deadline order */
    qlink_t q;                   /* m->pending or c->streams */
    int64_t deadline;            /* monotonic ms */
    int requeued;                /* times refused unprocessed and sent again */
    int sent;                    /* HEADERS went out: the server may act on it */
    char *body;
    size_t body_len, body_off;
    long status;
    char *resp;                  /* up to 4 KiB of the answer body */
    size_t resp_len;
    char apns_id[64];
    char errbuf[256];
} xfer_t;

/* The requests of one topic and certificate and their connections. */
typedef struct mctx {
    struct topic *t;
    ident_t *ident;
    void *ssl_ctx;               /* SSL_CTX with the client certificate */
    struct h2conn *conns[APNS_MAX_CONNS];
    int nconns;
    qlink_t all;                 /* every xfer of this context */
    qlink_t pending;             /* waiting for a stream */
    int npending;
    int inflight;                /* xfers, pending or on a stream */
    int draining;
    int warm;                    /* an answer came (main.c's slow start) */
    int dirty;                   /* new requests to submit */
    int fails;                   /* consecutive failed connection attempts */
    int64_t next_connect;        /* monotonic ms: reconnect backoff */
    int new_conns;               /* established, not yet reported */
    int64_t timer_ms;            /* unused, kept for main.c */
    struct mctx *next;
} mctx_t;

typedef void (*complete_fn)(item_t *it, xfer_t *x, mctx_t *m, int res,
                            long status, long http_version, long new_connections);

void apns_init(int epfd, complete_fn cb);
const char *apns_version(void);
mctx_t *mctx_new(topic_t *t, ident_t *id);
void mctx_release(mctx_t *m);            /* drain, then free */
void apns_reap(void);                    /* write new requests; free drained
                                            contexts (after each dispatch) */
int apns_send(item_t *it, mctx_t *m);    /* 0 = in flight */
void apns_abort(item_t *it);
void xfer_free(xfer_t *x);
void apns_socket_event(int fd, uint32_t events);
int64_t apns_next_timer(void);           /* monotonic ms, -1 = none */
void apns_run_timers(int64_t now);
void apns_shutdown(void);

/* ---- apns.c, for h2conn.c ---- */
void apns_xfer_done(xfer_t *x, int res, const char *err);
void apns_xfer_requeue(xfer_t *x);       /* not processed: send again */
void apns_conn_closed(struct h2conn *c, int ok, int res, const char *err);
void apns_conn_ready(struct h2conn *c);
void apns_fd_set(int fd, struct h2conn *c, uint32_t events);
void apns_fd_del(int fd);

#endif
