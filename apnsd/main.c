/* mdm-apnsd main loop: claim push requests from Redis, read the enrollment,
 * send to APNs, write the outcome back. See README.md for the design. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "apnsd.h"
#include "apns.h"

#define LOOKUP_BATCH 500
#define DONE_BATCH   2000

static int epfd = -1, sigfd = -1;
static char nonce[64];
static char *k_proc, *k_alive;

static htab_t items;                /* id -> item_t (every id we hold) */
static htab_t topics_h;             /* name -> topic_t */
static topic_t *topics;
static int ntopics;
static qlink_t lookup_q;
static heap_t retry_h;
static int n_local;                 /* held ids, parked ones excluded */
static int n_parked, n_flight;

static int more_in_q = 1;           /* mdm:push:q may have ids */
static int waiter_armed;
static int need_adopt = 1;          /* read our processing list on connect */
static int64_t next_adopt;          /* ... and now and then */
static int adopt_inflight;          /* LRANGE sent, reply pending */
static htab_t adopt_fin;            /* id -> fin_t: occurrences finished meanwhile */
typedef struct fin { int n; char id[]; } fin_t;
static int claim_inflight;
static int beat_ok;                 /* a heartbeat of ours went through */
static int first_adopt = 1;
static int shutting;
static int64_t shutdown_deadline;
static int64_t next_beat, next_recover, next_stats, next_cert, next_poll, next_sweep;
static int sweep_inflight;
static int64_t max_local;
static int warned_http1;

static struct {
    unsigned long long sent, ok, failed, retried, skipped, coalesced, gave_up,
        stopped, connects, adopted, recovered;
    unsigned long long loops, flushes, wait_us, cmds;
} st;

/* ---- outcome records (mdm_push_done), kept until Redis took them -------- */

enum { D_ID, D_COUNT, D_TOKEN, D_RESULT, D_REASON, D_STATUS, D_APNSID, D_TS,
       D_TOPIC, D_ATTEMPT, D_DETAIL, D_N };

typedef struct drec {
    qlink_t link;
    unsigned long long seq;         /* queue order, kept when Redis refuses */
    char *enr;
    char *a[D_N];
} drec_t;

static qlink_t dones;
static int n_dones;                 /* queued, not sent */
static int n_dones_out;             /* sent, not answered */
static unsigned long long dones_seq;

/* Outcomes waiting for Redis plus requests in flight (each brings one) stay
 * within max-outcomes: at the bound nothing new is started or claimed, the
 * outcomes wait for Redis in memory, none is dropped. */
static int outcomes_full(void)
{
    static int warned;
    int full = n_dones + n_dones_out + n_flight >= conf.max_outcomes;
    if (full && !warned)
        log_warn("%d outcomes wait for Redis (max-outcomes): no push is sent and "
                 "nothing claimed until Redis takes them", n_dones + n_dones_out);
    else if (!full && warned)
        log_notice("outcomes below max-outcomes again: sending resumes");
    warned = full;
    return full;
}

/* An occurrence finished here but still in our list in Redis: an LRANGE on
 * its way must not adopt it again. */
static void fin_add(const char *id, int count)
{
    if (!adopt_inflight || count <= 0) return;
    fin_t *f = ht_get(&adopt_fin, id);
    if (!f) {
        size_t l = strlen(id);
        f = xcalloc(1, sizeof *f + l + 1);
        memcpy(f->id, id, l + 1);
        ht_put(&adopt_fin, f->id, f);
    }
    f->n += count;
}

static void drec_free(drec_t *d)
{
    free(d->enr);
    for (int i = 0; i < D_N; i++) free(d->a[i]);
    free(d);
}

static void queue_done(item_t *it, int count, const char *result,
                       const char *reason, long status, const char *apns_id,
                       const char *ts, const char *detail)
{
    drec_t *d = xcalloc(1, sizeof *d);
    d->enr = enr_key(it->id);
    d->a[D_ID] = xstrdup(it->id);
    d->a[D_COUNT] = xasprintf("%d", count);
    d->a[D_TOKEN] = xstrdup(it->token ? it->token : "");
    d->a[D_RESULT] = xstrdup(result);
    d->a[D_REASON] = xstrdup(reason ? reason : "");
    d->a[D_STATUS] = status ? xasprintf("%ld", status) : xstrdup("");
    d->a[D_APNSID] = xstrdup(apns_id ? apns_id : "");
    d->a[D_TS] = xstrdup(ts ? ts : "");
    d->a[D_TOPIC] = xstrdup(it->topic ? it->topic : "");
    d->a[D_ATTEMPT] = it->attempts ? xasprintf("%d", it->attempts) : xstrdup("");
    d->a[D_DETAIL] = xstrdup(detail ? detail : "");
    d->seq = ++dones_seq;
    ql_push(&dones, &d->link);
    n_dones++;
    /* the LRANGE answer on its way still lists these occurrences */
    fin_add(it->id, count);
}

static void adopt_fin_clear(void)
{
    for (size_t i = 0; i < adopt_fin.nb; i++)
        for (hent_t *e = adopt_fin.b[i], *nx; e; e = nx) {
            nx = e->next;
            free(e->val);
            free(e);
        }
    free(adopt_fin.b);
    memset(&adopt_fin, 0, sizeof adopt_fin);
}

static void done_cb(redisReply *r, void *ctx)
{
    drec_t *d = ctx;
    n_dones_out--;
    if (r && r->type != REDIS_REPLY_ERROR) {
        drec_free(d);
        return;
    }
    /* Lost, or refused (OOM, LOADING, READONLY, the library gone...): the
     * outcome waits for Redis in its place, never dropped, so the id is
     * not adopted and pushed again meanwhile. The store backs off. */
    qlink_t *p = dones.next;
    while (p != &dones && ql_entry(p, drec_t, link)->seq < d->seq) p = p->next;
    d->link.next = p;
    d->link.prev = p->prev;
    p->prev->next = &d->link;
    p->prev = &d->link;
    n_dones++;
    fin_add(d->a[D_ID], atoi(d->a[D_COUNT]));
    if (r && (strstr(r->str, "Function not found") || strstr(r->str, "NOSCRIPT")))
        store_disconnect(r->str);   /* the version is checked on reconnect */
}

static void pipe_dones(void)
{
    int n = 0;
    while (!ql_empty(&dones) && n < DONE_BATCH) {
        drec_t *d = ql_entry(dones.next, drec_t, link);
        ql_remove(&d->link);
        n_dones--;
        const char *argv[3 + 5 + D_N] = { "FCALL", "mdm_push_done", "5", k_proc,
                                          d->enr, MDM_KEY_EVENTS, MDM_KEY_PUSH_STATS,
                                          MDM_KEY_CONF };
        for (int i = 0; i < D_N; i++) argv[8 + i] = d->a[i];
        pipe_cmd(done_cb, d, 8 + D_N, argv, NULL);
        n_dones_out++;
        n++;
    }
}

/* ---- items ---------------------------------------------------------------- */

