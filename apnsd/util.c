/* Logging, clocks, allocation helpers. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/random.h>

#include "apnsd.h"

static FILE *logf_;
static int log_min = LOG_INFO_;
static const char *lvl_names[] = { "debug", "info", "notice", "warn", "error", "crit" };

void log_open(const char *path)
{
    if (path && *path && strcmp(path, "-") != 0 && strcmp(path, "stderr") != 0) {
        FILE *f = fopen(path, "a");
        if (!f) {
            fprintf(stderr, "mdm-apnsd: cannot open log file %s: %s\n", path,
                    strerror(errno));
            exit(1);
        }
        logf_ = f;
    } else {
        logf_ = stderr;
    }
    setvbuf(logf_, NULL, _IOLBF, 0);
}

void log_set_level(int level) { log_min = level; }

int log_level_parse(const char *s)
{
    for (int i = 0; i < 6; i++)
        if (strcmp(s, lvl_names[i]) == 0) return i;
    if (strcmp(s, "warning") == 0) return LOG_WARN_;
    if (strcmp(s, "err") == 0) return LOG_ERR_;
    return -1;
}

void logm(int level, const char *fmt, ...)
{
    if (level < log_min) return;
    if (!logf_) logf_ = stderr;
    char ts[40], msg[2048];
    fmt_iso8601(now_ms(), ts, sizeof ts);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* one line per message, whatever the arguments contained */
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    fprintf(logf_, "%s mdm-apnsd[%d]: [%s] %s\n", ts, (int) getpid(),
            lvl_names[level], msg);
}

void fmt_iso8601(int64_t ms, char *buf, size_t len)
{
    time_t s = (time_t) (ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int) (ms % 1000));
}

int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static uint64_t rng_state;

double rand01(void)
{
    if (!rng_state) {
        if (getrandom(&rng_state, sizeof rng_state, 0) != sizeof rng_state)
            rng_state = (uint64_t) now_ms() ^ ((uint64_t) getpid() << 32);
        rng_state |= 1;
    }
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double) ((rng_state * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

int64_t jitter(int64_t ms, double frac)
{
    return (int64_t) ((double) ms * (1.0 - frac + 2.0 * frac * rand01()));
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) { fprintf(stderr, "mdm-apnsd: out of memory\n"); abort(); }
    return p;
}

void *xcalloc(size_t n, size_t m)
{
    void *p = calloc(n ? n : 1, m ? m : 1);
    if (!p) { fprintf(stderr, "mdm-apnsd: out of memory\n"); abort(); }
    return p;
}

void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) { fprintf(stderr, "mdm-apnsd: out of memory\n"); abort(); }
    return p;
}

char *xstrdup(const char *s) { return xstrndup(s, strlen(s)); }

char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    char probe[1];
    va_start(ap, fmt);
    int n = vsnprintf(probe, sizeof probe, fmt, ap);
    va_end(ap);
    char *p = xmalloc((size_t) n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t) n + 1, fmt, ap);
    va_end(ap);
    return p;
}

char *enr_key(const char *id)
{
    char *dev = xstrndup(id, strcspn(id, ":"));
    char *k = xasprintf(MDM_KEY_ENR, dev, id);
    free(dev);
    return k;
}

/* ---- string-keyed hash table ------------------------------------------- */

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;          /* FNV-1a */
    for (; *s; s++) { h ^= (unsigned char) *s; h *= 1099511628211ULL; }
    return h;
}

void *ht_get(htab_t *t, const char *key)
{
    if (!t->nb) return NULL;
    for (hent_t *e = t->b[hash_str(key) & (t->nb - 1)]; e; e = e->next)
        if (!strcmp(e->key, key)) return e->val;
    return NULL;
}

void ht_put(htab_t *t, const char *key, void *val)
{
    if (t->n + 1 > t->nb) {
        size_t nb = t->nb ? t->nb * 2 : 64;
        hent_t **b = xcalloc(nb, sizeof *b);
        for (size_t i = 0; i < t->nb; i++)
            for (hent_t *e = t->b[i], *n; e; e = n) {
                n = e->next;
                size_t j = hash_str(e->key) & (nb - 1);
                e->next = b[j];
                b[j] = e;
            }
        free(t->b);
        t->b = b;
        t->nb = nb;
    }
    hent_t *e = xmalloc(sizeof *e);
    size_t j = hash_str(key) & (t->nb - 1);
    e->key = key;
    e->val = val;
    e->next = t->b[j];
    t->b[j] = e;
    t->n++;
}

void *ht_del(htab_t *t, const char *key)
{
    if (!t->nb) return NULL;
    for (hent_t **pp = &t->b[hash_str(key) & (t->nb - 1)]; *pp; pp = &(*pp)->next) {
        hent_t *e = *pp;
        if (!strcmp(e->key, key)) {
            void *v = e->val;
            *pp = e->next;
            free(e);
            t->n--;
            return v;
        }
    }
    return NULL;
}

/* ---- retry heap (items by due_ms) --------------------------------------- */

static void heap_swap(heap_t *h, size_t a, size_t b)
{
    item_t *t = h->v[a];
    h->v[a] = h->v[b];
    h->v[b] = t;
    h->v[a]->heap_idx = a;
    h->v[b]->heap_idx = b;
}

static void heap_up(heap_t *h, size_t i)
{
    while (i && h->v[(i - 1) / 2]->due_ms > h->v[i]->due_ms) {
        heap_swap(h, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void heap_down(heap_t *h, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->n && h->v[l]->due_ms < h->v[m]->due_ms) m = l;
        if (r < h->n && h->v[r]->due_ms < h->v[m]->due_ms) m = r;
        if (m == i) return;
        heap_swap(h, i, m);
        i = m;
    }
}

void heap_push(heap_t *h, item_t *it)
{
    if (h->n == h->cap) {
        h->cap = h->cap ? h->cap * 2 : 256;
        h->v = xrealloc(h->v, sizeof *h->v * h->cap);
    }
    it->heap_idx = h->n;
    h->v[h->n++] = it;
    heap_up(h, it->heap_idx);
}

item_t *heap_pop(heap_t *h)
{
    if (!h->n) return NULL;
    item_t *top = h->v[0];
    heap_swap(h, 0, --h->n);
    heap_down(h, 0);
    return top;
}
