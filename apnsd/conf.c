/* Configuration: defaults < config file < environment < command line. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "apnsd.h"

conf_t conf;

enum { O_STR, O_INT, O_MS, O_SEC, O_LIST, O_FLAG };

typedef struct opt {
    const char *name;
    int type;
    void *ptr;
    const char *def;
    int64_t min, max;
    int src;                    /* source that last set it (lists) */
} opt_t;

enum { SRC_DEF, SRC_FILE, SRC_ENV, SRC_ARG };

#define D (INT64_MAX / 4)
static opt_t opts[] = {
    { "config",            O_STR,  &conf.config_file,       NULL, 0, 0, 0 },
    { "name",              O_STR,  &conf.name,              NULL, 0, 0, 0 },
    { "redis",             O_STR,  &conf.redis,             "127.0.0.1:6379", 0, 0, 0 },
    { "redis-username",    O_STR,  &conf.redis_username,    NULL, 0, 0, 0 },
    { "redis-password",    O_STR,  &conf.redis_password,    NULL, 0, 0, 0 },
    { "redis-db",          O_INT,  &conf.redis_db,          "-1", -1, MDM_REDIS_DB_MAX, 0 },
    { "max-outcomes",      O_INT,  &conf.max_outcomes,      "100000", 1, 100000000, 0 },
    { "redis-timeout",     O_MS,   &conf.redis_timeout,     "5s", 10, D, 0 },
    { "apns",              O_STR,  &conf.apns,              "production", 0, 0, 0 },
    { "ca-file",           O_STR,  &conf.ca_file,           NULL, 0, 0, 0 },
    { "proxy",             O_STR,  &conf.proxy,             NULL, 0, 0, 0 },
    { "cert",              O_LIST, &conf.certs,             NULL, 0, 0, 0 },
    { "cert-dir",          O_STR,  &conf.cert_dir,          NULL, 0, 0, 0 },
    { "p12-password-file", O_STR,  &conf.p12_password_file, NULL, 0, 0, 0 },
    { "connections",       O_INT,  &conf.connections,       "2", 1, 64, 0 },
    { "streams",           O_INT,  &conf.streams,           "100", 1, 1000, 0 },
    { "expiration",        O_SEC,  &conf.expiration,        "7d", 0, D, 0 },
    { "priority",          O_INT,  &conf.priority,          "10", 1, 10, 0 },
    { "request-timeout",   O_MS,   &conf.request_timeout,   "30s", 100, D, 0 },
    { "connect-timeout",   O_MS,   &conf.connect_timeout,   "10s", 100, D, 0 },
    { "idle-keep",         O_SEC,  &conf.idle_keep,         "1h", 1000, D, 0 },
    { "retry-base",        O_MS,   &conf.retry_base,        "1s", 1, D, 0 },
    { "retry-max",         O_MS,   &conf.retry_max,         "5m", 1, D, 0 },
    { "give-up",           O_SEC,  &conf.give_up,           "7d", 0, D, 0 },
    { "breaker-threshold", O_INT,  &conf.breaker_threshold, "5", 1, 1000000, 0 },
    { "breaker-pause",     O_MS,   &conf.breaker_pause,     "1s", 1, D, 0 },
    { "breaker-max",       O_MS,   &conf.breaker_max,       "2m", 1, D, 0 },
    { "batch",             O_INT,  &conf.batch,             "200", 1, 1000, 0 },
    { "max-local",         O_INT,  &conf.max_local,         "0", 0, 10000000, 0 },
    { "alive-ttl",         O_MS,   &conf.alive_ttl,         "15s", 300, D, 0 },
    { "recover-interval",  O_MS,   &conf.recover_interval,  "5s", 100, D, 0 },
    { "stats-interval",    O_MS,   &conf.stats_interval,    "60s", 100, D, 0 },
    { "sweep-interval",    O_MS,   &conf.sweep_interval,    "60s", 0, D, 0 },
    { "cert-check",        O_MS,   &conf.cert_check,        "5s", 100, D, 0 },
    { "stopped-retry",     O_SEC,  &conf.stopped_retry,     "1h", 0, D, 0 },
    { "shutdown-timeout",  O_MS,   &conf.shutdown_timeout,  "20s", 0, D, 0 },
    { "log",               O_STR,  &conf.log_file,          "stderr", 0, 0, 0 },
    { "log-level",         O_STR,  &conf.log_level_s,       "info", 0, 0, 0 },
    { "check",             O_FLAG, &conf.check_only,        NULL, 0, 0, 0 },
};
#undef D
#define NOPTS (sizeof opts / sizeof opts[0])

