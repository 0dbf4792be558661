/*
 * The admin side, through the same Redis Functions an operator uses:
 * enqueue the commands the cycle scenario will drain, and time one bulk
 * enqueue to many targets.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <openssl/sha.h>

#include "mdm_keys.h"
#include "mdm_sim.h"
#include "../common/mdm_keys.h"


redisContext *
sim_redis_connect(const char *addr)
{
    char          *host, *colon;
    redisContext  *rc;

    if (addr[0] == '/') {
        rc = redisConnectUnix(addr);
    } else {
        host = strdup(addr);
        colon = strrchr(host, ':');
        if (colon == NULL) {
            sim_die("--redis wants a unix socket path or host:port");
        }
        *colon = '\0';
        rc = redisConnect(host, atoi(colon + 1));
        free(host);
    }

    if (rc == NULL || rc->err) {
        sim_die("redis %s: %s", addr, rc ? rc->errstr : "out of memory");
    }

    return rc;
}


/* n ids in one block: prefix followed by 8 hex digits of the index. */
char **
sim_redis_ids(const char *prefix, int n)
{
    int     i;
    char  **ids, *buf;
    size_t  len;

    len = strlen(prefix) + 9;
    ids = calloc(n, sizeof(char *));
    buf = malloc((size_t) n * len);
    if (ids == NULL || buf == NULL) {
        sim_die("out of memory");
    }
    for (i = 0; i < n; i++) {
        ids[i] = buf + (size_t) i * len;
        snprintf(ids[i], len, "%s%08X", prefix, i);
    }

    return ids;
}


void
sim_redis_ids_free(char **ids)
{
    if (ids != NULL) {
        free(ids[0]);
        free(ids);
    }
}


/*
 * The longest FCALL of function fn Redis ran since the SLOWLOG RESET, in
 * ms, as Redis timed it (only calls above slowlog-log-slower-than, 10 ms,
 * are logged): how long one call held Redis, without the time it waited
 * behind other clients.
 */
double
sim_redis_slowest(redisContext *rc, const char *fn)
{
    size_t       i;
    double       ms;
    redisReply  *r, *e, *a;

    ms = 0;
    r = redisCommand(rc, "SLOWLOG GET 1024");
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        sim_die("redis SLOWLOG failed");
    }

    for (i = 0; i < r->elements; i++) {
        e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 4) {
            continue;
        }
        a = e->element[3];
        if (a->type == REDIS_REPLY_ARRAY && a->elements > 1
            && a->element[1]->type == REDIS_REPLY_STRING
            && strcmp(a->element[1]->str, fn) == 0
            && e->element[2]->integer / 1e3 > ms)
        {
            ms = e->element[2]->integer / 1e3;
        }
    }

    freeReplyObject(r);

    return ms;
}


/*
 * FCALL mdm_enqueue 0 plist priority expires nopush id... in calls of at
 * most chunk ids, the same body each time: one command, stored once.  The
 * reply is { uuid, queued, pushes[, already] }.  Every call is timed on
 * its own: no call may hold Redis for long.  pace (1-99): after a call
 * that took T, wait T * (100 - pace) / pace, as mdmctl enqueue --pace
 * does, so the devices keep the rest of Redis' time.
 */
