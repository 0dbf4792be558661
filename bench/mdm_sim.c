/*
 * mdm-sim: command line, set-up and the event loop.
 */

#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/resource.h>

#include <openssl/rand.h>

#include "mdm_sim.h"


static const char  *sim_usage =
"usage: mdm-sim [options]\n"
"  -s, --scenario NAME     enroll | poll | cycle | mixed | static | enqueue\n"
"                          | growth | ddm | ddm-fanout\n"
"  -n, --devices N         simulated devices (default 100)\n"
"  -c, --connections N     devices talking at once (default N); fewer\n"
"                          connections than devices rotate devices\n"
"                          (a TLS handshake per switch)\n"
"  -d, --duration SEC      stop starting sessions after SEC seconds\n"
"      --requests N        stop after N requests\n"
"      --sessions N        sessions per device (enroll: Authenticate +\n"
"                          TokenUpdate; poll/cycle: Idle until a zero-byte\n"
"                          reply); default: until --duration\n"
"      --rate R            open loop: R session starts per second fleet-wide\n"
"                          (latency counts from the scheduled start)\n"
"      --think MS          pause of a device between its sessions\n"
"      --timeout SEC       per request (default 10)\n"
"      --max-connecting N  connects + TLS handshakes in flight (default 200);\n"
"                          more connections wait their turn\n"
"      --connect HOST:PORT server (default 127.0.0.1:8443)\n"
"      --server-name NAME  SNI and Host (default localhost)\n"
"      --checkin-path P    default /mdm/checkin\n"
"      --connect-path P    default /mdm/connect\n"
"      --static-path P     default /static (static scenario)\n"
"      --static-method M   PUT (default) or GET\n"
"      --topic TOPIC       APNs topic in check-ins\n"
"      --udid-prefix S     UDIDs are S followed by 8 hex digits\n"
"      --ca-cert F --ca-key F   mint device identities from this CA\n"
"      --certs DIR         keep minted identities in DIR (same certificates\n"
"                          next run: the server binds them to the UDIDs)\n"
"      --cert F --key F    load identities; %d in F is the device index\n"
"      --signature         identify with Mdm-Signature, no TLS client cert\n"
"      --sign-load         sign each body like --signature but send it\n"
"                          over TLS without the header: the same load on\n"
"                          the simulator, a baseline for signed runs\n"
"      --rsa               mint RSA-2048 identities (what SCEP issues)\n"
"                          instead of EC P-256\n"
"      --no-unlock-token   TokenUpdate without UnlockToken\n"
"      --mixed-checkin P   mixed: share of sessions opening with a\n"
"                          TokenUpdate (default 0.2)\n"
"      --redis ADDR        unix socket path or host:port, for enqueueing\n"
"      --commands K        cycle/mixed: enqueue K commands to every device\n"
"                          first (FCALL mdm_enqueue), then check each is\n"
"                          acknowledged exactly once\n"
"      --targets N         enqueue: enroll N ids, then time the enqueue of\n"
"                          one command to all of them (default 100000)\n"
"      --target-prefix S   their ids: S and 8 hex digits (default: the\n"
"                          --udid-prefix)\n"
"      --enroll MODE       how the targets are enrolled: checkin (FCALL\n"
"                          mdm_checkin Authenticate, pipelined; default),\n"
"                          light (a minimal enrollment hash, what\n"
"                          mdm_enqueue checks) or none (enrolled already)\n"
"      --enroll-only       enqueue: enroll the targets, enqueue nothing\n"
"      --enqueue-chunk N   ids per mdm_enqueue call (default 2000; 0: all\n"
"                          in one call); the same body every call\n"
"      --expires S         the command expires after S seconds (default\n"
"                          none; growth: 5)\n"
"      --enqueue-pace P    --enqueue-during: after each call wait so that the\n"
"                          enqueue takes at most P % of the time, as mdmctl\n"
"                          enqueue --pace (default 50; 100: back to back)\n"
"      --enqueue-during    poll/cycle/mixed: enroll --targets ids first; once\n"
"                          the clock starts, enqueue one command to them from\n"
"                          a second thread while the fleet talks; the run\n"
"                          ends when that enqueue is done\n"
"      --cleanup           enqueue, --enqueue-during: delete the targets'\n"
"                          keys and the command afterwards\n"
"      --answer P          growth: share of the targets that acknowledge\n"
"                          (mdm_report; default 0.9), the rest never poll\n"
"      --gc CMD            growth: sweep with this shell command (mdmctl gc)\n"
"                          instead of FCALL mdm_sweep until more = 0\n"
"      --ddm-decls N       ddm: with --redis, put N declarations in one set\n"
"                          and assign it to the fleet first (default 20)\n"
"      --warmup            start measuring once every connection is up and\n"
"                          has answered once (no handshakes in the figures)\n"
"      --cpu-pid LABEL:PID CPU time of PID (utime + stime) over the measured\n"
"                          window, summed per LABEL; repeatable\n"
"      --json              machine-readable report on stdout\n"
"  -v, --verbose\n";