static const char help_text[] =
"MDM-APNSD(8)                  System Manager's Manual                 MDM-APNSD(8)\n"
"\n"
"NAME\n"
"       mdm-apnsd - APNs push sender for the nginx MDM module\n"
"\n"
"SYNOPSIS\n"
"       mdm-apnsd [-c FILE] [--OPTION=VALUE ...]\n"
"       mdm-apnsd --check [-c FILE] [--OPTION=VALUE ...]\n"
"       mdm-apnsd -h | --help | -V | --version\n"
"\n"
"DESCRIPTION\n"
"       mdm-apnsd takes MDM push requests (enrollment ids) from the Redis list\n"
"       mdm:push:q and sends one APNs notification per request:\n"
"\n"
"           POST /3/device/<token hex>        {\"mdm\":\"<PushMagic>\"}\n"
"           apns-push-type: mdm   apns-topic: <topic>\n"
"           apns-expiration: <now + expiration>   apns-priority: <priority>\n"
"\n"
"       Token, PushMagic and topic come from the enrollment hash\n"
"       mdm:{D}:enr:E. Requests go over HTTP/2 (libnghttp2, multiplexed) on a\n"
"       few long-lived TLS connections per topic, authenticated with that\n"
"       topic's push certificate. Several topics (certificates) are served at\n"
"       once; the topic is the certificate subject's UID attribute.\n"
"\n"
"       Consumption is reliable and at-least-once: an id moves atomically from\n"
"       the queue to the processing list mdm:push:proc:NAME and leaves it only\n"
"       when APNs answered or the sender gave up on purpose. A sender killed\n"
"       mid-batch finishes its list when restarted under the same name; other\n"
"       instances requeue the list of an instance whose heartbeat\n"
"       mdm:push:alive:NAME expired. Any number of instances may run at once\n"
"       if every one has its own --name.\n"
"\n"
"       Outcomes:\n"
"         200          push_ms, push_id (apns-id) set, push_error cleared\n"
"         410          token_dead_ms = APNs timestamp (unless a newer TokenUpdate)\n"
"         400 BadDeviceToken, DeviceTokenNotForTopic\n"
"                      token_bad = 1, push_error; not retried\n"
"         403          the topic is stopped and reported loudly; its items stay\n"
"                      queued until the certificate file changes, SIGHUP, or\n"
"                      --stopped-retry elapses\n"
"         429, 5xx, IdleTimeout, transport errors\n"
"                      retried with exponential backoff and jitter; 5xx and\n"
"                      transport errors also feed a per-topic circuit breaker\n"
"         other 4xx    push_error, not retried\n"
"       Enrollments that are missing, disabled (enabled != 1), flagged\n"
"       token_bad, or dead (token_dead_ms not older than token_update_ms) are\n"
"       skipped. Every outcome is written to the enrollment hash and to the\n"
"       stream mdm:events (type push), and counted in the hash mdm:push:stats.\n"
"\n"
"OPTIONS\n"
"       Every option can be given as --OPTION=VALUE or --OPTION VALUE, as a\n"
"       line \"OPTION VALUE\" (or \"OPTION = VALUE\") in the configuration file,\n"
"       or as the environment variable MDM_APNSD_OPTION (upper case, '-' as\n"
"       '_'). Command line beats environment beats file beats default.\n"
"       Durations take a unit (ms, s, m, h, d); a bare number is in the unit\n"
"       shown.\n"
"\n"
"       -c, --config FILE\n"
"              Configuration file. Default: none.\n"
"       --name NAME\n"
"              Instance name, unique per running instance. Default: host name.\n"
"       --redis \"unix:/PATH | IPv4:PORT | [IPv6]:PORT [username=U]\n"
"               [password=P] [db=N]\"\n"
"              Redis server, in the grammar of the module's mdm_redis and\n"
"              mdmctl --redis. Host names are refused (no DNS on the event\n"
"              loop). Default: 127.0.0.1:6379.\n"
"       --redis-username USER\n"
"              ACL user for AUTH (needs a password). Overrides username=.\n"
"       --redis-password PASSWORD\n"
"              AUTH password (prefer MDM_APNSD_REDIS_PASSWORD). Overrides\n"
"              password=. Default: none.\n"
"       --redis-db N\n"
"              Database number (0..9999). Overrides db=. Default: 0.\n"
"       --redis-timeout MS\n"
"              Bound of a connect and its setup (AUTH, SELECT, version\n"
"              check), done without blocking the loop. Default: 5s.\n"
"       --max-outcomes N\n"
"              Outcomes (results to write back) kept in memory while Redis\n"
"              refuses them (OOM, LOADING, ...), requests in flight\n"
"              included. At the bound no new push is started and nothing is\n"
"              claimed until Redis takes them: nothing is dropped.\n"
"              Default: 100000.\n"
"       --apns production | development | https://HOST[:PORT]\n"
"              production = api.push.apple.com, development =\n"
"              api.sandbox.push.apple.com, or any HTTP/2 TLS server (tests).\n"
"              MDM push certificates are production only. Default: production.\n"
"       --ca-file FILE\n"
"              CA bundle to verify the APNs server. Default: system store.\n"
"       --proxy URL\n"
"              HTTPS proxy (CONNECT) to reach APNs, e.g. http://proxy:3128.\n"
"              The *_proxy environment variables are not used. Default: none.\n"
"       --cert CERT[:KEY]\n"
"              Push certificate: a PEM file with certificate and key, a PEM\n"
"              certificate plus a PEM key file, or a PKCS#12 file (.p12/.pfx).\n"
"              Repeatable; in the environment a comma-separated list.\n"
"       --cert-dir DIR\n"
"              Every *.pem, *.p12 and *.pfx file in DIR is a push certificate\n"
"              (cert and key in one file). New files are picked up.\n"
"       --p12-password-file FILE\n"
"              Password of PKCS#12 files; FILE.p12.pass next to a PKCS#12\n"
"              file wins; MDM_APNSD_P12_PASSWORD also works. Default: empty.\n"
"       --connections N\n"
"              HTTP/2 connections per topic. Default: 2.\n"
"       --streams N\n"
"              Concurrent streams per connection (the server's\n"
"              SETTINGS_MAX_CONCURRENT_STREAMS is honoured too). Default: 100.\n"
"       --expiration SECONDS\n"
"              apns-expiration = now + SECONDS; 0 sends 0 (deliver once, do not\n"
"              store). Default: 7d.\n"
"       --priority 10 | 5 | 1\n"
"              apns-priority. Default: 10.\n"
"       --request-timeout MS\n"
"              Per request. Default: 30s.\n"
"       --connect-timeout MS\n"
"              TCP + TLS connect. Default: 10s.\n"
"       --idle-keep SECONDS\n"
"              Keep idle connections this long for reuse. Default: 1h.\n"
"       --retry-base MS, --retry-max MS\n"
"              Retry backoff: base * 2^(attempt-1), at most retry-max, +-20%\n"
"              jitter. Default: 1s, 5m.\n"
"       --give-up SECONDS\n"
"              Stop retrying an item that has failed for this long (result\n"
"              gave_up). Default: 7d.\n"
"       --breaker-threshold N\n"
"              Consecutive 5xx/transport failures that open a topic's circuit\n"
"              breaker. Default: 5.\n"
"       --breaker-pause MS, --breaker-max MS\n"
"              First pause of an open breaker, doubled on every failed probe up\n"
"              to breaker-max. Default: 1s, 2m.\n"
"       --batch N\n"
"              Ids claimed per Redis call (1..1000). Default: 200.\n"
"       --max-local N\n"
"              Ids held at once (claimed, not finished); 0 = connections *\n"
"              streams * topics + 2 * batch. Default: 0.\n"
"       --alive-ttl MS\n"
"              Heartbeat lifetime; refreshed every third of it. Another\n"
"              instance requeues our list once it expired. Default: 15s.\n"
"       --recover-interval MS\n"
"              How often to look for lists of dead instances. Default: 5s.\n"
"       --stats-interval MS\n"
"              Stats line in the log and gauges in mdm:push:stats. Default: 60s.\n"
"       --sweep-interval MS\n"
"              How often to run mdm_sweep, which expires queued commands past\n"
"              their expiry on devices that never poll again and releases\n"
"              their bodies (bounded calls, repeated while work is due).\n"
"              0: never (then run mdmctl gc from cron). Default: 60s.\n"
"       --cert-check MS\n"
"              How often certificate files are checked for changes. Default: 5s.\n"
"       --stopped-retry SECONDS\n"
"              Retry a topic stopped by a 403 after this long; 0 = only on\n"
"              file change or SIGHUP. Default: 1h.\n"
"       --shutdown-timeout MS\n"
"              On SIGTERM, how long in-flight requests may take. Default: 20s.\n"
"       --log FILE\n"
"              Log file, or stderr. Default: stderr.\n"
"       --log-level debug | info | notice | warn | error | crit\n"
"              Default: info.\n"
"       --check\n"
"              Load configuration and certificates, print the topics, connect\n"
"              to Redis, check the function library, exit.\n"
"       -h, --help\n"
"              This page.   -V, --version  Print the version.\n"
"\n"
"ENVIRONMENT\n"
"       MDM_APNSD_<OPTION>     any option, e.g. MDM_APNSD_REDIS=unix:/run/r.sock\n"
"       MDM_APNSD_P12_PASSWORD password of PKCS#12 files\n"
"\n"
"SIGNALS\n"
"       SIGTERM, SIGINT  stop claiming, finish requests in flight, put the\n"
"                        rest back at the head of mdm:push:q, exit 0\n"
"       SIGHUP           re-read every certificate, resume stopped topics\n"
"       SIGUSR1          write the stats line now\n"
"\n"
"REDIS\n"
"       Needs the function library mdm_push (redis-scripts/push.lua, load\n"
"       with: redis-cli -x FUNCTION LOAD REPLACE < push.lua). Keys:\n"
"       mdm:push:q, mdm:push:pending, mdm:push:proc:NAME, mdm:push:alive:NAME,\n"
"       mdm:push:stats, mdm:events, mdm:conf, mdm:{D}:enr:E (KEYS.md).\n"
"       Producers: SADD mdm:push:pending E, and if that returned 1,\n"
"       RPUSH mdm:push:q E (or FCALL mdm_push_enqueue 2 mdm:push:q\n"
"       mdm:push:pending E...).\n"
"\n"
"EXIT STATUS\n"
"       0 after a clean shutdown or a successful --check; 1 on a fatal error\n"
"       (including another instance taking over NAME); 2 on a usage error.\n"
"\n"
"EXAMPLES\n"
"       mdm-apnsd --redis unix:/run/redis/redis.sock \\\n"
"                 --cert /etc/mdm/push.pem --name \"$(hostname)-1\"\n"
"       redis-cli FCALL mdm_push_stats 3 mdm:push:q mdm:push:pending mdm:push:stats\n"
"\n"
"SEE ALSO\n"
"       apnsd/README.md, redis-scripts/KEYS.md, mdm-apnsd.service\n";

