/*
 * What a device does with each answer: the scenario state machines, the
 * exactly-once bookkeeping of acknowledged commands, and the schedule of
 * session starts (closed loop, think time, or a fixed fleet-wide rate).
 */

#include <stdlib.h>
#include <string.h>

#include <plist/plist.h>

#include "mdm_sim.h"


static void sim_session_end(sim_t *sim, sim_conn_t *c, int drained);


/* ---- timer heap of scheduled session starts ---------------------------- */

static void
sim_heap_swap(sim_t *sim, size_t a, size_t b)
{
    sim_conn_t  *t;

    t = sim->heap[a];
    sim->heap[a] = sim->heap[b];
    sim->heap[b] = t;
    sim->heap[a]->heap_idx = a;
    sim->heap[b]->heap_idx = b;
}


void
sim_heap_push(sim_t *sim, sim_conn_t *c)
{
    size_t  i, p;

    i = sim->nheap++;
    sim->heap[i] = c;
    c->heap_idx = i;
    c->state = SIM_C_WAIT;

    while (i > 0) {
        p = (i - 1) / 2;
        if (sim->heap[p]->next_at <= sim->heap[i]->next_at) {
            break;
        }
        sim_heap_swap(sim, i, p);
        i = p;
    }
}


sim_conn_t *
sim_heap_top(sim_t *sim)
{
    return sim->nheap ? sim->heap[0] : NULL;
}


void
sim_heap_pop(sim_t *sim)
{
    size_t  i, l, m;

    sim->heap[0]->state = SIM_C_IDLE;
    if (--sim->nheap == 0) {
        return;
    }

    sim->heap[0] = sim->heap[sim->nheap];
    sim->heap[0]->heap_idx = 0;

    i = 0;
    for ( ;; ) {
        l = 2 * i + 1;
        m = i;
        if (l < sim->nheap && sim->heap[l]->next_at < sim->heap[m]->next_at) {
            m = l;
        }
        if (l + 1 < sim->nheap
            && sim->heap[l + 1]->next_at < sim->heap[m]->next_at)
        {
            m = l + 1;
        }
        if (m == i) {
            break;
        }
        sim_heap_swap(sim, i, m);
        i = m;
    }
}


/* ---- sessions ------------------------------------------------------------ */

static int
sim_slot_devices(sim_t *sim, sim_conn_t *c)
{
    return (sim->conf.devices - c->dev_first + sim->conf.conns - 1)
           / sim->conf.conns;
}


static void
sim_slot_done(sim_t *sim, sim_conn_t *c)
{
    if (c->state != SIM_C_DONE) {
        c->state = SIM_C_DONE;
        sim->active--;
    }
}


static void
sim_session_begin(sim_t *sim, sim_conn_t *c)
{
    sim_kind_e  kind;

    if (sim->stopping) {
        sim_slot_done(sim, c);
        return;
    }

    switch (sim->conf.scenario) {
    case SIM_ENROLL:
        kind = SIM_RQ_AUTHENTICATE;
        break;
    case SIM_STATIC:
        kind = SIM_RQ_STATIC;
        break;
    case SIM_DDM:
        kind = SIM_RQ_DDM_TOKENS;
        break;
    case SIM_MIXED:
        kind = (random() / (double) RAND_MAX < sim->conf.mixed_checkin)
               ? SIM_RQ_TOKEN_UPDATE : SIM_RQ_IDLE;
        break;
    default:
        kind = SIM_RQ_IDLE;
        break;
    }

    if (sim->conf.max_requests && sim->started >= sim->conf.max_requests) {
        sim->stopping = 1;
        sim_slot_done(sim, c);
        return;
    }

    sim_conn_send(sim, c, kind);
}


