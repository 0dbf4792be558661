/*
 * Latency histogram and the report (text or JSON).
 */

#include <stdio.h>
#include <string.h>

#include "mdm_sim.h"


static const char  *sim_kind_names[SIM_RQ_NKINDS] = {
    "authenticate", "token_update", "idle", "acknowledged", "static",
    "ddm_tokens", "ddm_items", "ddm_declaration", "ddm_status"
};

static const char  *sim_scenario_names[] = {
    "enroll", "poll", "cycle", "mixed", "static", "enqueue", "growth",
    "ddm", "ddm-fanout"
};


static int
sim_hist_index(uint64_t v)
{
    int  e;

    if (v < 128) {
        return (int) v;
    }

    e = 63 - __builtin_clzll(v);
    if (e > 46) {
        return SIM_HIST_N - 1;
    }

    return 128 + (e - 7) * SIM_HIST_SUB + (int) ((v >> (e - 6)) & 63);
}


static uint64_t
sim_hist_value(int i)
{
    int  e, sub;

    if (i < 128) {
        return i;
    }

    e = (i - 128) / SIM_HIST_SUB + 7;
    sub = (i - 128) % SIM_HIST_SUB;

    /* the middle of the bucket */
    return ((uint64_t) (64 + sub) << (e - 6)) + ((1ULL << (e - 6)) >> 1);
}


void
sim_hist_add(sim_hist_t *h, uint64_t us)
{
    h->buckets[sim_hist_index(us)]++;
    h->count++;
    h->sum += us;
    if (us > h->max) {
        h->max = us;
    }
}


uint64_t
sim_hist_pct(const sim_hist_t *h, double pct)
{
    int       i;
    uint64_t  want, seen, v;

    if (h->count == 0) {
        return 0;
    }

    want = (uint64_t) (h->count * pct / 100.0 + 0.5);
    if (want == 0) {
        want = 1;
    }

    seen = 0;
    for (i = 0; i < SIM_HIST_N; i++) {
        seen += h->buckets[i];
        if (seen >= want) {
            v = sim_hist_value(i);
            return v < h->max ? v : h->max;
        }
    }

    return h->max;
}


static void
sim_hist_print(const char *name, const sim_hist_t *h, int json)
{
    if (json) {
        printf("\"%s\":{\"count\":%llu,\"mean\":%.1f,\"p50\":%llu,"
               "\"p90\":%llu,\"p99\":%llu,\"max\":%llu}", name,
               (unsigned long long) h->count,
               h->count ? (double) h->sum / h->count : 0.0,
               (unsigned long long) sim_hist_pct(h, 50),
               (unsigned long long) sim_hist_pct(h, 90),
               (unsigned long long) sim_hist_pct(h, 99),
               (unsigned long long) h->max);
        return;
    }

    printf("%-12s p50 %.3f ms  p90 %.3f ms  p99 %.3f ms  max %.3f ms"
           "  (%llu)\n", name,
           sim_hist_pct(h, 50) / 1e3, sim_hist_pct(h, 90) / 1e3,
           sim_hist_pct(h, 99) / 1e3, h->max / 1e3,
           (unsigned long long) h->count);
}


static uint64_t
sim_errors(const sim_stats_t *s)
{
    int       i;
    uint64_t  n;

    n = s->err_connect + s->err_tls + s->err_timeout + s->err_closed
        + s->err_protocol;
    for (i = 0; i < 600; i++) {
        if (i != 200) {
            n += s->status[i];
        }
    }

    return n;
}


/* The command counters, the same arguments in both formats. */
static void
sim_commands_print(const sim_stats_t *s, int json)
{
    static const char  *fmt[2] = {
        "commands     enqueued %llu (%.1f ms)  received %llu"
        "  acknowledged %llu  duplicate %llu  foreign %llu"
        "  not delivered %llu\n",
        ",\"commands\":{\"enqueued\":%llu,\"enqueue_ms\":%.3f,"
        "\"received\":%llu,\"acknowledged\":%llu,\"duplicate\":%llu,"
        "\"foreign\":%llu,\"not_delivered\":%llu}}\n"
    };

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    printf(fmt[json ? 1 : 0],
           (unsigned long long) s->cmd_enqueued, s->enqueue_ms,
           (unsigned long long) s->cmd_received,
           (unsigned long long) s->cmd_acked,
           (unsigned long long) s->cmd_duplicate,
           (unsigned long long) s->cmd_foreign,
           (unsigned long long) s->cmd_missing);
#pragma GCC diagnostic pop
}


