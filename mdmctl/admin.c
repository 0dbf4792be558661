/*
 * Admin commands over the mdm Redis Functions (redis-scripts/mdm.lua):
 * enqueue, push, queue, cancel, clear, results, status, devices, show,
 * escrow, unbind, conf and events. Tables for people, --json for scripts; Redis errors are passed
 * through as the one error line.
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "mdmctl.h"
#include "mdm_keys.h"
#include "mdm_redis_addr.h"
#include "mdm_redis_sentinel.h"
#include "mdm_secret.h"


#define MDM_BLOCK_MS     5000
#define MDM_FAILOVER_MS  15000    /* how long sentinel= waits for a primary */


typedef struct {
    const char  *redis;
    const char  *user;
    const char  *password;
    long         db;
    int          json;
} mdm_admin_t;


static mdm_admin_t  mdm_admin;

/* sentinel= and replicas=: what a reconnect and a write's WAIT need */
static mdm_redis_addr_t  mdm_addr;
static int               mdm_timeout;
static int               mdm_connecting;

static redisContext *mdm_connect(int timeout);
static redisContext *mdm_connect_primary(mdm_redis_addr_t *a, int timeout);
static redisContext *mdm_setup(redisContext *c, mdm_redis_addr_t *a,
    int timeout);


/* The options every admin command shares; 1 when ch was one of them. */
static int
mdm_admin_opt(int ch)
{
    switch (ch) {
    case 'R':
        mdm_admin.redis = optarg;
        return 1;
    case 'U':
        mdm_admin.user = optarg;
        return 1;
    case 'P':
        mdm_admin.password = optarg;
        return 1;
    case 'D':
        if (mdm_parse_int(optarg, 0, 1000000, &mdm_admin.db) != 0) {
            mdm_err("--db must be a database number");
            return -1;
        }
        return 1;
    case 'j':
        mdm_admin.json = 1;
        return 1;
    default:
        return 0;
    }
}


/* ---- Redis --------------------------------------------------------------- */

/*
 * A primary demoted under us (READONLY): the same context, now connected
 * to the primary the sentinels name. Nothing ran, so the command is sent
 * again; a lost connection is not retried (the write may have happened).
 */
static int
mdm_reconnect(redisContext *c)
{
    redisContext  *n, tmp;

    n = mdm_connect(mdm_timeout);
    if (n == NULL) {
        return -1;
    }

    tmp = *c;
    *c = *n;
    *n = tmp;
    redisFree(n);

    return 0;
}


static redisReply *
mdm_cmd(redisContext *c, int argc, const char **argv, const size_t *lens)
{
    int          tries;
    redisReply  *r;

    for (tries = 0; ; tries++) {
        r = redisCommandArgv(c, argc, argv, lens);
        if (r == NULL) {
            mdm_err("redis: %s",
                    c->errstr[0] ? c->errstr : "connection lost");
            return NULL;
        }

        if (r->type != REDIS_REPLY_ERROR
            || strncmp(r->str, "READONLY ", 9) != 0
            || mdm_addr.type != MDM_REDIS_ADDR_SENTINEL
            || mdm_connecting || tries == 3)
        {
            break;
        }

        freeReplyObject(r);

        if (mdm_reconnect(c) != 0) {
            return NULL;
        }
    }

    if (r->type == REDIS_REPLY_ERROR) {
        mdm_err("%s", r->str);
        freeReplyObject(r);
        return NULL;
    }

    return r;
}


static redisContext *
mdm_connect(int timeout)
{
    char               err[256];
    const char        *spec;
    struct timeval     tv;
    redisContext      *c;
    mdm_redis_addr_t   a;

    spec = mdm_admin.redis ? mdm_admin.redis : getenv("MDM_REDIS");
    if (spec == NULL || spec[0] == '\0') {
        spec = "unix:/run/redis/redis-server.sock";
    }

    /* the module's and the sender's grammar: names are refused there too */
    if (mdm_redis_addr_spec(&a, spec, err, sizeof(err)) != 0) {
        mdm_err("--redis: %s", err);
        return NULL;
    }

    mdm_addr = a;
    mdm_timeout = timeout;

    if (a.type == MDM_REDIS_ADDR_SENTINEL) {
        return mdm_connect_primary(&a, timeout);
    }

    tv.tv_sec = 5;
    tv.tv_usec = 0;

    if (a.type == MDM_REDIS_ADDR_UNIX) {
        c = redisConnectUnixWithTimeout(a.host, tv);

    } else {
        c = redisConnectWithTimeout(a.host, a.port, tv);
    }

    if (c == NULL || c->err) {
        mdm_err("redis %s: %s", spec, c ? c->errstr : "out of memory");
        redisFree(c);
        return NULL;
    }

    return mdm_setup(c, &a, timeout);
}


/*
 * sentinel=: the primary they name, if its ROLE agrees; during a failover
 * they may not agree yet, so this asks again for up to MDM_FAILOVER_MS.
 */
static redisContext *
mdm_connect_primary(mdm_redis_addr_t *a, int timeout)
{
    int             ok, waited;
    char            err[256];
    struct timeval  tv;
    redisContext   *c;

    tv.tv_sec = 5;
    tv.tv_usec = 0;

    for (waited = 0; ; waited += 250) {
        c = NULL;
        ok = 0;

        if (mdm_redis_sentinel_primary(a, 1000, a->host, sizeof(a->host),
                                       &a->port, err, sizeof(err))
            == 0)
        {
            c = redisConnectWithTimeout(a->host, a->port, tv);
            if (c == NULL || c->err) {
                snprintf(err, sizeof(err), "primary %s:%d: %s", a->host,
                         a->port, c ? c->errstr : "out of memory");
                redisFree(c);
                c = NULL;

            } else {
                mdm_connecting = 1;
                c = mdm_setup(c, a, timeout);
                mdm_connecting = 0;

                if (c) {
                    ok = mdm_redis_role_is_master(c, err, sizeof(err));
                }
            }
        }

        if (ok == 1) {
            return c;
        }

        redisFree(c);

        if (waited >= MDM_FAILOVER_MS) {
            mdm_err("redis: %s", err);
            return NULL;
        }

        usleep(250 * 1000);
    }
}


/* AUTH and SELECT on a new connection; c is freed on failure. */
static redisContext *
mdm_setup(redisContext *c, mdm_redis_addr_t *a, int timeout)
{
    int                n;
    char              *pass;
    const char        *user;
    const char        *argv[3];
    struct timeval     tv;
    redisReply        *r;
    char               db[24];

    tv.tv_usec = 0;

    tv.tv_sec = timeout;
    redisSetTimeout(c, tv);

    if (mdm_admin.password == NULL) {
        mdm_admin.password = getenv("MDM_REDIS_PASSWORD");
    }

    pass = NULL;
    if (mdm_admin.password) {
        if (mdm_password(mdm_admin.password, &pass) != 0) {
            redisFree(c);
            return NULL;
        }

    } else if (a->password[0]) {
        pass = strdup(a->password);
    }

    user = mdm_admin.user ? mdm_admin.user
           : a->username[0] ? a->username : getenv("MDM_REDIS_USER");
    if (user && user[0] == '\0') {
        user = NULL;
    }

    if (user && pass == NULL) {
        mdm_err("Redis user %s: give its password (--password, password= "
                "or $MDM_REDIS_PASSWORD)", user);
        redisFree(c);
        return NULL;
    }

    if (pass) {
        n = 0;
        argv[n++] = "AUTH";
        if (user) {
            argv[n++] = user;
        }
        argv[n++] = pass;
        r = mdm_cmd(c, n, argv, NULL);
        free(pass);
        if (r == NULL) {
            redisFree(c);
            return NULL;
        }
        freeReplyObject(r);
    }

    if (mdm_admin.db == 0) {
        mdm_admin.db = a->db;
    }

    if (mdm_admin.db) {
        snprintf(db, sizeof(db), "%ld", mdm_admin.db);
        argv[0] = "SELECT";
        argv[1] = db;
        r = mdm_cmd(c, 2, argv, NULL);
        if (r == NULL) {
            redisFree(c);
            return NULL;
        }
        freeReplyObject(r);
    }

    return c;
}


/* FCALL or FCALL_RO <fn> 0 <args>... */
static redisReply *
mdm_fcall(redisContext *c, int ro, const char *fn, int n, const char **args,
    const size_t *lens)
{
    int           i;
    char          err[256];
    size_t       *l;
    redisReply   *r;
    const char  **argv;

    argv = malloc((n + 3) * sizeof(char *));
    l = malloc((n + 3) * sizeof(size_t));
    if (argv == NULL || l == NULL) {
        mdm_err("out of memory");
        free(argv);
        free(l);
        return NULL;
    }

    argv[0] = ro ? "FCALL_RO" : "FCALL";
    argv[1] = fn;
    argv[2] = "0";
    for (i = 0; i < 3; i++) {
        l[i] = strlen(argv[i]);
    }
    for (i = 0; i < n; i++) {
        argv[i + 3] = args[i];
        l[i + 3] = lens ? lens[i] : strlen(args[i]);
    }

    r = mdm_cmd(c, n + 3, argv, l);

    free(argv);
    free(l);

    /* replicas=N: an admin write is done once N replicas have it too */
    if (r && !ro && mdm_redis_wait_replicas(c, &mdm_addr, err, sizeof(err))
                    != 0)
    {
        mdm_err("redis: %s; it may be lost if the primary fails now",
                err);
        freeReplyObject(r);
        return NULL;
    }

    return r;
}