static int
sim_redis_enqueue_ids(redisContext *rc, const char *plist, int expires,
    int chunk, int n, char **ids, sim_enq_t *enq, int soft, int verbose,
    int pace)
{
    int           i, j, m, argc;
    char          exp[16];
    double        t, t0;
    size_t       *lens;
    redisReply   *r;
    const char  **argv;

    if (chunk <= 0 || chunk > n) {
        chunk = n;
    }

    argv = calloc(7 + chunk, sizeof(char *));
    lens = calloc(7 + chunk, sizeof(size_t));
    if (argv == NULL || lens == NULL) {
        sim_die("out of memory");
    }

    snprintf(exp, sizeof(exp), "%d", expires);
    argv[0] = "FCALL";
    argv[1] = "mdm_enqueue";
    argv[2] = "0";
    argv[3] = plist;
    argv[4] = "5";                  /* priority */
    argv[5] = exp;
    argv[6] = "1";                  /* no push: nothing consumes them here */
    for (j = 0; j < 7; j++) {
        lens[j] = strlen(argv[j]);
    }

    if (!soft) {
        freeReplyObject(redisCommand(rc, "SLOWLOG RESET"));
    }

    t0 = sim_now();
    enq->t_start = t0;

    for (i = 0; i < n; i += chunk) {
        m = n - i < chunk ? n - i : chunk;
        for (j = 0; j < m; j++) {
            argv[7 + j] = ids[i + j];
            lens[7 + j] = strlen(ids[i + j]);
        }
        argc = 7 + m;

        t = sim_now();
        r = redisCommandArgv(rc, argc, argv, lens);
        t = (sim_now() - t) * 1e3;

        /* mdmctl enqueue --pace: Redis time left to the devices */
        if (pace > 0 && pace < 100 && i + m < n) {
            usleep((useconds_t) (t * 1e3 * (100 - pace) / pace));
        }

        if (r == NULL) {
            sim_die("redis: %s", rc->errstr);
        }
        if (r->type == REDIS_REPLY_ERROR && soft) {
            snprintf(enq->retry_error, sizeof(enq->retry_error), "%s",
                     r->str);
            freeReplyObject(r);
            free(argv);
            free(lens);
            return -1;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            sim_die("mdm_enqueue: %s", r->str);
        }
        if (r->type != REDIS_REPLY_ARRAY || r->elements < 3) {
            sim_die("mdm_enqueue: unexpected reply");
        }

        if (r->element[0]->type == REDIS_REPLY_STRING) {
            snprintf(enq->uuid, sizeof(enq->uuid), "%s", r->element[0]->str);
        }
        enq->queued += r->element[1]->integer;
        if (r->elements > 3) {
            enq->already += r->element[3]->integer;
        }
        enq->calls++;
        if (verbose) {
            fprintf(stderr, "mdm_enqueue %d ids at %d: %.2f ms\n", m, i, t);
        }
        if (t > enq->max_ms) {
            enq->max_ms = t;
        }

        freeReplyObject(r);
    }

    enq->t_end = sim_now();
    enq->total_ms += (enq->t_end - t0) * 1e3;

    if (!soft) {
        t = sim_redis_slowest(rc, "mdm_enqueue");
        if (t > enq->server_max_ms) {
            enq->server_max_ms = t;
        }
    }

    free(argv);
    free(lens);

    return 0;
}


void
sim_redis_enqueue(sim_t *sim)
{
    int            i, k, n;
    char         **ids;
    sim_enq_t      enq;
    sim_buf_t      plist = { NULL, 0, 0 };
    redisContext  *rc;

    n = sim->conf.devices;
    for (i = 0; i < n; i++) {
        sim->devices[i].acked = calloc((sim->conf.commands + 7) / 8, 1);
        if (sim->devices[i].acked == NULL) {
            sim_die("out of memory");
        }
    }

    if (sim->conf.redis == NULL || sim->conf.commands == 0) {
        return;
    }

    rc = sim_redis_connect(sim->conf.redis);
    ids = calloc(n, sizeof(char *));
    if (ids == NULL) {
        sim_die("out of memory");
    }
    for (i = 0; i < n; i++) {
        ids[i] = sim->devices[i].udid;
    }

    for (k = 0; k < sim->conf.commands; k++) {
        sim_body_command(sim, k, &plist);
        memset(&enq, 0, sizeof(enq));
        sim_redis_enqueue_ids(rc, plist.data, sim->conf.expires,
                              sim->conf.enqueue_chunk, n, ids, &enq, 0,
                              sim->conf.verbose, 100);
        sim->stats.enqueue_ms += enq.total_ms;
        sim->stats.cmd_enqueued += n;
        sim->stats.enq.calls += enq.calls;
        sim->stats.enq.queued += enq.queued;
        sim->stats.enq.total_ms += enq.total_ms;
        if (enq.max_ms > sim->stats.enq.max_ms) {
            sim->stats.enq.max_ms = enq.max_ms;
        }
    }

    free(ids);
    free(plist.data);
    redisFree(rc);
}


/* A numeric field of INFO section ("used_memory", "aof_rewrites"). */
long long
sim_redis_info(redisContext *rc, const char *section, const char *field)
{
    char        *p, name[64];
    long long    v;
    redisReply  *r;

    r = redisCommand(rc, "INFO %s", section);
    if (r == NULL || r->type != REDIS_REPLY_STRING) {
        sim_die("redis INFO failed");
    }

    snprintf(name, sizeof(name), "\n%s:", field);
    p = strstr(r->str, name);
    v = p ? atoll(p + strlen(name)) : 0;
    freeReplyObject(r);

    return v;
}


static long long
sim_redis_used_memory(redisContext *rc)
{
    return sim_redis_info(rc, "memory", "used_memory");
}


/* INFO keyspace: db0's keys with a TTL. */
static long long
sim_redis_expires(redisContext *rc)
{
    char        *p;
    long long    v;
    redisReply  *r;

    r = redisCommand(rc, "INFO keyspace");
    if (r == NULL || r->type != REDIS_REPLY_STRING) {
        sim_die("redis INFO failed");
    }

    p = strstr(r->str, "db0:");
    p = p ? strstr(p, "expires=") : NULL;
    v = p ? atoll(p + sizeof("expires=") - 1) : 0;
    freeReplyObject(r);

    return v;
}


