/*
 * Declarative Device Management: a device's full sync (tokens,
 * declaration-items, every declaration it lists, one status report) over
 * the check-in URL, the fleet's declarations set up through the admin
 * functions, the memory the sync leaves per enrollment, and the fan-out of
 * one changed declaration to a large set (no HTTP).
 */

#define _GNU_SOURCE

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "mdm_sim.h"
#include "../common/mdm_keys.h"


#define SIM_DDM_SET         "bench-ddm"
#define SIM_DDM_FAN_SET     "bench-fan"
#define SIM_DDM_FAN_ID      "bench.fan.0"
#define SIM_DDM_ASSIGN_MAX  2000        /* ids per mdm_ddm_assign call */
#define SIM_DDM_TYPE                                                       \
    "com.apple.configuration.softwareupdate.enforcement.specific"

/* Endpoint kinds, the items' lists and the status report's lists */
static const char  *sim_ddm_kind[4] = {
    "activation", "asset", "configuration", "management"
};
static const char  *sim_ddm_list[4] = {
    "Activations", "Assets", "Configurations", "Management"
};
static const char  *sim_ddm_slist[4] = {
    "activations", "assets", "configurations", "management"
};


/* ---- the device side ------------------------------------------------------ */

/*
 * A StatusReport as a device sends it after applying its declarations:
 * the device and OS items, the client capabilities, every declaration's
 * state with its ServerToken, the software-update items.  FullReport, so
 * each sync replaces what the last one stored.
 */
static void
sim_ddm_status(sim_t *sim, sim_conn_t *c, sim_buf_t *b)
{
    int             k, i, first;
    char            serial[16];
    sim_ddm_item_t  *it;

    (void) sim;
    sim_body_serial(c->dev->udid, serial);

    sim_buf_reset(b);
    sim_buf_printf(b, "{\"StatusItems\":{\"device\":{\"identifier\":"
        "{\"serial-number\":\"%s\",\"udid\":\"%s\"},\"model\":{\"family\":"
        "\"iPad\",\"identifier\":\"iPad13,18\",\"marketing-name\":"
        "\"iPad (10th generation)\"},\"operating-system\":{\"build-version\":"
        "\"23B85\",\"family\":\"iPadOS\",\"marketing-name\":\"iPadOS 26\","
        "\"supplemental\":{\"build-version\":\"23B85\",\"extra-version\":\"\"},"
        "\"version\":\"26.1\"}},\"management\":{\"client-capabilities\":{"
        "\"supported-features\":{},\"supported-payloads\":{\"declarations\":"
        "{\"activations\":[\"com.apple.activation.simple\"],\"assets\":["
        "\"com.apple.asset.credential.acme\",\"com.apple.asset.credential."
        "certificate\",\"com.apple.asset.credential.identity\","
        "\"com.apple.asset.credential.scep\",\"com.apple.asset.credential."
        "userpassword\",\"com.apple.asset.data\",\"com.apple.asset.useridentity"
        "\"],\"configurations\":[\"com.apple.configuration.account.caldav\","
        "\"com.apple.configuration.account.carddav\",\"com.apple.configuration"
        ".account.exchange\",\"com.apple.configuration.account.google\","
        "\"com.apple.configuration.account.ldap\",\"com.apple.configuration."
        "account.mail\",\"com.apple.configuration.legacy\","
        "\"com.apple.configuration.legacy.interactive\",\"com.apple."
        "configuration.management.status-subscriptions\",\"com.apple."
        "configuration.management.test\",\"com.apple.configuration.passcode."
        "settings\",\"com.apple.configuration.safari.bookmarks\","
        "\"com.apple.configuration.softwareupdate.enforcement.specific\","
        "\"com.apple.configuration.softwareupdate.settings\"],\"management\":"
        "[\"com.apple.management.organization-info\",\"com.apple.management."
        "properties\",\"com.apple.management.server-capabilities\"]},"
        "\"status-items\":[\"device.identifier.serial-number\",\"device."
        "identifier.udid\",\"device.model.family\",\"device.model.identifier\","
        "\"device.model.marketing-name\",\"device.operating-system.build-"
        "version\",\"device.operating-system.family\",\"device.operating-"
        "system.marketing-name\",\"device.operating-system.version\","
        "\"management.client-capabilities\",\"management.declarations\","
        "\"softwareupdate.failure-reason\",\"softwareupdate.install-reason\","
        "\"softwareupdate.install-state\",\"softwareupdate.pending-version\"]"
        "},\"supported-versions\":[\"1.0.0\",\"1.1.0\"]},\"declarations\":{",
        serial, c->dev->udid);

    for (k = 0; k < 4; k++) {
        sim_buf_printf(b, "%s\"%s\":[", k ? "," : "", sim_ddm_slist[k]);
        first = 1;
        for (i = 0; i < c->ddm_n; i++) {
            it = &c->ddm[i];
            if (it->kind != k) {
                continue;
            }
            sim_buf_printf(b, "%s{\"active\":true,\"identifier\":\"%s\","
                           "\"server-token\":\"%s\",\"valid\":\"valid\"}",
                           first ? "" : ",", it->id, it->token);
            first = 0;
        }
        sim_buf_add(b, "]", 1);
    }

    sim_buf_printf(b, "}},\"softwareupdate\":{\"failure-reason\":"
        "{\"count\":0},\"install-reason\":{\"reason\":[\"declaration\"]},"
        "\"install-state\":\"downloading\",\"pending-version\":"
        "{\"build-version\":\"23C55\",\"os-version\":\"26.2\"}}},"
        "\"Errors\":[],\"FullReport\":true}");
}