static redisReply *
mdm_fcall1(redisContext *c, int ro, const char *fn, const char *a,
    const char *b)
{
    const char  *args[2];

    args[0] = a;
    args[1] = b;
    return mdm_fcall(c, ro, fn, b ? 2 : 1, args, NULL);
}


/* Connects, calls one function and disconnects: the read-only verbs. */
static redisReply *
mdm_fcall_once(int ro, const char *fn, const char *a, const char *b)
{
    redisReply    *r;
    redisContext  *c;

    c = mdm_connect(120);
    if (c == NULL) {
        return NULL;
    }

    r = mdm_fcall1(c, ro, fn, a, b);
    redisFree(c);
    return r;
}


static const char *
mdm_rstr(redisReply *r)
{
    if (r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS)) {
        return r->str;
    }
    return "";
}


static long long
mdm_rint(redisReply *r)
{
    if (r == NULL) {
        return 0;
    }
    if (r->type == REDIS_REPLY_INTEGER) {
        return r->integer;
    }
    if (r->type == REDIS_REPLY_STRING) {
        return strtoll(r->str, NULL, 10);
    }
    return 0;
}


static int
mdm_is_array(redisReply *r, size_t min)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements < min) {
        mdm_err("unexpected reply from Redis (is the mdm library loaded?)");
        return 0;
    }
    return 1;
}


/* ---- ids ----------------------------------------------------------------- */

static int
mdm_ids_add(mdm_ids_t *ids, const char *id)
{
    char  **v;

    if (id[0] == '\0' || strpbrk(id, " \t\r\n") != NULL) {
        mdm_err("\"%s\" is not an enrollment id", id);
        return -1;
    }

    if (ids->n == ids->cap) {
        ids->cap = ids->cap ? ids->cap * 2 : 64;
        v = realloc(ids->v, ids->cap * sizeof(char *));
        if (v == NULL) {
            mdm_err("out of memory");
            return -1;
        }
        ids->v = v;
    }

    ids->v[ids->n++] = strdup(id);
    return 0;
}


/* One id a line; blank lines and # comments are skipped. */
static int
mdm_ids_stdin(mdm_ids_t *ids)
{
    char     *line, *s, *e;
    size_t    cap;
    ssize_t   n;
    int       rc;

    line = NULL;
    cap = 0;
    rc = 0;

    while (rc == 0 && (n = getline(&line, &cap, stdin)) != -1) {
        for (s = line; *s == ' ' || *s == '\t'; s++) { /* void */ }
        for (e = s + strlen(s); e > s && strchr(" \t\r\n", e[-1]); e--) {
            /* void */
        }
        *e = '\0';
        if (*s != '\0' && *s != '#') {
            rc = mdm_ids_add(ids, s);
        }
    }

    free(line);
    return rc;
}


void
mdm_ids_free(mdm_ids_t *ids)
{
    size_t  i;

    for (i = 0; i < ids->n; i++) {
        free(ids->v[i]);
    }
    free(ids->v);
}


static int
mdm_strcmp_p(const void *a, const void *b)
{
    return strcmp(*(char * const *) a, *(char * const *) b);
}


/* The Functions refuse a repeated id; say so before any chunk is sent. */
static int
mdm_ids_unique(mdm_ids_t *ids)
{
    int      rc;
    char   **s;
    size_t   i;

    s = malloc(ids->n * sizeof(char *));
    if (s == NULL) {
        mdm_err("out of memory");
        return -1;
    }

    memcpy(s, ids->v, ids->n * sizeof(char *));
    qsort(s, ids->n, sizeof(char *), mdm_strcmp_p);

    rc = 0;
    for (i = 1; i < ids->n; i++) {
        if (strcmp(s[i - 1], s[i]) == 0) {
            mdm_err("id %s given twice", s[i]);
            rc = -1;
            break;
        }
    }

    free(s);
    return rc;
}


/* MDM_KEY_ENR (KEYS.md): D is the part of E before the first ':'. */
static char *
mdm_enr_key(const char *id)
{
    size_t   n;
    char    *k, *d;

    d = strndup(id, strcspn(id, ":"));
    n = strlen(id) * 2 + sizeof(MDM_KEY_ENR);
    k = d ? malloc(n) : NULL;
    if (k != NULL) {
        snprintf(k, n, MDM_KEY_ENR, d, id);
    }
    free(d);
    return k;
}


/*
 * A list sent in several chunks is checked first, pipelined, so an
 * unknown id stops it before the first chunk changes anything.
 */
int
mdm_ids_exist(redisContext *c, mdm_ids_t *ids)
{
    int          rc;
    char        *k;
    size_t       i;
    redisReply  *r;

    for (i = 0; i < ids->n; i++) {
        k = mdm_enr_key(ids->v[i]);
        redisAppendCommand(c, "EXISTS %s", k);
        free(k);
    }

    rc = 0;
    for (i = 0; i < ids->n; i++) {
        r = NULL;
        if (redisGetReply(c, (void **) &r) != REDIS_OK || r == NULL) {
            mdm_err("redis: %s", c->errstr);
            return -1;
        }
        if (rc == 0 && (r->type != REDIS_REPLY_INTEGER || r->integer != 1)) {
            mdm_err("unknown enrollment id %s", ids->v[i]);
            rc = -1;
        }
        freeReplyObject(r);
    }

    return rc;
}


/*
 * Positional ids: "-" reads more from stdin. Returns the number of
 * arguments that were not ids (Key=Value items) through kv when wanted.
 */
int
mdm_ids_args(mdm_ids_t *ids, int argc, char **argv, char **kv, int *nkv)
{
    int  i, from_stdin;

    from_stdin = 0;

    for (i = 0; i < argc; i++) {
        if (kv && mdm_is_kv(argv[i])) {
            kv[(*nkv)++] = argv[i];

        } else if (strcmp(argv[i], "-") == 0) {
            if (from_stdin++) {
                mdm_err("\"-\" given twice");
                return -1;
            }
            if (mdm_ids_stdin(ids) != 0) {
                return -1;
            }

        } else if (mdm_ids_add(ids, argv[i]) != 0) {
            return -1;
        }
    }

    if (ids->n == 0) {
        mdm_err("no enrollment ids%s", from_stdin ? " on stdin" : "");
        return -1;
    }

    return mdm_ids_unique(ids);
}


/* ---- output -------------------------------------------------------------- */

const char *
mdm_time(const char *ms, char *buf, size_t size)
{
    long long  v;
    time_t     t;
    struct tm  tm;

    v = ms ? strtoll(ms, NULL, 10) : 0;
    if (v <= 0) {
        return "-";
    }

    t = (time_t) (v / 1000);
    gmtime_r(&t, &tm);
    strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}


static const char *
mdm_duration(long long s, char *buf, size_t size)
{
    if (s < 0) {
        return "-";
    }
    if (s < 120) {
        snprintf(buf, size, "%llds", s);
    } else if (s < 7200) {
        snprintf(buf, size, "%lldm", s / 60);
    } else if (s < 172800) {
        snprintf(buf, size, "%lldh", s / 3600);
    } else {
        snprintf(buf, size, "%lldd", s / 86400);
    }
    return buf;
}


/* A JSON string; bytes that are not UTF-8 become U+FFFD. */
static json_t *
mdm_jstr(const char *s, size_t len)
{
    json_t  *j;
    char    *copy;
    size_t   i;

    j = json_stringn(s, len);
    if (j != NULL) {
        return j;
    }

    copy = malloc(len + 1);
    if (copy == NULL) {
        return json_null();
    }
    for (i = 0; i < len; i++) {
        copy[i] = ((unsigned char) s[i] < 0x80 && s[i] != '\0') ? s[i] : '?';
    }
    j = json_stringn(copy, len);
    free(copy);
    return j;
}


static json_t *
mdm_jreply(redisReply *r)
{
    if (r->type == REDIS_REPLY_INTEGER) {
        return json_integer(r->integer);
    }
    if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) {
        return mdm_jstr(r->str, r->len);
    }
    return json_null();
}


