/*
 * mdm-apnsd: APNs sender for the nginx MDM module.
 *
 * One process, one thread, one epoll loop: per push topic a few HTTP/2
 * connections (libnghttp2 over OpenSSL: apns.c, h2conn.c) driven by their
 * socket events and timers; Redis is spoken to with pipelined batches on a
 * non-blocking connection (connect and setup included), plus one that waits
 * on the push list while idle.
 */
#ifndef MDM_APNSD_H
#define MDM_APNSD_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "mdm_keys.h"
#include "mdm_redis_addr.h"

#define APNSD_VERSION     "1.0.0"
#define PUSH_LIB_VERSION  "1"          /* redis-scripts/push.lua VERSION */

/* ---- util.c ------------------------------------------------------------ */

enum { LOG_DEBUG_ = 0, LOG_INFO_, LOG_NOTICE_, LOG_WARN_, LOG_ERR_, LOG_CRIT_ };

void log_open(const char *path);
void log_set_level(int level);
int log_level_parse(const char *s);
void logm(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_debug(...) logm(LOG_DEBUG_, __VA_ARGS__)
#define log_info(...)  logm(LOG_INFO_, __VA_ARGS__)
#define log_notice(...) logm(LOG_NOTICE_, __VA_ARGS__)
#define log_warn(...)  logm(LOG_WARN_, __VA_ARGS__)
#define log_err(...)   logm(LOG_ERR_, __VA_ARGS__)
#define log_crit(...)  logm(LOG_CRIT_, __VA_ARGS__)

int64_t now_ms(void);          /* wall clock, ms since the epoch */
int64_t mono_ms(void);         /* monotonic clock, ms */
int64_t mono_us(void);
double rand01(void);
int64_t jitter(int64_t ms, double frac);  /* ms * (1 +- frac) */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t m);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void fmt_iso8601(int64_t ms, char *buf, size_t len);

/* intrusive doubly linked list */
typedef struct qlink { struct qlink *prev, *next; } qlink_t;
static inline void ql_init(qlink_t *h) { h->prev = h->next = h; }
static inline int ql_empty(const qlink_t *h) { return h->next == h; }
static inline void ql_push(qlink_t *h, qlink_t *n)
{ n->prev = h->prev; n->next = h; h->prev->next = n; h->prev = n; }
static inline void ql_remove(qlink_t *n)
{ n->prev->next = n->next; n->next->prev = n->prev; n->prev = n->next = n; }
#define ql_entry(p, T, m) ((T *) ((char *) (p) - offsetof(T, m)))

/* ---- conf.c ------------------------------------------------------------ */

typedef struct strlist { char **v; int n; } strlist_t;

typedef struct conf {
    char *config_file;
    char *name;                 /* instance name (mdm:push:proc:NAME) */
    char *redis;                /* the mdm_redis_addr grammar */
    char *redis_username;       /* override the spec's options */
    char *redis_password;
    int64_t redis_db;           /* -1: the spec's db= (default 0) */
    mdm_redis_addr_t raddr;     /* parsed, overrides applied */
    char redis_show[160];       /* for log lines, no password */
    int64_t max_outcomes;
    int64_t redis_timeout;      /* all durations in ms */
    char *apns;                 /* production | development | https://... */
    char *apns_url;             /* derived base URL, no trailing slash */
    char *ca_file;
    char *proxy;
    strlist_t certs;            /* CERT[:KEY] (PEM) or FILE.p12 */
    char *cert_dir;
    char *p12_password_file;
    int64_t connections;        /* per topic */
    int64_t streams;            /* per connection */
    int64_t expiration;         /* added to now for apns-expiration; 0 = send 0 */
    int64_t priority;
    int64_t request_timeout;
    int64_t connect_timeout;
    int64_t idle_keep;          /* connections kept open while idle */
    int64_t retry_base;
    int64_t retry_max;
    int64_t give_up;            /* how long an item may keep failing */
    int64_t breaker_threshold;
    int64_t breaker_pause;
    int64_t breaker_max;
    int64_t batch;
    int64_t max_local;          /* 0 = automatic */
    int64_t alive_ttl;
    int64_t recover_interval;
    int64_t stats_interval;
    int64_t sweep_interval;     /* 0 = never */
    int64_t cert_check;
    int64_t stopped_retry;      /* 0 = never */
    int64_t shutdown_timeout;
    char *log_file;
    char *log_level_s;
    int log_level;
    int check_only;
} conf_t;

extern conf_t conf;
int conf_load(int argc, char **argv);   /* 0 ok; exits on --help/--version */
void usage(FILE *f);

/* ---- cert.c ------------------------------------------------------------ */

/* "what: <OpenSSL's last error>" into err, and the error queue cleared */
void ssl_err(char *err, size_t len, const char *what);

typedef struct ident {
    int refs;
    char *topic;
    char *path;             /* file it came from */
    char *cert_pem;         /* leaf + chain, PEM */
    size_t cert_len;
    char *key_pem;          /* unencrypted PKCS#8 PEM */
    size_t key_len;
    int64_t not_after_ms;
    char serial[80];
    char subject[256];
} ident_t;