/*
 * MEMORY STATS: dataset.bytes (used_memory less Redis' own overhead:
 * client buffers, the AOF buffer, script caches, the key tables) and the
 * bucket arrays of db0's main and expires tables, which grow in powers of
 * two with the key count and shrink only when nearly empty.
 */
static void
sim_redis_memory_stats(redisContext *rc, long long *dataset, long long *ht)
{
    size_t       i, j;
    redisReply  *r, *db;

    r = redisCommand(rc, "MEMORY STATS");
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        sim_die("redis MEMORY STATS failed");
    }

    *dataset = 0;
    *ht = 0;
    for (i = 0; i + 1 < r->elements; i += 2) {
        if (r->element[i]->type != REDIS_REPLY_STRING) {
            continue;
        }
        if (strcmp(r->element[i]->str, "dataset.bytes") == 0) {
            *dataset = r->element[i + 1]->integer;
            continue;
        }
        if (strcmp(r->element[i]->str, "db.0") != 0) {
            continue;
        }
        db = r->element[i + 1];
        for (j = 0; j + 1 < db->elements; j += 2) {
            if (db->element[j]->type == REDIS_REPLY_STRING
                && strncmp(db->element[j]->str, "overhead.hashtable.", 19)
                   == 0)
            {
                *ht += db->element[j + 1]->integer;
            }
        }
    }

    freeReplyObject(r);
}


static long long
sim_redis_key_memory(redisContext *rc, const char *key)
{
    long long    v;
    redisReply  *r;

    r = redisCommand(rc, "MEMORY USAGE %s SAMPLES 0", key);
    if (r == NULL) {
        sim_die("redis: %s", rc->errstr);
    }
    v = r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
    freeReplyObject(r);

    return v;
}


/*
 * used_memory, dataset.bytes and the key tables as the median of five
 * samples 100 ms apart: client buffers and the AOF buffer come and go.
 * The slow log is emptied first: its entries keep up to 32 arguments of
 * each slow call (an mdm_enqueue of 2,000 ids is one), outside any key
 * and outside MEMORY STATS' overhead, so they would count as data.
 */
static void
sim_redis_memory_settled(redisContext *rc, long long *um, long long *ds,
    long long *ht)
{
    int        i, j, k;
    long long  v[3][5], t;

    freeReplyObject(redisCommand(rc, "SLOWLOG RESET"));

    for (i = 0; i < 5; i++) {
        if (i > 0) {
            usleep(100000);
        }
        v[0][i] = sim_redis_used_memory(rc);
        sim_redis_memory_stats(rc, &v[1][i], &v[2][i]);
    }

    for (k = 0; k < 3; k++) {
        for (i = 1; i < 5; i++) {
            for (j = i; j > 0 && v[k][j - 1] > v[k][j]; j--) {
                t = v[k][j];
                v[k][j] = v[k][j - 1];
                v[k][j - 1] = t;
            }
        }
    }

    *um = v[0][2];
    *ds = v[1][2];
    *ht = v[2][2];
}


/* The capped streams (events, audit): no per-target storage. */
static long long
sim_redis_streams(redisContext *rc)
{
    return sim_redis_key_memory(rc, MDM_KEY_EVENTS)
           + sim_redis_key_memory(rc, MDM_KEY_AUDIT);
}


/* Redis' clock, Unix ms: the one mdm_enqueue and mdm_sweep go by. */
static long long
sim_redis_time_ms(redisContext *rc)
{
    long long    v;
    redisReply  *r;

    r = redisCommand(rc, "TIME");
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
        sim_die("redis TIME failed");
    }
    v = atoll(r->element[0]->str) * 1000 + atoll(r->element[1]->str) / 1000;
    freeReplyObject(r);

    return v;
}


/* The replies of n pipelined calls; what names them in an error. */
void
sim_redis_drain(redisContext *rc, int n, const char *what)
{
    redisReply  *r;

    while (n-- > 0) {
        if (redisGetReply(rc, (void **) &r) != REDIS_OK) {
            sim_die("redis: %s", rc->errstr);
        }
        if (r->type == REDIS_REPLY_ERROR) {
            sim_die("%s: %s", what, r->str);
        }
        if (r->type == REDIS_REPLY_ARRAY && r->elements > 0
            && r->element[0]->type == REDIS_REPLY_INTEGER
            && r->element[0]->integer != 200)
        {
            sim_die("%s refused: %lld %s", what, r->element[0]->integer,
                    r->elements > 3 && r->element[3]->str
                    ? r->element[3]->str : "");
        }
        freeReplyObject(r);
    }
}


/*
 * The made-up certificate of id: its SHA-256 hex and its mdm:cert key.
 * Nobody connects with it; mdm_report checks the binding against it.
 */