/* The DeclarativeManagement check-in of this step of the sync. */
void
sim_ddm_body(sim_t *sim, sim_conn_t *c, sim_kind_e kind, sim_buf_t *b)
{
    sim_ddm_item_t     *it;
    static sim_buf_t    json;

    sim_buf_reset(b);
    sim_buf_add(b, SIM_PLIST_HEAD, sizeof(SIM_PLIST_HEAD) - 1);

    if (kind == SIM_RQ_DDM_STATUS) {
        sim_ddm_status(sim, c, &json);
        sim->stats.ddm.status_bytes = json.len;
        sim_buf_printf(b, "\t<key>Data</key>\n\t<data>\n");
        sim_buf_base64(b, (uint8_t *) json.data, json.len, 1);
        sim_buf_printf(b, "\t</data>\n");
    }

    sim_buf_printf(b, "\t<key>Endpoint</key>\n\t<string>");
    switch (kind) {
    case SIM_RQ_DDM_TOKENS:
        sim_buf_printf(b, "tokens");
        break;
    case SIM_RQ_DDM_ITEMS:
        sim_buf_printf(b, "declaration-items");
        break;
    case SIM_RQ_DDM_DECL:
        it = &c->ddm[c->ddm_next];
        sim_buf_printf(b, "declaration/%s/%s", sim_ddm_kind[it->kind],
                       it->id);
        break;
    default:
        sim_buf_printf(b, "status");
        break;
    }

    sim_buf_printf(b, "</string>\n"
        "\t<key>MessageType</key>\n\t<string>DeclarativeManagement</string>\n"
        "\t<key>UDID</key>\n\t<string>%s</string>\n" SIM_PLIST_TAIL,
        c->dev->udid);
}


/* The string value of "key":"..." between p and end, unescaped as is. */
static int
sim_ddm_str(const char *p, const char *end, const char *key, char *out,
    size_t n)
{
    size_t       i;
    const char  *v;

    v = memmem(p, end - p, key, strlen(key));
    if (v == NULL) {
        return -1;
    }

    v += strlen(key);
    for (i = 0; v < end && *v != '"'; v++) {
        if (*v == '\\' && v + 1 < end) {
            v++;
        }
        if (i + 1 >= n) {
            return -1;
        }
        out[i++] = *v;
    }
    out[i] = '\0';

    return v < end && i > 0 ? 0 : -1;
}


/*
 * The DeclarationItemsResponse, minimally: each of the four lists, each
 * {"Identifier":..,"ServerToken":..} object in it (the server's JSON has
 * no brackets or braces inside these strings).
 */