static int
mdm_json_out(json_t *j)
{
    int  rc;

    rc = json_dumpf(j, stdout, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(j);
    fputc('\n', stdout);
    return rc == 0 ? MDM_OK : MDM_ERROR;
}


/* A flat field/value reply as a JSON object. */
static json_t *
mdm_jfields(redisReply *r)
{
    size_t   i;
    json_t  *o;

    o = json_object();
    for (i = 0; i + 1 < r->elements; i += 2) {
        json_object_set_new(o, mdm_rstr(r->element[i]),
                            mdm_jreply(r->element[i + 1]));
    }
    return o;
}


static int
mdm_field_cmp(const void *a, const void *b)
{
    return strcmp((*(redisReply * const *) a)->str,
                  (*(redisReply * const *) b)->str);
}


static char *
mdm_dict_str(plist_t dict, const char *key)
{
    char      *s, buf[32];
    plist_t    v;
    uint64_t   u;

    v = plist_dict_get_item(dict, key);
    s = NULL;

    if (v && plist_get_node_type(v) == PLIST_STRING) {
        plist_get_string_val(v, &s);

    } else if (v && plist_get_node_type(v) == PLIST_UINT) {
        plist_get_uint_val(v, &u);
        snprintf(buf, sizeof(buf), "%lld", (long long) u);
        s = strdup(buf);
    }

    return s ? s : strdup("-");
}


/* The ErrorChain of an Error report, one line a link. */
static void
mdm_print_error_chain(const char *raw, size_t len)
{
    char      *dom, *code, *desc;
    plist_t    p, chain, e;
    uint32_t   i;

    p = NULL;
    plist_from_memory(raw, len, &p);
    if (p == NULL) {
        return;
    }

    chain = plist_get_node_type(p) == PLIST_DICT
            ? plist_dict_get_item(p, "ErrorChain") : NULL;

    for (i = 0; chain && plist_get_node_type(chain) == PLIST_ARRAY
                && i < plist_array_get_size(chain); i++)
    {
        e = plist_array_get_item(chain, i);
        if (plist_get_node_type(e) != PLIST_DICT) {
            continue;
        }
        dom = mdm_dict_str(e, "ErrorDomain");
        code = mdm_dict_str(e, "ErrorCode");
        desc = mdm_dict_str(e, "LocalizedDescription");
        printf("%-24s %s %s: %s\n", "error", dom, code, desc);
        free(dom);
        free(code);
        free(desc);
    }

    plist_free(p);
}


/*
 * A flat field/value reply as "field: value" lines, sorted; times are
 * shown readably next to their milliseconds; "raw" goes last.
 */
static void
mdm_print_fields(redisReply *r)
{
    char          tbuf[32];
    size_t        i, n, len;
    const char   *f, *v, *raw;
    redisReply  **pairs;

    n = r->elements / 2;
    pairs = malloc((n + 1) * sizeof(redisReply *) * 2);
    if (pairs == NULL) {
        return;
    }
    for (i = 0; i < n; i++) {
        pairs[i * 2] = r->element[i * 2];
        pairs[i * 2 + 1] = r->element[i * 2 + 1];
    }
    qsort(pairs, n, 2 * sizeof(redisReply *), mdm_field_cmp);

    raw = NULL;
    for (i = 0; i < n; i++) {
        f = mdm_rstr(pairs[i * 2]);
        v = mdm_rstr(pairs[i * 2 + 1]);
        len = strlen(f);
        if (strcmp(f, "raw") == 0) {
            raw = v;
        } else if (strcmp(f, "ms") == 0
                   || (len > 3 && strcmp(f + len - 3, "_ms") == 0))
        {
            printf("%-24s %s (%s)\n", f, v, mdm_time(v, tbuf, sizeof(tbuf)));
        } else {
            printf("%-24s %s\n", f, v);
        }
    }

    if (raw && raw[0]) {
        mdm_print_error_chain(raw, strlen(raw));
        printf("raw:\n%s%s", raw, raw[strlen(raw) - 1] == '\n' ? "" : "\n");
    }

    free(pairs);
}


/* ---- enqueue ------------------------------------------------------------- */

typedef struct {
    const char  *priority;
    const char  *expires;
    const char  *nopush;
    long         chunk;
    long         pace;              /* % of Redis' time the chunks may take */
    long long    targets;
    long long    pushes;
    long long    already;           /* ids holding it from an earlier run */
    char        *uuid;
} mdm_enqueue_t;


/* mdm_enqueue for ids[from..to) with one body (and so one CommandUUID). */
static int
mdm_enqueue_chunk(redisContext *c, mdm_enqueue_t *eq, const char *xml,
    uint32_t len, char **ids, size_t n)
{
    size_t        i;
    size_t       *lens;
    redisReply   *r;
    const char  **args;

    args = malloc((n + 4) * sizeof(char *));
    lens = malloc((n + 4) * sizeof(size_t));
    if (args == NULL || lens == NULL) {
        mdm_err("out of memory");
        free(args);
        free(lens);
        return -1;
    }

    args[0] = xml;
    lens[0] = len;
    args[1] = eq->priority;
    args[2] = eq->expires;
    args[3] = eq->nopush;
    for (i = 1; i < 4; i++) {
        lens[i] = strlen(args[i]);
    }
    for (i = 0; i < n; i++) {
        args[i + 4] = ids[i];
        lens[i + 4] = strlen(ids[i]);
    }

    r = mdm_fcall(c, 0, "mdm_enqueue", n + 4, args, lens);
    free(args);
    free(lens);

    if (r == NULL) {
        return -1;
    }
    if (!mdm_is_array(r, 3)) {
        freeReplyObject(r);
        return -1;
    }

    free(eq->uuid);
    eq->uuid = strdup(mdm_rstr(r->element[0]));
    eq->targets += mdm_rint(r->element[1]);
    eq->pushes += mdm_rint(r->element[2]);
    if (r->elements > 3) {
        eq->already += mdm_rint(r->element[3]);
    }
    freeReplyObject(r);
    return 0;
}


static long long
mdm_mono_us(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}


static int
mdm_enqueue_all(redisContext *c, mdm_enqueue_t *eq, const char *xml,
    uint32_t len, mdm_ids_t *ids)
{
    size_t     i, n;
    long long  t;

    if (ids->n > (size_t) eq->chunk && mdm_ids_exist(c, ids) != 0) {
        return -1;
    }

    for (i = 0; i < ids->n; i += n) {
        n = ids->n - i < (size_t) eq->chunk ? ids->n - i : (size_t) eq->chunk;
        t = mdm_mono_us();
        if (mdm_enqueue_chunk(c, eq, xml, len, ids->v + i, n) != 0) {
            if (i > 0) {
                mdm_err("stopped after %zu of %zu targets were queued "
                        "(CommandUUID %s)", i, ids->n, eq->uuid);
            }
            return -1;
        }

        /*
         * Redis runs one call at a time: back-to-back chunks would leave
         * devices waiting behind them, so wait in proportion
         */
        if (eq->pace < 100 && i + n < ids->n) {
            t = mdm_mono_us() - t;
            usleep((useconds_t) (t * (100 - eq->pace) / eq->pace));
        }
    }

    return 0;
}


/*
 * ClearPasscode carries the device's own UnlockToken, so each device gets
 * its own command (and CommandUUID). All tokens are read before the
 * first command is queued.
 */
static int
mdm_enqueue_unlock(redisContext *c, mdm_enqueue_t *eq, mdm_command_t *cmd,
    mdm_ids_t *ids, json_t *out)
{
    int           rc;
    char         *k, *xml;
    size_t        i;
    uint32_t      len;
    mdm_ids_t     one;
    redisReply  **tok;
    long long     t0, p0;

    tok = calloc(ids->n, sizeof(redisReply *));
    if (tok == NULL) {
        mdm_err("out of memory");
        return -1;
    }

    rc = 0;
    for (i = 0; rc == 0 && i < ids->n; i++) {
        k = mdm_enr_key(ids->v[i]);
        tok[i] = redisCommand(c, "HGET %s unlock_token", k);
        free(k);
        if (tok[i] == NULL) {
            mdm_err("redis: %s", c->errstr);
            rc = -1;
        } else if (tok[i]->type != REDIS_REPLY_STRING || tok[i]->len == 0) {
            mdm_err("%s has no unlock_token (give UnlockToken=@FILE)",
                    ids->v[i]);
            rc = -1;
        } else if (mdm_secret_reply(MDM_SECRET_UNLOCK, ids->v[i],
                                    tok[i]->str, &tok[i]->len) != 0)
        {
            rc = -1;
        }
    }

    for (i = 0; rc == 0 && i < ids->n; i++) {
        mdm_command_set_data(cmd, "UnlockToken", tok[i]->str, tok[i]->len);
        if (i > 0 && mdm_command_set_uuid(cmd, NULL) != 0) {
            rc = -1;
            break;
        }
        if (mdm_command_xml(cmd, &xml, &len) != 0) {
            rc = -1;
            break;
        }
        one.v = ids->v + i;
        one.n = 1;
        t0 = eq->targets;
        p0 = eq->pushes;
        rc = mdm_enqueue_all(c, eq, xml, len, &one);
        plist_to_xml_free(xml);
        if (rc == 0 && out) {
            json_array_append_new(out, json_pack("{s:s,s:s,s:I,s:I}",
                "id", ids->v[i], "uuid", eq->uuid,
                "targets", (json_int_t) (eq->targets - t0),
                "pushes", (json_int_t) (eq->pushes - p0)));
        } else if (rc == 0) {
            printf("%s queued for %s\n", eq->uuid, ids->v[i]);
        }
    }

    for (i = 0; i < ids->n; i++) {
        if (tok[i]) {
            freeReplyObject(tok[i]);
        }
    }
    free(tok);
    return rc;
}


static const char  mdm_enqueue_usage[] =
    "[options] <RequestType> [Key=Value | Key:=JSON]... <id>... | -\n"
    "       mdmctl enqueue [options] --plist FILE <id>... | -\n"
    "\n"
    "Queues one command for every id (\"-\" reads ids from stdin, one a\n"
    "line) and requests pushes. Arguments with '=' are command keys (see\n"
    "'mdmctl command --help'); the others are enrollment ids.\n"
    "\n"
    "  --priority N      0-9, higher first (default 5)\n"
    "  --expires S       drop the command when not sent within S seconds\n"
    "  --no-push         queue only, no push request\n"
    "  --uuid UUID       CommandUUID (default: fresh, or the --plist file's)\n"
    "  --plist FILE      a complete command plist (XML or binary)\n"
    "  --chunk N         ids per FCALL (default 2000; each call is short, so\n"
    "                    devices never wait behind a bulk enqueue)\n"
    "  --pace P          the chunks take at most P % of Redis' time: after\n"
    "                    a call of T ms, wait T * (100 - P) / P (default 50;\n"
    "                    100: back to back)\n"
    "\n"
    "Ids that already hold the command are skipped: an enqueue that was\n"
    "interrupted is completed by running it again with the same --uuid\n"
    "(or --plist), and undone with 'mdmctl cancel --command UUID'.\n"
    "  --secret-key FILE opens the sealed UnlockTokens ClearPasscode reads\n"
    "                    (default: $MDM_SECRET_KEY)\n"
    MDM_REDIS_HELP;


int
mdm_enqueue_main(int argc, char **argv)
{
    int             ch, rc, nkv, o;
    long            v;
    char          **kv, *xml;
    uint32_t        len;
    json_t         *out;
    mdm_ids_t       ids;
    const char     *uuid, *plist_file, *rt;
    redisContext   *c;
    mdm_command_t   cmd;
    mdm_enqueue_t   eq;

    static const struct option  opts[] = {
        { "priority", required_argument, NULL, 'p' },
        { "expires", required_argument, NULL, 'e' },
        { "no-push", no_argument, NULL, 'n' },
        { "uuid", required_argument, NULL, 'u' },
        { "plist", required_argument, NULL, 'f' },
        { "chunk", required_argument, NULL, 'c' },
        { "pace", required_argument, NULL, 'G' },
        { "secret-key", required_argument, NULL, 'K' },
        MDM_REDIS_OPTS,
        { NULL, 0, NULL, 0 }
    };

    memset(&eq, 0, sizeof(eq));
    eq.priority = "5";
    eq.expires = "0";
    eq.nopush = "0";
    eq.chunk = MDM_CHUNK;
    eq.pace = 50;
    uuid = NULL;
    plist_file = NULL;

    while ((ch = mdm_getopt(argc, argv, opts)) != -1) {
        if ((o = mdm_admin_opt(ch)) != 0) {
            if (o < 0) {
                return MDM_USAGE;
            }
            continue;
        }
        switch (ch) {
        case 'p':
            if (mdm_parse_int(optarg, 0, 9, &v) != 0) {
                mdm_err("--priority must be 0-9");
                return MDM_USAGE;
            }
            eq.priority = optarg;
            break;
        case 'e':
            if (mdm_parse_int(optarg, 0, 100L * 365 * 86400, &v) != 0) {
                mdm_err("--expires must be whole seconds");
                return MDM_USAGE;
            }
            eq.expires = optarg;
            break;
        case 'n':
            eq.nopush = "1";
            break;
        case 'u':
            uuid = optarg;
            break;
        case 'f':
            plist_file = optarg;
            break;
        case 'c':
            if (mdm_parse_int(optarg, 1, 1000000, &eq.chunk) != 0) {
                mdm_err("--chunk must be 1-1000000");
                return MDM_USAGE;
            }
            break;
        case 'G':
            if (mdm_parse_int(optarg, 1, 100, &eq.pace) != 0) {
                mdm_err("--pace must be 1-100 (percent)");
                return MDM_USAGE;
            }
            break;
        case 'K':
            mdm_secret_file = optarg;
            break;
        case 'h':
            return mdm_usage(mdm_enqueue_usage);
        default:
            return MDM_USAGE;
        }
    }

    argc -= optind;
    argv += optind;

    rt = NULL;
    if (!plist_file) {
        if (argc < 1) {
            mdm_err("RequestType missing");
            return MDM_USAGE;
        }
        rt = argv[0];
        argc--;
        argv++;
    }

    memset(&ids, 0, sizeof(ids));
    nkv = 0;
    kv = malloc((argc + 1) * sizeof(char *));
    rc = MDM_ERROR;
    c = NULL;
    out = NULL;
    xml = NULL;
    len = 0;
    memset(&cmd, 0, sizeof(cmd));

    if (kv == NULL
        || mdm_ids_args(&ids, argc, argv, plist_file ? NULL : kv, &nkv) != 0
        || mdm_command_build(&cmd, rt, nkv, kv, plist_file, uuid) != 0)
    {
        goto done;
    }

    /* refuse a bad command before connecting; ClearPasscode waits for
     * its token */
    if (!cmd.unlock_token) {
        if (mdm_command_xml(&cmd, &xml, &len) != 0) {
            goto done;
        }

    } else if (uuid && ids.n > 1) {
        mdm_err("ClearPasscode without UnlockToken queues one command per "
                "device: --uuid needs a single id");
        goto done;
    }

    c = mdm_connect(120);
    if (c == NULL) {
        goto done;
    }

    if (cmd.unlock_token) {
        out = mdm_admin.json ? json_array() : NULL;
        if (mdm_enqueue_unlock(c, &eq, &cmd, &ids, out) == 0) {
            rc = out ? mdm_json_out(out) : MDM_OK;
            out = NULL;
        }
        goto done;
    }

    if (mdm_enqueue_all(c, &eq, xml, len, &ids) != 0) {
        goto done;
    }

    if (mdm_admin.json) {
        rc = mdm_json_out(json_pack("{s:s,s:s,s:I,s:I,s:I}", "uuid", eq.uuid,
                                    "request_type", cmd.request_type,
                                    "targets", (json_int_t) eq.targets,
                                    "pushes", (json_int_t) eq.pushes,
                                    "already", (json_int_t) eq.already));
    } else {
        printf("%s %s queued for %lld target%s, %lld push request%s",
               eq.uuid, cmd.request_type, eq.targets,
               eq.targets == 1 ? "" : "s", eq.pushes,
               eq.pushes == 1 ? "" : "s");
        if (eq.already) {
            printf(" (%lld already held it)", eq.already);
        }
        printf("\n");
        rc = MDM_OK;
    }

done:

    if (xml) {
        plist_to_xml_free(xml);
    }
    json_decref(out);
    free(eq.uuid);
    free(kv);
    mdm_ids_free(&ids);
    mdm_command_free(&cmd);
    redisFree(c);
    return rc;
}


/* ---- push ---------------------------------------------------------------- */

static const char  mdm_push_usage[] =
    "[options] <id>... | -\n"
    "\n"
    "Requests an APNs push for every id (\"-\": ids from stdin); ids that\n"
    "already wait for a push are not pushed twice.\n"
    "\n"
    MDM_REDIS_HELP;


int
mdm_simple_opts(int argc, char **argv, const char *usage,
    const struct option *extra, int (*handler)(int ch))
{
    int  ch, o, n;

    static struct option  opts[16];
    static const struct option  common[] = {
        MDM_REDIS_OPTS,
        { NULL, 0, NULL, 0 }
    };

    n = 0;
    while (extra && extra[n].name) {
        opts[n] = extra[n];
        n++;
    }
    memcpy(&opts[n], common, sizeof(common));

    while ((ch = mdm_getopt(argc, argv, opts)) != -1) {
        if ((o = mdm_admin_opt(ch)) != 0) {
            if (o < 0) {
                return -MDM_USAGE;
            }
            continue;
        }
        if (ch == 'h') {
            mdm_usage(usage);
            return -1000;
        }
        if (handler == NULL || handler(ch) != 0) {
            return -MDM_USAGE;
        }
    }

    return optind;
}




int
mdm_push_main(int argc, char **argv)
{
    int            rc;
    size_t         i, n;
    mdm_ids_t      ids;
    long long      total;
    redisReply    *r;
    redisContext  *c;

    MDM_OPTS(mdm_push_usage, NULL, NULL);

    memset(&ids, 0, sizeof(ids));
    rc = MDM_ERROR;
    c = NULL;
    total = 0;

    if (mdm_ids_args(&ids, argc, argv, NULL, NULL) != 0
        || (c = mdm_connect(120)) == NULL
        || (ids.n > MDM_CHUNK && mdm_ids_exist(c, &ids) != 0))
    {
        goto done;
    }

    for (i = 0; i < ids.n; i += n) {
        n = ids.n - i < MDM_CHUNK ? ids.n - i : MDM_CHUNK;
        r = mdm_fcall(c, 0, "mdm_push", n, (const char **) ids.v + i, NULL);
        if (r == NULL) {
            goto done;
        }
        total += mdm_rint(r);
        freeReplyObject(r);
    }

    if (mdm_admin.json) {
        rc = mdm_json_out(json_pack("{s:I,s:I}", "ids", (json_int_t) ids.n,
                                    "pushes", (json_int_t) total));
    } else {
        printf("%lld push request%s for %zu id%s\n", total,
               total == 1 ? "" : "s", ids.n, ids.n == 1 ? "" : "s");
        rc = MDM_OK;
    }

done:

    mdm_ids_free(&ids);
    redisFree(c);
    return rc;
}


/* ---- queue --------------------------------------------------------------- */

static const char  mdm_queue_usage[] =
    "[options] <id>\n"
    "\n"
    "Shows the commands queued for an enrollment, next first.\n"
    "\n"
    MDM_REDIS_HELP;


int
mdm_queue_main(int argc, char **argv)
{
    char           a[32], x[32];
    size_t         i;
    json_t        *out;
    redisReply    *r, *e;

    MDM_OPTS(mdm_queue_usage, NULL, NULL);

    if (argc != 1) {
        mdm_err("give one enrollment id");
        return MDM_USAGE;
    }

    r = mdm_fcall_once(1, "mdm_queue", argv[0], NULL);
    if (r == NULL) {
        return MDM_ERROR;
    }
    if (!mdm_is_array(r, 0)) {
        freeReplyObject(r);
        return MDM_ERROR;
    }

    out = mdm_admin.json ? json_array() : NULL;

    if (!out) {
        printf("%-36s %-26s %-7s %6s %5s %4s %7s\n", "UUID", "REQUEST_TYPE",
               "STATUS", "NOTNOW", "AGE", "PRIO", "EXPIRES");
    }

    for (i = 0; i < r->elements; i++) {
        e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 7) {
            continue;
        }
        if (out) {
            json_array_append_new(out, json_pack(
                "{s:o,s:o,s:o,s:I,s:I,s:I,s:I}",
                "uuid", mdm_jreply(e->element[0]),
                "request_type", mdm_jreply(e->element[1]),
                "status", mdm_jreply(e->element[2]),
                "notnow_count", (json_int_t) mdm_rint(e->element[3]),
                "age_s", (json_int_t) mdm_rint(e->element[4]),
                "priority", (json_int_t) mdm_rint(e->element[5]),
                "expires_in_s", (json_int_t) mdm_rint(e->element[6])));
        } else {
            printf("%-36s %-26s %-7s %6lld %5s %4lld %7s\n",
                   mdm_rstr(e->element[0]), mdm_rstr(e->element[1]),
                   mdm_rstr(e->element[2]), mdm_rint(e->element[3]),
                   mdm_duration(mdm_rint(e->element[4]), a, sizeof(a)),
                   mdm_rint(e->element[5]),
                   mdm_duration(mdm_rint(e->element[6]), x, sizeof(x)));
        }
    }

    freeReplyObject(r);
    return out ? mdm_json_out(out) : MDM_OK;
}