enum {
    OPT_REQUESTS = 256, OPT_SESSIONS, OPT_RATE, OPT_THINK, OPT_TIMEOUT,
    OPT_CONNECT, OPT_SNI, OPT_CHECKIN, OPT_CMDPATH, OPT_STATIC,
    OPT_STATIC_METHOD, OPT_TOPIC, OPT_PREFIX, OPT_CA_CERT, OPT_CA_KEY,
    OPT_CERTS, OPT_CERT, OPT_KEY, OPT_SIGNATURE, OPT_SIGN_LOAD, OPT_RSA,
    OPT_NO_UNLOCK, OPT_MIXED,
    OPT_REDIS, OPT_COMMANDS, OPT_TARGETS, OPT_JSON, OPT_WARMUP, OPT_CPU,
    OPT_MAX_OPENING, OPT_TARGET_PREFIX, OPT_ENROLL, OPT_ENROLL_ONLY,
    OPT_CHUNK, OPT_PACE, OPT_EXPIRES, OPT_DURING, OPT_CLEANUP, OPT_ANSWER, OPT_GC,
    OPT_DDM_DECLS
};

static const struct option  sim_options[] = {
    { "scenario", required_argument, NULL, 's' },
    { "devices", required_argument, NULL, 'n' },
    { "connections", required_argument, NULL, 'c' },
    { "duration", required_argument, NULL, 'd' },
    { "requests", required_argument, NULL, OPT_REQUESTS },
    { "sessions", required_argument, NULL, OPT_SESSIONS },
    { "rate", required_argument, NULL, OPT_RATE },
    { "think", required_argument, NULL, OPT_THINK },
    { "timeout", required_argument, NULL, OPT_TIMEOUT },
    { "connect", required_argument, NULL, OPT_CONNECT },
    { "server-name", required_argument, NULL, OPT_SNI },
    { "checkin-path", required_argument, NULL, OPT_CHECKIN },
    { "connect-path", required_argument, NULL, OPT_CMDPATH },
    { "static-path", required_argument, NULL, OPT_STATIC },
    { "static-method", required_argument, NULL, OPT_STATIC_METHOD },
    { "topic", required_argument, NULL, OPT_TOPIC },
    { "udid-prefix", required_argument, NULL, OPT_PREFIX },
    { "ca-cert", required_argument, NULL, OPT_CA_CERT },
    { "ca-key", required_argument, NULL, OPT_CA_KEY },
    { "certs", required_argument, NULL, OPT_CERTS },
    { "cert", required_argument, NULL, OPT_CERT },
    { "key", required_argument, NULL, OPT_KEY },
    { "signature", no_argument, NULL, OPT_SIGNATURE },
    { "sign-load", no_argument, NULL, OPT_SIGN_LOAD },
    { "rsa", no_argument, NULL, OPT_RSA },
    { "no-unlock-token", no_argument, NULL, OPT_NO_UNLOCK },
    { "mixed-checkin", required_argument, NULL, OPT_MIXED },
    { "redis", required_argument, NULL, OPT_REDIS },
    { "commands", required_argument, NULL, OPT_COMMANDS },
    { "targets", required_argument, NULL, OPT_TARGETS },
    { "target-prefix", required_argument, NULL, OPT_TARGET_PREFIX },
    { "enroll", required_argument, NULL, OPT_ENROLL },
    { "enroll-only", no_argument, NULL, OPT_ENROLL_ONLY },
    { "enqueue-chunk", required_argument, NULL, OPT_CHUNK },
    { "enqueue-pace", required_argument, NULL, OPT_PACE },
    { "expires", required_argument, NULL, OPT_EXPIRES },
    { "enqueue-during", no_argument, NULL, OPT_DURING },
    { "cleanup", no_argument, NULL, OPT_CLEANUP },
    { "answer", required_argument, NULL, OPT_ANSWER },
    { "gc", required_argument, NULL, OPT_GC },
    { "ddm-decls", required_argument, NULL, OPT_DDM_DECLS },
    { "json", no_argument, NULL, OPT_JSON },
    { "warmup", no_argument, NULL, OPT_WARMUP },
    { "max-connecting", required_argument, NULL, OPT_MAX_OPENING },
    { "cpu-pid", required_argument, NULL, OPT_CPU },
    { "verbose", no_argument, NULL, 'v' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 }
};