static int
sim_ddm_items(sim_conn_t *c)
{
    int              k;
    char             key[32];
    const char      *p, *end, *o, *oe;
    sim_ddm_item_t  *it;

    if (c->ddm == NULL) {
        c->ddm = calloc(SIM_DDM_MAX, sizeof(sim_ddm_item_t));
        if (c->ddm == NULL) {
            sim_die("out of memory");
        }
    }
    c->ddm_n = 0;
    c->ddm_next = 0;

    for (k = 0; k < 4; k++) {
        snprintf(key, sizeof(key), "\"%s\":[", sim_ddm_list[k]);
        p = strstr(c->body.data, key);
        end = p ? strchr(p, ']') : NULL;
        if (end == NULL) {
            return -1;
        }
        p += strlen(key);

        while ((o = memchr(p, '{', end - p)) != NULL) {
            oe = memchr(o, '}', end - o);
            if (oe == NULL || c->ddm_n == SIM_DDM_MAX) {
                return -1;
            }
            it = &c->ddm[c->ddm_n];
            if (sim_ddm_str(o, oe, "\"Identifier\":\"", it->id,
                            sizeof(it->id)) != 0
                || sim_ddm_str(o, oe, "\"ServerToken\":\"", it->token,
                               sizeof(it->token)) != 0)
            {
                return -1;
            }
            it->kind = k;
            c->ddm_n++;
            p = oe + 1;
        }
    }

    return 0;
}


/*
 * The next step of the sync after a 200: a sim_kind_e, SIM_RQ_NKINDS when
 * the sync is done, -1 when the answer is not what the endpoint returns.
 */
int
sim_ddm_next(sim_t *sim, sim_conn_t *c)
{
    const char  *body;

    (void) sim;
    body = c->body.len ? c->body.data : "";

    switch (c->kind) {

    case SIM_RQ_DDM_TOKENS:
        return strstr(body, "\"DeclarationsToken\":\"") ? SIM_RQ_DDM_ITEMS
                                                         : -1;

    case SIM_RQ_DDM_ITEMS:
        if (c->body.len == 0 || sim_ddm_items(c) != 0) {
            return -1;
        }
        return c->ddm_n ? SIM_RQ_DDM_DECL : SIM_RQ_DDM_STATUS;

    case SIM_RQ_DDM_DECL:
        /* the declaration as advertised: its ServerToken */
        if (strstr(body, c->ddm[c->ddm_next].token) == NULL) {
            return -1;
        }
        return ++c->ddm_next < c->ddm_n ? SIM_RQ_DDM_DECL
                                        : SIM_RQ_DDM_STATUS;

    default:
        return c->body.len == 0 ? SIM_RQ_NKINDS : -1;
    }
}


/* ---- the admin side -------------------------------------------------------- */

/* An admin FCALL; its reply (JSON text), which the caller frees. */
static redisReply *
sim_ddm_call(redisContext *rc, int argc, const char **argv, size_t *lens)
{
    redisReply  *r;

    r = redisCommandArgv(rc, argc, argv, lens);
    if (r == NULL) {
        sim_die("redis: %s", rc->errstr);
    }
    if (r->type == REDIS_REPLY_ERROR) {
        sim_die("%s: %s", argv[1], r->str);
    }
    if (r->type != REDIS_REPLY_STRING) {
        sim_die("%s: unexpected reply", argv[1]);
    }

    return r;
}


/* FCALL fn 0 [a [b]]: the short calls. */
static redisReply *
sim_ddm_call2(redisContext *rc, const char *fn, const char *a, const char *b)
{
    size_t       lens[5];
    const char  *argv[5];
    int          i, argc;

    argv[0] = "FCALL";
    argv[1] = fn;
    argv[2] = "0";
    argv[3] = a;
    argv[4] = b;
    argc = a == NULL ? 3 : b == NULL ? 4 : 5;
    for (i = 0; i < argc; i++) {
        lens[i] = strlen(argv[i]);
    }

    return sim_ddm_call(rc, argc, argv, lens);
}


/* The integer after "key": in a JSON reply, 0 when absent. */
static long long
sim_ddm_int(const char *s, const char *key)
{
    char         k[64];
    const char  *p;

    snprintf(k, sizeof(k), "\"%s\":", key);
    p = strstr(s, k);

    return p ? atoll(p + strlen(k)) : 0;
}


/* Declarations fmt % 0 .. n-1 (an identifier), in one mdm_ddm_put. */
static void
sim_ddm_put(redisContext *rc, const char *fmt, int n)
{
    int         i;
    char        id[96];
    sim_buf_t   json = { NULL, 0, 0 };

    sim_buf_add(&json, "[", 1);
    for (i = 0; i < n; i++) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
        snprintf(id, sizeof(id), fmt, i);
#pragma GCC diagnostic pop
        sim_buf_printf(&json, "%s{\"Identifier\":\"%s\",\"Payload\":{"
                       "\"TargetLocalDateTime\":\"2026-12-24T18:00:00\","
                       "\"TargetOSVersion\":\"26.%d\"},\"Type\":\"%s\"}",
                       i ? "," : "", id, i + 1, SIM_DDM_TYPE);
    }
    sim_buf_add(&json, "]", 1);

    freeReplyObject(sim_ddm_call2(rc, "mdm_ddm_put", json.data, NULL));
    free(json.data);
}