/*
 * The bounded functions (mdm_sweep, mdm_cancel_command) reply with counts
 * and a last element "more": call until it is 0, summing the counts.
 */
static int
mdm_fcall_steps(redisContext *c, const char *fn, const char *arg,
    long long *sum, size_t nsum, long long *calls)
{
    int          more;
    size_t       i;
    redisReply  *r;

    do {
        r = mdm_fcall(c, 0, fn, arg ? 1 : 0, &arg, NULL);
        if (r == NULL || !mdm_is_array(r, nsum + 1)) {
            if (r) {
                freeReplyObject(r);
            }
            return -1;
        }
        for (i = 0; i < nsum; i++) {
            sum[i] += mdm_rint(r->element[i]);
        }
        more = mdm_rint(r->element[nsum]) != 0;
        (*calls)++;
        freeReplyObject(r);
    } while (more);

    return 0;
}


/* ---- cancel, clear ------------------------------------------------------- */

static const char  mdm_cancel_usage[] =
    "[options] <id> <uuid>\n"
    "       mdmctl cancel [options] --command <uuid>\n"
    "\n"
    "Takes a queued command off an enrollment's queue (result: Canceled).\n"
    "With --command, off every queue that holds it, in short steps\n"
    "(mdm_cancel_command): the way back from a bulk enqueue.\n"
    "\n"
    "  --command UUID    every target of the command\n"
    MDM_REDIS_HELP;