static sim_scenario_e
sim_scenario(const char *s)
{
    static const char  *names[] = {
        "enroll", "poll", "cycle", "mixed", "static", "enqueue", "growth",
        "ddm", "ddm-fanout"
    };
    size_t  i;

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcmp(s, names[i]) == 0) {
            return (sim_scenario_e) i;
        }
    }

    sim_die("unknown scenario %s", s);
}


static void
sim_parse_args(sim_t *sim, int argc, char **argv)
{
    int          o;
    char        *colon;
    const char  *connect;
    sim_conf_t  *cf;

    cf = &sim->conf;
    cf->scenario = SIM_POLL;
    cf->devices = 100;
    cf->conns = 0;
    cf->timeout = 10;
    cf->max_opening = 200;
    cf->mixed_checkin = 0.2;
    cf->unlock_token = 1;
    cf->server_name = "localhost";
    cf->checkin_path = "/mdm/checkin";
    cf->connect_path = "/mdm/connect";
    cf->static_path = "/static";
    cf->static_method = "PUT";
    cf->topic = "com.apple.mgmt.External.e0bd1eac-1f17-4c8e-8a63-dd17d3dd35d9";
    cf->udid_prefix = "00008030-5133AA00";
    cf->targets = 100000;
    cf->enqueue_chunk = 2000;
    cf->enqueue_pace = 50;
    cf->answer = 0.9;
    cf->ddm_decls = 20;
    connect = "127.0.0.1:8443";

    while ((o = getopt_long(argc, argv, "s:n:c:d:vh", sim_options, NULL))
           != -1)
    {
        switch (o) {
        case 's': cf->scenario = sim_scenario(optarg); break;
        case 'n': cf->devices = atoi(optarg); break;
        case 'c': cf->conns = atoi(optarg); break;
        case 'd': cf->duration = atof(optarg); break;
        case 'v': cf->verbose = 1; break;
        case OPT_REQUESTS: cf->max_requests = strtoull(optarg, NULL, 10);
            break;
        case OPT_SESSIONS: cf->sessions = atoi(optarg); break;
        case OPT_RATE: cf->rate = atof(optarg); break;
        case OPT_THINK: cf->think_ms = atof(optarg); break;
        case OPT_TIMEOUT: cf->timeout = atof(optarg); break;
        case OPT_CONNECT: connect = optarg; break;
        case OPT_SNI: cf->server_name = optarg; break;
        case OPT_CHECKIN: cf->checkin_path = optarg; break;
        case OPT_CMDPATH: cf->connect_path = optarg; break;
        case OPT_STATIC: cf->static_path = optarg; break;
        case OPT_STATIC_METHOD: cf->static_method = optarg; break;
        case OPT_TOPIC: cf->topic = optarg; break;
        case OPT_PREFIX: cf->udid_prefix = optarg; break;
        case OPT_CA_CERT: cf->ca_cert = optarg; break;
        case OPT_CA_KEY: cf->ca_key = optarg; break;
        case OPT_CERTS: cf->certs_dir = optarg; break;
        case OPT_CERT: cf->cert_file = optarg; break;
        case OPT_KEY: cf->key_file = optarg; break;
        case OPT_SIGNATURE: cf->signature = 1; break;
        case OPT_SIGN_LOAD: cf->sign_load = 1; break;
        case OPT_RSA: cf->rsa = 1; break;
        case OPT_NO_UNLOCK: cf->unlock_token = 0; break;
        case OPT_MIXED: cf->mixed_checkin = atof(optarg); break;
        case OPT_REDIS: cf->redis = optarg; break;
        case OPT_COMMANDS: cf->commands = atoi(optarg); break;
        case OPT_TARGETS: cf->targets = atoi(optarg); break;
        case OPT_TARGET_PREFIX: cf->target_prefix = optarg; break;
        case OPT_ENROLL:
            if (strcmp(optarg, "checkin") == 0) {
                cf->enroll = SIM_ENR_CHECKIN;
            } else if (strcmp(optarg, "light") == 0) {
                cf->enroll = SIM_ENR_LIGHT;
            } else if (strcmp(optarg, "none") == 0) {
                cf->enroll = SIM_ENR_NONE;
            } else {
                sim_die("--enroll wants checkin, light or none");
            }
            break;
        case OPT_ENROLL_ONLY: cf->enroll_only = 1; break;
        case OPT_CHUNK: cf->enqueue_chunk = atoi(optarg); break;
        case OPT_PACE: cf->enqueue_pace = atoi(optarg); break;
        case OPT_EXPIRES: cf->expires = atoi(optarg); break;
        case OPT_DURING: cf->enqueue_during = 1; break;
        case OPT_CLEANUP: cf->cleanup = 1; break;
        case OPT_ANSWER: cf->answer = atof(optarg); break;
        case OPT_GC: cf->gc_command = optarg; break;
        case OPT_DDM_DECLS: cf->ddm_decls = atoi(optarg); break;
        case OPT_JSON: cf->json = 1; break;
        case OPT_WARMUP: cf->warmup = 1; break;
        case OPT_MAX_OPENING: cf->max_opening = atoi(optarg); break;
        case OPT_CPU:
            colon = strchr(optarg, ':');
            if (colon == NULL || cf->ncpu == 16) {
                sim_die("--cpu-pid wants LABEL:PID (at most 16)");
            }
            cf->cpu_label[cf->ncpu] = strndup(optarg, colon - optarg);
            cf->cpu_pid[cf->ncpu++] = atoi(colon + 1);
            break;
        case 'h':
            fputs(sim_usage, stdout);
            exit(0);
        default:
            fputs(sim_usage, stderr);
            exit(2);
        }
    }

    if (cf->devices < 1 || cf->targets < 1 || cf->commands < 0) {
        sim_die("--devices and --targets must be positive");
    }
    if (cf->enqueue_chunk < 0 || cf->enqueue_pace < 1 || cf->enqueue_pace > 100
        || cf->expires < 0 || cf->answer < 0
        || cf->answer > 1 || cf->ddm_decls < 0
        || cf->ddm_decls > SIM_DDM_MAX)
    {
        sim_die("--enqueue-chunk and --expires must not be negative,"
                " --enqueue-pace is 1-100,"
                " --answer is a share 0-1, --ddm-decls 0-%d", SIM_DDM_MAX);
    }
    if (cf->target_prefix == NULL) {
        cf->target_prefix = cf->udid_prefix;
    }
    if (cf->conns <= 0 || cf->conns > cf->devices) {
        cf->conns = cf->devices;
    }
    if (cf->duration <= 0 && cf->sessions == 0 && cf->max_requests == 0
        && cf->scenario != SIM_CYCLE && !cf->enqueue_during)
    {
        cf->duration = 10;
    }

    colon = strrchr(connect, ':');
    if (colon == NULL) {
        sim_die("--connect wants HOST:PORT");
    }
    cf->host = strndup(connect, colon - connect);
    cf->port = atoi(colon + 1);
}