/* mdm_ddm_set_add 0 set fmt % 0 .. n-1 */
static void
sim_ddm_set_add(redisContext *rc, const char *set, const char *fmt, int n)
{
    int           i;
    char         *ids;
    size_t       *lens;
    const char  **argv;

    argv = calloc(n + 4, sizeof(char *));
    lens = calloc(n + 4, sizeof(size_t));
    ids = calloc(n + 1, 96);
    if (argv == NULL || lens == NULL || ids == NULL) {
        sim_die("out of memory");
    }

    argv[0] = "FCALL";
    argv[1] = "mdm_ddm_set_add";
    argv[2] = "0";
    argv[3] = set;
    for (i = 0; i < n; i++) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
        snprintf(ids + 96 * i, 96, fmt, i);
#pragma GCC diagnostic pop
        argv[4 + i] = ids + 96 * i;
    }
    for (i = 0; i < n + 4; i++) {
        lens[i] = strlen(argv[i]);
    }

    freeReplyObject(sim_ddm_call(rc, n + 4, argv, lens));
    free(argv);
    free(lens);
    free(ids);
}


static long long
sim_ddm_llen(redisContext *rc, const char *key)
{
    long long    v;
    redisReply  *r;

    r = redisCommand(rc, "LLEN %s", key);
    v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
    freeReplyObject(r);

    return v;
}


/* The push queue back to its first len entries: nothing sends them here. */
static void
sim_ddm_push_trim(redisContext *rc, int n, char **ids, long long len)
{
    int  i, pending;

    pending = 0;
    for (i = 0; i < n; i++) {
        redisAppendCommand(rc, "SREM %s %s", MDM_KEY_PUSH_PENDING, ids[i]);
        if (++pending >= 5000) {
            sim_redis_drain(rc, pending, "SREM");
            pending = 0;
        }
    }
    sim_redis_drain(rc, pending, "SREM");

    if (len == 0) {
        freeReplyObject(redisCommand(rc, "DEL %s", MDM_KEY_PUSH_Q));
    } else {
        freeReplyObject(redisCommand(rc, "LTRIM %s 0 %lld", MDM_KEY_PUSH_Q,
                                     len - 1));
    }
}


/* A command out of every queue, with its body and target table. */
static void
sim_ddm_drop_command(redisContext *rc, const char *u)
{
    char  key[128];

    snprintf(key, sizeof(key), MDM_KEY_CMD, u);
    freeReplyObject(redisCommand(rc, "UNLINK %s", key));
    snprintf(key, sizeof(key), MDM_KEY_CMDT, u);
    freeReplyObject(redisCommand(rc, "UNLINK %s", key));
    freeReplyObject(redisCommand(rc, "ZREM %s %s", MDM_KEY_EXPIRY, u));
    freeReplyObject(redisCommand(rc, "HDEL %s %s", MDM_KEY_SWEEP, u));
}


/*
 * mdm_ddm_assign 0 1 set id... in calls of 2,000 ids. The assignment
 * queues a DeclarativeManagement command and a push request for each
 * enrollment; they are taken away again (as if delivered and done), so
 * the devices poll to an empty queue and a later change starts clean.
 */