static const char  *mdm_cancel_uuid;


static int
mdm_cancel_opt(int ch)
{
    if (ch != 'C') {
        return -1;
    }
    mdm_cancel_uuid = optarg;
    return 0;
}


/* mdm_cancel_command until nothing holds the command. */
static int
mdm_cancel_command(const char *uuid)
{
    int            rc;
    long long      n, calls;
    redisContext  *c;

    if ((c = mdm_connect(120)) == NULL) {
        return MDM_ERROR;
    }
    n = calls = 0;
    rc = mdm_fcall_steps(c, "mdm_cancel_command", uuid, &n, 1, &calls);
    redisFree(c);
    if (rc != 0) {
        return MDM_ERROR;
    }

    if (mdm_admin.json) {
        return mdm_json_out(json_pack("{s:s,s:I}", "uuid", uuid,
                                      "canceled", (json_int_t) n));
    }
    printf("%s canceled on %lld target%s\n", uuid, n, n == 1 ? "" : "s");
    return MDM_OK;
}


int
mdm_cancel_main(int argc, char **argv)
{
    long long      n;
    redisReply    *r;

    static const struct option  extra[] = {
        { "command", required_argument, NULL, 'C' },
        { NULL, 0, NULL, 0 }
    };

    MDM_OPTS(mdm_cancel_usage, extra, mdm_cancel_opt);

    if (mdm_cancel_uuid) {
        if (argc != 0) {
            mdm_err("--command takes no other operands");
            return MDM_USAGE;
        }
        return mdm_cancel_command(mdm_cancel_uuid);
    }

    if (argc != 2) {
        mdm_err("give an enrollment id and a CommandUUID");
        return MDM_USAGE;
    }

    r = mdm_fcall_once(0, "mdm_cancel", argv[0], argv[1]);
    if (r == NULL) {
        return MDM_ERROR;
    }
    n = mdm_rint(r);
    freeReplyObject(r);

    if (mdm_admin.json) {
        mdm_json_out(json_pack("{s:s,s:s,s:b}", "id", argv[0], "uuid",
                               argv[1], "canceled", n == 1));
    } else if (n == 1) {
        printf("%s canceled for %s\n", argv[1], argv[0]);
    }

    if (n != 1) {
        mdm_err("%s is not queued for %s", argv[1], argv[0]);
        return MDM_ERROR;
    }

    return MDM_OK;
}


static const char  mdm_clear_usage[] =
    "[options] <id>... | -\n"
    "\n"
    "Empties the queues of the enrollments (results: Canceled).\n"
    "\n"
    MDM_REDIS_HELP;


int
mdm_clear_main(int argc, char **argv)
{
    int            rc;
    size_t         i;
    json_t        *out;
    mdm_ids_t      ids;
    long long      n;
    redisReply    *r;
    redisContext  *c;

    MDM_OPTS(mdm_clear_usage, NULL, NULL);

    memset(&ids, 0, sizeof(ids));
    out = NULL;
    c = NULL;
    rc = MDM_ERROR;

    if (mdm_ids_args(&ids, argc, argv, NULL, NULL) != 0
        || (c = mdm_connect(120)) == NULL)
    {
        goto done;
    }

    out = mdm_admin.json ? json_array() : NULL;

    for (i = 0; i < ids.n; i++) {
        r = mdm_fcall1(c, 0, "mdm_clear", ids.v[i], NULL);
        if (r == NULL) {
            goto done;
        }
        n = mdm_rint(r);
        freeReplyObject(r);
        if (out) {
            json_array_append_new(out, json_pack("{s:s,s:I}", "id", ids.v[i],
                                                 "removed", (json_int_t) n));
        } else {
            printf("%s: %lld command%s removed\n", ids.v[i], n,
                   n == 1 ? "" : "s");
        }
    }

    rc = out ? mdm_json_out(out) : MDM_OK;
    out = NULL;

done:

    json_decref(out);
    mdm_ids_free(&ids);
    redisFree(c);
    return rc;
}


/* ---- gc, forget ---------------------------------------------------------- */


static const char  mdm_gc_usage[] =
    "[options]\n"
    "\n"
    "Runs the sweep (mdm_sweep) until nothing is due: queue items past\n"
    "their expiry end as Expired on every target, polling or not, and the\n"
    "commands no target holds are released. mdm-apnsd runs it on a timer;\n"
    "this runs it now. Each call looks at about 1,000 targets.\n"
    "\n"
    MDM_REDIS_HELP;


int
mdm_gc_main(int argc, char **argv)
{
    int            rc;
    long long      n[2], calls;
    redisContext  *c;

    MDM_OPTS(mdm_gc_usage, NULL, NULL);

    if (argc != 0) {
        mdm_err("gc takes no operands");
        return MDM_USAGE;
    }
    if ((c = mdm_connect(120)) == NULL) {
        return MDM_ERROR;
    }

    n[0] = n[1] = calls = 0;
    rc = mdm_fcall_steps(c, "mdm_sweep", NULL, n, 2, &calls);
    redisFree(c);
    if (rc != 0) {
        return MDM_ERROR;
    }

    if (mdm_admin.json) {
        return mdm_json_out(json_pack("{s:I,s:I,s:I}",
                                      "expired", (json_int_t) n[0],
                                      "released", (json_int_t) n[1],
                                      "calls", (json_int_t) calls));
    }
    printf("%lld queue item%s expired, %lld command%s released\n",
           n[0], n[0] == 1 ? "" : "s", n[1], n[1] == 1 ? "" : "s");
    return MDM_OK;
}


static const char  mdm_forget_usage[] =
    "[options] <id>... | -\n"
    "\n"
    "Deletes enrollments completely (mdm_forget): the enrollment, its\n"
    "certificate binding, its queues (items end as Forgotten), and for a\n"
    "device channel its user channels; then its results and any other key\n"
    "left under the device (one SCAN pass over the key space, in steps).\n"
    "The device must enroll again to be managed.\n"
    "\n"
    MDM_REDIS_HELP;


/*
 * Whether key (mdm:{D}:...) belongs to what was forgotten: anything of a
 * forgotten device channel D, or the results of a forgotten user channel.
 */