static void
sim_resolve(sim_t *sim)
{
    int               rc;
    char              port[16];
    struct addrinfo   hints, *ai;

    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof(port), "%d", sim->conf.port);

    rc = getaddrinfo(sim->conf.host, port, &hints, &ai);
    if (rc != 0) {
        sim_die("%s: %s", sim->conf.host, gai_strerror(rc));
    }

    memcpy(&sim->addr, ai->ai_addr, ai->ai_addrlen);
    sim->addrlen = ai->ai_addrlen;
    freeaddrinfo(ai);
}


static void
sim_init(sim_t *sim)
{
    int            i;
    uint8_t        rnd[16];
    struct rlimit  rl;

    signal(SIGPIPE, SIG_IGN);
    srandom(getpid());

    /* one descriptor per device connection */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    RAND_bytes(rnd, sizeof(rnd));
    snprintf(sim->run_prefix, sizeof(sim->run_prefix),
             "%02X%02X%02X%02X-%02X%02X-4%01X%02X-8%01X%02X-",
             rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5],
             rnd[6] & 0xf, rnd[7], rnd[8] & 0xf, rnd[9]);

    /* an escrow keybag is tagged blobs: DATA, VERS, TYPE, UUID, ... */
    RAND_bytes(sim->unlock, sizeof(sim->unlock));
    memcpy(sim->unlock, "DATA\0\0\x04\xe4VERS\0\0\0\x04\0\0\0\x04", 20);
    memcpy(sim->unlock + 20, "TYPE\0\0\0\x04\0\0\0\x02UUID\0\0\0\x10", 20);

    sim->devices = calloc(sim->conf.devices, sizeof(sim_device_t));
    sim->conns = calloc(sim->conf.conns, sizeof(sim_conn_t));
    sim->heap = calloc(sim->conf.conns, sizeof(sim_conn_t *));
    sim->queue = calloc(sim->conf.conns, sizeof(sim_conn_t *));
    if (sim->conf.max_opening < 1) {
        sim->conf.max_opening = 1;
    }
    if (sim->devices == NULL || sim->conns == NULL || sim->heap == NULL
        || sim->queue == NULL)
    {
        sim_die("out of memory");
    }

    for (i = 0; i < sim->conf.devices; i++) {
        sim->devices[i].index = i;
        snprintf(sim->devices[i].udid, sizeof(sim->devices[i].udid),
                 "%s%08X", sim->conf.udid_prefix, i);
    }

    for (i = 0; i < sim->conf.conns; i++) {
        sim->conns[i].id = i;
        sim->conns[i].fd = -1;
        sim->conns[i].dev_first = i;
    }

    sim->epfd = epoll_create1(0);
    if (sim->epfd < 0) {
        sim_die("epoll_create1: %s", strerror(errno));
    }
}