void usage(FILE *f)
{
    fputs(help_text, f);
}

static opt_t *find_opt(const char *name, size_t len)
{
    for (size_t i = 0; i < NOPTS; i++)
        if (strlen(opts[i].name) == len && strncmp(opts[i].name, name, len) == 0)
            return &opts[i];
    return NULL;
}

static int parse_int(const char *v, int64_t *out)
{
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno || end == v || *end) return -1;
    *out = n;
    return 0;
}

/* number with optional unit; bare numbers are in `unit` ms */
static int parse_dur(const char *v, int64_t unit, int64_t *out)
{
    char *end;
    errno = 0;
    double n = strtod(v, &end);
    if (errno || end == v || n < 0) return -1;
    while (*end == ' ') end++;
    int64_t mul;
    if (!*end) mul = unit;
    else if (!strcmp(end, "ms")) mul = 1;
    else if (!strcmp(end, "s")) mul = 1000;
    else if (!strcmp(end, "m") || !strcmp(end, "min")) mul = 60000;
    else if (!strcmp(end, "h")) mul = 3600000;
    else if (!strcmp(end, "d")) mul = 86400000;
    else return -1;
    double r = n * (double) mul;
    if (r > 9e15) return -1;
    *out = (int64_t) r;
    return 0;
}

static int set_opt(opt_t *o, const char *v, int src, const char *where)
{
    int64_t n = 0;
    switch (o->type) {
    case O_STR:
        free(*(char **) o->ptr);
        *(char **) o->ptr = xstrdup(v);
        return 0;
    case O_FLAG:
        *(int *) o->ptr = !(v && (!strcmp(v, "0") || !strcmp(v, "no")
                                  || !strcmp(v, "false")));
        return 0;
    case O_LIST: {
        strlist_t *l = o->ptr;
        if (o->src != src) { l->n = 0; o->src = src; }
        /* in the environment: comma-separated */
        const char *p = v;
        do {
            size_t len = src == SRC_ENV ? strcspn(p, ",") : strlen(p);
            if (len) {
                l->v = xrealloc(l->v, sizeof(char *) * (size_t) (l->n + 1));
                l->v[l->n++] = xstrndup(p, len);
            }
            p += len;
            if (*p == ',') p++;
        } while (*p);
        return 0;
    }
    case O_INT:
        if (parse_int(v, &n)) goto bad;
        break;
    case O_MS:
        if (parse_dur(v, 1, &n)) goto bad;
        break;
    case O_SEC:
        if (parse_dur(v, 1000, &n)) goto bad;
        break;
    }
    if (n < o->min || n > o->max) {
        fprintf(stderr, "mdm-apnsd: %s: %s: value %s out of range\n", where,
                o->name, v);
        return -1;
    }
    *(int64_t *) o->ptr = n;
    return 0;
bad:
    fprintf(stderr, "mdm-apnsd: %s: %s: bad value \"%s\"\n", where, o->name, v);
    return -1;
}

