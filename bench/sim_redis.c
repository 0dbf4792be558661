/*
 * The admin side, through the same Redis Functions an operator uses:
 * enqueue the commands the cycle scenario will drain, and time one bulk
 * enqueue to many targets.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "mdm_sim.h"


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


/* One command to --targets ids in a single call (ids need not be devices). */
void
sim_redis_bulk(sim_t *sim)
{
    int            i, n;
    char         **ids;
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

    sim->stats.t_start = sim_now();
    sim->stats.enqueue_ms = sim_redis_fcall(rc, plist.data, n, ids);
    sim->stats.t_end = sim_now();
    sim->stats.cmd_enqueued = n;

    for (i = 0; i < n; i++) {
        free(ids[i]);
    }
    free(ids);
    free(plist.data);
    redisFree(rc);
}