/* Adds sign * CPU microseconds of every --cpu-pid and of this process. */
static void
sim_cpu_sample(sim_t *sim, double sign)
{
    int            i, n;
    char           path[64], buf[1024], *p;
    long           hz;
    FILE          *f;
    unsigned long  ut, st;
    struct rusage  ru;
    unsigned long long  j[8];

    hz = sysconf(_SC_CLK_TCK);

    for (i = 0; i < sim->conf.ncpu; i++) {
        snprintf(path, sizeof(path), "/proc/%d/stat", sim->conf.cpu_pid[i]);
        f = fopen(path, "r");
        if (f == NULL) {
            continue;
        }
        n = (int) fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n > 0 ? n : 0] = '\0';

        /* fields after the command name: state is field 3, utime 14 */
        p = strrchr(buf, ')');
        if (p == NULL
            || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u"
                      " %lu %lu", &ut, &st) != 2)
        {
            continue;
        }
        sim->stats.cpu_us[i] += sign * (ut + st) * 1e6 / hz;
    }

    /* the whole machine: busy and total jiffies of all CPUs */
    f = fopen("/proc/stat", "r");
    if (f != NULL) {
        if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu",
                   &j[0], &j[1], &j[2], &j[3], &j[4], &j[5], &j[6], &j[7])
            == 8)
        {
            sim->stats.machine_us[0] += sign * (j[0] + j[1] + j[2] + j[5]
                                                + j[6] + j[7]) * 1e6 / hz;
            sim->stats.machine_us[1] += sign * (j[0] + j[1] + j[2] + j[3]
                                                + j[4] + j[5] + j[6] + j[7])
                                        * 1e6 / hz;
        }
        fclose(f);
    }

    getrusage(RUSAGE_SELF, &ru);
    sim->stats.cpu_us[16] += sign * (ru.ru_utime.tv_sec * 1e6
                                     + ru.ru_utime.tv_usec
                                     + ru.ru_stime.tv_sec * 1e6
                                     + ru.ru_stime.tv_usec);
}