static int
mdm_forgotten_key(const char *key, mdm_ids_t *ids)
{
    char        id[512], *p;
    size_t      n, pre;
    const char *d, *end, *res, *last;

    /* the text before the device id: "mdm:{" */
    p = id;
    pre = (size_t) (strchr(MDM_KEY_DEVICE, '%') - MDM_KEY_DEVICE);
    if (strncmp(key, MDM_KEY_DEVICE, pre) != 0) {
        return 0;
    }
    d = key + pre;
    if ((end = strchr(d, '}')) == NULL
        || (n = (size_t) (end - d)) == 0 || n >= sizeof(id))
    {
        return 0;
    }
    memcpy(id, d, n);
    id[n] = '\0';
    if (bsearch(&p, ids->v, ids->n, sizeof(char *), mdm_strcmp_p)) {
        return 1;
    }

    /* mdm:{D}:res:E:UUID or mdm:{D}:nn:E of a forgotten user channel */
    if (strncmp(end, "}:res:", 6) == 0) {
        res = end + 6;
        if ((last = strrchr(res, ':')) == NULL) {
            return 0;
        }
        n = (size_t) (last - res);
    } else if (strncmp(end, "}:nn:", 5) == 0) {
        res = end + 5;
        n = strlen(res);
    } else {
        return 0;
    }
    if (n == 0 || n >= sizeof(id)) {
        return 0;
    }
    memcpy(id, res, n);
    id[n] = '\0';
    return bsearch(&p, ids->v, ids->n, sizeof(char *), mdm_strcmp_p) != NULL;
}


/* One SCAN pass deleting the keys left under what was forgotten. */
static long long
mdm_forget_scan(redisContext *c, mdm_ids_t *ids)
{
    char         cursor[32], match[600];
    size_t       i;
    long long    deleted;
    redisReply  *r, *k, *d;

    if (ids->n == 1 && strchr(ids->v[0], ':') == NULL
        && strpbrk(ids->v[0], "*?[]\\") == NULL)
    {
        snprintf(match, sizeof(match), MDM_KEY_DEVICE "*", ids->v[0]);
    } else {
        snprintf(match, sizeof(match), MDM_KEY_DEVICE "*", "*");
    }

    qsort(ids->v, ids->n, sizeof(char *), mdm_strcmp_p);
    strcpy(cursor, "0");
    deleted = 0;

    do {
        r = redisCommand(c, "SCAN %s MATCH %s COUNT 1000", cursor, match);
        if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            mdm_err("SCAN: %s", r && r->type == REDIS_REPLY_ERROR
                                ? r->str : c->errstr);
            if (r) {
                freeReplyObject(r);
            }
            return -1;
        }
        snprintf(cursor, sizeof(cursor), "%s", mdm_rstr(r->element[0]));
        k = r->element[1];
        for (i = 0; i < k->elements; i++) {
            if (mdm_forgotten_key(k->element[i]->str, ids)) {
                d = redisCommand(c, "UNLINK %s", k->element[i]->str);
                if (d) {
                    deleted += d->type == REDIS_REPLY_INTEGER ? d->integer : 0;
                    freeReplyObject(d);
                }
            }
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);

    return deleted;
}


int
mdm_forget_main(int argc, char **argv)
{
    int            rc;
    size_t         i, n;
    long long      gone, items, keys;
    mdm_ids_t      ids;
    redisReply    *r;
    redisContext  *c;

    MDM_OPTS(mdm_forget_usage, NULL, NULL);

    memset(&ids, 0, sizeof(ids));
    c = NULL;
    rc = MDM_ERROR;
    gone = items = 0;

    if (mdm_ids_args(&ids, argc, argv, NULL, NULL) != 0
        || (c = mdm_connect(120)) == NULL)
    {
        goto done;
    }

    /* every id is checked by the first call of its chunk */
    for (i = 0; i < ids.n; i += n) {
        n = ids.n - i < 500 ? ids.n - i : 500;
        r = mdm_fcall(c, 0, "mdm_forget", (int) n,
                      (const char **) ids.v + i, NULL);
        if (r == NULL || !mdm_is_array(r, 2)) {
            if (r) {
                freeReplyObject(r);
            }
            if (i > 0) {
                mdm_err("stopped after %zu of %zu ids were forgotten", i,
                        ids.n);
            }
            goto done;
        }
        gone += mdm_rint(r->element[0]);
        items += mdm_rint(r->element[1]);
        freeReplyObject(r);
    }

    if ((keys = mdm_forget_scan(c, &ids)) < 0) {
        goto done;
    }

    if (mdm_admin.json) {
        rc = mdm_json_out(json_pack("{s:I,s:I,s:I}",
                                    "enrollments", (json_int_t) gone,
                                    "queue_items", (json_int_t) items,
                                    "keys_deleted", (json_int_t) keys));
    } else {
        printf("%lld enrollment%s forgotten, %lld queued command%s ended, "
               "%lld result key%s deleted\n", gone, gone == 1 ? "" : "s",
               items, items == 1 ? "" : "s", keys, keys == 1 ? "" : "s");
        rc = MDM_OK;
    }

done:

    mdm_ids_free(&ids);
    redisFree(c);
    return rc;
}


/* ---- results, show ------------------------------------------------------- */

static int  mdm_raw_only;


static int
mdm_raw_opt(int ch)
{
    if (ch == 'r') {
        mdm_raw_only = 1;
        return 0;
    }
    return -1;
}


static const char  mdm_results_usage[] =
    "[options] <id> <uuid>\n"
    "\n"
    "Shows a command's result on one enrollment: status, time, request\n"
    "type and the device's full report (or the queue status while the\n"
    "command is still queued).\n"
    "\n"
    "  --raw             print only the device's report plist\n"
    MDM_REDIS_HELP;


int
mdm_results_main(int argc, char **argv)
{
    size_t         i;
    redisReply    *r;

    static const struct option  extra[] = {
        { "raw", no_argument, NULL, 'r' },
        { NULL, 0, NULL, 0 }
    };

    MDM_OPTS(mdm_results_usage, extra, mdm_raw_opt);

    if (argc != 2) {
        mdm_err("give an enrollment id and a CommandUUID");
        return MDM_USAGE;
    }

    r = mdm_fcall_once(1, "mdm_result", argv[0], argv[1]);
    if (r == NULL) {
        return MDM_ERROR;
    }

    if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
        mdm_err("no result for %s on %s", argv[1], argv[0]);
        freeReplyObject(r);
        return MDM_ERROR;
    }

    if (mdm_raw_only) {
        for (i = 0; i + 1 < r->elements; i += 2) {
            if (strcmp(mdm_rstr(r->element[i]), "raw") == 0) {
                fwrite(r->element[i + 1]->str, 1, r->element[i + 1]->len,
                       stdout);
            }
        }
        freeReplyObject(r);
        return MDM_OK;
    }

    if (mdm_admin.json) {
        mdm_json_out(mdm_jfields(r));
    } else {
        mdm_print_fields(r);
    }

    freeReplyObject(r);
    return MDM_OK;
}


static const char  mdm_show_usage[] =
    "[options] <id>\n"
    "\n"
    "Shows an enrollment (secrets by their length only).\n"
    "\n"
    MDM_REDIS_HELP;


int
mdm_show_main(int argc, char **argv)
{
    redisReply    *r;

    MDM_OPTS(mdm_show_usage, NULL, NULL);

    if (argc != 1) {
        mdm_err("give one enrollment id");
        return MDM_USAGE;
    }

    r = mdm_fcall_once(1, "mdm_enrollment", argv[0], NULL);
    if (r == NULL) {
        return MDM_ERROR;
    }

    if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
        mdm_err("unknown enrollment id %s", argv[0]);
        freeReplyObject(r);
        return MDM_ERROR;
    }

    if (mdm_admin.json) {
        mdm_json_out(mdm_jfields(r));
    } else {
        printf("%-24s %s\n", "id", argv[0]);
        mdm_print_fields(r);
    }

    freeReplyObject(r);
    return MDM_OK;
}


/* ---- escrow ------------------------------------------------------------- */

static const char  mdm_escrow_usage[] =
    "[options] <id> unlock|bootstrap\n"
    "\n"
    "Prints an enrollment's UnlockToken, or a device's BootstrapToken, in\n"
    "base64, opened with the key file nginx seals them with.\n"
    "\n"
    "  --secret-key FILE key file (default: $MDM_SECRET_KEY)\n"
    "  --out FILE        write the raw bytes to a new file (mode 0600)\n"
    MDM_REDIS_HELP;

static const char  *mdm_escrow_out;


static int
mdm_escrow_opt(int ch)
{
    switch (ch) {
    case 'K':
        mdm_secret_file = optarg;
        return 0;
    case 'o':
        mdm_escrow_out = optarg;
        return 0;
    default:
        return -1;
    }
}


int
mdm_escrow_main(int argc, char **argv)
{
    int            rc;
    char          *k, *b64;
    const char    *field, *cmd[3];
    redisReply    *r;
    redisContext  *c;

    static const struct option  extra[] = {
        { "secret-key", required_argument, NULL, 'K' },
        { "out", required_argument, NULL, 'o' },
        { NULL, 0, NULL, 0 }
    };

    MDM_OPTS(mdm_escrow_usage, extra, mdm_escrow_opt);

    field = argc != 2 ? NULL
            : strcmp(argv[1], "unlock") == 0 ? MDM_SECRET_UNLOCK
            : strcmp(argv[1], "bootstrap") == 0 ? MDM_SECRET_BOOTSTRAP
            : NULL;

    if (field == NULL) {
        mdm_err("give an enrollment id and unlock or bootstrap");
        return MDM_USAGE;
    }

    c = mdm_connect(5);
    k = mdm_enr_key(argv[0]);
    if (c == NULL || k == NULL) {
        redisFree(c);
        free(k);
        return MDM_ERROR;
    }

    cmd[0] = "HGET";
    cmd[1] = k;
    cmd[2] = field;
    r = mdm_cmd(c, 3, cmd, NULL);
    free(k);
    redisFree(c);

    rc = MDM_ERROR;

    if (r == NULL) {
        /* mdm_cmd said why */

    } else if (r->type != REDIS_REPLY_STRING || r->len == 0) {
        mdm_err("%s has no %s", argv[0], field);

    } else if (mdm_secret_reply(field, argv[0], r->str, &r->len) != 0) {
        /* the error line is out */

    } else if (mdm_escrow_out) {
        if (mdm_write_file(mdm_escrow_out, r->str, r->len, 0600, 0) == 0) {
            rc = MDM_OK;
        }

    } else {
        b64 = mdm_base64((unsigned char *) r->str, r->len);
        if (b64 && mdm_admin.json) {
            rc = mdm_json_out(json_pack("{s:s,s:s,s:s}", "id", argv[0],
                                        "field", field, "base64", b64));
        } else if (b64) {
            printf("%s\n", b64);
            rc = MDM_OK;
        }
        free(b64);
    }

    if (r) {
        OPENSSL_cleanse(r->str, r->len);
        freeReplyObject(r);
    }

    return rc;
}


