/*
 * Copyright (C) The MDM module authors
 *
 * mdm-webhookd: the loop. Each pass
 *   1. takes new events from mdm:events into the backlog (mdm_webhook_take),
 *   2. loads backlog entries into memory up to --window, per enrollment,
 *   3. starts requests for enrollments whose oldest event is due (one per
 *      enrollment at a time, at most --parallel), the raw payloads read
 *      from Redis in one pipeline,
 *   4. waits for libcurl (curl_multi_poll, bounded by the next due time),
 *   5. records outcomes: 2xx -> mdm_webhook_done (batched), otherwise a
 *      retry with backoff, or mdm_webhook_dead at the limit.
 * Redis calls are blocking (hiredis, bounded by --redis-timeout); HTTP is
 * libcurl's multi interface, so a hanging receiver holds only its request.
 */

#include "webhookd.h"
#include "mdm_keys.h"
#include "mdm_redis_addr.h"

#include <curl/curl.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <plist/plist.h>

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>


/* ---- logging, clocks -------------------------------------------------- */

static void
logmsg(const char *lvl, const char *fmt, ...)
{
    char ts[32];
    struct timespec t;
    struct tm tm;
    va_list ap;

    clock_gettime(CLOCK_REALTIME, &t);
    gmtime_r(&t.tv_sec, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ldZ mdm-webhookd %s: ", ts, t.tv_nsec / 1000000, lvl);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
}

static long long
mono_ms(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long) t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static long long
wall_ms(void)
{
    struct timespec t;

    clock_gettime(CLOCK_REALTIME, &t);
    return (long long) t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static uint64_t rng;

static uint64_t
rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void *
xmalloc(size_t n)
{
    void *p = calloc(1, n);

    if (!p) {
        logmsg("crit", "out of memory");
        abort();
    }
    return p;
}

static char *
xstrdup(const char *s)
{
    char *p = strdup(s ? s : "");

    if (!p) {
        logmsg("crit", "out of memory");
        abort();
    }
    return p;
}


/* ---- state ------------------------------------------------------------- */

typedef struct ev_s ev_t;
typedef struct enq_s enq_t;

struct ev_s {
    ev_t       *next;
    char       *bid;                /* backlog entry id */
    char       *sid;                /* mdm:events id: event_id */
    char       *type, *id, *status, *uuid;
    long long   ms;
    int         attempts;
    char        err[256];
};

struct enq_s {                      /* one enrollment's events, in order */
    enq_t      *hnext;
    enq_t      *lnext;              /* ready or waiting list */
    char       *id;
    ev_t       *head, *tail;
    int         inflight;
    int         listed;             /* 0, L_READY, L_WAIT */
    long long   due;                /* mono ms the head may be tried */
};

enum { L_READY = 1, L_WAIT = 2 };

#define TAKE_COUNT 250             /* entries per mdm_webhook_take: about
                                      * 1.5 ms of Redis per call */

typedef struct {
    CURL               *h;
    enq_t              *q;
    ev_t               *e;
    char               *body;
    struct curl_slist  *hdrs;
    char                errbuf[CURL_ERROR_SIZE];
    long long           start;
} req_t;

static conf_t conf;
static mdm_redis_addr_t raddr;
static redisContext *rc;
static long long redis_retry_at;
static int redis_backoff = 100;
static CURLM *multi;
static volatile sig_atomic_t stopping;
static int locked_out, took_over;
static char nonce[64];

#define LOCK_TTL 10000               /* ms: the group lock outlives a pause */

#define HBUCKETS 65536
static enq_t *htab[HBUCKETS];
static enq_t *ready_h, *ready_t;
static enq_t *waitl;
static long long nloaded;           /* events in memory */
static long long inflight;
static char last_bid[64] = "-";     /* last backlog id loaded */
static int backlog_more = 1;        /* the backlog may hold unloaded ones */

static char **done_ids;             /* delivered, not yet recorded */
static size_t ndone, done_cap;
static char **dead_args;            /* id, record pairs not yet recorded */
static size_t ndead, dead_cap;

static long long consecutive_fail;  /* receiver health: global backoff */
static long long hold_until;

static long long stat_ok, stat_fail, stat_dead;
static long long last_fail_log;


static unsigned
hash_str(const char *s)
{
    uint32_t h = 2166136261u;

    while (*s) {
        h = (h ^ (unsigned char) *s++) * 16777619u;
    }
    return h % HBUCKETS;
}

static enq_t *
enq_get(const char *id, int create)
{
    unsigned b = hash_str(id);
    enq_t *q;

    for (q = htab[b]; q; q = q->hnext) {
        if (!strcmp(q->id, id)) {
            return q;
        }
    }
    if (!create) {
        return NULL;
    }
    q = xmalloc(sizeof(*q));
    q->id = xstrdup(id);
    q->hnext = htab[b];
    htab[b] = q;
    return q;
}

static void
enq_free_if_empty(enq_t *q)
{
    unsigned b;
    enq_t **pp;

    if (q->head || q->inflight || q->listed) {
        return;
    }
    b = hash_str(q->id);
    for (pp = &htab[b]; *pp; pp = &(*pp)->hnext) {
        if (*pp == q) {
            *pp = q->hnext;
            break;
        }
    }
    free(q->id);
    free(q);
}

static void
ready_push(enq_t *q)
{
    q->listed = L_READY;
    q->lnext = NULL;
    if (ready_t) {
        ready_t->lnext = q;
    } else {
        ready_h = q;
    }
    ready_t = q;
}

static enq_t *
ready_pop(void)
{
    enq_t *q = ready_h;

    if (q) {
        ready_h = q->lnext;
        if (!ready_h) {
            ready_t = NULL;
        }
        q->lnext = NULL;
        q->listed = 0;
    }
    return q;
}

static void
wait_push(enq_t *q)
{
    q->listed = L_WAIT;
    q->lnext = waitl;
    waitl = q;
}

/* the head of q is due at q->due: list it */
static void
schedule(enq_t *q)
{
    if (!q->head || q->inflight || q->listed) {
        return;
    }
    if (q->due <= mono_ms()) {
        ready_push(q);
    } else {
        wait_push(q);
    }
}

static void
ev_free(ev_t *e)
{
    free(e->bid);
    free(e->sid);
    free(e->type);
    free(e->id);
    free(e->status);
    free(e->uuid);
    free(e);
}


/* ---- Redis ------------------------------------------------------------- */

static void
redis_drop(const char *why)
{
    if (rc) {
        logmsg("error", "redis: %s; reconnecting", why);
        redisFree(rc);
        rc = NULL;
    }
    redis_retry_at = mono_ms() + redis_backoff / 2
                     + (long long) (rnd() % (unsigned) (redis_backoff / 2 + 1));
    redis_backoff = redis_backoff * 2 > 5000 ? 5000 : redis_backoff * 2;
}

static redisReply *
rcmd(int argc, const char **argv, const size_t *lens)
{
    redisReply *r;

    if (!rc) {
        return NULL;
    }
    r = redisCommandArgv(rc, argc, argv, lens);
    if (!r) {
        redis_drop(rc->errstr[0] ? rc->errstr : "no reply");
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        logmsg("error", "redis: %s: %s", argv[0][0] == 'F' ? argv[1] : argv[0],
               r->str);
        if (!strncmp(r->str, "LOCKED", 6)) {
            /* another deliverer of this group took over: it delivers the
             * backlog from its start; stop here (exit 0: no restart) */
            locked_out = 1;
            stopping = 1;
        }
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

static int
redis_connect(void)
{
    struct timeval tv;
    redisReply *r;
    const char *a[4];
    char buf[300];

    if (rc) {
        return 0;
    }
    if (mono_ms() < redis_retry_at) {
        return -1;
    }
    tv.tv_sec = conf.redis_timeout / 1000;
    tv.tv_usec = (conf.redis_timeout % 1000) * 1000;
    if (raddr.type == MDM_REDIS_ADDR_UNIX) {
        rc = redisConnectUnixWithTimeout(raddr.host, tv);
    } else {
        rc = redisConnectWithTimeout(raddr.host, raddr.port, tv);
    }
    mdm_redis_addr_format(&raddr, buf, sizeof(buf));
    if (!rc || rc->err) {
        logmsg("error", "redis %s: connect: %s", buf,
               rc ? rc->errstr : "out of memory");
        if (rc) {
            redisFree(rc);
            rc = NULL;
        }
        redis_drop("connect failed");
        return -1;
    }
    redisSetTimeout(rc, tv);
    if (raddr.password[0]) {
        int n = 0;

        a[n++] = "AUTH";
        if (raddr.username[0]) {
            a[n++] = raddr.username;
        }
        a[n++] = raddr.password;
        if (!(r = rcmd(n, a, NULL))) {
            redis_drop("AUTH failed");
            return -1;
        }
        freeReplyObject(r);
    }
    if (raddr.db) {
        char db[16];

        snprintf(db, sizeof(db), "%d", raddr.db);
        a[0] = "SELECT";
        a[1] = db;
        if (!(r = rcmd(2, a, NULL))) {
            redis_drop("SELECT failed");
            return -1;
        }
        freeReplyObject(r);
    }
    a[0] = "FCALL_RO";
    a[1] = "mdm_webhook_version";
    a[2] = "0";
    r = rcmd(3, a, NULL);
    if (!r || r->type != REDIS_REPLY_STRING
        || strcmp(r->str, WEBHOOK_LIB_VERSION))
    {
        logmsg("error", "redis %s: library mdm_webhook version %s, need %s "
               "(load redis-scripts/webhook.lua: mdm-redis-load)", buf,
               r && r->type == REDIS_REPLY_STRING ? r->str : "missing",
               WEBHOOK_LIB_VERSION);
        if (r) {
            freeReplyObject(r);
        }
        if (rc) {
            redisFree(rc);
            rc = NULL;
        }
        redis_drop("version check");
        return -1;
    }
    freeReplyObject(r);
    redis_backoff = 100;
    logmsg("info", "redis %s: connected", buf);
    return 0;
}

/* 1: moved something or the read was full (call again soon) */
static int
take(void)
{
    char count[24], maxb[24], lock[300], ttl[24];
    const char *a[16];
    redisReply *r;
    long long moved, nread;

    snprintf(count, sizeof(count), "%d", TAKE_COUNT);
    snprintf(maxb, sizeof(maxb), "%lld", conf.max_backlog);
    snprintf(lock, sizeof(lock), MDM_KEY_WEBHOOK_LOCK, conf.group);
    snprintf(ttl, sizeof(ttl), "%d", LOCK_TTL);
    a[0] = "FCALL";
    a[1] = "mdm_webhook_take";
    a[2] = "4";
    a[3] = MDM_KEY_EVENTS;
    a[4] = MDM_KEY_WEBHOOK_BACKLOG;
    a[5] = MDM_KEY_WEBHOOK_STATS;
    a[6] = lock;
    a[7] = conf.group;
    a[8] = conf.name;
    a[9] = count;
    a[10] = maxb;
    a[11] = conf.from_start ? "0" : "$";
    a[12] = nonce;
    a[13] = ttl;
    a[14] = took_over ? "0" : "1";
    r = rcmd(15, a, NULL);
    if (!r) {
        return 0;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        freeReplyObject(r);
        return 0;
    }
    took_over = 1;
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 5) {
        freeReplyObject(r);
        return 0;
    }
    moved = r->element[0]->integer;
    nread = r->element[1]->integer;
    if (r->element[3]->integer) {
        logmsg("warn", "%s was trimmed past entries the group %s had "
               "not read: %lld events lost before they reached the backlog "
               "(-1: unknown; %s gaps, lost; raise events_maxlen or keep "
               "mdm-webhookd running)", MDM_KEY_EVENTS, conf.group,
               r->element[3]->integer, MDM_KEY_WEBHOOK_STATS);
    }
    if (r->element[4]->integer) {
        static long long last_warn;

        if (mono_ms() - last_warn > 60000) {
            last_warn = mono_ms();
            logmsg("warn", "backlog at its bound (--max-backlog %lld): "
                   "taking nothing from mdm:events until it drains",
                   conf.max_backlog);
        }
    }
    freeReplyObject(r);
    if (moved > 0) {
        backlog_more = 1;
    }
    return nread >= TAKE_COUNT;
}

static const char *
field(redisReply *f, const char *name)
{
    size_t i;

    for (i = 0; i + 1 < f->elements; i += 2) {
        if (f->element[i]->type == REDIS_REPLY_STRING
            && !strcmp(f->element[i]->str, name)
            && f->element[i + 1]->type == REDIS_REPLY_STRING)
        {
            return f->element[i + 1]->str;
        }
    }
    return NULL;
}

static void
load(void)
{
    char start[70], count[24];
    const char *a[6];
    redisReply *r;
    long long want = conf.window - nloaded;
    size_t i;

    if (want <= 0 || !backlog_more) {
        return;
    }
    if (want > 1000) {
        want = 1000;
    }
    if (!strcmp(last_bid, "-")) {
        snprintf(start, sizeof(start), "-");
    } else {
        snprintf(start, sizeof(start), "(%s", last_bid);
    }
    snprintf(count, sizeof(count), "%lld", want);
    a[0] = "XRANGE";
    a[1] = MDM_KEY_WEBHOOK_BACKLOG;
    a[2] = start;
    a[3] = "+";
    a[4] = "COUNT";
    a[5] = count;
    r = rcmd(6, a, NULL);
    if (!r) {
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(r);
        return;
    }
    if ((long long) r->elements < want) {
        backlog_more = 0;
    }
    for (i = 0; i < r->elements; i++) {
        redisReply *x = r->element[i], *f;
        const char *id, *sid, *type, *ms;
        ev_t *e;
        enq_t *q;

        if (x->type != REDIS_REPLY_ARRAY || x->elements < 2) {
            continue;
        }
        snprintf(last_bid, sizeof(last_bid), "%s", x->element[0]->str);
        f = x->element[1];
        if (f->type != REDIS_REPLY_ARRAY) {
            continue;
        }
        id = field(f, "id");
        sid = field(f, "sid");
        type = field(f, "type");
        ms = field(f, "ms");
        e = xmalloc(sizeof(*e));
        e->bid = xstrdup(x->element[0]->str);
        e->sid = xstrdup(sid);
        e->type = xstrdup(type);
        e->id = xstrdup(id);
        e->status = field(f, "status") ? xstrdup(field(f, "status")) : NULL;
        e->uuid = field(f, "uuid") ? xstrdup(field(f, "uuid")) : NULL;
        e->ms = ms ? atoll(ms) : 0;
        q = enq_get(e->id, 1);
        if (q->tail) {
            q->tail->next = e;
        } else {
            q->head = e;
            q->due = 0;
        }
        q->tail = e;
        nloaded++;
        schedule(q);
    }
    freeReplyObject(r);
}

static void
flush_done(void)
{
    const char **a;
    size_t i;
    redisReply *r;

    if (!ndone || !rc) {
        return;
    }
    a = xmalloc((ndone + 5) * sizeof(*a));
    a[0] = "FCALL";
    a[1] = "mdm_webhook_done";
    a[2] = "2";
    a[3] = MDM_KEY_WEBHOOK_BACKLOG;
    a[4] = MDM_KEY_WEBHOOK_STATS;
    for (i = 0; i < ndone; i++) {
        a[5 + i] = done_ids[i];
    }
    r = rcmd((int) ndone + 5, a, NULL);
    free(a);
    if (!r) {
        return;                   /* kept, recorded on the next pass */
    }
    freeReplyObject(r);
    for (i = 0; i < ndone; i++) {
        free(done_ids[i]);
    }
    ndone = 0;
}

static void
flush_dead(void)
{
    const char **a;
    size_t i;
    redisReply *r;
    char maxd[24];

    if (!ndead || !rc) {
        return;
    }
    snprintf(maxd, sizeof(maxd), "%lld", conf.max_dead);
    a = xmalloc((ndead + 7) * sizeof(*a));
    a[0] = "FCALL";
    a[1] = "mdm_webhook_dead";
    a[2] = "3";
    a[3] = MDM_KEY_WEBHOOK_BACKLOG;
    a[4] = MDM_KEY_WEBHOOK_DEAD;
    a[5] = MDM_KEY_WEBHOOK_STATS;
    a[6] = maxd;
    for (i = 0; i < ndead; i++) {
        a[7 + i] = dead_args[i];
    }
    r = rcmd((int) ndead + 7, a, NULL);
    free(a);
    if (!r) {
        return;
    }
    freeReplyObject(r);
    for (i = 0; i < ndead; i++) {
        free(dead_args[i]);
    }
    ndead = 0;
}

static void
push_str(char ***arr, size_t *n, size_t *cap, char *s)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 256;
        *arr = realloc(*arr, *cap * sizeof(**arr));
        if (!*arr) {
            logmsg("crit", "out of memory");
            abort();
        }
    }
    (*arr)[(*n)++] = s;
}


/* ---- the webhook body ---------------------------------------------------- */

static const char *
topic_of(const char *type)
{
    static const struct { const char *t, *topic; } map[] = {
        { "Authenticate", "mdm.Authenticate" },
        { "TokenUpdate", "mdm.TokenUpdate" },
        { "CheckOut", "mdm.CheckOut" },
        { "SetBootstrapToken", "mdm.SetBootstrapToken" },
        { "GetBootstrapToken", "mdm.GetBootstrapToken" },
        { "UserAuthenticate", "mdm.UserAuthenticate" },
        { "DeclarativeManagement", "mdm.DeclarativeManagement" },
        { "GetToken", "mdm.GetToken" },
        { "Report", "mdm.Connect" },
    };
    size_t i;

    for (i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        if (!strcmp(map[i].t, type)) {
            return map[i].topic;
        }
    }
    return NULL;
}

static char *
b64(const unsigned char *p, size_t n)
{
    char *out = xmalloc(4 * ((n + 2) / 3) + 1);

    EVP_EncodeBlock((unsigned char *) out, p, (int) n);
    return out;
}

/* raw as stored: XML as is; the binary plists of check-ins back to XML */
static char *
raw_b64(const char *raw, size_t len)
{
    char *out;

    if (len >= 8 && !memcmp(raw, "bplist00", 8)) {
        plist_t p = NULL;
        char *xml = NULL;
        uint32_t xlen = 0;

        plist_from_bin(raw, (uint32_t) len, &p);
        if (p) {
            plist_to_xml(p, &xml, &xlen);
            plist_free(p);
        }
        if (xml) {
            out = b64((unsigned char *) xml, xlen);
            plist_to_xml_free(xml);
            return out;
        }
    }
    return b64((const unsigned char *) raw, len);
}

static void
iso8601(long long ms, char *buf, size_t n)
{
    time_t s = (time_t) (ms / 1000);
    struct tm tm;
    char t[32];

    gmtime_r(&s, &tm);
    strftime(t, sizeof(t), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, n, "%s.%03lldZ", t, ms % 1000);
}

/* enr: HMGET type token_updates raw; res: HGET raw (or NULL) */
static char *
build_body(ev_t *e, redisReply *enr, redisReply *res)
{
    json_t *o = json_object(), *in = json_object();
    const char *topic = topic_of(e->type);
    const char *type = NULL, *raw = NULL;
    size_t rawlen = 0;
    char dev[512], ts[40], *p, *s;
    int report = !strcmp(e->type, "Report");

    snprintf(dev, sizeof(dev), "%s", e->id);
    if ((p = strchr(dev, ':'))) {
        *p = '\0';
    }
    if (enr && enr->type == REDIS_REPLY_ARRAY && enr->elements >= 3) {
        if (enr->element[0]->type == REDIS_REPLY_STRING) {
            type = enr->element[0]->str;
        }
        if ((!strcmp(e->type, "Authenticate") || !strcmp(e->type, "TokenUpdate"))
            && enr->element[2]->type == REDIS_REPLY_STRING)
        {
            raw = enr->element[2]->str;
            rawlen = enr->element[2]->len;
        }
        if (!strcmp(e->type, "TokenUpdate")
            && enr->element[1]->type == REDIS_REPLY_STRING)
        {
            json_object_set_new(in, "token_update_tally",
                                json_integer(atoll(enr->element[1]->str)));
        }
    }
    if (report && res && res->type == REDIS_REPLY_STRING) {
        raw = res->str;
        rawlen = res->len;
    }
    /* NanoMDM: udid for device channels (and their user channels),
     * enrollment_id for User Enrollment */
    if (type && !strncmp(type, "UserEnrollment", 14)) {
        json_object_set_new(in, "enrollment_id", json_string(dev));
    } else {
        json_object_set_new(in, "udid", json_string(dev));
    }
    if (report) {
        json_object_set_new(in, "status", json_string(e->status ? e->status : ""));
        if (e->uuid && e->uuid[0]) {
            json_object_set_new(in, "command_uuid", json_string(e->uuid));
        }
    }
    s = raw ? raw_b64(raw, rawlen) : xstrdup("");
    json_object_set_new(in, "raw_payload", json_string(s));
    free(s);

    json_object_set_new(o, "topic", json_string(topic ? topic : e->type));
    json_object_set_new(o, "event_id", json_string(e->sid));
    iso8601(e->ms, ts, sizeof(ts));
    json_object_set_new(o, "created_at", json_string(ts));
    json_object_set_new(o, report ? "acknowledge_event" : "checkin_event", in);
    s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(o);
    return s;
}


/* ---- HTTP -------------------------------------------------------------- */

static size_t
discard(char *p, size_t sz, size_t n, void *u)
{
    (void) p;
    (void) u;
    return sz * n;
}

static void
start_request(enq_t *q, char *body)
{
    req_t *r = xmalloc(sizeof(*r));
    char hdr[128];

    r->q = q;
    r->e = q->head;
    r->body = body;
    r->start = mono_ms();
    r->hdrs = curl_slist_append(NULL, "Content-Type: application/json; charset=utf-8");
    r->hdrs = curl_slist_append(r->hdrs, "Expect:");
    r->hdrs = curl_slist_append(r->hdrs, "User-Agent: mdm-webhookd/" WEBHOOKD_VERSION);
    if (conf.hmac) {
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned int mlen = 0;
        char *sig;

        HMAC(EVP_sha256(), conf.hmac, (int) strlen(conf.hmac),
             (unsigned char *) body, strlen(body), mac, &mlen);
        sig = b64(mac, mlen);
        snprintf(hdr, sizeof(hdr), "X-Hmac-Signature: %s", sig);
        free(sig);
        r->hdrs = curl_slist_append(r->hdrs, hdr);
    }
    r->h = curl_easy_init();
    curl_easy_setopt(r->h, CURLOPT_URL, conf.url);
    curl_easy_setopt(r->h, CURLOPT_POST, 1L);
    curl_easy_setopt(r->h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(r->h, CURLOPT_POSTFIELDSIZE, (long) strlen(body));
    curl_easy_setopt(r->h, CURLOPT_HTTPHEADER, r->hdrs);
    curl_easy_setopt(r->h, CURLOPT_TIMEOUT_MS, (long) conf.timeout);
    curl_easy_setopt(r->h, CURLOPT_CONNECTTIMEOUT_MS, (long) conf.connect_timeout);
    curl_easy_setopt(r->h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(r->h, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(r->h, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(r->h, CURLOPT_PRIVATE, r);
    curl_easy_setopt(r->h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(r->h, CURLOPT_FOLLOWLOCATION, 0L);
    if (conf.ca_file) {
        curl_easy_setopt(r->h, CURLOPT_CAINFO, conf.ca_file);
    }
    q->inflight = 1;
    inflight++;
    curl_multi_add_handle(multi, r->h);
}

static long long
backoff(int attempts)
{
    long long d = conf.retry_min;
    int i;

    for (i = 1; i < attempts && d < conf.retry_max; i++) {
        d *= 2;
    }
    if (d > conf.retry_max) {
        d = conf.retry_max;
    }
    return d / 2 + (long long) (rnd() % (uint64_t) (d / 2 + 1));
}

static char *
dead_record(ev_t *e)
{
    json_t *o = json_object();
    char *s;

    json_object_set_new(o, "event_id", json_string(e->sid));
    json_object_set_new(o, "type", json_string(e->type));
    json_object_set_new(o, "id", json_string(e->id));
    json_object_set_new(o, "ms", json_integer(e->ms));
    if (e->status) {
        json_object_set_new(o, "status", json_string(e->status));
    }
    if (e->uuid) {
        json_object_set_new(o, "uuid", json_string(e->uuid));
    }
    json_object_set_new(o, "attempts", json_integer(e->attempts));
    json_object_set_new(o, "error", json_string(e->err));
    json_object_set_new(o, "dead_ms", json_integer(wall_ms()));
    s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

/* the head of q is finished (delivered or dead): the next one is due now */
static void
pop_head(enq_t *q)
{
    ev_t *e = q->head;

    q->head = e->next;
    if (!q->head) {
        q->tail = NULL;
    }
    ev_free(e);
    nloaded--;
    q->due = 0;
    schedule(q);
    enq_free_if_empty(q);
}

static void
finished(CURLMsg *m)
{
    req_t *r;
    long status = 0;
    ev_t *e;
    enq_t *q;
    int ok;

    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **) &r);
    curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &status);
    e = r->e;
    q = r->q;
    ok = m->data.result == CURLE_OK && status >= 200 && status < 300;
    e->attempts++;
    if (!ok) {
        if (m->data.result != CURLE_OK) {
            snprintf(e->err, sizeof(e->err), "%s",
                     r->errbuf[0] ? r->errbuf
                                  : curl_easy_strerror(m->data.result));
        } else {
            snprintf(e->err, sizeof(e->err), "HTTP %ld", status);
        }
    }
    if (conf.verbose || (!ok && mono_ms() - last_fail_log >= 1000)) {
        /* failures: at most one line a second unless --verbose */
        if (!ok) {
            last_fail_log = mono_ms();
        }
        logmsg("info", "%s %s %s attempt %d: %s (%lld ms)", e->sid, e->type,
               e->id, e->attempts, ok ? "delivered" : e->err,
               mono_ms() - r->start);
    }
    q->inflight = 0;
    inflight--;
    curl_multi_remove_handle(multi, r->h);
    curl_easy_cleanup(r->h);
    curl_slist_free_all(r->hdrs);
    free(r->body);
    free(r);

    if (ok) {
        stat_ok++;
        consecutive_fail = 0;
        hold_until = 0;
        push_str(&done_ids, &ndone, &done_cap, xstrdup(e->bid));
        pop_head(q);
        return;
    }
    stat_fail++;
    consecutive_fail++;
    if ((conf.max_attempts && e->attempts >= conf.max_attempts)
        || (conf.max_age && wall_ms() - e->ms > conf.max_age))
    {
        logmsg("warn", "event %s (%s %s) dead-lettered after %d attempts: %s",
               e->sid, e->type, e->id, e->attempts, e->err);
        stat_dead++;
        push_str(&dead_args, &ndead, &dead_cap, xstrdup(e->bid));
        push_str(&dead_args, &ndead, &dead_cap, dead_record(e));
        pop_head(q);
        return;
    }
    if (consecutive_fail == 3 || (consecutive_fail > 3 && consecutive_fail % 100 == 0)) {
        logmsg("warn", "receiver failing (%lld in a row, last: %s); retrying "
               "with backoff", consecutive_fail, e->err);
    }
    /* the receiver as a whole: after a few failures in a row, one probe
     * at a time, spaced like one event's retries */
    if (consecutive_fail >= 3) {
        hold_until = mono_ms() + backoff((int) (consecutive_fail - 2));
    }
    q->due = mono_ms() + backoff(e->attempts);
    schedule(q);
}


/* ---- the loop ---------------------------------------------------------- */

static void
on_signal(int s)
{
    (void) s;
    stopping = 1;
}

/* starts what is due: raw payloads in one pipeline */
static void
start_due(void)
{
    enq_t *batch[1024], *q, **pp;
    int n = 0, i, nq[1024];
    long long now = mono_ms(), limit = conf.parallel;

    if (!rc) {
        return;
    }
    /* waiting heads that are due */
    for (pp = &waitl; *pp;) {
        q = *pp;
        if (q->due <= now) {
            *pp = q->lnext;
            q->listed = 0;
            ready_push(q);
        } else {
            pp = &q->lnext;
        }
    }
    if (consecutive_fail >= 3) {
        if (now < hold_until) {
            return;
        }
        limit = 1;
    }
    while (inflight + n < limit && n < 1024 && (q = ready_pop())) {
        ev_t *e = q->head;
        char key[1200];
        const char *a[6];
        int isrep;

        if (!e || q->inflight) {
            continue;
        }
        isrep = !strcmp(e->type, "Report");
        {
            char dev[512], *p;

            snprintf(dev, sizeof(dev), "%s", e->id);
            if ((p = strchr(dev, ':'))) {
                *p = '\0';
            }
            snprintf(key, sizeof(key), MDM_KEY_ENR, dev, e->id);
            a[0] = "HMGET";
            a[1] = key;
            a[2] = "type";
            a[3] = "token_updates";
            a[4] = !strcmp(e->type, "Authenticate") ? "raw_authenticate"
                   : !strcmp(e->type, "TokenUpdate") ? "raw_token_update"
                   : "type";
            redisAppendCommandArgv(rc, 5, a, NULL);
            nq[n] = 1;
            if (isrep && e->uuid && e->uuid[0]) {
                snprintf(key, sizeof(key), MDM_KEY_RES, dev, e->id, e->uuid);
                a[0] = "HGET";
                a[1] = key;
                a[2] = "raw";
                redisAppendCommandArgv(rc, 3, a, NULL);
                nq[n] = 2;
            }
        }
        q->inflight = 1;            /* reserved until started */
        batch[n++] = q;
    }
    for (i = 0; i < n; i++) {
        redisReply *enr = NULL, *res = NULL;
        void *rp;

        q = batch[i];
        q->inflight = 0;
        if (rc && redisGetReply(rc, &rp) == REDIS_OK) {
            enr = rp;
        } else if (rc) {
            redis_drop(rc->errstr[0] ? rc->errstr : "pipeline");
        }
        if (nq[i] == 2 && rc) {
            if (redisGetReply(rc, &rp) == REDIS_OK) {
                res = rp;
            } else {
                redis_drop(rc->errstr[0] ? rc->errstr : "pipeline");
            }
        }
        if (!enr) {
            /* Redis went away: try again once it is back */
            if (res) {
                freeReplyObject(res);
            }
            q->due = mono_ms() + 200;
            schedule(q);
            continue;
        }
        start_request(q, build_body(q->head, enr, res));
        freeReplyObject(enr);
        if (res) {
            freeReplyObject(res);
        }
    }
}

static long long
next_due_in(void)
{
    enq_t *q;
    long long now = mono_ms(), best = conf.poll;

    if (ready_h && inflight < conf.parallel && consecutive_fail < 3) {
        return 0;
    }
    for (q = waitl; q; q = q->lnext) {
        if (q->due - now < best) {
            best = q->due - now;
        }
    }
    if (consecutive_fail >= 3 && hold_until - now < best) {
        best = hold_until - now;
    }
    return best < 0 ? 0 : best;
}

int
main(int argc, char **argv)
{
    char err[256];
    struct sigaction sa;
    long long last_take = 0, stop_at = 0, last_stats = 0;
    int take_again = 1;

    if (conf_load(&conf, argc, argv)) {
        return 2;
    }
    if (mdm_redis_addr_spec(&raddr, conf.redis, err, sizeof(err))) {
        fprintf(stderr, "mdm-webhookd: --redis: %s\n", err);
        return 2;
    }
    if (raddr.type == MDM_REDIS_ADDR_SENTINEL) {
        fprintf(stderr, "mdm-webhookd: --redis: sentinel= is not supported "
                "yet; give the primary's address\n");
        return 2;
    }
    if (RAND_bytes((unsigned char *) &rng, sizeof(rng)) != 1 || !rng) {
        rng = (uint64_t) wall_ms() ^ 0x9e3779b97f4a7c15ULL;
    }
    snprintf(nonce, sizeof(nonce), "%s/%ld/%016llx", conf.name, (long) getpid(),
             (unsigned long long) rnd());
    if (curl_global_init(CURL_GLOBAL_DEFAULT)) {
        fprintf(stderr, "mdm-webhookd: curl_global_init failed\n");
        return 1;
    }
    multi = curl_multi_init();
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long) conf.parallel);
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long) conf.parallel);

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    logmsg("info", "started: %s, group %s, consumer %s, parallel %lld",
           conf.url, conf.group, conf.name, conf.parallel);

    for (;;) {
        int running, left;
        CURLMsg *m;
        long long wait;

        if (stopping && !stop_at) {
            stop_at = mono_ms() + conf.timeout;
            logmsg("info", "stopping: %lld requests in flight", inflight);
        }
        if (stopping && (inflight == 0 || mono_ms() > stop_at)) {
            break;
        }
        if (!rc) {
            redis_connect();
        }
        if (rc && !stopping) {
            if (take_again || mono_ms() - last_take >= conf.poll) {
                take_again = take();
                last_take = mono_ms();
            }
            if (rc) {
                load();
            }
            if (rc) {
                start_due();
            }
        }
        curl_multi_perform(multi, &running);
        while ((m = curl_multi_info_read(multi, &left))) {
            if (m->msg == CURLMSG_DONE) {
                finished(m);
            }
        }
        if (rc) {
            flush_done();
        }
        if (rc) {
            flush_dead();
        }
        if (mono_ms() - last_stats > 60000) {
            last_stats = mono_ms();
            if (stat_ok || stat_fail) {
                logmsg("info", "delivered %lld, failed attempts %lld, dead %lld, "
                       "in memory %lld", stat_ok, stat_fail, stat_dead, nloaded);
            }
        }
        wait = stopping ? 50 : next_due_in();
        if (!rc) {
            wait = 50;
        }
        if (rc && !stopping
            && (take_again || (backlog_more && nloaded < conf.window)))
        {
            wait = 0;
        }
        if (wait > 0 || inflight) {
            curl_multi_poll(multi, NULL, 0, (int) wait, NULL);
        }
    }
    curl_multi_perform(multi, &(int){0});
    if (rc) {
        flush_done();
        flush_dead();
    }
    logmsg("info", "stopped: delivered %lld, failed attempts %lld, dead %lld%s",
           stat_ok, stat_fail, stat_dead,
           locked_out ? " (another mdm-webhookd took over the group)" : "");
    return 0;
}