static void
sim_redis_cert(const char *id, char *sha, char *certkey, size_t len)
{
    int       j;
    char      name[128];
    uint8_t   h[32];
    static const char  digits[] = "0123456789abcdef";

    snprintf(name, sizeof(name), "cert/%s", id);
    SHA256((unsigned char *) name, strlen(name), h);
    for (j = 0; j < 32; j++) {
        sha[2 * j] = digits[h[j] >> 4];
        sha[2 * j + 1] = digits[h[j] & 0xf];
    }
    sha[64] = '\0';
    snprintf(certkey, len, MDM_KEY_CERT, sha);
}


/*
 * Enrolls ids the way the module would (an Authenticate through
 * mdm_checkin), pipelined, without TLS: mdm_enqueue accepts only enrolled
 * ids, and a TokenUpdate would add nothing the enqueue looks at.
 */
static void
sim_redis_enroll_direct(sim_t *sim, redisContext *rc, int n, char **ids)
{
    int            i, j, argc, nkv, pending;
    char           enr[128], certkey[128], sha[65], hex[72];
    size_t         lens[40];
    sim_buf_t      body = { NULL, 0, 0 };
    const char    *argv[40];
    sim_device_t   dev;

    pending = 0;
    memset(&dev, 0, sizeof(dev));

    for (i = 0; i < n; i++) {
        dev.index = i;
        snprintf(dev.udid, sizeof(dev.udid), "%s", ids[i]);
        snprintf(enr, sizeof(enr), MDM_KEY_ENR, ids[i], ids[i]);
        sim_redis_cert(ids[i], sha, certkey, sizeof(certkey));

        sim_body_device(sim, &dev, SIM_RQ_AUTHENTICATE, &body);
        argv[0] = "FCALL";
        argv[1] = "mdm_checkin";
        argv[2] = "3";
        argv[3] = enr;
        argv[4] = certkey;
        argv[5] = MDM_KEY_EVENTS;
        argv[6] = "Authenticate";
        argv[7] = ids[i];
        argv[8] = ids[i];
        argv[9] = "Device";
        argv[10] = "";
        argv[11] = "0";
        argv[12] = sha;
        argv[13] = "0";                     /* no deadline */
        for (j = 0; j < 14; j++) {
            lens[j] = strlen(argv[j]);
        }
        sim_body_checkin_fields(sim, &dev, SIM_RQ_AUTHENTICATE, argv + 14,
                                lens + 14, &nkv, hex);
        argc = 14 + nkv;
        argv[argc] = "Raw";
        lens[argc++] = 3;
        argv[argc] = body.data;
        lens[argc++] = body.len;

        redisAppendCommandArgv(rc, argc, argv, lens);
        pending++;

        if (pending >= 1000) {
            sim_redis_drain(rc, pending, "mdm_checkin");
            pending = 0;
        }
    }

    sim_redis_drain(rc, pending, "mdm_checkin");
    free(body.data);
}


/*
 * The least mdm_enqueue takes for enrolled (an existing mdm:{D}:enr:E):
 * one small hash per id, pipelined; a million of them in seconds.
 */
static void
sim_redis_enroll_light(redisContext *rc, int n, char **ids)
{
    int   i, pending;
    char  enr[128];

    pending = 0;

    for (i = 0; i < n; i++) {
        snprintf(enr, sizeof(enr), MDM_KEY_ENR, ids[i], ids[i]);
        redisAppendCommand(rc, "HSET %s type Device enabled 0", enr);

        if (++pending >= 5000) {
            sim_redis_drain(rc, pending, "HSET");
            pending = 0;
        }
    }

    sim_redis_drain(rc, pending, "HSET");
}


void
sim_redis_enroll(sim_t *sim, redisContext *rc, int n, char **ids)
{
    double  t;

    t = sim_now();

    switch (sim->conf.enroll) {
    case SIM_ENR_CHECKIN:
        sim_redis_enroll_direct(sim, rc, n, ids);
        break;
    case SIM_ENR_LIGHT:
        sim_redis_enroll_light(rc, n, ids);
        break;
    default:
        break;
    }

    sim->stats.enroll_ms = (sim_now() - t) * 1e3;
}


/*
 * Takes the targets out again: enrollment, certificate binding, queue,
 * NotNow set and the index entry of every id, then the command (body,
 * target table, its entries in the expiry index and the sweep's cursors).
 * UNLINK frees in the background, pipelined.
 */