/* ---- unbind, conf --------------------------------------------------------- */

static const char  mdm_unbind_usage[] =
    "[options] <device id>\n"
    "\n"
    "Releases a device's certificate binding, so that its next Authenticate\n"
    "may bind another certificate (a re-enrollment with a new identity).\n"
    "Until then every request of the device is refused.\n"
    "\n"
    MDM_REDIS_HELP;


int
mdm_unbind_main(int argc, char **argv)
{
    redisReply  *r;

    MDM_OPTS(mdm_unbind_usage, NULL, NULL);

    if (argc != 1) {
        mdm_err("give one device id");
        return MDM_USAGE;
    }

    r = mdm_fcall_once(0, "mdm_unbind", argv[0], NULL);
    if (r == NULL) {
        return MDM_ERROR;
    }

    if (mdm_admin.json) {
        mdm_json_out(json_pack("{s:s,s:o}", "id", argv[0],
                               "cert", r->type == REDIS_REPLY_STRING
                                       ? mdm_jreply(r) : json_null()));

    } else if (r->type == REDIS_REPLY_STRING) {
        printf("%s: certificate %s unbound\n", argv[0], r->str);

    } else {
        printf("%s: no certificate bound\n", argv[0]);
    }

    freeReplyObject(r);
    return MDM_OK;
}


static const char  mdm_conf_usage[] =
    "[options] get [<field>] | set <field> <value>\n"
    "\n"
    "Shows or changes a setting. Policy (mdm:policy, which nginx may only\n"
    "read): allow_rebind 1|0 (re-Authenticate with another certificate\n"
    "replaces a binding), migration 1|0 (enrollments without a binding bind\n"
    "on their next request). Operation (mdm:conf): result_ttl (seconds),\n"
    "events_maxlen, cert_warn_days.\n"
    "\n"
    MDM_REDIS_HELP;


/* One { field, value, hash, set } row of mdm_conf_get/mdm_conf_set. */
static void
mdm_conf_row(json_t *out, redisReply *e)
{
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 4) {
        return;
    }

    if (out) {
        json_object_set_new(out, mdm_rstr(e->element[0]), json_pack(
            "{s:o,s:o,s:b}", "value", mdm_jreply(e->element[1]),
            "hash", mdm_jreply(e->element[2]),
            "set", mdm_rint(e->element[3]) == 1));
        return;
    }

    printf("%-16s %-10s %s%s\n", mdm_rstr(e->element[0]),
           mdm_rstr(e->element[1]), mdm_rstr(e->element[2]),
           mdm_rint(e->element[3]) == 1 ? "" : " (default)");
}


int
mdm_conf_main(int argc, char **argv)
{
    int            set;
    size_t         i;
    json_t        *out;
    redisReply    *r;
    redisContext  *c;

    MDM_OPTS(mdm_conf_usage, NULL, NULL);

    set = argc == 3 && strcmp(argv[0], "set") == 0;

    if (!set && !(argc >= 1 && argc <= 2 && strcmp(argv[0], "get") == 0)) {
        mdm_err("give get [<field>] or set <field> <value>");
        return MDM_USAGE;
    }

    c = mdm_connect(120);
    if (c == NULL) {
        return MDM_ERROR;
    }
    r = mdm_fcall(c, !set, set ? "mdm_conf_set" : "mdm_conf_get", argc - 1,
                  (const char **) argv + 1, NULL);
    redisFree(c);

    if (r == NULL) {
        return MDM_ERROR;
    }
    if (!mdm_is_array(r, set ? 4 : 0)) {
        freeReplyObject(r);
        return MDM_ERROR;
    }

    out = mdm_admin.json ? json_object() : NULL;

    if (set) {
        mdm_conf_row(out, r);

    } else {
        for (i = 0; i < r->elements; i++) {
            mdm_conf_row(out, r->element[i]);
        }
    }

    freeReplyObject(r);
    return out ? mdm_json_out(out) : MDM_OK;
}


/* ---- status -------------------------------------------------------------- */

static int  mdm_summary_only;


static int
mdm_summary_opt(int ch)
{
    if (ch == 's') {
        mdm_summary_only = 1;
        return 0;
    }
    return -1;
}


static int
mdm_pair_cmp(const void *a, const void *b)
{
    redisReply  *x, *y;

    x = *(redisReply * const *) a;
    y = *(redisReply * const *) b;
    return strcmp(mdm_rstr(x->element[0]), mdm_rstr(y->element[0]));
}


static const char  mdm_status_usage[] =
    "[options] <uuid>\n"
    "\n"
    "Shows a command's status on every target and counts per status.\n"
    "\n"
    "  --summary         counts only\n"
    MDM_REDIS_HELP;


int
mdm_status_main(int argc, char **argv)
{
    size_t         i;
    json_t        *counts, *list, *cnt, *o;
    const char    *st, *k;
    redisReply    *r, **rows;

    static const struct option  extra[] = {
        { "summary", no_argument, NULL, 's' },
        { NULL, 0, NULL, 0 }
    };

    MDM_OPTS(mdm_status_usage, extra, mdm_summary_opt);

    if (argc != 1) {
        mdm_err("give one CommandUUID");
        return MDM_USAGE;
    }

    r = mdm_fcall_once(1, "mdm_command_status", argv[0], NULL);
    if (r == NULL) {
        return MDM_ERROR;
    }

    if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
        mdm_err("unknown CommandUUID %s (or its results expired)", argv[0]);
        freeReplyObject(r);
        return MDM_ERROR;
    }

    for (i = 0; i < r->elements; i++) {
        if (!mdm_is_array(r->element[i], 2)) {
            freeReplyObject(r);
            return MDM_ERROR;
        }
    }

    rows = malloc(r->elements * sizeof(redisReply *));
    if (rows == NULL) {
        freeReplyObject(r);
        return MDM_ERROR;
    }
    memcpy(rows, r->element, r->elements * sizeof(redisReply *));
    qsort(rows, r->elements, sizeof(redisReply *), mdm_pair_cmp);

    counts = json_object();
    list = json_array();

    for (i = 0; i < r->elements; i++) {
        st = mdm_rstr(rows[i]->element[1]);
        cnt = json_object_get(counts, st);
        json_object_set_new(counts, st, json_integer(
                            cnt ? json_integer_value(cnt) + 1 : 1));
        if (mdm_summary_only) {
            continue;
        }
        if (mdm_admin.json) {
            json_array_append_new(list, json_pack("{s:o,s:o}",
                "id", mdm_jreply(rows[i]->element[0]),
                "status", mdm_jreply(rows[i]->element[1])));
        } else {
            printf("%-40s %s\n", mdm_rstr(rows[i]->element[0]), st);
        }
    }

    if (mdm_admin.json) {
        o = json_pack("{s:s,s:I,s:o}", "uuid", argv[0], "targets",
                      (json_int_t) r->elements, "counts", counts);
        if (!mdm_summary_only) {
            json_object_set_new(o, "statuses", list);
        } else {
            json_decref(list);
        }
        mdm_json_out(o);

    } else {
        printf("%zu target%s:", r->elements, r->elements == 1 ? "" : "s");
        json_object_foreach(counts, k, cnt) {
            printf(" %s %lld", k, (long long) json_integer_value(cnt));
        }
        printf("\n");
        json_decref(counts);
        json_decref(list);
    }

    free(rows);
    freeReplyObject(r);
    return MDM_OK;
}


/* ---- devices ------------------------------------------------------------- */

static long  mdm_offset, mdm_limit = 100;
static int   mdm_all;


static int
mdm_devices_opt(int ch)
{
    switch (ch) {
    case 'o':
        if (mdm_parse_int(optarg, 0, 1L << 40, &mdm_offset) != 0) {
            mdm_err("--offset must be a number");
            return -1;
        }
        return 0;
    case 'l':
        if (mdm_parse_int(optarg, 1, 1000000, &mdm_limit) != 0) {
            mdm_err("--limit must be 1-1000000");
            return -1;
        }
        return 0;
    case 'a':
        mdm_all = 1;
        return 0;
    default:
        return -1;
    }
}


static const char  mdm_devices_usage[] =
    "[options]\n"
    "\n"
    "Lists enrollments, most recently seen first.\n"
    "\n"
    "  --offset N        skip the first N\n"
    "  --limit N         show at most N (default 100)\n"
    "  --all             show every enrollment\n"
    MDM_REDIS_HELP;