/* Points the slot at its next device that still has work. */
static int
sim_device_pick(sim_t *sim, sim_conn_t *c)
{
    int            n, i;
    sim_device_t  *dev;

    if (sim->stopping) {
        sim_slot_done(sim, c);
        return -1;
    }

    n = sim_slot_devices(sim, c);

    for (i = 0; i < n; i++) {
        dev = &sim->devices[c->dev_first + c->dev_cursor * sim->conf.conns];
        if (!dev->done && (sim->conf.sessions == 0
                           || dev->sessions < sim->conf.sessions))
        {
            c->dev = dev;
            return 0;
        }
        c->dev_cursor = (c->dev_cursor + 1) % n;
    }

    sim_slot_done(sim, c);
    return -1;
}


/* Starts the slot's next session now or puts it on the schedule. */
void
sim_device_start(sim_t *sim, sim_conn_t *c)
{
    if (sim_device_pick(sim, c) != 0) {
        return;
    }

    /* parked until every connection is up; sim_warm() restarts it */
    if (sim->warming && c->warm) {
        c->state = SIM_C_WAIT;
        c->parked = 1;
        return;
    }

    if (sim->conf.rate > 0) {
        c->next_at += sim->conf.conns / sim->conf.rate;
        sim_heap_push(sim, c);
        return;
    }

    if (sim->conf.think_ms > 0 && c->dev->sessions > 0) {
        c->next_at = sim_now() + sim->conf.think_ms / 1e3;
        sim_heap_push(sim, c);
        return;
    }

    sim_session_begin(sim, c);
}


/* The warm-up is over: every slot starts its measured sessions together. */
void
sim_device_resume(sim_t *sim, sim_conn_t *c, double now)
{
    double  interval;

    interval = sim->conf.rate > 0 ? sim->conf.conns / sim->conf.rate : 0;

    /* an evenly spread schedule from now on */
    c->next_at = now + interval * (c->id / (double) sim->conf.conns - 1);

    if (!c->parked) {
        return;
    }

    c->parked = 0;
    c->state = SIM_C_IDLE;

    if (sim->conf.rate > 0) {
        c->next_at += interval;
        sim_heap_push(sim, c);
        return;
    }

    sim_session_begin(sim, c);
}


void
sim_device_timer(sim_t *sim, sim_conn_t *c)
{
    if (sim_device_pick(sim, c) == 0) {
        sim_session_begin(sim, c);
    }
}


/*
 * Without a duration the run ends when every device is through, so a device
 * that keeps failing gives up after a few tries instead of looping forever.
 */
static void
sim_device_count_failure(sim_t *sim, sim_device_t *dev, int failed)
{
    if (!failed) {
        dev->failures = 0;
        return;
    }

    if (++dev->failures >= 3 && sim->conf.duration <= 0) {
        dev->done = 1;
    }
}


static void
sim_session_end(sim_t *sim, sim_conn_t *c, int drained)
{
    int  n;

    sim->stats.sessions++;
    c->dev->sessions++;
    sim_device_count_failure(sim, c->dev, !drained);

    if (drained && sim->conf.scenario == SIM_CYCLE && !c->dev->done) {
        c->dev->done = 1;
        sim->stats.devices_done++;
    }

    n = sim_slot_devices(sim, c);
    c->dev_cursor = (c->dev_cursor + 1) % n;

    sim_device_start(sim, c);
}


void
sim_device_failed(sim_t *sim, sim_conn_t *c)
{
    /* back off a little so an unreachable server is not a busy loop */
    sim->stats.sessions++;
    c->dev->sessions++;
    sim_device_count_failure(sim, c->dev, 1);
    c->dev_cursor = (c->dev_cursor + 1) % sim_slot_devices(sim, c);

    if (sim->stopping) {
        sim_slot_done(sim, c);
        return;
    }

    if (sim->warming && c->warm) {
        c->state = SIM_C_WAIT;
        c->parked = 1;
        return;
    }

    c->next_at = sim_now() + 0.05;
    sim_heap_push(sim, c);
}


/* ---- commands ------------------------------------------------------------ */

static int
sim_get_string(plist_t dict, const char *key, char *out, size_t n)
{
    plist_t      node;
    uint64_t     len;
    const char  *s;

    node = plist_dict_get_item(dict, key);
    if (node == NULL || plist_get_node_type(node) != PLIST_STRING) {
        return -1;
    }

    s = plist_get_string_ptr(node, &len);
    if (s == NULL || len == 0 || len >= n) {
        return -1;
    }

    memcpy(out, s, len);
    out[len] = '\0';
    return 0;
}