void
sim_redis_cleanup(sim_t *sim, redisContext *rc, int n, char **ids,
    const char *uuid)
{
    int     i, pending;
    char    enr[128], q[128], nn[128], certkey[128], sha[65], key[128];
    double  t;

    t = sim_now();
    pending = 0;

    for (i = 0; i < n; i++) {
        snprintf(enr, sizeof(enr), MDM_KEY_ENR, ids[i], ids[i]);
        snprintf(q, sizeof(q), MDM_KEY_Q, ids[i], ids[i]);
        snprintf(nn, sizeof(nn), MDM_KEY_NN, ids[i], ids[i]);
        sim_redis_cert(ids[i], sha, certkey, sizeof(certkey));
        redisAppendCommand(rc, "UNLINK %s %s %s %s", enr, q, nn, certkey);
        redisAppendCommand(rc, "ZREM %s %s", MDM_KEY_ENROLLMENTS, ids[i]);
        pending += 2;

        if (pending >= 5000) {
            sim_redis_drain(rc, pending, "UNLINK");
            pending = 0;
        }
    }

    if (uuid != NULL && uuid[0] != '\0') {
        snprintf(key, sizeof(key), MDM_KEY_CMD, uuid);
        redisAppendCommand(rc, "UNLINK %s", key);
        snprintf(key, sizeof(key), MDM_KEY_CMDT, uuid);
        redisAppendCommand(rc, "UNLINK %s", key);
        redisAppendCommand(rc, "ZREM %s %s", MDM_KEY_EXPIRY, uuid);
        redisAppendCommand(rc, "HDEL %s %s", MDM_KEY_SWEEP, uuid);
        pending += 4;
    }

    sim_redis_drain(rc, pending, "UNLINK");
    sim->stats.cleanup_ms = (sim_now() - t) * 1e3;
}


/*
 * One command to --targets ids in calls of --enqueue-chunk ids, after
 * enrolling them directly; reports the time of all the calls, the longest
 * one and the memory they took.  Then the first chunk once more, as a
 * retry after a lost reply: it must queue nothing (an mdm_enqueue without
 * idempotent chunks refuses it, which is recorded, not fatal).
 */
void
sim_redis_bulk(sim_t *sim)
{
    int            n, chunk;
    char         **ids;
    long long      m0, m1, m2;
    sim_enq_t      again;
    sim_buf_t      plist = { NULL, 0, 0 };
    redisContext  *rc;

    if (sim->conf.redis == NULL) {
        sim_die("the enqueue scenario needs --redis");
    }

    n = sim->conf.targets;
    ids = sim_redis_ids(sim->conf.target_prefix, n);

    rc = sim_redis_connect(sim->conf.redis);
    sim->conf.commands = 1;
    sim_body_command(sim, 0, &plist);

    m0 = sim_redis_used_memory(rc);
    sim_redis_enroll(sim, rc, n, ids);
    m1 = sim_redis_used_memory(rc);
    sim->stats.enroll_memory = m1 - m0;

    if (!sim->conf.enroll_only) {
        sim_redis_enqueue_ids(rc, plist.data, sim->conf.expires,
                              sim->conf.enqueue_chunk, n, ids,
                              &sim->stats.enq, 0,
                              sim->conf.verbose, 100);
        sim->stats.t_start = sim->stats.enq.t_start;
        sim->stats.t_end = sim->stats.enq.t_end;
        sim->stats.enqueue_ms = sim->stats.enq.total_ms;
        sim->stats.cmd_enqueued = sim->stats.enq.queued;
        m2 = sim_redis_used_memory(rc);
        sim->stats.enqueue_memory = m2 - m1;
        sim->stats.enq.memory = m2 - m1;

        /* a chunk sent again (a retry after a lost reply) adds nothing */
        chunk = sim->conf.enqueue_chunk;
        chunk = chunk > 0 && chunk < n ? chunk : n;
        memset(&again, 0, sizeof(again));
        if (sim_redis_enqueue_ids(rc, plist.data, sim->conf.expires, chunk,
                                  chunk, ids, &again, 1, 0, 100) == 0)
        {
            sim->stats.enq.retry = 1;
            sim->stats.enq.retry_queued = again.queued;
            sim->stats.enq.retry_already = again.already;
        } else {
            sim->stats.enq.retry = -1;
            snprintf(sim->stats.enq.retry_error,
                     sizeof(sim->stats.enq.retry_error), "%s",
                     again.retry_error);
        }
    }

    if (sim->conf.cleanup) {
        sim_redis_cleanup(sim, rc, n, ids, sim->stats.enq.uuid);
    }

    sim_redis_ids_free(ids);
    free(plist.data);
    redisFree(rc);
}


/*
 * --enqueue-during: the targets are enrolled before the fleet connects;
 * once the clock starts a thread enqueues one command to all of them on
 * its own connection while the devices keep polling, and the run ends when
 * it is done, so the latency figures cover exactly the enqueue.
 */
void
sim_redis_bg_prepare(sim_t *sim)
{
    redisContext  *rc;

    if (sim->conf.redis == NULL) {
        sim_die("--enqueue-during needs --redis");
    }

    sim->targets = sim_redis_ids(sim->conf.target_prefix,
                                 sim->conf.targets);
    rc = sim_redis_connect(sim->conf.redis);
    sim->bg_rc = rc;

    sim->stats.enroll_memory = -sim_redis_used_memory(rc);
    sim_redis_enroll(sim, rc, sim->conf.targets, sim->targets);
    sim->stats.enroll_memory += sim_redis_used_memory(rc);

    /* an index no device of the fleet knows: never delivered to them */
    sim_body_command(sim, sim->conf.commands, &sim->bg_plist);
}