/* After each connection's first answer; the last one starts the clock. */
void
sim_warm(sim_t *sim, sim_conn_t *c)
{
    int     i;
    double  now;

    if (!sim->warming || c->warm) {
        return;
    }

    c->warm = 1;
    if (++sim->nwarm < sim->conf.conns) {
        return;
    }

    now = sim_now();
    sim->warming = 0;
    sim->stats.warmup_requests = sim->stats.requests;
    sim->stats.requests = 0;
    sim->stats.sessions = 0;
    memset(sim->stats.by_kind, 0, sizeof(sim->stats.by_kind));
    memset(&sim->stats.latency, 0, sizeof(sim->stats.latency));
    sim->stats.t_start = now;
    sim->stats.t_end = now;
    sim->started = 0;
    sim->end = sim->conf.duration > 0 ? now + sim->conf.duration : 0;
    sim_cpu_sample(sim, -1);

    for (i = 0; i < sim->conf.conns; i++) {
        sim_device_resume(sim, &sim->conns[i], now);
    }

    sim_redis_bg_start(sim);
}


static void
sim_run(sim_t *sim)
{
    int                 i, n, ms;
    double              now, next, last_check;
    sim_conn_t         *c;
    struct epoll_event  evs[512];

    now = sim_now();
    sim->stats.t_start = now;
    sim->stats.t_end = now;
    sim->end = sim->conf.duration > 0 ? now + sim->conf.duration : 0;
    last_check = now;
    sim->active = sim->conf.conns;
    sim->warming = sim->conf.warmup;
    if (sim->warming) {
        sim->end = 0;
    } else {
        sim_cpu_sample(sim, -1);
        sim_redis_bg_start(sim);
    }

    for (i = 0; i < sim->conf.conns; i++) {
        c = &sim->conns[i];
        /* spread the open-loop schedule evenly over one interval */
        if (sim->conf.rate > 0) {
            c->next_at = now + (i / (double) sim->conf.conns - 1)
                               * sim->conf.conns / sim->conf.rate;
        }
        sim_device_start(sim, c);
    }

    while (sim->active > 0) {
        now = sim_now();

        if (sim->end && now >= sim->end && !sim->stopping) {
            sim->stopping = 1;
        }

        /* --enqueue-during: the enqueue is what is measured */
        if (!sim->stopping && sim_redis_bg_done(sim)) {
            sim->stopping = 1;
        }

        /* --requests ran out during the warm-up: release the parked */
        if (sim->stopping && sim->warming) {
            sim->warming = 0;
            sim_cpu_sample(sim, -1);
            for (i = 0; i < sim->conf.conns; i++) {
                c = &sim->conns[i];
                if (c->parked) {
                    c->parked = 0;
                    sim_device_timer(sim, c);
                }
            }
        }

        while ((c = sim_heap_top(sim)) != NULL
               && (c->next_at <= now || sim->stopping))
        {
            sim_heap_pop(sim);
            sim_device_timer(sim, c);
        }

        if (now - last_check > 0.1) {
            sim_conn_check_timeouts(sim, now);
            last_check = now;
        }

        if (sim->active == 0) {
            break;
        }

        next = now + 0.1;
        if ((c = sim_heap_top(sim)) != NULL && c->next_at < next) {
            next = c->next_at;
        }
        if (sim->end && !sim->stopping && sim->end < next) {
            next = sim->end;
        }
        ms = (int) ((next - now) * 1e3 + 0.999);

        n = epoll_wait(sim->epfd, evs, 512, ms < 0 ? 0 : ms);
        if (n < 0 && errno != EINTR) {
            sim_die("epoll_wait: %s", strerror(errno));
        }

        for (i = 0; i < n; i++) {
            c = evs[i].data.ptr;
            sim_conn_io(sim, c, evs[i].events);
        }
    }

    sim_cpu_sample(sim, 1);

    for (i = 0; i < sim->conf.conns; i++) {
        sim_conn_close(sim, &sim->conns[i]);
    }
}