/* The growth scenario's figures, bytes above its baseline. */
static void
sim_growth_print(sim_t *sim, int json)
{
    sim_growth_t  *g;

    g = &sim->stats.growth;

    if (!json) {
        printf("growth       baseline %lld B (dataset %lld); above it:"
               " queued %lld, answered %lld (%llu)\n"
               "  swept      %lld, dataset %lld (TTL keys %lld in %llu,"
               " streams %lld, hash tables %lld)\n"
               "  after TTL  %lld, dataset %lld (streams %lld, hash tables"
               " %lld)\n"
               "  sweep      %.1f ms (%llu calls, longest %.1f ms, expired"
               " %llu, released %llu); queues left %llu, body %s\n"
               "  waited     %.1f s for the expiry, %.1f s for the TTL"
               " (result_ttl %lld)\n"
               "  keys       %lld B in %lld before, %lld B in %lld after\n",
               (long long) g->base, (long long) g->base_dataset,
               (long long) g->queued, (long long) g->answered,
               (unsigned long long) g->answers, (long long) g->swept,
               (long long) g->swept_dataset, (long long) g->swept_ttl,
               (unsigned long long) g->ttl_keys, (long long) g->swept_streams,
               (long long) g->ht_swept, (long long) g->after_ttl,
               (long long) g->after_dataset, (long long) g->after_streams,
               (long long) g->ht_after, g->sweep_ms,
               (unsigned long long) g->sweep_calls, g->sweep_max_ms,
               (unsigned long long) g->expired,
               (unsigned long long) g->released,
               (unsigned long long) g->left_keys,
               g->cmd_left ? "left" : "released", g->expiry_wait_s,
               g->ttl_wait_s, (long long) g->result_ttl, g->keys_base,
               g->nkeys_base, g->keys_after, g->nkeys_after);
        return;
    }

    printf("\"growth\":{\"base\":%lld,\"base_dataset\":%lld,"
           "\"queued\":%lld,\"answered\":%lld,\"answers\":%llu,"
           "\"swept\":%lld,\"swept_dataset\":%lld,\"swept_ttl\":%lld,"
           "\"ttl_keys\":%llu,\"swept_streams\":%lld,\"ht_swept\":%lld,"
           "\"after_ttl\":%lld,\"after_dataset\":%lld,"
           "\"after_streams\":%lld,\"ht_after\":%lld,"
           "\"sweep_ms\":%.3f,\"sweep_calls\":%llu,"
           "\"sweep_max_ms\":%.3f,\"expired\":%llu,\"released\":%llu,"
           "\"left_keys\":%llu,\"cmd_left\":%d,\"expiry_wait_s\":%.3f,"
           "\"ttl_wait_s\":%.3f,\"result_ttl\":%lld,"
           "\"keys_base\":%lld,\"nkeys_base\":%lld,\"keys_after\":%lld,"
           "\"nkeys_after\":%lld}",
           (long long) g->base, (long long) g->base_dataset,
           (long long) g->queued, (long long) g->answered,
           (unsigned long long) g->answers, (long long) g->swept,
           (long long) g->swept_dataset, (long long) g->swept_ttl,
           (unsigned long long) g->ttl_keys, (long long) g->swept_streams,
           (long long) g->ht_swept, (long long) g->after_ttl,
           (long long) g->after_dataset, (long long) g->after_streams,
           (long long) g->ht_after, g->sweep_ms,
           (unsigned long long) g->sweep_calls, g->sweep_max_ms,
           (unsigned long long) g->expired, (unsigned long long) g->released,
           (unsigned long long) g->left_keys, g->cmd_left,
           g->expiry_wait_s, g->ttl_wait_s, (long long) g->result_ttl,
           g->keys_base, g->nkeys_base, g->keys_after, g->nkeys_after);
}


/* The DDM figures: the sync's report size and memory, the fan-out. */
static void
sim_ddm_print(sim_t *sim, int json)
{
    static const char  *fmt[2] = {
        "ddm          status report %llu B; memory of %llu enrollments:"
        " ddm %lld, dsets %lld, dadv %lld, dstat %lld, ditems %lld,"
        " set members %lld B\n"
        "  fan-out    assign %.1f ms; %llu calls %.1f ms, longest %.1f ms"
        " (in Redis %.1f); synced %llu, queued %llu, pushes %llu;"
        " checked: command %llu, push %llu, %llu commands (%llu not DM)\n",
        ",\"ddm\":{\"status_bytes\":%llu,\"devices\":%llu,"
        "\"mem_ddm\":%lld,\"mem_dsets\":%lld,\"mem_dadv\":%lld,"
        "\"mem_dstat\":%lld,\"mem_ditems\":%lld,\"mem_setenr\":%lld,"
        "\"assign_ms\":%.3f,\"calls\":%llu,\"total_ms\":%.3f,"
        "\"max_ms\":%.3f,\"server_max_ms\":%.3f,\"synced\":%llu,"
        "\"queued\":%llu,\"pushes\":%llu,\"have_cmd\":%llu,"
        "\"have_push\":%llu,\"commands\":%llu,\"not_dm\":%llu}"
    };
    sim_ddm_t  *d;

    d = &sim->stats.ddm;

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    printf(fmt[json ? 1 : 0], (unsigned long long) d->status_bytes,
           (unsigned long long) d->devices, d->mem[0], d->mem[1], d->mem[2],
           d->mem[3], d->mem[4], d->mem[5], d->assign_ms,
           (unsigned long long) d->calls, d->total_ms, d->max_ms,
           d->server_max_ms, (unsigned long long) d->synced,
           (unsigned long long) d->queued, (unsigned long long) d->pushes,
           (unsigned long long) d->have_cmd,
           (unsigned long long) d->have_push,
           (unsigned long long) d->commands,
           (unsigned long long) d->not_dm);
#pragma GCC diagnostic pop
}