static void *
sim_redis_bg_thread(void *arg)
{
    long long      m0;
    sim_t         *sim;
    redisContext  *rc;

    sim = arg;
    rc = sim->bg_rc;

    m0 = sim_redis_used_memory(rc);
    sim_redis_enqueue_ids(rc, sim->bg_plist.data, sim->conf.expires,
                          sim->conf.enqueue_chunk, sim->conf.targets,
                          sim->targets, &sim->stats.enq, 0,
                          sim->conf.verbose, sim->conf.enqueue_pace);
    sim->stats.enq.memory = sim_redis_used_memory(rc) - m0;

    __atomic_store_n(&sim->bg_done, 1, __ATOMIC_RELEASE);

    return NULL;
}


void
sim_redis_bg_start(sim_t *sim)
{
    if (!sim->conf.enqueue_during || sim->bg_started) {
        return;
    }

    if (pthread_create(&sim->bg_thread, NULL, sim_redis_bg_thread, sim)
        != 0)
    {
        sim_die("pthread_create failed");
    }
    sim->bg_started = 1;
}


int
sim_redis_bg_done(sim_t *sim)
{
    return sim->bg_started && __atomic_load_n(&sim->bg_done, __ATOMIC_ACQUIRE);
}


void
sim_redis_bg_finish(sim_t *sim)
{
    if (!sim->conf.enqueue_during) {
        return;
    }

    if (sim->bg_started) {
        pthread_join(sim->bg_thread, NULL);
    }

    sim->stats.enqueue_ms = sim->stats.enq.total_ms;
    sim->stats.enqueue_memory = sim->stats.enq.memory;

    if (sim->conf.cleanup) {
        sim_redis_cleanup(sim, sim->bg_rc, sim->conf.targets, sim->targets,
                          sim->stats.enq.uuid);
    }

    redisFree(sim->bg_rc);
    sim->bg_rc = NULL;
    sim_redis_ids_free(sim->targets);
    sim->targets = NULL;
    free(sim->bg_plist.data);
}


/*
 * The step's keys (mdm:{PREFIX...) after the sweep: those with a TTL (the
 * results, on their way out) summed by MEMORY USAGE, and the queues left.
 */
static void
sim_redis_scan_step(sim_t *sim, redisContext *rc, const char *uuid)
{
    char           cursor[32], match[160], key[128];
    size_t         i;
    long long      ttl;
    redisReply    *r, *k, *a, *b;
    sim_growth_t  *g;

    g = &sim->stats.growth;
    /* every key under the devices whose id starts with the prefix */
    snprintf(key, sizeof(key), "%s*", sim->conf.target_prefix);
    snprintf(match, sizeof(match), MDM_KEY_DEVICE "*", key);
    snprintf(cursor, sizeof(cursor), "0");

    do {
        r = redisCommand(rc, "SCAN %s MATCH %s COUNT 2000", cursor, match);
        if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            sim_die("redis SCAN failed");
        }
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        k = r->element[1];

        for (i = 0; i < k->elements; i++) {
            redisAppendCommand(rc, "PTTL %s", k->element[i]->str);
            redisAppendCommand(rc, "MEMORY USAGE %s SAMPLES 0",
                               k->element[i]->str);
        }
        for (i = 0; i < k->elements; i++) {
            if (redisGetReply(rc, (void **) &a) != REDIS_OK
                || redisGetReply(rc, (void **) &b) != REDIS_OK)
            {
                sim_die("redis: %s", rc->errstr);
            }
            ttl = a->type == REDIS_REPLY_INTEGER ? a->integer : -2;
            if (ttl > 0) {
                g->ttl_keys++;
                g->swept_ttl += b->type == REDIS_REPLY_INTEGER
                                ? b->integer : 0;
            } else if (ttl == -1 && strstr(k->element[i]->str, ":q:")) {
                g->left_keys++;
            }
            freeReplyObject(a);
            freeReplyObject(b);
        }

        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);

    snprintf(key, sizeof(key), MDM_KEY_CMDT, uuid);
    r = redisCommand(rc, "PTTL %s", key);
    if (r != NULL && r->type == REDIS_REPLY_INTEGER && r->integer > 0) {
        g->ttl_keys++;
        g->swept_ttl += sim_redis_key_memory(rc, key);
    } else if (r != NULL && r->type == REDIS_REPLY_INTEGER
               && r->integer == -1)
    {
        g->left_keys++;
    }
    freeReplyObject(r);

    snprintf(key, sizeof(key), MDM_KEY_CMD, uuid);
    r = redisCommand(rc, "EXISTS %s", key);
    g->cmd_left = r != NULL && r->type == REDIS_REPLY_INTEGER
                  && r->integer > 0;
    freeReplyObject(r);
}