static void
sim_ddm_assign(redisContext *rc, const char *set, int n, char **ids)
{
    int           i, j, m, pending;
    char          q[160], u[64];
    size_t       *lens;
    long long     len;
    redisReply   *r;
    const char  **argv;

    argv = calloc(SIM_DDM_ASSIGN_MAX + 5, sizeof(char *));
    lens = calloc(SIM_DDM_ASSIGN_MAX + 5, sizeof(size_t));
    if (argv == NULL || lens == NULL) {
        sim_die("out of memory");
    }

    len = sim_ddm_llen(rc, MDM_KEY_PUSH_Q);
    argv[0] = "FCALL";
    argv[1] = "mdm_ddm_assign";
    argv[2] = "0";
    argv[3] = "1";
    argv[4] = set;
    for (j = 0; j < 5; j++) {
        lens[j] = strlen(argv[j]);
    }

    for (i = 0; i < n; i += SIM_DDM_ASSIGN_MAX) {
        m = n - i < SIM_DDM_ASSIGN_MAX ? n - i : SIM_DDM_ASSIGN_MAX;
        for (j = 0; j < m; j++) {
            argv[5 + j] = ids[i + j];
            lens[5 + j] = strlen(ids[i + j]);
        }
        r = sim_ddm_call(rc, 5 + m, argv, lens);
        if (sim_ddm_int(r->str, "queued") == 0) {
            freeReplyObject(r);
            continue;               /* assigned before: nothing queued */
        }
        freeReplyObject(r);

        /* one command for the call: its uuid is in any of its ids */
        r = redisCommand(rc, "HGET %s %s", MDM_KEY_DDM_PENDING, ids[i]);
        if (r == NULL || r->type != REDIS_REPLY_STRING) {
            sim_die("mdm_ddm_assign queued no command for %s", ids[i]);
        }
        snprintf(u, sizeof(u), "%s", r->str);
        freeReplyObject(r);

        pending = 0;
        for (j = 0; j < m; j++) {
            snprintf(q, sizeof(q), MDM_KEY_Q, ids[i + j], ids[i + j]);
            redisAppendCommand(rc, "ZREM %s %s", q, u);
            redisAppendCommand(rc, "HDEL %s %s", MDM_KEY_DDM_PENDING,
                               ids[i + j]);
            pending += 2;
        }
        sim_redis_drain(rc, pending, "ZREM");
        sim_ddm_drop_command(rc, u);
    }

    sim_ddm_push_trim(rc, n, ids, len);
    free(argv);
    free(lens);
}


/*
 * ddm with --redis: --ddm-decls declarations bench.su.N in the set
 * bench-ddm, assigned to the whole fleet (idempotent: a second run finds
 * them in place).
 */
void
sim_ddm_setup(sim_t *sim)
{
    int            i;
    char         **ids;
    redisContext  *rc;

    if (sim->conf.redis == NULL) {
        return;
    }

    rc = sim_redis_connect(sim->conf.redis);
    if (sim->conf.ddm_decls > 0) {
        sim_ddm_put(rc, "bench.su.%d", sim->conf.ddm_decls);
        sim_ddm_set_add(rc, SIM_DDM_SET, "bench.su.%d", sim->conf.ddm_decls);
    }

    ids = calloc(sim->conf.devices, sizeof(char *));
    if (ids == NULL) {
        sim_die("out of memory");
    }
    for (i = 0; i < sim->conf.devices; i++) {
        ids[i] = sim->devices[i].udid;
    }
    if (sim->conf.ddm_decls > 0) {
        sim_ddm_assign(rc, SIM_DDM_SET, sim->conf.devices, ids);
    }

    free(ids);
    redisFree(rc);
}


/*
 * After the run: MEMORY USAGE (exact) of each enrollment's DDM keys,
 * summed over the fleet, and the set's enrollment set, whose members grow
 * with the enrollments assigned.
 */
void
sim_ddm_memory(sim_t *sim)
{
    int            i, k;
    char           key[160], *u;
    sim_ddm_t     *d;
    redisReply    *r;
    redisContext  *rc;
    static const char  *fmt[5] = {
        MDM_KEY_DDM_ENR, MDM_KEY_DDM_ESETS, MDM_KEY_DDM_ADV,
        MDM_KEY_DDM_DSTAT, MDM_KEY_DDM_ITEMS
    };

    if (sim->conf.redis == NULL) {
        return;
    }

    d = &sim->stats.ddm;
    rc = sim_redis_connect(sim->conf.redis);

    for (i = 0; i < sim->conf.devices; i++) {
        u = sim->devices[i].udid;
        for (k = 0; k < 5; k++) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
            snprintf(key, sizeof(key), fmt[k], u, u);
#pragma GCC diagnostic pop
            redisAppendCommand(rc, "MEMORY USAGE %s SAMPLES 0", key);
        }
        for (k = 0; k < 5; k++) {
            if (redisGetReply(rc, (void **) &r) != REDIS_OK) {
                sim_die("redis: %s", rc->errstr);
            }
            d->mem[k] += r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
            freeReplyObject(r);
        }
    }
    d->devices = sim->conf.devices;

    snprintf(key, sizeof(key), MDM_KEY_DDM_SETENR, SIM_DDM_SET);
    r = redisCommand(rc, "MEMORY USAGE %s SAMPLES 0", key);
    d->mem[5] = r && r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
    freeReplyObject(r);

    redisFree(rc);
}