static char *trim(char *s)
{
    while (isspace((unsigned char) *s)) s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char) s[n - 1])) s[--n] = '\0';
    return s;
}

static int load_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "mdm-apnsd: config %s: %s\n", path, strerror(errno));
        return -1;
    }
    char line[4096];
    int lineno = 0, rc = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char *s = trim(line);
        if (!*s || *s == '#') continue;
        size_t klen = strcspn(s, " \t=");
        char *v = s + klen;
        while (*v == ' ' || *v == '\t') v++;
        if (*v == '=') v++;
        v = trim(v);
        /* strip matching quotes */
        size_t vl = strlen(v);
        if (vl >= 2 && (v[0] == '"' || v[0] == '\'') && v[vl - 1] == v[0]) {
            v[vl - 1] = '\0';
            v++;
        }
        char where[600];
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        opt_t *o = find_opt(s, klen);
        if (!o || o->type == O_FLAG || !strcmp(o->name, "config")) {
            fprintf(stderr, "mdm-apnsd: %s: unknown option \"%.*s\"\n", where,
                    (int) klen, s);
            rc = -1;
            continue;
        }
        if (set_opt(o, v, SRC_FILE, where)) rc = -1;
    }
    fclose(f);
    return rc;
}

static void env_name(const char *opt, char *buf, size_t len)
{
    size_t i = (size_t) snprintf(buf, len, "MDM_APNSD_");
    for (; *opt && i + 1 < len; opt++)
        buf[i++] = *opt == '-' ? '_' : (char) toupper((unsigned char) *opt);
    buf[i] = '\0';
}