/*
 * MEMORY USAGE (SAMPLES 0) of every key but the capped streams, summed,
 * and the number of keys: what the data model holds, key by key.
 */
static long long
sim_redis_all_keys(redisContext *rc, long long *nkeys)
{
    char         cursor[32];
    size_t       i;
    long long    sum;
    redisReply  *r, *k, *a;

    sum = 0;
    *nkeys = 0;
    snprintf(cursor, sizeof(cursor), "0");

    do {
        r = redisCommand(rc, "SCAN %s COUNT 2000", cursor);
        if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            sim_die("redis SCAN failed");
        }
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        k = r->element[1];

        for (i = 0; i < k->elements; i++) {
            redisAppendCommand(rc, "MEMORY USAGE %s SAMPLES 0",
                               k->element[i]->str);
        }
        for (i = 0; i < k->elements; i++) {
            if (redisGetReply(rc, (void **) &a) != REDIS_OK) {
                sim_die("redis: %s", rc->errstr);
            }
            if (a->type == REDIS_REPLY_INTEGER
                && strcmp(k->element[i]->str, MDM_KEY_EVENTS) != 0
                && strcmp(k->element[i]->str, MDM_KEY_AUDIT) != 0)
            {
                sum += a->integer;
                (*nkeys)++;
            }
            freeReplyObject(a);
        }

        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);

    return sum;
}


/* One SCAN pass over the step's keys and its target table. */
static void
sim_redis_touch_step(sim_t *sim, redisContext *rc, const char *uuid)
{
    char         cursor[32], match[160], key[128];
    redisReply  *r;

    /* every key under the devices whose id starts with the prefix */
    snprintf(key, sizeof(key), "%s*", sim->conf.target_prefix);
    snprintf(match, sizeof(match), MDM_KEY_DEVICE "*", key);
    snprintf(cursor, sizeof(cursor), "0");

    do {
        r = redisCommand(rc, "SCAN %s MATCH %s COUNT 5000", cursor, match);
        if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            sim_die("redis SCAN failed");
        }
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);

    snprintf(key, sizeof(key), MDM_KEY_CMDT, uuid);
    freeReplyObject(redisCommand(rc, "EXISTS %s", key));
}


/* FCALL mdm_sweep 0 until more = 0, each call timed. */
static void
sim_redis_sweep(sim_t *sim, redisContext *rc)
{
    int            more;
    double         t, t0;
    redisReply    *r;
    sim_growth_t  *g;

    g = &sim->stats.growth;
    t0 = sim_now();

    if (sim->conf.gc_command != NULL) {
        freeReplyObject(redisCommand(rc, "SLOWLOG RESET"));
        if (system(sim->conf.gc_command) != 0) {
            sim_die("%s failed", sim->conf.gc_command);
        }
        g->sweep_ms = (sim_now() - t0) * 1e3;
        g->sweep_max_ms = sim_redis_slowest(rc, "mdm_sweep");
        return;
    }

    do {
        t = sim_now();
        r = redisCommand(rc, "FCALL mdm_sweep 0");
        t = (sim_now() - t) * 1e3;
        if (r == NULL) {
            sim_die("redis: %s", rc->errstr);
        }
        if (r->type == REDIS_REPLY_ERROR) {
            sim_die("mdm_sweep: %s", r->str);
        }
        if (r->type != REDIS_REPLY_ARRAY || r->elements < 3) {
            sim_die("mdm_sweep: unexpected reply");
        }
        g->expired += r->element[0]->integer;
        g->released += r->element[1]->integer;
        more = r->element[2]->integer != 0;
        g->sweep_calls++;
        if (t > g->sweep_max_ms) {
            g->sweep_max_ms = t;
        }
        freeReplyObject(r);
    } while (more && sim_now() - t0 < 300);

    g->sweep_ms = (sim_now() - t0) * 1e3;
}


/*
 * Bounded growth: --targets ids enrolled (the baseline), one command with
 * --expires to all of them, --answer of them acknowledge it (mdm_report,
 * as the module calls it), the rest never poll.  Past the expiry one sweep
 * (--gc or mdm_sweep until done); then what is left above the baseline,
 * right away and once the results' TTL (mdm:conf result_ttl) has run out.
 */