/* One touch or fanout call, timed; its fan-out figures added up. */
static long long
sim_ddm_fan_call(sim_t *sim, redisContext *rc, const char *fn,
    const char *arg)
{
    double       t;
    long long    remaining;
    sim_ddm_t   *d;
    redisReply  *r;

    d = &sim->stats.ddm;

    t = sim_now();
    r = sim_ddm_call2(rc, fn, arg, NULL);
    t = (sim_now() - t) * 1e3;

    d->calls++;
    if (t > d->max_ms) {
        d->max_ms = t;
    }
    d->synced += sim_ddm_int(r->str, "synced");
    d->queued += sim_ddm_int(r->str, "queued");
    d->pushes += sim_ddm_int(r->str, "pushes");
    remaining = sim_ddm_int(r->str, "remaining");
    if (sim->conf.verbose) {
        fprintf(stderr, "%s: %.2f ms %s\n", fn, t, r->str);
    }
    freeReplyObject(r);

    return remaining;
}


/*
 * Every target has a DeclarativeManagement command in its queue (its
 * pending one, mdm:ddm:pending) and a push request; the distinct commands are
 * counted and their request type checked.
 */
static void
sim_ddm_verify(sim_t *sim, redisContext *rc, int n, char **ids,
    char (*cmd)[64], int *ncmd)
{
    int           i, j, m, b, k;
    char          q[160], ck[128], (*u)[64];
    sim_ddm_t    *d;
    redisReply   *r, *p;

    d = &sim->stats.ddm;
    *ncmd = 0;
    u = calloc(5000, 64);
    if (u == NULL) {
        sim_die("out of memory");
    }

    for (b = 0; b < n; b += 5000) {
        m = n - b < 5000 ? n - b : 5000;
        memset(u, 0, (size_t) m * 64);
        for (i = 0; i < m; i++) {
            redisAppendCommand(rc, "HGET %s %s", MDM_KEY_DDM_PENDING,
                               ids[b + i]);
            redisAppendCommand(rc, "SISMEMBER %s %s", MDM_KEY_PUSH_PENDING,
                               ids[b + i]);
        }
        for (i = 0; i < m; i++) {
            if (redisGetReply(rc, (void **) &r) != REDIS_OK
                || redisGetReply(rc, (void **) &p) != REDIS_OK)
            {
                sim_die("redis: %s", rc->errstr);
            }
            if (r->type == REDIS_REPLY_STRING) {
                snprintf(u[i], 64, "%s", r->str);
            }
            d->have_push += p->type == REDIS_REPLY_INTEGER && p->integer;
            freeReplyObject(r);
            freeReplyObject(p);
        }
        for (i = 0; i < m; i++) {
            snprintf(q, sizeof(q), MDM_KEY_Q, ids[b + i], ids[b + i]);
            redisAppendCommand(rc, "ZSCORE %s %s", q, u[i][0] ? u[i] : "-");
        }
        for (i = 0; i < m; i++) {
            if (redisGetReply(rc, (void **) &r) != REDIS_OK) {
                sim_die("redis: %s", rc->errstr);
            }
            if (r->type == REDIS_REPLY_STRING) {
                d->have_cmd++;
                for (j = 0; j < *ncmd && strcmp(cmd[j], u[i]) != 0; j++) {
                    /* the few distinct commands: a linear search */
                }
                if (j == *ncmd && *ncmd < 1024) {
                    snprintf(cmd[(*ncmd)++], 64, "%s", u[i]);
                }
            }
            freeReplyObject(r);
        }
    }
    free(u);

    d->commands = *ncmd;
    for (k = 0; k < *ncmd; k++) {
        snprintf(ck, sizeof(ck), MDM_KEY_CMD, cmd[k]);
        r = redisCommand(rc, "HGET %s request_type", ck);
        if (r == NULL || r->type != REDIS_REPLY_STRING
            || strcmp(r->str, "DeclarativeManagement") != 0)
        {
            d->not_dm++;
        }
        freeReplyObject(r);
    }
}


/*
 * ddm-fanout: --targets enrollments (--enroll) in the set bench-fan with
 * one declaration; then mdm_ddm_touch of it and mdm_ddm_fanout until
 * remaining is 0, each call timed; then every target checked.
 */