/* The CPU of every pid under the label of entry i, once per label. */
static int
sim_cpu_label(sim_t *sim, int i, double *cpu)
{
    int  j;

    for (j = 0; j < i; j++) {
        if (strcmp(sim->conf.cpu_label[j], sim->conf.cpu_label[i]) == 0) {
            return 0;
        }
    }

    *cpu = 0;
    for (j = i; j < sim->conf.ncpu; j++) {
        if (strcmp(sim->conf.cpu_label[j], sim->conf.cpu_label[i]) == 0) {
            *cpu += sim->stats.cpu_us[j];
        }
    }

    return 1;
}


void
sim_stats_print(sim_t *sim, int json)
{
    int           i, first;
    double        el, rps, cpu;
    sim_stats_t  *s;

    s = &sim->stats;
    el = s->t_end - s->t_start;
    if (el <= 0) {
        el = 1e-9;
    }
    rps = s->requests / el;

    if (!json) {
        printf("scenario     %s, %d devices, %d connections%s\n",
               sim_scenario_names[sim->conf.scenario], sim->conf.devices,
               sim->conf.conns, sim->conf.signature ? ", Mdm-Signature" : "");
        printf("elapsed      %.3f s\n", el);
        printf("requests     %llu (%.0f/s)\n",
               (unsigned long long) s->requests, rps);
        for (i = 0; i < SIM_RQ_NKINDS; i++) {
            if (s->by_kind[i]) {
                printf("  %-14s %llu\n", sim_kind_names[i],
                       (unsigned long long) s->by_kind[i]);
            }
        }
        printf("sessions     %llu\n", (unsigned long long) s->sessions);
        printf("handshakes   %llu (retries %llu)\n",
               (unsigned long long) s->handshakes,
               (unsigned long long) s->retries);
        if (sim->conf.warmup) {
            printf("warm-up      %llu requests before measuring\n",
                   (unsigned long long) s->warmup_requests);
        }
        for (i = 0; i < sim->conf.ncpu; i++) {
            if (sim_cpu_label(sim, i, &cpu)) {
                printf("cpu %-8s %.0f us (%.1f us/request)\n",
                       sim->conf.cpu_label[i], cpu,
                       s->requests ? cpu / s->requests : 0.0);
            }
        }
        printf("cpu sim      %.0f us (%.1f us/request)\n", s->cpu_us[16],
               s->requests ? s->cpu_us[16] / s->requests : 0.0);
        printf("cpu machine  %.0f%% busy\n", s->machine_us[1] > 0
               ? 100 * s->machine_us[0] / s->machine_us[1] : 0.0);
        sim_hist_print("latency", &s->latency, 0);
        sim_hist_print("handshake", &s->handshake, 0);
        printf("errors       %llu", (unsigned long long) sim_errors(s));
        for (i = 0; i < 600; i++) {
            if (i != 200 && s->status[i]) {
                printf("  HTTP %d: %llu", i,
                       (unsigned long long) s->status[i]);
            }
        }
        printf("  connect %llu  tls %llu  timeout %llu  closed %llu"
               "  protocol %llu\n",
               (unsigned long long) s->err_connect,
               (unsigned long long) s->err_tls,
               (unsigned long long) s->err_timeout,
               (unsigned long long) s->err_closed,
               (unsigned long long) s->err_protocol);
        if (s->enroll_ms > 0) {
            printf("direct enrollment of %llu ids: %.1f ms, %lld bytes;"
                   " enqueue to them: %lld bytes\n",
                   (unsigned long long) s->cmd_enqueued, s->enroll_ms,
                   (long long) s->enroll_memory,
                   (long long) s->enqueue_memory);
        }
        if (s->enq.calls) {
            printf("enqueue      %llu calls of up to %d ids: %.1f ms,"
                   " longest %.1f ms (in Redis %.1f); queued %llu,"
                   " already %llu\n",
                   (unsigned long long) s->enq.calls,
                   sim->conf.enqueue_chunk, s->enq.total_ms, s->enq.max_ms,
                   s->enq.server_max_ms,
                   (unsigned long long) s->enq.queued,
                   (unsigned long long) s->enq.already);
        }
        if (s->enq.retry) {
            printf("chunk again  %s%s%llu queued, %llu already\n",
                   s->enq.retry < 0 ? s->enq.retry_error : "",
                   s->enq.retry < 0 ? "; " : "",
                   (unsigned long long) s->enq.retry_queued,
                   (unsigned long long) s->enq.retry_already);
        }
        if (sim->conf.scenario == SIM_GROWTH) {
            sim_growth_print(sim, 0);
        }
        if (sim->conf.scenario == SIM_DDM
            || sim->conf.scenario == SIM_DDM_FANOUT)
        {
            sim_ddm_print(sim, 0);
        }
        if (s->cmd_enqueued || s->cmd_received) {
            sim_commands_print(s, 0);
        }
        return;
    }

    printf("{\"scenario\":\"%s\",\"devices\":%d,\"connections\":%d,"
           "\"signature\":%s,\"elapsed_s\":%.6f,\"requests\":%llu,"
           "\"rps\":%.1f,\"sessions\":%llu,\"handshakes\":%llu,"
           "\"retries\":%llu,\"devices_done\":%llu,\"by_kind\":{",
           sim_scenario_names[sim->conf.scenario], sim->conf.devices,
           sim->conf.conns, sim->conf.signature ? "true" : "false", el,
           (unsigned long long) s->requests, rps,
           (unsigned long long) s->sessions,
           (unsigned long long) s->handshakes,
           (unsigned long long) s->retries,
           (unsigned long long) s->devices_done);
    for (i = 0; i < SIM_RQ_NKINDS; i++) {
        printf("%s\"%s\":%llu", i ? "," : "", sim_kind_names[i],
               (unsigned long long) s->by_kind[i]);
    }
    printf("},\"latency_us\":{");
    sim_hist_print("request", &s->latency, 1);
    printf(",");
    sim_hist_print("handshake", &s->handshake, 1);
    printf("},\"errors\":{\"total\":%llu,\"connect\":%llu,\"tls\":%llu,"
           "\"timeout\":%llu,\"closed\":%llu,\"protocol\":%llu,"
           "\"status\":{", (unsigned long long) sim_errors(s),
           (unsigned long long) s->err_connect,
           (unsigned long long) s->err_tls,
           (unsigned long long) s->err_timeout,
           (unsigned long long) s->err_closed,
           (unsigned long long) s->err_protocol);
    first = 1;
    for (i = 0; i < 600; i++) {
        if (i != 200 && s->status[i]) {
            printf("%s\"%d\":%llu", first ? "" : ",", i,
                   (unsigned long long) s->status[i]);
            first = 0;
        }
    }
    printf("}},\"warmup_requests\":%llu,\"cpu_us\":{",
           (unsigned long long) s->warmup_requests);
    for (i = 0; i < sim->conf.ncpu; i++) {
        if (sim_cpu_label(sim, i, &cpu)) {
            printf("\"%s\":%.0f,", sim->conf.cpu_label[i], cpu);
        }
    }
    printf("\"sim\":%.0f,\"machine_busy\":%.0f,\"machine_total\":%.0f",
           s->cpu_us[16], s->machine_us[0], s->machine_us[1]);
    printf("},\"redis\":{\"enroll_ms\":%.3f,\"enroll_memory\":%lld,"
           "\"enqueue_memory\":%lld", s->enroll_ms,
           (long long) s->enroll_memory, (long long) s->enqueue_memory);
    printf("},\"enqueue\":{\"calls\":%llu,\"chunk\":%d,\"queued\":%llu,"
           "\"already\":%llu,\"total_ms\":%.3f,\"max_ms\":%.3f,"
           "\"server_max_ms\":%.3f,"
           "\"memory\":%lld,\"uuid\":\"%s\",\"retry\":%d,"
           "\"retry_queued\":%llu,\"retry_already\":%llu,"
           "\"cleanup_ms\":%.3f},",
           (unsigned long long) s->enq.calls, sim->conf.enqueue_chunk,
           (unsigned long long) s->enq.queued,
           (unsigned long long) s->enq.already, s->enq.total_ms,
           s->enq.max_ms, s->enq.server_max_ms,
           (long long) s->enq.memory, s->enq.uuid,
           s->enq.retry, (unsigned long long) s->enq.retry_queued,
           (unsigned long long) s->enq.retry_already, s->cleanup_ms);
    sim_growth_print(sim, 1);
    sim_ddm_print(sim, 1);
    sim_commands_print(s, 1);
}