static item_t *item_new(const char *id, int refs)
{
    item_t *it = xcalloc(1, sizeof *it);
    it->id = xstrdup(id);
    it->refs = refs;
    it->first_ms = mono_ms();
    ql_init(&it->link);
    ht_put(&items, it->id, it);
    n_local++;
    it->state = S_LOOKUP;
    ql_push(&lookup_q, &it->link);
    return it;
}

static void item_free(item_t *it)
{
    ht_del(&items, it->id);
    n_local--;
    free(it->id);
    free(it->token);
    free(it->magic);
    free(it->topic);
    xfer_free(it->x);
    free(it);
}

static void to_lookup(item_t *it)
{
    it->state = S_LOOKUP;
    ql_push(&lookup_q, &it->link);
}

/* Final outcome: removes our occurrences from the processing list. If the
 * id was claimed again while this push was in flight, one occurrence stays
 * and the id is pushed once more (with a fresh read of the enrollment). */
static void finish(item_t *it, const char *result, const char *reason,
                   long status, const char *apns_id, const char *ts, const char *detail)
{
    int count = it->again ? it->refs - 1 : it->refs;
    queue_done(it, count, result, reason, status, apns_id, ts, detail);
    if (it->again) {
        it->refs -= count;
        it->again = 0;
        it->attempts = 0;
        it->first_ms = mono_ms();
        to_lookup(it);
        return;
    }
    item_free(it);
}

static void park(item_t *it, topic_t *t)
{
    it->state = S_PARKED;
    it->again = 0;
    ql_push(&t->parked, &it->link);
    t->nparked++;
    n_parked++;
    n_local--;
}

/* ---- topics, certificates ----------------------------------------------------- */

static topic_t *topic_get(const char *name) { return ht_get(&topics_h, name); }

static void fmt_day(int64_t ms, char *buf, size_t len)
{
    fmt_iso8601(ms, buf, len);
    if (len > 10) buf[10] = '\0';
}

static void topic_event(topic_t *t, const char *state, const char *reason,
                        const char *detail)
{
    if (!store_connected()) return;
    pipe_cmdf(NULL, NULL, "FCALL", "mdm_push_topic", "3", MDM_KEY_PUSH_STATS,
              MDM_KEY_EVENTS, MDM_KEY_CONF, t->name, state, reason ? reason : "", conf.name,
              detail ? detail : "", (char *) NULL);
}

static void topic_stop(topic_t *t, const char *reason, const char *detail)
{
    if (t->state == T_STOPPED) return;
    t->state = T_STOPPED;
    free(t->stop_reason);
    t->stop_reason = detail && *detail ? xasprintf("%s: %s", reason, detail)
                                       : xstrdup(reason);
    t->stopped_at = t->reminded_at = mono_ms();
    t->open = 0;
    t->fails = 0;
    t->probe_out = 0;
    st.stopped++;
    while (!ql_empty(&t->ready)) {
        item_t *it = ql_entry(t->ready.next, item_t, link);
        ql_remove(&it->link);
        t->nready--;
        park(it, t);
    }
    /* Apple: after a certificate rejection close the connections */
    mctx_release(t->m);
    t->m = NULL;
    char exp[40];
    fmt_day(t->ident->not_after_ms, exp, sizeof exp);
    char retry[64] = "";
    if (conf.stopped_retry)
        snprintf(retry, sizeof retry, ", or in %llds", (long long) (conf.stopped_retry / 1000));
    log_crit("topic %s STOPPED: push certificate rejected or unusable (%s); "
             "certificate %s, serial %s, expires %s. Pushes for this topic stay "
             "queued (%d held). Renew or replace the certificate; sending resumes "
             "when the file changes, on SIGHUP%s", t->name, t->stop_reason,
             t->ident->path, t->ident->serial, exp, t->nparked + t->inflight, retry);
    topic_event(t, "stopped", reason, detail);
}

static void topic_resume(topic_t *t, const char *why)
{
    if (t->state != T_STOPPED) return;
    t->state = T_ACTIVE;
    t->open = 0;
    t->fails = 0;
    t->pause = 0;
    t->probe_out = 0;
    int n = t->nparked;
    while (!ql_empty(&t->parked)) {
        item_t *it = ql_entry(t->parked.next, item_t, link);
        ql_remove(&it->link);
        t->nparked--;
        n_parked--;
        n_local++;
        to_lookup(it);
    }
    log_notice("topic %s resumed (%s): %d held pushes go out again", t->name, why, n);
    topic_event(t, "active", why, NULL);
}

static void warn_expiry(topic_t *t)
{
    int64_t left = t->ident->not_after_ms - now_ms();
    int day = (int) (now_ms() / 86400000);
    if (left > 30LL * 86400000 || t->expiring_warned_day == day) return;
    t->expiring_warned_day = day;
    char exp[40];
    fmt_iso8601(t->ident->not_after_ms, exp, sizeof exp);
    if (left <= 0)
        log_crit("topic %s: push certificate %s EXPIRED on %s", t->name,
                 t->ident->path, exp);
    else
        log_warn("topic %s: push certificate %s expires on %s (in %lld days): renew "
                 "it for the same topic", t->name, t->ident->path, exp,
                 (long long) (left / 86400000));
}

/* A freshly loaded certificate for its topic (new topic, or a replacement). */
static void topic_install(ident_t *id, int force)
{
    topic_t *t = topic_get(id->topic);
    char exp[40];
    fmt_iso8601(id->not_after_ms, exp, sizeof exp);
    if (!t) {
        t = xcalloc(1, sizeof *t);
        t->name = xstrdup(id->topic);
        t->state = T_ACTIVE;
        ql_init(&t->ready);
        ql_init(&t->parked);
        t->next = topics;
        topics = t;
        ntopics++;
        ht_put(&topics_h, t->name, t);
        log_notice("topic %s: certificate %s loaded (serial %s, expires %s)",
                   t->name, id->path, id->serial, exp);
    } else {
        if (t->ident && strcmp(t->ident->path, id->path) != 0)
            log_warn("topic %s: certificate %s replaces %s (two files for one topic?)",
                     t->name, id->path, t->ident->path);
        log_notice("topic %s: certificate %s reloaded (serial %s, expires %s)",
                   t->name, id->path, id->serial, exp);
        mctx_release(t->m);         /* in-flight requests finish on it */
        t->m = NULL;
        ident_unref(t->ident);
    }
    t->ident = id;
    id->refs++;
    warn_expiry(t);
    if (id->not_after_ms && id->not_after_ms < now_ms()) {
        if (t->state == T_ACTIVE) topic_stop(t, "CertificateExpired", exp);
    } else if (t->state == T_STOPPED) {
        topic_resume(t, force ? "SIGHUP" : "certificate changed");
    }
}

typedef struct csrc {
    char *path, *key;
    int from_dir, seen;
    struct stat sb;
    int have_sb;
    char *topic;
    struct csrc *next;
} csrc_t;

static csrc_t *sources;