void
sim_redis_growth(sim_t *sim)
{
    int            i, n, na, pending;
    char         **ids, enr[128], certkey[128], sha[65];
    double         t, deadline;
    long long      m, ds, ht, ev0, ds0, ht0, x0, due;
    sim_buf_t      plist = { NULL, 0, 0 }, ack = { NULL, 0, 0 };
    redisReply    *r;
    sim_device_t   dev;
    sim_growth_t  *g;
    redisContext  *rc;

    if (sim->conf.redis == NULL) {
        sim_die("the growth scenario needs --redis");
    }
    if (sim->conf.expires <= 0) {
        sim->conf.expires = 5;
    }

    g = &sim->stats.growth;
    n = sim->conf.targets;
    ids = sim_redis_ids(sim->conf.target_prefix, n);
    rc = sim_redis_connect(sim->conf.redis);
    sim->conf.commands = 1;
    sim_body_command(sim, 0, &plist);

    r = redisCommand(rc, "FCALL_RO mdm_conf_get 0 result_ttl");
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 1
        || r->element[0]->elements < 2)
    {
        sim_die("mdm_conf_get result_ttl failed");
    }
    g->result_ttl = atoll(r->element[0]->element[1]->str);
    freeReplyObject(r);

    sim_redis_enroll(sim, rc, n, ids);

    g->keys_base = sim_redis_all_keys(rc, &g->nkeys_base);
    sim_redis_memory_settled(rc, &m, &ds0, &ht0);
    ev0 = sim_redis_streams(rc);
    g->base = m;
    g->base_dataset = ds0;
    x0 = sim_redis_expires(rc);

    sim_redis_enqueue_ids(rc, plist.data, sim->conf.expires,
                          sim->conf.enqueue_chunk, n, ids, &sim->stats.enq,
                          0, sim->conf.verbose, 100);
    sim->stats.enqueue_ms = sim->stats.enq.total_ms;
    sim->stats.cmd_enqueued = sim->stats.enq.queued;
    due = sim_redis_time_ms(rc) + sim->conf.expires * 1000LL;
    g->queued = sim_redis_used_memory(rc) - g->base;

    /* the devices that poll: Idle would fetch it, the report finishes it */
    na = (int) (n * sim->conf.answer + 0.5);
    memset(&dev, 0, sizeof(dev));
    pending = 0;
    for (i = 0; i < na; i++) {
        dev.index = i;
        snprintf(dev.udid, sizeof(dev.udid), "%s", ids[i]);
        snprintf(enr, sizeof(enr), MDM_KEY_ENR, ids[i], ids[i]);
        sim_redis_cert(ids[i], sha, certkey, sizeof(certkey));
        sim_body_ack(&dev, sim->stats.enq.uuid, "DeviceInformation", &ack);
        redisAppendCommand(rc, "FCALL mdm_report 3 %s %s %s Report %s %s"
                           " Device %s 0 %s 0 Acknowledged %s %b", enr,
                           certkey, MDM_KEY_EVENTS, ids[i], ids[i], "",
                           sha, sim->stats.enq.uuid, ack.data, ack.len);
        if (++pending >= 1000) {
            sim_redis_drain(rc, pending, "mdm_report");
            pending = 0;
        }
    }
    sim_redis_drain(rc, pending, "mdm_report");
    g->answers = na;
    g->answered = sim_redis_used_memory(rc) - g->base;

    /* the rest never poll: wait for their items to expire (Redis' clock) */
    t = sim_now();
    deadline = t + sim->conf.expires + 60;
    while (sim_redis_time_ms(rc) <= due) {
        if (sim_now() > deadline) {
            sim_die("Redis' clock did not pass the expiry");
        }
        usleep(20000);
    }
    g->expiry_wait_s = sim_now() - t;

    sim_redis_sweep(sim, rc);

    sim_redis_memory_settled(rc, &m, &ds, &ht);
    sim_redis_scan_step(sim, rc, sim->stats.enq.uuid);
    g->swept_streams = sim_redis_streams(rc) - ev0;
    g->swept = m - g->base;
    g->swept_dataset = ds - ds0;
    g->ht_swept = ht - ht0;

    /*
     * Until every key of the step with a TTL is gone, with a deadline.
     * Redis' active expiry slows down once few of the keys it samples are
     * due (many other keys carry a TTL of days): once result_ttl has run
     * out, SCAN passes over the step's keys reclaim the expired ones it
     * touches, as any read of them would.
     */
    t = sim_now();
    deadline = t + g->result_ttl + 120;
    while (sim_redis_expires(rc) > x0) {
        if (sim_now() > t + g->result_ttl) {
            sim_redis_touch_step(sim, rc, sim->stats.enq.uuid);
        }
        if (sim_now() > deadline) {
            sim_die("keys with a TTL still there %.0f s after result_ttl",
                    deadline - t - g->result_ttl);
        }
        usleep(100000);
    }
    g->ttl_wait_s = sim_now() - t;

    g->keys_after = sim_redis_all_keys(rc, &g->nkeys_after);
    sim_redis_memory_settled(rc, &m, &ds, &ht);
    g->after_streams = sim_redis_streams(rc) - ev0;
    g->after_ttl = m - g->base;
    g->after_dataset = ds - ds0;
    g->ht_after = ht - ht0;

    sim_redis_ids_free(ids);
    free(plist.data);
    free(ack.data);
    redisFree(rc);
}
