/*
 * The admin side, through the same Redis Functions an operator uses:
 * enqueue the commands the cycle scenario will drain, and time one bulk
 * enqueue to many targets.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <openssl/sha.h>

#include "mdm_keys.h"
#include "mdm_sim.h"
#include "../common/mdm_keys.h"


static redisContext *
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


/* FCALL mdm_enqueue 0 plist priority expires nopush id... */
static double
sim_redis_fcall(redisContext *rc, const char *plist, int nids,
    char **ids)
{
    int           i, argc;
    double        t;
    size_t       *lens;
    redisReply   *r;
    const char  **argv;

    argc = 7 + nids;
    argv = calloc(argc, sizeof(char *));
    lens = calloc(argc, sizeof(size_t));
    if (argv == NULL || lens == NULL) {
        sim_die("out of memory");
    }

    argv[0] = "FCALL";
    argv[1] = "mdm_enqueue";
    argv[2] = "0";
    argv[3] = plist;
    argv[4] = "5";                  /* priority */
    argv[5] = "0";                  /* no expiry */
    argv[6] = "1";                  /* no push: nothing consumes them here */
    for (i = 0; i < nids; i++) {
        argv[7 + i] = ids[i];
    }
    for (i = 0; i < argc; i++) {
        lens[i] = strlen(argv[i]);
    }

    t = sim_now();
    r = redisCommandArgv(rc, argc, argv, lens);
    t = sim_now() - t;

    if (r == NULL) {
        sim_die("redis: %s", rc->errstr);
    }
    if (r->type == REDIS_REPLY_ERROR) {
        sim_die("mdm_enqueue: %s", r->str);
    }

    freeReplyObject(r);
    free(argv);
    free(lens);

    return t * 1e3;
}


void
sim_redis_enqueue(sim_t *sim)
{
    int            i, k, n;
    char         **ids;
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
        sim->stats.enqueue_ms += sim_redis_fcall(rc, plist.data, n, ids);
        sim->stats.cmd_enqueued += n;
    }

    free(ids);
    free(plist.data);
    redisFree(rc);
}


static long long
sim_redis_used_memory(redisContext *rc)
{
    char        *p;
    long long    v;
    redisReply  *r;

    r = redisCommand(rc, "INFO memory");
    if (r == NULL || r->type != REDIS_REPLY_STRING) {
        sim_die("redis INFO failed");
    }

    p = strstr(r->str, "used_memory:");
    v = p ? atoll(p + sizeof("used_memory:") - 1) : 0;
    freeReplyObject(r);

    return v;
}


static void
sim_redis_drain(redisContext *rc, int n)
{
    redisReply  *r;

    while (n-- > 0) {
        if (redisGetReply(rc, (void **) &r) != REDIS_OK) {
            sim_die("redis: %s", rc->errstr);
        }
        if (r->type == REDIS_REPLY_ERROR) {
            sim_die("mdm_checkin: %s", r->str);
        }
        if (r->type == REDIS_REPLY_ARRAY && r->elements > 0
            && r->element[0]->type == REDIS_REPLY_INTEGER
            && r->element[0]->integer != 200)
        {
            sim_die("mdm_checkin refused: %lld %s", r->element[0]->integer,
                    r->elements > 3 && r->element[3]->str
                    ? r->element[3]->str : "");
        }
        freeReplyObject(r);
    }
}


/*
 * Enrolls ids the way the module would (an Authenticate through
 * mdm_checkin), pipelined, without TLS: mdm_enqueue accepts only enrolled
 * ids, and a TokenUpdate would add nothing the enqueue looks at.  The
 * certificate hash is made up; nobody connects with it.
 */
static void
sim_redis_enroll_direct(sim_t *sim, redisContext *rc, int n, char **ids)
{
    int            i, j, argc, nkv, pending;
    char           enr[128], certkey[128], sha[65], hex[72];
    uint8_t        h[32];
    size_t         lens[40];
    sim_buf_t      body = { NULL, 0, 0 };
    const char    *argv[40];
    sim_device_t   dev;
    static const char  digits[] = "0123456789abcdef";

    pending = 0;
    memset(&dev, 0, sizeof(dev));

    for (i = 0; i < n; i++) {
        dev.index = i;
        snprintf(dev.udid, sizeof(dev.udid), "%s", ids[i]);
        snprintf(enr, sizeof(enr), MDM_KEY_ENR, ids[i], ids[i]);
        snprintf(certkey, sizeof(certkey), "cert/%s", ids[i]);
        SHA256((unsigned char *) certkey, strlen(certkey), h);
        for (j = 0; j < 32; j++) {
            sha[2 * j] = digits[h[j] >> 4];
            sha[2 * j + 1] = digits[h[j] & 0xf];
        }
        sha[64] = '\0';
        snprintf(certkey, sizeof(certkey), MDM_KEY_CERT, sha);

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
            sim_redis_drain(rc, pending);
            pending = 0;
        }
    }

    sim_redis_drain(rc, pending);
    free(body.data);
}


/*
 * One command to --targets ids in a single call, after enrolling them
 * directly; reports the time of that call and the memory it took.
 */
void
sim_redis_bulk(sim_t *sim)
{
    int            i, n;
    char         **ids;
    double         t;
    long long      m0, m1, m2;
    sim_buf_t      plist = { NULL, 0, 0 };
    redisContext  *rc;

    if (sim->conf.redis == NULL) {
        sim_die("the enqueue scenario needs --redis");
    }

    n = sim->conf.targets;
    ids = calloc(n, sizeof(char *));
    if (ids == NULL) {
        sim_die("out of memory");
    }
    for (i = 0; i < n; i++) {
        ids[i] = malloc(64);
        if (ids[i] == NULL) {
            sim_die("out of memory");
        }
        snprintf(ids[i], 64, "%s%08X", sim->conf.udid_prefix, i);
    }

    rc = sim_redis_connect(sim->conf.redis);
    sim->conf.commands = 1;
    sim_body_command(sim, 0, &plist);

    m0 = sim_redis_used_memory(rc);
    t = sim_now();
    sim_redis_enroll_direct(sim, rc, n, ids);
    sim->stats.enroll_ms = (sim_now() - t) * 1e3;
    m1 = sim_redis_used_memory(rc);

    sim->stats.t_start = sim_now();
    sim->stats.enqueue_ms = sim_redis_fcall(rc, plist.data, n, ids);
    sim->stats.t_end = sim_now();
    sim->stats.cmd_enqueued = n;
    m2 = sim_redis_used_memory(rc);

    sim->stats.enroll_memory = m1 - m0;
    sim->stats.enqueue_memory = m2 - m1;

    for (i = 0; i < n; i++) {
        free(ids[i]);
    }
    free(ids);
    free(plist.data);
    redisFree(rc);
}