static int
sim_parse_command(sim_conn_t *c)
{
    int      rc;
    plist_t  root, cmd;

    root = NULL;
    plist_from_memory(c->body.data, (uint32_t) c->body.len, &root);
    if (root == NULL || plist_get_node_type(root) != PLIST_DICT) {
        plist_free(root);
        return -1;
    }

    cmd = plist_dict_get_item(root, "Command");
    rc = -1;
    if (cmd != NULL && plist_get_node_type(cmd) == PLIST_DICT
        && sim_get_string(root, "CommandUUID", c->cmd_uuid,
                          sizeof(c->cmd_uuid)) == 0
        && sim_get_string(cmd, "RequestType", c->cmd_type,
                          sizeof(c->cmd_type)) == 0)
    {
        rc = 0;
    }

    plist_free(root);
    return rc;
}


static void
sim_command_received(sim_t *sim, sim_conn_t *c)
{
    int            k;
    sim_device_t  *dev;

    dev = c->dev;
    sim->stats.cmd_received++;

    k = sim_body_uuid_index(sim, c->cmd_uuid);
    if (k < 0 || dev->acked == NULL) {
        sim->stats.cmd_foreign++;
        return;
    }

    /* the server handed out a command this device already finished */
    if (dev->acked[k / 8] & (1 << (k % 8))) {
        sim->stats.cmd_duplicate++;
    }
}


static void
sim_command_acked(sim_t *sim, sim_conn_t *c)
{
    int            k;
    sim_device_t  *dev;

    dev = c->dev;
    k = sim_body_uuid_index(sim, c->cmd_uuid);
    if (k < 0 || dev->acked == NULL) {
        return;
    }

    if (!(dev->acked[k / 8] & (1 << (k % 8)))) {
        dev->acked[k / 8] |= 1 << (k % 8);
        sim->stats.cmd_acked++;
    }
}


void
sim_device_response(sim_t *sim, sim_conn_t *c, int status)
{
    int  next;

    if (status != 200) {
        sim_session_end(sim, c, 0);
        return;
    }

    switch (c->kind) {

    case SIM_RQ_AUTHENTICATE:
        sim_conn_send(sim, c, SIM_RQ_TOKEN_UPDATE);
        return;

    case SIM_RQ_TOKEN_UPDATE:
        if (sim->conf.scenario == SIM_MIXED && !sim->stopping) {
            sim_conn_send(sim, c, SIM_RQ_IDLE);
            return;
        }
        sim_session_end(sim, c, 1);
        return;

    case SIM_RQ_STATIC:
        sim_session_end(sim, c, 1);
        return;

    case SIM_RQ_DDM_TOKENS:
    case SIM_RQ_DDM_ITEMS:
    case SIM_RQ_DDM_DECL:
    case SIM_RQ_DDM_STATUS:
        next = sim_ddm_next(sim, c);
        if (next < 0) {
            sim->stats.err_protocol++;
            sim_session_end(sim, c, 0);
            return;
        }
        if (next == SIM_RQ_NKINDS) {
            sim_session_end(sim, c, 1);
            return;
        }
        if (sim->stopping) {
            sim_slot_done(sim, c);
            return;
        }
        sim_conn_send(sim, c, (sim_kind_e) next);
        return;

    case SIM_RQ_ACK:
        sim_command_acked(sim, c);
        /* fall through */

    default:
        if (c->body.len == 0) {
            sim_session_end(sim, c, 1);
            return;
        }

        if (sim_parse_command(c) != 0) {
            sim->stats.err_protocol++;
            sim_session_end(sim, c, 0);
            return;
        }

        sim_command_received(sim, c);

        if (sim->stopping) {
            sim_slot_done(sim, c);
            return;
        }

        sim_conn_send(sim, c, SIM_RQ_ACK);
        return;
    }
}