static char *read_password(const char *path)
{
    char *pass = NULL;
    char *pf = xasprintf("%s.pass", path);
    const char *file = access(pf, R_OK) == 0 ? pf : conf.p12_password_file;
    if (file) {
        FILE *f = fopen(file, "r");
        if (f) {
            char buf[1024] = "";
            if (fgets(buf, sizeof buf, f)) buf[strcspn(buf, "\r\n")] = '\0';
            fclose(f);
            pass = xstrdup(buf);
        } else {
            log_err("certificate %s: cannot read password file %s: %s", path, file,
                    strerror(errno));
        }
    } else if (getenv("MDM_APNSD_P12_PASSWORD")) {
        pass = xstrdup(getenv("MDM_APNSD_P12_PASSWORD"));
    }
    free(pf);
    return pass;
}

static int same_stat(const struct stat *a, const struct stat *b)
{
    return a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size
        && a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec
        && a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* returns 1 if a certificate was (re)loaded */
static int source_check(csrc_t *s, int force)
{
    struct stat sb, kb;
    if (stat(s->path, &sb) != 0) {
        if (s->have_sb)
            log_err("certificate %s: %s (topic %s keeps its loaded certificate)",
                    s->path, strerror(errno), s->topic ? s->topic : "-");
        s->have_sb = 0;
        return 0;
    }
    if (s->key && stat(s->key, &kb) == 0) {     /* a changed key file counts too */
        sb.st_mtim.tv_sec ^= kb.st_mtim.tv_sec;
        sb.st_mtim.tv_nsec ^= kb.st_mtim.tv_nsec;
        sb.st_size += kb.st_size;
    }
    if (!force && s->have_sb && same_stat(&sb, &s->sb)) return 0;
    s->sb = sb;
    s->have_sb = 1;
    char err[512];
    char *pass = read_password(s->path);
    ident_t *id = ident_load(s->path, s->key, pass, err, sizeof err);
    if (pass) { memset(pass, 0, strlen(pass)); free(pass); }
    if (!id) {
        log_err("certificate %s: %s%s", s->path, err,
                s->topic ? " (the topic keeps its previous certificate)" : "");
        return 0;
    }
    if (s->topic && strcmp(s->topic, id->topic) != 0)
        log_warn("certificate %s now holds topic %s (was %s): devices enrolled "
                 "under %s cannot be reached with it", s->path, id->topic, s->topic,
                 s->topic);
    free(s->topic);
    s->topic = xstrdup(id->topic);
    topic_install(id, force);
    ident_unref(id);                /* the topic holds its own reference */
    return 1;
}

static csrc_t *source_add(const char *path, const char *key, int from_dir)
{
    csrc_t *s = xcalloc(1, sizeof *s);
    s->path = xstrdup(path);
    s->key = key ? xstrdup(key) : NULL;
    s->from_dir = from_dir;
    s->next = sources;
    sources = s;
    return s;
}

static int is_cert_name(const char *n)
{
    size_t l = strlen(n);
    if (n[0] == '.') return 0;
    return (l > 4 && (!strcasecmp(n + l - 4, ".pem") || !strcasecmp(n + l - 4, ".p12")
                      || !strcasecmp(n + l - 4, ".pfx")));
}

/*
 * Certificates uploaded through the HTTP API (PUT v1/pushcert) are kept in
 * Redis; each is loaded when its upload time changes, on the cert-check
 * timer, and takes over its topic as a replaced file would.
 */
typedef struct rcert { char *topic, *ms; struct rcert *next; } rcert_t;
static rcert_t *rcerts;

static void rcert_cb(redisReply *r, void *ctx)
{
    char *topic = ctx;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2
        && r->element[0]->type == REDIS_REPLY_STRING
        && r->element[1]->type == REDIS_REPLY_STRING) {
        rcert_t *c;
        for (c = rcerts; c && strcmp(c->topic, topic); c = c->next) {}
        if (!c) {
            c = xcalloc(1, sizeof *c);
            c->topic = xstrdup(topic);
            c->next = rcerts;
            rcerts = c;
        }
        if (!c->ms || strcmp(c->ms, r->element[0]->str) != 0) {
            free(c->ms);
            c->ms = xstrdup(r->element[0]->str);    /* tried once per upload */
            char err[512], *label = xasprintf("redis:" MDM_KEY_PUSHCERT, topic);
            ident_t *id = ident_load_pem(r->element[1]->str, r->element[1]->len,
                                         label, err, sizeof err);
            if (!id) {
                log_err("certificate %s: %s", label, err);
            } else if (strcmp(id->topic, topic) != 0) {
                log_err("certificate %s holds topic %s, not %s: not loaded",
                        label, id->topic, topic);
                ident_unref(id);
            } else {
                topic_install(id, 0);
                ident_unref(id);
            }
            free(label);
        }
    }
    free(topic);
}

static void rcerts_cb(redisReply *r, void *ctx)
{
    (void) ctx;
    if (!r || r->type != REDIS_REPLY_ARRAY) return;
    for (size_t i = 0; i < r->elements; i++) {
        if (r->element[i]->type != REDIS_REPLY_STRING) continue;
        char *k = xasprintf(MDM_KEY_PUSHCERT, r->element[i]->str);
        pipe_cmdf(rcert_cb, xstrdup(r->element[i]->str), "HMGET", k, "ms", "pem",
                  (char *) NULL);
        free(k);
    }
}

static void certs_scan(int force)
{
    if (conf.cert_dir) {
        for (csrc_t *s = sources; s; s = s->next) s->seen = !s->from_dir;
        DIR *d = opendir(conf.cert_dir);
        if (!d) {
            log_err("cert-dir %s: %s", conf.cert_dir, strerror(errno));
        } else {
            struct dirent *de;
            while ((de = readdir(d))) {
                if (!is_cert_name(de->d_name)) continue;
                char *p = xasprintf("%s/%s", conf.cert_dir, de->d_name);
                csrc_t *s;
                for (s = sources; s; s = s->next)
                    if (!strcmp(s->path, p)) break;
                if (!s) s = source_add(p, NULL, 1);
                s->seen = 1;
                free(p);
            }
            closedir(d);
        }
        for (csrc_t **pp = &sources; *pp;) {
            csrc_t *s = *pp;
            if (s->seen) { pp = &s->next; continue; }
            log_warn("certificate %s was removed; topic %s keeps its loaded certificate",
                     s->path, s->topic ? s->topic : "-");
            *pp = s->next;
            free(s->path);
            free(s->key);
            free(s->topic);
            free(s);
        }
    }
    for (csrc_t *s = sources; s; s = s->next) source_check(s, force);
}

static void certs_init(void)
{
    for (int i = 0; i < conf.certs.n; i++) {
        char *spec = conf.certs.v[i];
        char *colon = strchr(spec, ':');
        if (colon) {
            char *c = xstrndup(spec, (size_t) (colon - spec));
            source_add(c, colon + 1, 0);
            free(c);
        } else {
            source_add(spec, NULL, 0);
        }
    }
    certs_scan(0);
}

/* ---- circuit breaker --------------------------------------------------------- */