/* Loads a push certificate (PEM cert+key in one or two files, or
 * PKCS#12). On error returns NULL and writes the reason to err. */
ident_t *ident_load(const char *cert_path, const char *key_path,
                    const char *password, char *err, size_t errlen);
ident_t *ident_load_pem(const char *pem, size_t len, const char *label,
                        char *err, size_t errlen);
void ident_free(ident_t *id);
void ident_unref(ident_t *id);          /* apns.c */
const char *apns_version(void);         /* apns.c */
void cert_cleanup(void);

/* ---- apnsd items and topics --------------------------------------------- */

enum item_state {
    S_LOOKUP = 1,   /* waiting for the enrollment read */
    S_READY,        /* in its topic's ready list */
    S_FLIGHT,       /* request in flight */
    S_WAIT,         /* in the retry heap */
    S_PARKED        /* topic stopped: kept, not sent */
};

struct mctx;
struct topic;

/* One request in flight (apns.h; freed when the answer is handled). */
typedef struct xfer xfer_t;

typedef struct item {
    char *id;
    qlink_t link;                /* lookup / ready / parked list */
    int state;
    int refs;                    /* occurrences in our processing list */
    int again;                   /* claimed again while in flight */
    int attempts;
    int probe;                   /* the half-open breaker's probe */
    int64_t first_ms;            /* monotonic, first claim */
    int64_t due_ms;              /* monotonic, retry time */
    size_t heap_idx;
    char *token;                 /* lowercase hex */
    char *magic;
    char *topic;
    xfer_t *x;                   /* while in flight */
} item_t;

/* The requests and connections of one topic and certificate (apns.h). */
typedef struct mctx mctx_t;

enum topic_state { T_ACTIVE = 1, T_STOPPED };

typedef struct topic {
    char *name;
    struct topic *next;
    ident_t *ident;              /* current certificate */
    mctx_t *m;                   /* its multi handle, created on demand */
    qlink_t ready;
    qlink_t parked;
    int nready, nparked;
    int inflight;
    int state;
    char *stop_reason;
    int64_t stopped_at;          /* monotonic */
    int64_t reminded_at;
    /* circuit breaker */
    int fails;                   /* consecutive failures */
    int open;                    /* 1 = open (paused), 2 = half open */
    int probe_out;               /* half open: the probe is in flight */
    int64_t open_until;          /* monotonic */
    int64_t pause;               /* current pause, ms */
    int expiring_warned_day;
} topic_t;

/* ---- store.c (Redis) ---------------------------------------------------- */

typedef struct redisReply redisReply_t;

int store_connected(void);               /* setup done, commands go out */
int store_connect(void);                 /* non-blocking step; 0 = ready */
int store_wait_ready(int64_t until);     /* check mode, shutdown: 0 = ready */
int store_take_fresh(void);              /* 1 once after each (re)connect */
void store_disconnect(const char *why);
void store_error(const char *what, const char *err);   /* backs off */
int store_paused(int64_t now);           /* backing off after an error */
int64_t store_next_event(int64_t now);   /* monotonic ms, -1 = none */

/* Pipeline: commands are queued (pipe_cmd), written by pipe_send, and the
 * callbacks run in order as replies arrive (store_event on the epoll loop).
 * When the connection is lost, every pending callback gets reply == NULL. */
typedef void (*reply_cb)(struct redisReply *r, void *ctx);
void store_set_epoll(int epfd);
void pipe_cmd(reply_cb cb, void *ctx, int argc, const char **argv,
              const size_t *lens);
void pipe_cmdf(reply_cb cb, void *ctx, ...)      /* strings, then NULL */
    __attribute__((sentinel));
int pipe_pending(void);                   /* queued, not sent */
int pipe_send(void);
void store_event(uint32_t events);
int pipe_flush_sync(int64_t timeout_ms);  /* shutdown: send, wait for all */

/* waiter: BLMOVE q q LEFT LEFT on its own non-blocking connection */
int waiter_arm(int epfd);                 /* 0 armed or already armed */
int waiter_fd(void);
int waiter_event(int epfd, uint32_t events); /* -1 waiting, 0 empty, 1 items */
void waiter_close(int epfd);

/* ---- util.c containers -------------------------------------------------- */

typedef struct hent { const char *key; void *val; struct hent *next; } hent_t;
typedef struct htab { hent_t **b; size_t nb, n; } htab_t;
void *ht_get(htab_t *t, const char *key);
void ht_put(htab_t *t, const char *key, void *val);   /* key not copied */
void *ht_del(htab_t *t, const char *key);

typedef struct heap { item_t **v; size_t n, cap; } heap_t;
void heap_push(heap_t *h, item_t *it);
item_t *heap_pop(heap_t *h);
static inline item_t *heap_top(heap_t *h) { return h->n ? h->v[0] : NULL; }

#define EV_WAITER 3              /* epoll tag of the waiter connection */
#define EV_REDIS  4              /* epoll tag of the main Redis connection */

/* ---- keys (common/mdm_keys.h, generated from redis-scripts/keys.def) --- */

char *enr_key(const char *id);   /* MDM_KEY_ENR of id "D:E", malloc'ed */

#endif