int
main(int argc, char **argv)
{
    int       i, rc;
    sim_t    *sim;
    uint64_t  errors;

    sim = calloc(1, sizeof(sim_t));
    if (sim == NULL) {
        sim_die("out of memory");
    }

    sim_parse_args(sim, argc, argv);
    sim_init(sim);

    if (sim->conf.scenario == SIM_ENQUEUE) {
        sim_redis_bulk(sim);
        sim_stats_print(sim, sim->conf.json);
        return 0;
    }

    if (sim->conf.scenario == SIM_GROWTH) {
        sim_redis_growth(sim);
        sim_stats_print(sim, sim->conf.json);
        return 0;
    }

    if (sim->conf.scenario == SIM_DDM_FANOUT) {
        sim_ddm_fanout(sim);
        sim_stats_print(sim, sim->conf.json);
        return sim->stats.ddm.have_cmd == (uint64_t) sim->conf.targets
               && sim->stats.ddm.have_push == (uint64_t) sim->conf.targets
               && sim->stats.ddm.not_dm == 0 ? 0 : 1;
    }

    sim_resolve(sim);
    sim_pki_init(sim);

    if (sim->conf.scenario == SIM_CYCLE || sim->conf.scenario == SIM_MIXED
        || sim->conf.scenario == SIM_POLL)
    {
        sim_redis_enqueue(sim);
    }

    if (sim->conf.enqueue_during) {
        sim_redis_bg_prepare(sim);
    }

    if (sim->conf.scenario == SIM_DDM) {
        sim_ddm_setup(sim);
    }

    sim_run(sim);
    sim_redis_bg_finish(sim);

    if (sim->conf.scenario == SIM_DDM) {
        sim_ddm_memory(sim);
    }

    if (sim->stats.cmd_enqueued > sim->stats.cmd_acked) {
        sim->stats.cmd_missing = sim->stats.cmd_enqueued
                                 - sim->stats.cmd_acked;
    }

    sim_stats_print(sim, sim->conf.json);

    /* exit status: 1 when anything went wrong, for scripts and tests */
    errors = sim->stats.err_connect + sim->stats.err_tls
             + sim->stats.err_timeout + sim->stats.err_closed
             + sim->stats.err_protocol + sim->stats.cmd_duplicate;
    for (i = 0; i < 600; i++) {
        if (i != 200) {
            errors += sim->stats.status[i];
        }
    }
    rc = errors ? 1 : 0;

    return rc;
}