static void breaker_ok(topic_t *t)
{
    t->fails = 0;
    if (t->open) {
        log_notice("topic %s: APNs answers again, circuit breaker closed", t->name);
        t->open = 0;
        t->pause = 0;
        t->probe_out = 0;
    }
}

static void breaker_fail(topic_t *t, int probe, const char *reason)
{
    t->fails++;
    int64_t now = mono_ms();
    if (t->open == 2 && probe) {
        t->pause = t->pause * 2 > conf.breaker_max ? conf.breaker_max : t->pause * 2;
        t->open = 1;
        t->probe_out = 0;
        t->open_until = now + jitter(t->pause, 0.2);
        log_warn("topic %s: probe failed (%s), circuit breaker stays open for %lldms",
                 t->name, reason, (long long) (t->open_until - now));
    } else if (!t->open && t->fails >= conf.breaker_threshold) {
        t->open = 1;
        t->pause = conf.breaker_pause;
        t->open_until = now + jitter(t->pause, 0.2);
        log_err("topic %s: circuit breaker OPEN after %d consecutive failures (last: %s), "
                "pausing %lldms", t->name, t->fails, reason,
                (long long) (t->open_until - now));
    }
}

/* ---- responses -------------------------------------------------------------------- */

/* "key": "value" or "key": number in a small flat JSON object */
static int json_field(const char *json, const char *key, char *out, size_t len)
{
    if (!json) return 0;
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(json, pat);
    if (!p) return 0;
    p += strlen(pat);
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    if (*p++ != ':') return 0;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    size_t n = 0;
    if (*p == '"') {
        p++;
        while (*p && *p != '"' && n + 1 < len) {
            if (*p == '\\' && p[1]) p++;
            out[n++] = *p++;
        }
    } else {
        while ((isdigit((unsigned char) *p) || *p == '-' || *p == '.') && n + 1 < len)
            out[n++] = *p++;
    }
    out[n] = '\0';
    for (size_t i = 0; i < n; i++)          /* keep log lines and events tidy */
        if (!isprint((unsigned char) out[i])) out[i] = '?';
    return n > 0;
}

static int cert_alert(const char *err)
{
    static const char *pats[] = { "alert bad certificate", "certificate revoked",
        "certificate expired", "alert certificate unknown", "alert unknown ca",
        "certificate required", "alert access denied", "alert unsupported certificate",
        NULL };
    for (int i = 0; pats[i]; i++)
        if (strcasestr(err, pats[i])) return 1;
    return 0;
}

static void retry_item(item_t *it, const char *reason, long status, const char *detail,
                       const char *apns_id)
{
    int64_t now = mono_ms();
    it->again = 0;              /* the retry covers any newer request */
    if (conf.give_up && now - it->first_ms >= conf.give_up) {
        log_err("push id=%s topic=%s: gave up after %d attempts over %llds (last: %s%s%s)",
                it->id, it->topic, it->attempts,
                (long long) ((now - it->first_ms) / 1000), reason, *detail ? ": " : "",
                detail);
        st.gave_up++;
        finish(it, "gave_up", reason, status, apns_id, NULL, detail);
        return;
    }
    int sh = it->attempts > 0 ? it->attempts - 1 : 0;
    if (sh > 30) sh = 30;
    int64_t d = conf.retry_base << sh;
    if (d > conf.retry_max || d <= 0) d = conf.retry_max;
    d = jitter(d, 0.2);
    if (d < 1) d = 1;
    it->due_ms = now + d;
    it->state = S_WAIT;
    heap_push(&retry_h, it);
    st.retried++;
    log_warn("push id=%s topic=%s status=%ld reason=%s%s%s attempt=%d: retry in %lldms",
             it->id, it->topic, status, reason, *detail ? ": " : "", detail, it->attempts,
             (long long) d);
    queue_done(it, 0, "retry", reason, status, apns_id, NULL, detail);
}

static void on_complete(item_t *it, xfer_t *x, mctx_t *m, int res, long status,
                        long httpv, long nconn)
{
    topic_t *t = m->t;
    int probe = it->probe;
    it->probe = 0;
    if (probe) t->probe_out = 0;
    t->inflight--;
    n_flight--;
    if (nconn > 0) {
        st.connects += (unsigned long long) nconn;
        log_info("topic %s: new APNs connection (%llu so far)", t->name, st.connects);
    }
    char reason[128] = "", ts[32] = "", detail[256] = "";
    json_field(x->resp, "reason", reason, sizeof reason);
    json_field(x->resp, "timestamp", ts, sizeof ts);

    if (status) m->warm = 1;
    if (res != APNS_OK) {
        const char *err = x->errbuf;
        /* our certificate refused by the server (a TLS alert), or unusable */
        int tls = res == APNS_ETLS || (res == APNS_ENET && cert_alert(err));
        snprintf(reason, sizeof reason, "%s", tls ? "TLS" : "Network");
        snprintf(detail, sizeof detail, "%s", err);
        if (tls) {
            log_err("push id=%s topic=%s: TLS: %s", it->id, t->name, detail);
            topic_stop(t, reason, detail);
            queue_done(it, 0, "stopped", reason, 0, NULL, NULL, detail);
            park(it, t);
            return;
        }
        /* A reset stream, or one left unanswered after a GOAWAY, is the
         * server rotating the connection: retry, but it says nothing about
         * the server being down. */
        if (res != APNS_ESTREAM)
            breaker_fail(t, probe, detail);
        retry_item(it, reason, 0, detail, NULL);
        return;
    }
    if (httpv != 2 && !warned_http1) {
        warned_http1 = 1;
        log_warn("APNs server %s answered without HTTP/2: no multiplexing", conf.apns_url);
    }
    if (!reason[0] && status != 200) snprintf(reason, sizeof reason, "HTTP%ld", status);

    if (status >= 500) {
        breaker_fail(t, probe, reason);
        retry_item(it, reason, status, "", x->apns_id);
        return;
    }
    breaker_ok(t);
    switch (status) {
    case 200:
        st.ok++;
        log_debug("push id=%s topic=%s ok apns-id=%s", it->id, t->name, x->apns_id);
        finish(it, "ok", NULL, status, x->apns_id, NULL, NULL);
        return;
    case 410:
        st.failed++;
        log_warn("push id=%s topic=%s status=410 reason=%s timestamp=%s: token no "
                 "longer valid (dead until a newer TokenUpdate)", it->id, t->name, reason,
                 ts[0] ? ts : "-");
        finish(it, "unregistered", reason, status, x->apns_id, ts, NULL);
        return;
    case 429:
        retry_item(it, reason, status, "", x->apns_id);
        return;
    case 403:
        log_err("push id=%s topic=%s status=403 reason=%s", it->id, t->name, reason);
        topic_stop(t, reason, NULL);
        queue_done(it, 0, "stopped", reason, status, x->apns_id, NULL, NULL);
        park(it, t);
        return;
    case 400:
        if (!strcmp(reason, "BadDeviceToken") || !strcmp(reason, "DeviceTokenNotForTopic")) {
            st.failed++;
            log_warn("push id=%s topic=%s status=400 reason=%s: token flagged bad, "
                     "not retried", it->id, t->name, reason);
            finish(it, "bad_token", reason, status, x->apns_id, NULL, NULL);
            return;
        }
        if (!strcmp(reason, "IdleTimeout")) {
            retry_item(it, reason, status, "", x->apns_id);
            return;
        }
        /* the topic, not the item: every push of it would fail alike */
        if (!strcmp(reason, "BadTopic") || !strcmp(reason, "TopicDisallowed")) {
            log_err("push id=%s topic=%s status=400 reason=%s", it->id, t->name,
                    reason);
            topic_stop(t, reason, NULL);
            queue_done(it, 0, "stopped", reason, status, x->apns_id, NULL, NULL);
            park(it, t);
            return;
        }
        /* fallthrough */
    default:
        st.failed++;
        log_err("push id=%s topic=%s status=%ld reason=%s: not retried", it->id,
                t->name, status, reason);
        finish(it, "failed", reason, status, x->apns_id, NULL, NULL);
        return;
    }
}