static int finish(void)
{
    int bad = 0;
    if (!conf.name || !*conf.name) {
        char host[256];
        if (gethostname(host, sizeof host) != 0 || !*host) strcpy(host, "apnsd");
        host[sizeof host - 1] = '\0';
        conf.name = xstrdup(host);
    }
    for (const char *p = conf.name; *p; p++)
        if (!isgraph((unsigned char) *p)) {
            fprintf(stderr, "mdm-apnsd: name must not contain spaces or control characters\n");
            bad = 1;
            break;
        }
    if (!strcmp(conf.apns, "production"))
        conf.apns_url = xstrdup("https://api.push.apple.com");
    else if (!strcmp(conf.apns, "development") || !strcmp(conf.apns, "sandbox"))
        conf.apns_url = xstrdup("https://api.sandbox.push.apple.com");
    else if (!strncmp(conf.apns, "https://", 8) && conf.apns[8]) {
        conf.apns_url = xstrdup(conf.apns);
        size_t n = strlen(conf.apns_url);
        while (n > 8 && conf.apns_url[n - 1] == '/') conf.apns_url[--n] = '\0';
    } else {
        fprintf(stderr, "mdm-apnsd: apns: expected production, development or "
                "https://host[:port], got \"%s\"\n", conf.apns);
        bad = 1;
    }
    if (conf.priority != 10 && conf.priority != 5 && conf.priority != 1) {
        fprintf(stderr, "mdm-apnsd: priority: APNs accepts 10, 5 or 1\n");
        bad = 1;
    }
    {
        char err[256];
        if (mdm_redis_addr_spec(&conf.raddr, conf.redis, err, sizeof err) != 0) {
            fprintf(stderr, "mdm-apnsd: redis: %s\n", err);
            bad = 1;
        }
        if (conf.redis_username
            && strlen(conf.redis_username) >= sizeof conf.raddr.username) {
            fprintf(stderr, "mdm-apnsd: redis-username: too long\n");
            bad = 1;
        } else if (conf.redis_username) {
            strcpy(conf.raddr.username, conf.redis_username);
        }
        if (conf.redis_password
            && strlen(conf.redis_password) >= sizeof conf.raddr.password) {
            fprintf(stderr, "mdm-apnsd: redis-password: too long\n");
            bad = 1;
        } else if (conf.redis_password) {
            strcpy(conf.raddr.password, conf.redis_password);
        }
        if (conf.redis_db >= 0) conf.raddr.db = (int) conf.redis_db;
        if (conf.raddr.username[0] && !conf.raddr.password[0]) {
            fprintf(stderr, "mdm-apnsd: redis: a username needs a password\n");
            bad = 1;
        }
        /* log lines show the address, never the password */
        int n = mdm_redis_addr_format(&conf.raddr, conf.redis_show,
                                      sizeof conf.redis_show);
        if (conf.raddr.username[0])
            snprintf(conf.redis_show + n, sizeof conf.redis_show - (size_t) n,
                     " username=%s", conf.raddr.username);
    }
    if (conf.retry_max < conf.retry_base) conf.retry_max = conf.retry_base;
    if (conf.breaker_max < conf.breaker_pause) conf.breaker_max = conf.breaker_pause;
    conf.log_level = log_level_parse(conf.log_level_s);
    if (conf.log_level < 0) {
        fprintf(stderr, "mdm-apnsd: log-level: unknown level \"%s\"\n", conf.log_level_s);
        bad = 1;
    }
    if (!conf.certs.n && !conf.cert_dir) {
        fprintf(stderr, "mdm-apnsd: no push certificate: give --cert or --cert-dir\n");
        bad = 1;
    }
    return bad ? -1 : 0;
}