void
sim_ddm_fanout(sim_t *sim)
{
    int            i, n, ncmd, pending;
    char         **ids, key[160], dk[160], sk[160], ak[160], (*cmd)[64];
    double         t;
    long long      len, remaining;
    sim_ddm_t     *d;
    redisContext  *rc;

    if (sim->conf.redis == NULL) {
        sim_die("the ddm-fanout scenario needs --redis");
    }

    d = &sim->stats.ddm;
    n = sim->conf.targets;
    ids = sim_redis_ids(sim->conf.target_prefix, n);
    rc = sim_redis_connect(sim->conf.redis);

    sim_redis_enroll(sim, rc, n, ids);
    sim_ddm_put(rc, SIM_DDM_FAN_ID, 1);
    sim_ddm_set_add(rc, SIM_DDM_FAN_SET, SIM_DDM_FAN_ID, 1);

    len = sim_ddm_llen(rc, MDM_KEY_PUSH_Q);
    t = sim_now();
    sim_ddm_assign(rc, SIM_DDM_FAN_SET, n, ids);
    d->assign_ms = (sim_now() - t) * 1e3;

    /*
     * The set-up grew the AOF: a rewrite it started forks and writes the
     * data set, which is no part of the change's fan-out.  Rewrites the
     * fan-out starts are.
     */
    t = sim_now() + 300;
    while (sim_redis_info(rc, "persistence", "aof_rewrite_in_progress")
           || sim_redis_info(rc, "persistence", "aof_rewrite_scheduled"))
    {
        if (sim_now() > t) {
            sim_die("an AOF rewrite did not finish in 300 s");
        }
        usleep(50000);
    }

    freeReplyObject(redisCommand(rc, "SLOWLOG RESET"));
    sim->stats.t_start = sim_now();
    remaining = sim_ddm_fan_call(sim, rc, "mdm_ddm_touch", SIM_DDM_FAN_ID);
    while (remaining > 0) {
        remaining = sim_ddm_fan_call(sim, rc, "mdm_ddm_fanout", NULL);
    }
    sim->stats.t_end = sim_now();
    d->total_ms = (sim->stats.t_end - sim->stats.t_start) * 1e3;
    d->server_max_ms = sim_redis_slowest(rc, "mdm_ddm_touch");
    t = sim_redis_slowest(rc, "mdm_ddm_fanout");
    if (t > d->server_max_ms) {
        d->server_max_ms = t;
    }
    sim->stats.cmd_enqueued = d->queued;

    cmd = calloc(1024, 64);
    if (cmd == NULL) {
        sim_die("out of memory");
    }
    sim_ddm_verify(sim, rc, n, ids, cmd, &ncmd);

    if (sim->conf.cleanup) {
        sim_redis_cleanup(sim, rc, n, ids, NULL);
        pending = 0;
        for (i = 0; i < n; i++) {
            snprintf(dk, sizeof(dk), MDM_KEY_DDM_ENR, ids[i], ids[i]);
            snprintf(sk, sizeof(sk), MDM_KEY_DDM_ESETS, ids[i], ids[i]);
            snprintf(ak, sizeof(ak), MDM_KEY_DDM_ADV, ids[i], ids[i]);
            redisAppendCommand(rc, "UNLINK %s %s %s", dk, sk, ak);
            if (++pending >= 5000) {
                sim_redis_drain(rc, pending, "UNLINK");
                pending = 0;
            }
        }
        sim_redis_drain(rc, pending, "UNLINK");
        for (i = 0; i < ncmd; i++) {
            sim_ddm_drop_command(rc, cmd[i]);
        }
        sim_ddm_push_trim(rc, n, ids, len);
        snprintf(key, sizeof(key), MDM_KEY_DDM_SETENR, SIM_DDM_FAN_SET);
        freeReplyObject(redisCommand(rc, "UNLINK %s", key));
        freeReplyObject(sim_ddm_call2(rc, "mdm_ddm_set_remove",
                                      SIM_DDM_FAN_SET, SIM_DDM_FAN_ID));
        freeReplyObject(sim_ddm_call2(rc, "mdm_ddm_delete", SIM_DDM_FAN_ID,
                                      NULL));
    }

    free(cmd);
    sim_redis_ids_free(ids);
    redisFree(rc);
}