/* ---- Redis cycle ------------------------------------------------------------------ */

static const char *is_hex_token(char *s)
{
    size_t n = strlen(s);
    if (n < 2 || n > 400 || n % 2) return NULL;
    for (char *p = s; *p; p++) {
        if (!isxdigit((unsigned char) *p)) return NULL;
        *p = (char) tolower((unsigned char) *p);
    }
    return s;
}

static void skip(item_t *it, const char *why)
{
    st.skipped++;
    log_info("push id=%s skipped: %s", it->id, why);
    finish(it, "skipped", why, 0, NULL, NULL, NULL);
}

static void set_str(char **dst, const redisReply *r)
{
    free(*dst);
    *dst = r && r->type == REDIS_REPLY_STRING ? xstrndup(r->str, r->len) : NULL;
}

static long long rnum(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_STRING ? atoll(r->str) : 0;
}

static int reql(const redisReply *r, const char *v)
{
    return r && r->type == REDIS_REPLY_STRING && !strcmp(r->str, v);
}

enum { F_TOKEN, F_MAGIC, F_TOPIC, F_ENABLED, F_DEAD, F_BAD, F_UPDATE, F_N };

static void lookup_cb(redisReply *r, void *ctx)
{
    item_t *it = ctx;
    if (!r) {                       /* connection lost: read it again later */
        to_lookup(it);
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != F_N) {
        /* e.g. WRONGTYPE: the key is not an enrollment hash */
        log_err("push id=%s: cannot read the enrollment: %s", it->id,
                r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        skip(it, "bad_enrollment");
        return;
    }
    redisReply **f = r->element;
    int any = 0;
    for (int i = 0; i < F_N; i++) any |= f[i]->type == REDIS_REPLY_STRING;
    if (!any) { skip(it, "missing"); return; }
    if (!reql(f[F_ENABLED], "1")) { skip(it, "disabled"); return; }
    if (reql(f[F_BAD], "1")) { skip(it, "token_bad"); return; }
    long long dead = rnum(f[F_DEAD]);
    if (dead > 0 && dead >= rnum(f[F_UPDATE])) { skip(it, "token_dead"); return; }
    set_str(&it->token, f[F_TOKEN]);
    set_str(&it->magic, f[F_MAGIC]);
    set_str(&it->topic, f[F_TOPIC]);
    if (!it->token || !it->token[0]) { skip(it, "no_token"); return; }
    if (!is_hex_token(it->token)) { skip(it, "token_not_hex"); return; }
    if (!it->magic || !it->magic[0]) { skip(it, "no_push_magic"); return; }
    if (!it->topic || !it->topic[0]) { skip(it, "no_topic"); return; }
    topic_t *t = topic_get(it->topic);
    if (!t) {
        st.failed++;
        log_err("push id=%s topic=%s: no push certificate for this topic, not sent",
                it->id, it->topic);
        finish(it, "failed", "NoCertificate", 0, NULL, NULL, it->topic);
        return;
    }
    if (t->state == T_STOPPED) {
        park(it, t);
        return;
    }
    it->state = S_READY;
    ql_push(&t->ready, &it->link);
    t->nready++;
}

static void pipe_lookups(void)
{
    static const char *fields[F_N] = { "token", "push_magic", "topic", "enabled",
                                       "token_dead_ms", "token_bad", "token_update_ms" };
    for (int n = 0; n < LOOKUP_BATCH && !ql_empty(&lookup_q); n++) {
        item_t *it = ql_entry(lookup_q.next, item_t, link);
        ql_remove(&it->link);
        char *key = enr_key(it->id);
        const char *argv[2 + F_N] = { "HMGET", key };
        for (int i = 0; i < F_N; i++) argv[2 + i] = fields[i];
        pipe_cmd(lookup_cb, it, 2 + F_N, argv, NULL);
        free(key);
    }
}

static void fatal_conflict(const char *msg)
{
    log_crit("%s: exiting (give every instance its own --name)", msg);
    exit(1);
}

static int claim_want;

static void claim_cb(redisReply *r, void *ctx)
{
    (void) ctx;
    claim_inflight = 0;
    if (!r) { more_in_q = 1; return; }
    if (r->type == REDIS_REPLY_ERROR) {
        if (!strncmp(r->str, "NAMECONFLICT", 12)) fatal_conflict(r->str);
        log_debug("redis: mdm_push_claim: %s", r->str);   /* store backs off */
        more_in_q = 1;
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY) return;
    beat_ok = 1;
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING) continue;
        item_t *it = ht_get(&items, e->str);
        if (!it) {
            item_new(e->str, 1);
            continue;
        }
        it->refs++;
        if (it->state == S_FLIGHT) it->again = 1;
        else st.coalesced++;
    }
    more_in_q = (int) r->elements >= claim_want;
}

static void beat_cb(redisReply *r, void *ctx)
{
    (void) ctx;
    if (r && r->type == REDIS_REPLY_ERROR) {
        if (!strncmp(r->str, "NAMECONFLICT", 12)) fatal_conflict(r->str);
        log_debug("redis: mdm_push_beat: %s", r->str);    /* store backs off */
    } else if (r) {
        beat_ok = 1;
    }
}