int
mdm_devices_main(int argc, char **argv)
{
    int            done;
    char           off[24], cnt[24], tbuf[32];
    long           pos, want, page;
    size_t         i;
    json_t        *out;
    redisReply    *r, *e;
    redisContext  *c;

    static const struct option  extra[] = {
        { "offset", required_argument, NULL, 'o' },
        { "limit", required_argument, NULL, 'l' },
        { "all", no_argument, NULL, 'a' },
        { NULL, 0, NULL, 0 }
    };

    MDM_OPTS(mdm_devices_usage, extra, mdm_devices_opt);

    if (argc != 0) {
        mdm_err("no arguments expected");
        return MDM_USAGE;
    }

    c = mdm_connect(30);
    if (c == NULL) {
        return MDM_ERROR;
    }

    out = mdm_admin.json ? json_array() : NULL;
    if (!out) {
        printf("%-40s %-20s %-7s %-20s %5s %s\n", "ID", "TYPE", "ENABLED",
               "LAST_SEEN", "QUEUE", "TOPIC");
    }

    pos = mdm_offset;
    want = mdm_all ? -1 : mdm_limit;

    for (done = 0; !done; ) {
        page = (want < 0 || want > 1000) ? 1000 : want;
        snprintf(off, sizeof(off), "%ld", pos);
        snprintf(cnt, sizeof(cnt), "%ld", page);

        r = mdm_fcall1(c, 1, "mdm_enrollments", off, cnt);
        if (r == NULL || !mdm_is_array(r, 0)) {
            if (r) {
                freeReplyObject(r);
            }
            json_decref(out);
            redisFree(c);
            return MDM_ERROR;
        }

        for (i = 0; i < r->elements; i++) {
            e = r->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements < 6) {
                continue;
            }
            if (out) {
                json_array_append_new(out, json_pack(
                    "{s:o,s:o,s:b,s:o,s:I,s:I}",
                    "id", mdm_jreply(e->element[0]),
                    "type", mdm_jreply(e->element[1]),
                    "enabled", strcmp(mdm_rstr(e->element[2]), "1") == 0,
                    "topic", mdm_jreply(e->element[3]),
                    "last_seen_ms", (json_int_t) mdm_rint(e->element[4]),
                    "queue_length", (json_int_t) mdm_rint(e->element[5])));
            } else {
                printf("%-40s %-20s %-7s %-20s %5lld %s\n",
                       mdm_rstr(e->element[0]), mdm_rstr(e->element[1]),
                       strcmp(mdm_rstr(e->element[2]), "1") == 0
                       ? "yes" : "no",
                       mdm_time(mdm_rstr(e->element[4]), tbuf, sizeof(tbuf)),
                       mdm_rint(e->element[5]), mdm_rstr(e->element[3]));
            }
        }

        done = (long) r->elements < page;
        pos += r->elements;
        if (want > 0) {
            want -= r->elements;
            done = done || want == 0;
        }
        freeReplyObject(r);
    }

    redisFree(c);
    return out ? mdm_json_out(out) : MDM_OK;
}


/* ---- events -------------------------------------------------------------- */

static long         mdm_ev_count = -1, mdm_ev_timeout = -1;
static const char  *mdm_ev_from = "$";


static const char  *mdm_ev_stream = MDM_KEY_EVENTS;


static int
mdm_events_opt(int ch)
{
    switch (ch) {
    case 'n':
        if (mdm_parse_int(optarg, 1, 1L << 40, &mdm_ev_count) != 0) {
            mdm_err("--count must be a positive number");
            return -1;
        }
        return 0;
    case 't':
        if (mdm_parse_int(optarg, 0, 1L << 30, &mdm_ev_timeout) != 0) {
            mdm_err("--timeout must be whole seconds");
            return -1;
        }
        return 0;
    case 'f':
        mdm_ev_from = optarg;
        return 0;
    case 'a':
        mdm_ev_stream = MDM_KEY_AUDIT;
        return 0;
    default:
        return -1;
    }
}


static void
mdm_print_event(redisReply *ev)
{
    char         tbuf[32];
    size_t       i;
    json_t      *o;
    const char  *f, *type, *ms;
    redisReply  *kv;

    kv = ev->element[1];
    if (kv->type != REDIS_REPLY_ARRAY) {
        return;
    }

    if (mdm_admin.json) {
        o = json_object();
        json_object_set_new(o, "stream_id", mdm_jreply(ev->element[0]));
        for (i = 0; i + 1 < kv->elements; i += 2) {
            json_object_set_new(o, mdm_rstr(kv->element[i]),
                                mdm_jreply(kv->element[i + 1]));
        }
        mdm_json_out(o);
        fflush(stdout);
        return;
    }

    type = "-";
    ms = NULL;
    for (i = 0; i + 1 < kv->elements; i += 2) {
        f = mdm_rstr(kv->element[i]);
        if (strcmp(f, "type") == 0) {
            type = mdm_rstr(kv->element[i + 1]);
        } else if (strcmp(f, "ms") == 0) {
            ms = mdm_rstr(kv->element[i + 1]);
        }
    }

    printf("%s %s %s", mdm_time(ms, tbuf, sizeof(tbuf)),
           mdm_rstr(ev->element[0]), type);
    for (i = 0; i + 1 < kv->elements; i += 2) {
        f = mdm_rstr(kv->element[i]);
        if (strcmp(f, "type") != 0 && strcmp(f, "ms") != 0) {
            printf(" %s=%s", f, mdm_rstr(kv->element[i + 1]));
        }
    }
    printf("\n");
    fflush(stdout);
}


static const char  mdm_events_usage[] =
    "[options]\n"
    "\n"
    "Follows the event stream (" MDM_KEY_EVENTS "): what devices say,\n"
    "check-ins and reports (an Idle poll that got nothing is no event).\n"
    "With --audit, the audit stream (" MDM_KEY_AUDIT "): admin actions\n"
    "(enqueue, cancel, forget, settings, sweeps) and security decisions\n"
    "(bindings, refusals, certificates). One line per event, or one JSON\n"
    "object per line.\n"
    "\n"
    "  --audit           follow " MDM_KEY_AUDIT " instead\n"
    "  --from ID         start after stream id ID (0: the oldest kept;\n"
    "                    default $: new events only)\n"
    "  --count N         stop after N events\n"
    "  --timeout S       stop after S seconds without an event\n"
    MDM_REDIS_HELP;


int
mdm_events_main(int argc, char **argv)
{
    int              rc;
    char             block[24], count[24], *last;
    long             seen, waited, step;
    size_t           i;
    redisReply      *r, *evs;
    redisContext    *c;
    const char      *args[8];

    static const struct option  extra[] = {
        { "count", required_argument, NULL, 'n' },
        { "timeout", required_argument, NULL, 't' },
        { "from", required_argument, NULL, 'f' },
        { "audit", no_argument, NULL, 'a' },
        { NULL, 0, NULL, 0 }
    };

    MDM_OPTS(mdm_events_usage, extra, mdm_events_opt);

    if (argc != 0) {
        mdm_err("no arguments expected");
        return MDM_USAGE;
    }

    /* the socket timeout outlasts each blocking read */
    c = mdm_connect(MDM_BLOCK_MS / 1000 + 30);
    if (c == NULL) {
        return MDM_ERROR;
    }

    last = strdup(mdm_ev_from);
    seen = 0;
    waited = 0;
    rc = MDM_OK;

    while (mdm_ev_count < 0 || seen < mdm_ev_count) {
        step = MDM_BLOCK_MS;
        if (mdm_ev_timeout >= 0 && mdm_ev_timeout * 1000 - waited < step) {
            step = mdm_ev_timeout * 1000 - waited;
        }
        if (mdm_ev_timeout >= 0 && step <= 0) {
            break;
        }

        snprintf(block, sizeof(block), "%ld", step);
        snprintf(count, sizeof(count), "%ld",
                 mdm_ev_count < 0 || mdm_ev_count - seen > 1000
                 ? 1000 : mdm_ev_count - seen);

        args[0] = "XREAD";
        args[1] = "COUNT";
        args[2] = count;
        args[3] = "BLOCK";
        args[4] = block;
        args[5] = "STREAMS";
        args[6] = mdm_ev_stream;
        args[7] = last;

        r = mdm_cmd(c, 8, args, NULL);
        if (r == NULL) {
            rc = MDM_ERROR;
            break;
        }

        if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
            waited += step;
            freeReplyObject(r);
            continue;
        }

        waited = 0;
        evs = r->element[0];
        if (!mdm_is_array(evs, 2) || !mdm_is_array(evs->element[1], 0)) {
            freeReplyObject(r);
            rc = MDM_ERROR;
            break;
        }
        evs = evs->element[1];
        for (i = 0; i < evs->elements; i++) {
            if (!mdm_is_array(evs->element[i], 2)) {
                continue;
            }
            mdm_print_event(evs->element[i]);
            free(last);
            last = strdup(mdm_rstr(evs->element[i]->element[0]));
            seen++;
        }
        freeReplyObject(r);
    }

    free(last);
    redisFree(c);
    return rc;
}


/* ---- for the other admin files (scep.c, rts.c) --------------------------- */

int
mdm_admin_option(int ch)
{
    return mdm_admin_opt(ch);
}


int
mdm_admin_json(void)
{
    return mdm_admin.json;
}


redisContext *
mdm_admin_connect(void)
{
    return mdm_connect(120);
}


redisReply *
mdm_admin_fcall(redisContext *c, int ro, const char *fn, int n,
    const char **args, const size_t *lens)
{
    return mdm_fcall(c, ro, fn, n, args, lens);
}


int
mdm_admin_json_out(json_t *j)
{
    return mdm_json_out(j);
}