int conf_load(int argc, char **argv)
{
    char where[64];
    for (size_t i = 0; i < NOPTS; i++)
        if (opts[i].def && set_opt(&opts[i], opts[i].def, SRC_DEF, "default"))
            abort();

    /* pass 1: help, version, config file location */
    const char *cfile = getenv("MDM_APNSD_CONFIG");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); exit(0); }
        if (!strcmp(a, "-V") || !strcmp(a, "--version")) {
            printf("mdm-apnsd %s (%s)\n", APNSD_VERSION, apns_version());
            exit(0);
        }
        if ((!strcmp(a, "-c") || !strcmp(a, "--config")) && i + 1 < argc)
            cfile = argv[++i];
        else if (!strncmp(a, "--config=", 9))
            cfile = a + 9;
    }
    int rc = 0;
    if (cfile) {
        conf.config_file = xstrdup(cfile);
        if (load_file(cfile)) rc = -1;
    }

    for (size_t i = 0; i < NOPTS; i++) {
        char en[96];
        env_name(opts[i].name, en, sizeof en);
        const char *v = getenv(en);
        if (v && strcmp(opts[i].name, "config") != 0
            && set_opt(&opts[i], v, SRC_ENV, en))
            rc = -1;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        snprintf(where, sizeof where, "argument %d", i);
        if (!strcmp(a, "-c")) { i++; continue; }
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "mdm-apnsd: unexpected argument \"%s\" (see --help)\n", a);
            exit(2);
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t) (eq - name) : strlen(name);
        opt_t *o = find_opt(name, nlen);
        if (!o) {
            fprintf(stderr, "mdm-apnsd: unknown option \"%s\" (see --help)\n", a);
            exit(2);
        }
        const char *v;
        if (eq) v = eq + 1;
        else if (o->type == O_FLAG) v = "1";
        else if (i + 1 < argc) v = argv[++i];
        else {
            fprintf(stderr, "mdm-apnsd: option --%s needs a value\n", o->name);
            exit(2);
        }
        if (!strcmp(o->name, "config")) continue;
        if (set_opt(o, v, SRC_ARG, where)) exit(2);
    }
    if (rc) exit(2);
    if (finish()) exit(2);
    return 0;
}