static void adopt_cb(redisReply *r, void *ctx)
{
    (void) ctx;
    adopt_inflight = 0;
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        adopt_fin_clear();
        need_adopt = 1;
        return;
    }
    htab_t cnt = { 0 };
    int *counts = xcalloc(r->elements, sizeof *counts);
    int adopted = 0;
    for (size_t i = 0; i < r->elements; i++) {
        const char *id = r->element[i]->str;
        int *c = ht_get(&cnt, id);
        if (!c) { c = &counts[i]; ht_put(&cnt, id, c); }
        (*c)++;
    }
    for (size_t i = 0; i < r->elements; i++) {
        if (!counts[i]) continue;
        const char *id = r->element[i]->str;
        fin_t *fin = ht_get(&adopt_fin, id);
        if (fin) counts[i] = fin->n >= counts[i] ? 0 : counts[i] - fin->n;
        if (!counts[i]) continue;
        item_t *it = ht_get(&items, id);
        if (!it) {
            item_new(id, counts[i]);
            adopted += counts[i];
        } else if (counts[i] > it->refs) {
            adopted += counts[i] - it->refs;
            if (it->state == S_FLIGHT) it->again = 1;
            it->refs = counts[i];
        }
    }
    for (size_t i = 0; i < cnt.nb; i++)
        for (hent_t *e = cnt.b[i], *n; e; e = n) { n = e->next; free(e); }
    free(cnt.b);
    free(counts);
    adopt_fin_clear();
    if (adopted) {
        st.adopted += (unsigned long long) adopted;
        log_notice("took over %d pushes %s %s", adopted,
                   first_adopt ? "left by a previous run in" : "found in", k_proc);
    }
    first_adopt = 0;
}

static void recover_cb(redisReply *r, void *ctx)
{
    char *name = ctx;
    if (r && r->type == REDIS_REPLY_INTEGER && r->integer >= 0) {
        if (r->integer > 0) {
            st.recovered += (unsigned long long) r->integer;
            more_in_q = 1;
        }
        log_notice("sender %s is gone (no heartbeat): %lld of its pushes queued again",
                   name, (long long) r->integer);
    } else if (r && r->type == REDIS_REPLY_ERROR) {
        log_err("redis: mdm_push_recover %s: %s", name, r->str);
    }
    free(name);
}

/* mdm_sweep: bounded calls, the next one at once while work is due */
static void sweep_cb(redisReply *r, void *ctx)
{
    (void) ctx;
    sweep_inflight = 0;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 3) {
        long long expired = r->element[0]->integer, released = r->element[1]->integer;
        if (expired || released)
            log_info("sweep: %lld queued commands expired, %lld commands released",
                     expired, released);
        if (r->element[2]->integer) next_sweep = 0;
    } else if (r && r->type == REDIS_REPLY_ERROR) {
        log_err("redis: mdm_sweep: %s", r->str);
    }
}

static void senders_cb(redisReply *r, void *ctx)
{
    (void) ctx;
    if (!r || r->type != REDIS_REPLY_ARRAY) return;
    for (size_t i = 0; i < r->elements; i++) {
        const char *name = r->element[i]->str;
        if (!name || !strcmp(name, conf.name)) continue;
        char *proc = xasprintf(MDM_KEY_PUSH_PROC, name),
             *alive = xasprintf(MDM_KEY_PUSH_ALIVE, name);
        pipe_cmdf(recover_cb, xstrdup(name), "FCALL", "mdm_push_recover", "6",
                  MDM_KEY_PUSH_Q, MDM_KEY_PUSH_PENDING, proc, alive, MDM_KEY_PUSH_STATS,
                  MDM_KEY_PUSH_SENDERS, "dead", name, (char *) NULL);
        free(proc);
        free(alive);
    }
}

static void stats_cb(redisReply *r, void *ctx)
{
    (void) ctx;
    long long q = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    if (q >= 0) {                   /* queue depth as this sender last saw it */
        char v[32];
        snprintf(v, sizeof v, "%lld", q);
        pipe_cmdf(NULL, NULL, "HSET", MDM_KEY_PUSH_STATS, "queue", v, (char *) NULL);
    }
    char tl[512] = "";
    size_t o = 0;
    for (topic_t *t = topics; t && o < sizeof tl - 100; t = t->next)
        o += (size_t) snprintf(tl + o, sizeof tl - o, "%s%s:%s", o ? "," : "", t->name,
                               t->state == T_STOPPED ? "stopped"
                               : t->open ? "breaker-open" : "active");
    log_info("stats sent=%llu ok=%llu failed=%llu retried=%llu skipped=%llu "
             "coalesced=%llu gave_up=%llu stopped=%llu inflight=%d held=%d parked=%d "
             "queue=%lld connects=%llu topics=%s", st.sent, st.ok, st.failed,
             st.retried, st.skipped, st.coalesced, st.gave_up, st.stopped, n_flight,
             n_local, n_parked, q, st.connects, tl);
    for (topic_t *t = topics; t; t = t->next)
        if (t->state == T_STOPPED && mono_ms() - t->reminded_at >= conf.stats_interval - 10) {
            t->reminded_at = mono_ms();
            log_crit("topic %s is still STOPPED (%s) for %llds; %d pushes held; "
                     "replace the certificate %s", t->name, t->stop_reason,
                     (long long) ((mono_ms() - t->stopped_at) / 1000), t->nparked,
                     t->ident->path);
        }
}

static int64_t room(void) { return max_local - n_local; }

static void redis_cycle(int64_t now)
{
    if (now >= next_stats && !store_connected()) {
        stats_cb(NULL, NULL);
        next_stats = now + conf.stats_interval;
    }
    if (store_connect() != 0) return;       /* non-blocking, driven by the loop */
    if (store_take_fresh()) {
        need_adopt = 1;
        more_in_q = 1;
    }
    if (store_paused(now)) return;          /* Redis refused: back off */
    if (n_dones) pipe_dones();
    /* Our list in Redis is the truth: read it on (re)connect and now and
     * then, after all outcomes are out, and hold whatever we do not know
     * (a claim whose answer was lost, an older process with our name). */
    if ((need_adopt || (!shutting && now >= next_adopt)) && !n_dones && !adopt_inflight) {
        need_adopt = 0;
        adopt_inflight = 1;
        next_adopt = now + conf.recover_interval;
        pipe_cmdf(adopt_cb, NULL, "LRANGE", k_proc, "0", "-1", (char *) NULL);
    }
    char ttl[32], n[32];
    snprintf(ttl, sizeof ttl, "%lld", (long long) conf.alive_ttl);
    int64_t r = room();
    if (!shutting && more_in_q && !claim_inflight && !outcomes_full()
        && (r >= (conf.batch + 1) / 2 || (r > 0 && !n_local))) {
        claim_inflight = 1;
        claim_want = (int) (r < conf.batch ? r : conf.batch);
        snprintf(n, sizeof n, "%d", claim_want);
        pipe_cmdf(claim_cb, NULL, "FCALL", "mdm_push_claim", "5", MDM_KEY_PUSH_Q,
                  MDM_KEY_PUSH_PENDING, k_proc, k_alive, MDM_KEY_PUSH_SENDERS, n, ttl,
                  nonce, conf.name, beat_ok ? "0" : "1", (char *) NULL);
        more_in_q = 0;          /* set again by a full reply */
        next_beat = now + conf.alive_ttl / 3;
    }
    if (!shutting && now >= next_beat) {
        pipe_cmdf(beat_cb, NULL, "FCALL", "mdm_push_beat", "2", k_alive,
                  MDM_KEY_PUSH_SENDERS, nonce, ttl, conf.name, beat_ok ? "0" : "1", (char *) NULL);
        next_beat = now + conf.alive_ttl / 3;
    }
    if (!shutting && !ql_empty(&lookup_q)) pipe_lookups();
    if (!shutting && conf.sweep_interval && now >= next_sweep && !sweep_inflight) {
        sweep_inflight = 1;
        next_sweep = now + conf.sweep_interval;
        pipe_cmdf(sweep_cb, NULL, "FCALL", "mdm_sweep", "0", (char *) NULL);
    }
    if (!shutting && now >= next_recover) {
        pipe_cmdf(senders_cb, NULL, "SMEMBERS", MDM_KEY_PUSH_SENDERS, (char *) NULL);
        next_recover = now + conf.recover_interval;
    }
    if (now >= next_stats) {
        char a[64], b[64], c[64], v1[32], v2[32], v3[32];
        snprintf(a, sizeof a, "inflight:%s", conf.name);
        snprintf(b, sizeof b, "held:%s", conf.name);
        snprintf(c, sizeof c, "parked:%s", conf.name);
        snprintf(v1, sizeof v1, "%d", n_flight);
        snprintf(v2, sizeof v2, "%d", n_local);
        snprintf(v3, sizeof v3, "%d", n_parked);
        pipe_cmdf(NULL, NULL, "HSET", MDM_KEY_PUSH_STATS, a, v1, b, v2, c, v3, (char *) NULL);
        pipe_cmdf(stats_cb, NULL, "LLEN", MDM_KEY_PUSH_Q, (char *) NULL);
        next_stats = now + conf.stats_interval;
    }
    st.cmds += (unsigned long long) pipe_pending();
    if (pipe_pending()) st.flushes++;
    pipe_send();
}

/* ---- sending -------------------------------------------------------------------------- */

static void dispatch(int64_t now)
{
    if (shutting || outcomes_full()) return;
    int64_t cap = conf.connections * conf.streams;
    for (topic_t *t = topics; t; t = t->next) {
        if (t->state != T_ACTIVE || !t->nready) continue;
        if (t->open == 1) {
            if (now < t->open_until) continue;
            t->open = 2;
            t->probe_out = 0;
            log_notice("topic %s: circuit breaker half open, sending a probe", t->name);
        }
        if (!t->m) t->m = mctx_new(t, t->ident);
        /* Slow start: one request until the first answer of a new context,
         * so a rejected certificate or topic costs one request, not a
         * window's worth (the server's stream limit is apns.c's concern). */
        int64_t lim = cap;
        if (!t->m->warm) lim = t->m->inflight ? 0 : t->inflight + 1;
        while (t->nready && t->inflight < lim && !(t->open == 2 && t->probe_out)
               && !outcomes_full()) {
            item_t *it = ql_entry(t->ready.next, item_t, link);
            ql_remove(&it->link);
            t->nready--;
            if (apns_send(it, t->m) != 0) {
                log_err("push id=%s: cannot start a transfer", it->id);
                it->attempts++;
                retry_item(it, "LocalError", 0, "cannot queue the request", NULL);
                continue;
            }
            it->state = S_FLIGHT;
            it->attempts++;
            t->inflight++;
            n_flight++;
            st.sent++;
            if (t->open == 2) {
                t->probe_out = 1;
                it->probe = 1;
            }
        }
    }
}

static void retry_due(int64_t now)
{
    item_t *it;
    while ((it = heap_top(&retry_h)) && it->due_ms <= now) {
        heap_pop(&retry_h);
        to_lookup(it);
    }
}

static void topics_tick(int64_t now)
{
    for (topic_t *t = topics; t; t = t->next) {
        if (t->state == T_STOPPED && conf.stopped_retry
            && now - t->stopped_at >= conf.stopped_retry)
            topic_resume(t, "stopped-retry elapsed");
        warn_expiry(t);
    }
}

/* ---- shutdown ---------------------------------------------------------------------------- */

static void leave_cb(redisReply *r, void *ctx)
{
    int *ok = ctx;
    if (r && r->type == REDIS_REPLY_INTEGER) {
        *ok = 1;
        if (r->integer > 0)
            log_notice("%lld held pushes put back at the head of %s", r->integer, MDM_KEY_PUSH_Q);
    } else if (r && r->type == REDIS_REPLY_ERROR) {
        log_err("redis: mdm_push_recover (leave): %s", r->str);
    }
}

static void finalize(void)
{
    int ok = 0;
    int64_t until = mono_ms() + conf.redis_timeout * 2;
    /* Outcomes first, then the rest of our list goes back to the queue */
    while (!ok && mono_ms() < until) {
        if (store_wait_ready(until) == 0) {
            while (n_dones) pipe_dones();
            pipe_cmdf(leave_cb, &ok, "FCALL", "mdm_push_recover", "6", MDM_KEY_PUSH_Q,
                      MDM_KEY_PUSH_PENDING, k_proc, k_alive, MDM_KEY_PUSH_STATS,
                      MDM_KEY_PUSH_SENDERS, "leave", conf.name,
                      (char *) NULL);
            pipe_flush_sync(until - mono_ms());
            if (ok && n_dones) ok = 0;      /* should not happen: keep trying */
        }
        if (!ok) usleep(50000);
    }
    if (!ok)
        log_err("could not return held pushes to %s; they stay in %s and are taken over "
                "when this name restarts or its heartbeat expires", MDM_KEY_PUSH_Q, k_proc);
    if (n_dones)
        log_err("%d outcomes not written (Redis refused them until the end): "
                "those pushes stay in %s and are sent again after a restart",
                n_dones, k_proc);
    log_notice("stopped (sent=%llu ok=%llu failed=%llu retried=%llu)", st.sent, st.ok,
               st.failed, st.retried);
    log_info("loop: %llu iterations, %llu ms waiting; %llu Redis pipelines, %llu commands",
             st.loops, st.wait_us / 1000, st.flushes, st.cmds);
    waiter_close(epfd);
    apns_shutdown();
    cert_cleanup();
    exit(0);
}

static void begin_shutdown(int sig)
{
    int64_t now = mono_ms();
    if (shutting) {
        log_notice("signal %d again: abandoning %d requests in flight", sig, n_flight);
        shutdown_deadline = now;
        return;
    }
    shutting = 1;
    shutdown_deadline = now + conf.shutdown_timeout;
    waiter_close(epfd);
    waiter_armed = 0;
    log_notice("signal %d: stopping; %d requests in flight finish, %d held pushes "
               "go back to the queue", sig, n_flight, n_local + n_parked - n_flight);
}

static void handle_signals(void)
{
    struct signalfd_siginfo si;
    while (read(sigfd, &si, sizeof si) == sizeof si) {
        switch (si.ssi_signo) {
        case SIGTERM:
        case SIGINT:
            begin_shutdown((int) si.ssi_signo);
            break;
        case SIGHUP:
            log_notice("SIGHUP: re-reading certificates");
            certs_scan(1);
            for (topic_t *t = topics; t; t = t->next) topic_resume(t, "SIGHUP");
            break;
        case SIGUSR1:
            next_stats = 0;
            break;
        }
    }
}

static void abandon_inflight(void)
{
    for (size_t i = 0; i < items.nb; i++)
        for (hent_t *e = items.b[i]; e; e = e->next) {
            item_t *it = e->val;
            if (it->state == S_FLIGHT && it->x) {
                topic_t *t = it->x->m->t;
                apns_abort(it);
                t->inflight--;
                n_flight--;
                it->state = S_WAIT;      /* not sent again; stays in our list */
            }
        }
}

/* ---- main ----------------------------------------------------------------------------------- */

static int64_t min_t(int64_t a, int64_t b) { return a < 0 ? b : (b < 0 || a < b) ? a : b; }

static int check_mode(void)
{
    int bad = ntopics == 0;
    for (topic_t *t = topics; t; t = t->next) {
        char exp[40];
        fmt_iso8601(t->ident->not_after_ms, exp, sizeof exp);
        printf("topic %s  certificate %s  serial %s  expires %s%s\n", t->name,
               t->ident->path, t->ident->serial, exp,
               t->state == T_STOPPED ? "  EXPIRED" : "");
        if (t->state == T_STOPPED) bad = 1;
    }
    if (store_wait_ready(mono_ms() + conf.redis_timeout) == 0) {
        printf("redis %s: ok, function library mdm_push %s\n", conf.redis_show,
               PUSH_LIB_VERSION);
    } else {
        printf("redis %s: not usable (see log)\n", conf.redis_show);
        bad = 1;
    }
    printf("apns %s\n", conf.apns_url);
    return bad;
}

int main(int argc, char **argv)
{
    conf_load(argc, argv);
    log_open(conf.log_file);
    log_set_level(conf.log_level);
    signal(SIGPIPE, SIG_IGN);
    ql_init(&lookup_q);
    ql_init(&dones);
    k_proc = xasprintf(MDM_KEY_PUSH_PROC, conf.name);
    k_alive = xasprintf(MDM_KEY_PUSH_ALIVE, conf.name);
    {
        char host[128] = "?";
        gethostname(host, sizeof host - 1);
        snprintf(nonce, sizeof nonce, "%.40s/%d/%08x", host, (int) getpid(),
                 (unsigned) (rand01() * 4294967295.0));
    }

    certs_init();
    if (conf.check_only) return check_mode();
    if (!ntopics) {
        log_crit("no usable push certificate (see the errors above); exiting");
        return 1;
    }

    epfd = epoll_create1(EPOLL_CLOEXEC);
    sigset_t ss;
    sigemptyset(&ss);
    sigaddset(&ss, SIGTERM);
    sigaddset(&ss, SIGINT);
    sigaddset(&ss, SIGHUP);
    sigaddset(&ss, SIGUSR1);
    sigprocmask(SIG_BLOCK, &ss, NULL);
    sigfd = signalfd(-1, &ss, SFD_NONBLOCK | SFD_CLOEXEC);
    struct epoll_event sev = { .events = EPOLLIN,
                               .data.u64 = ((uint64_t) EV_SIGNAL << 32) | (uint32_t) sigfd };
    epoll_ctl(epfd, EPOLL_CTL_ADD, sigfd, &sev);
    apns_init(epfd, on_complete);
    store_set_epoll(epfd);

    max_local = conf.max_local ? conf.max_local
              : conf.connections * conf.streams * (ntopics ? ntopics : 1) + 2 * conf.batch;
    int64_t now = mono_ms();
    next_stats = now + conf.stats_interval;
    next_cert = now + conf.cert_check;
    log_notice("mdm-apnsd %s started: name %s, %d topic(s), apns %s, redis %s, "
               "%lld connections x %lld streams per topic", APNSD_VERSION, conf.name,
               ntopics, conf.apns_url, conf.redis_show, (long long) conf.connections,
               (long long) conf.streams);

    struct epoll_event evs[256];
    for (;;) {
        now = mono_ms();
        if (shutting) {
            if (n_flight && now >= shutdown_deadline) abandon_inflight();
            if (!n_flight) {
                redis_cycle(now);       /* outcomes of the last answers */
                finalize();
            }
        }
        redis_cycle(now);
        if (store_connected() && !store_paused(now) && !shutting && !more_in_q
            && !waiter_armed) {
            if (waiter_arm(epfd) == 0) waiter_armed = 1;
            else next_poll = now + 1000;
        }
        dispatch(now);
        apns_reap();

        int64_t dl = -1;
        int busy = store_connected() && !store_paused(now)
            && (n_dones || (!shutting && !ql_empty(&lookup_q)) || pipe_pending()
                || (need_adopt && !adopt_inflight)
                || (!shutting && more_in_q && !claim_inflight && !outcomes_full()
                    && room() >= (conf.batch + 1) / 2));
        if (!busy) {
            dl = min_t(dl, apns_next_timer());
            if (heap_top(&retry_h)) dl = min_t(dl, heap_top(&retry_h)->due_ms);
            dl = min_t(dl, next_beat);
            dl = min_t(dl, next_recover);
            if (conf.sweep_interval) dl = min_t(dl, next_sweep);
            dl = min_t(dl, next_stats);
            dl = min_t(dl, next_cert);
            dl = min_t(dl, store_next_event(now));
            if (!waiter_armed && !more_in_q) dl = min_t(dl, next_poll);
            if (shutting) dl = min_t(dl, shutdown_deadline);
            for (topic_t *t = topics; t; t = t->next) {
                if (t->open == 1 && t->nready) dl = min_t(dl, t->open_until);
                if (t->state == T_STOPPED && conf.stopped_retry)
                    dl = min_t(dl, t->stopped_at + conf.stopped_retry);
            }
        }
        int timeout = busy ? 0 : dl < 0 ? 1000 : dl <= now ? 0
                    : (int) (dl - now > 60000 ? 60000 : dl - now);
        st.loops++;
        int64_t w0 = mono_us();
        int n = epoll_wait(epfd, evs, 256, timeout);
        st.wait_us += (unsigned long long) (mono_us() - w0);
        if (n < 0 && errno != EINTR) {
            log_crit("epoll_wait: %s", strerror(errno));
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int kind = (int) (evs[i].data.u64 >> 32);
            int fd = (int) (uint32_t) evs[i].data.u64;
            if (kind == EV_CURL) apns_socket_event(fd, evs[i].events);
            else if (kind == EV_SIGNAL) handle_signals();
            else if (kind == EV_REDIS) store_event(evs[i].events);
            else if (kind == EV_WAITER && fd == waiter_fd()) {
                int got = waiter_event(epfd, evs[i].events);
                if (got >= 0) waiter_armed = 0;     /* re-armed when needed */
                if (got > 0) more_in_q = 1;
            }
        }
        now = mono_ms();
        apns_run_timers(now);
        retry_due(now);
        if (!more_in_q && !waiter_armed && now >= next_poll) more_in_q = 1;
        if (now >= next_cert) {
            certs_scan(0);
            if (store_connected())
                pipe_cmdf(rcerts_cb, NULL, "SMEMBERS", MDM_KEY_PUSHCERTS, (char *) NULL);
            topics_tick(now);
            next_cert = now + conf.cert_check;
        }
    }
}
