/*
 * Copyright (C) The MDM module authors
 *
 * mdm-webhookd options: the command line, the environment
 * (MDM_WEBHOOKD_<OPTION>) and the configuration file, in that order of
 * precedence; --help is the manual.
 */

#include "webhookd.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


static const char help_text[] =
"NAME\n"
"       mdm-webhookd - webhook deliverer of the nginx MDM module\n"
"\n"
"SYNOPSIS\n"
"       mdm-webhookd --url URL [--config FILE] [options]\n"
"       mdm-webhookd -h | --help | -V | --version\n"
"\n"
"DESCRIPTION\n"
"       Follows the device events of the Redis stream mdm:events (check-ins\n"
"       and command reports) with a consumer group, moves each one into its\n"
"       own bounded backlog (mdm:webhook:backlog, Redis Function\n"
"       mdm_webhook_take of redis-scripts/webhook.lua) so that the cap of\n"
"       mdm:events cannot drop it, and POSTs it as NanoMDM-style JSON\n"
"       (topic, event_id, created_at, checkin_event or acknowledge_event\n"
"       with raw_payload in base64) to URL. An event leaves the backlog\n"
"       only when the receiver answered 2xx, or to the dead-letter list\n"
"       mdm:webhook:dead once max-attempts or max-age is reached. Events of\n"
"       one enrollment are delivered in order, one at a time; different\n"
"       enrollments in parallel. Failures (connection refused, timeouts,\n"
"       non-2xx, replies that are not HTTP) are retried with exponential\n"
"       backoff and jitter.\n"
"\n"
"OPTIONS\n"
"       Every option may also be given as \"option value\" in the --config\n"
"       file or as MDM_WEBHOOKD_<OPTION> in the environment (upper case,\n"
"       '-' as '_'); the command line beats the environment, which beats\n"
"       the file. Durations take a unit: ms, s, m, h, d.\n"
"\n"
"       --config FILE\n"
"              Configuration file (webhookd/mdm-webhookd.conf.example).\n"
"\n"
"       --url URL\n"
"              The receiver (http:// or https://). Required.\n"
"\n"
"       --redis SPEC\n"
"              Redis with redis-scripts/webhook.lua loaded, in the address\n"
"              grammar of mdm_redis: unix:/abs/path or IP:port, then\n"
"              username=, password=, db= (default\n"
"              unix:/run/redis/redis.sock). Sentinel is not supported yet.\n"
"\n"
"       --redis-timeout DURATION\n"
"              Bounds each Redis call and connect (default 5s).\n"
"\n"
"       --group NAME\n"
"              Consumer group on mdm:events (default mdm-webhookd). One\n"
"              deliverer per group: a new one takes the group over\n"
"              (mdm:webhook:lock:GROUP) and the old one stops, exit 0.\n"
"\n"
"       --name NAME\n"
"              Consumer name within the group (default: the host name).\n"
"\n"
"       --from-start\n"
"              A group created now starts at the first entry mdm:events\n"
"              still holds (default: only events added from now on).\n"
"\n"
"       --hmac-secret-file FILE\n"
"              Sign each body: header X-Hmac-Signature, the base64 of\n"
"              HMAC-SHA256(secret, body); the secret is the file's content\n"
"              without a trailing newline. Or MDM_WEBHOOKD_HMAC_SECRET.\n"
"\n"
"       --ca-file FILE\n"
"              Trust anchors for an https:// receiver (default: the\n"
"              system's).\n"
"\n"
"       --timeout DURATION\n"
"              Whole request, connect included (default 10s).\n"
"\n"
"       --connect-timeout DURATION\n"
"              Connect (default 3s).\n"
"\n"
"       --parallel N\n"
"              Requests in flight, each for another enrollment (default 16).\n"
"\n"
"       --window N\n"
"              Backlog entries held in memory for scheduling (default\n"
"              10000). Entries past it wait in Redis.\n"
"\n"
"       --max-backlog N\n"
"              Bound of mdm:webhook:backlog (default 1000000). At the bound\n"
"              nothing more is taken from mdm:events, which then buffers up\n"
"              to its own cap (events_maxlen); what it trims unread is\n"
"              counted as a gap (mdm:webhook:stats gaps, one log line).\n"
"\n"
"       --max-attempts N\n"
"              Dead-letter an event after N failed attempts (default 50;\n"
"              0: no limit).\n"
"\n"
"       --max-age DURATION\n"
"              Dead-letter an event that failed and is older than this\n"
"              (default 24h; 0: no limit).\n"
"\n"
"       --retry-min DURATION, --retry-max DURATION\n"
"              Backoff after a failure: retry-min doubling per attempt up\n"
"              to retry-max, each drawn between half and all of it\n"
"              (defaults 1s, 5m).\n"
"\n"
"       --max-dead N\n"
"              Entries kept in mdm:webhook:dead, newest first (default\n"
"              10000).\n"
"\n"
"       --poll DURATION\n"
"              How often an idle deliverer asks for new events (default\n"
"              50ms).\n"
"\n"
"       --verbose\n"
"              One line per delivery attempt.\n"
"\n"
"SIGNALS\n"
"       SIGTERM, SIGINT: stop taking, let requests in flight finish (at\n"
"       most --timeout), record them, exit 0. What is not delivered stays\n"
"       in the backlog; the next start delivers it. After SIGKILL the\n"
"       events in flight are delivered again (the receiver may see them\n"
"       twice: event_id is stable).\n"
"\n"
"FILES\n"
"       /etc/mdm/webhookd.conf, mdm-webhookd.service; webhookd/README.md.\n";


void
usage(FILE *f)
{
    fputs(help_text, f);
}


int
parse_duration_ms(const char *s, long long *out)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || v < 0) {
        return -1;
    }
    if (!strcmp(end, "ms")) {
        *out = (long long) v;
    } else if (!strcmp(end, "s") || !*end) {
        *out = (long long) (v * 1000);
    } else if (!strcmp(end, "m")) {
        *out = (long long) (v * 60000);
    } else if (!strcmp(end, "h")) {
        *out = (long long) (v * 3600000);
    } else if (!strcmp(end, "d")) {
        *out = (long long) (v * 86400000);
    } else {
        return -1;
    }
    return 0;
}


static int
parse_int(const char *s, long long *out, long long min, long long max)
{
    char *end;

    errno = 0;
    *out = strtoll(s, &end, 10);
    if (errno || end == s || *end || *out < min || *out > max) {
        return -1;
    }
    return 0;
}


enum { O_STR, O_DUR, O_INT, O_FLAG };

typedef struct {
    const char  *name;
    int          kind;
    size_t       off;
    long long    min, max;
} opt_t;

#define OFF(f)  offsetof(conf_t, f)

static const opt_t opts[] = {
    { "url", O_STR, OFF(url), 0, 0 },
    { "redis", O_STR, OFF(redis), 0, 0 },
    { "redis-timeout", O_DUR, OFF(redis_timeout), 1, 3600000 },
    { "group", O_STR, OFF(group), 0, 0 },
    { "name", O_STR, OFF(name), 0, 0 },
    { "from-start", O_FLAG, OFF(from_start), 0, 0 },
    { "hmac-secret-file", O_STR, OFF(hmac_file), 0, 0 },
    { "hmac-secret", O_STR, OFF(hmac), 0, 0 },
    { "ca-file", O_STR, OFF(ca_file), 0, 0 },
    { "timeout", O_DUR, OFF(timeout), 1, 3600000 },
    { "connect-timeout", O_DUR, OFF(connect_timeout), 1, 3600000 },
    { "parallel", O_INT, OFF(parallel), 1, 1024 },
    { "window", O_INT, OFF(window), 1, 1000000 },
    { "max-backlog", O_INT, OFF(max_backlog), 1, 1000000000 },
    { "max-attempts", O_INT, OFF(max_attempts), 0, 1000000 },
    { "max-age", O_DUR, OFF(max_age), 0, 365LL * 86400000 },
    { "retry-min", O_DUR, OFF(retry_min), 1, 86400000 },
    { "retry-max", O_DUR, OFF(retry_max), 1, 86400000 },
    { "max-dead", O_INT, OFF(max_dead), 1, 100000000 },
    { "poll", O_DUR, OFF(poll), 1, 60000 },
    { "verbose", O_FLAG, OFF(verbose), 0, 0 },
    { NULL, 0, 0, 0, 0 }
};


static int
set_opt(conf_t *c, const char *name, const char *val, const char *where)
{
    const opt_t *o;
    long long v;

    for (o = opts; o->name; o++) {
        if (!strcmp(o->name, name)) {
            break;
        }
    }
    if (!o->name) {
        fprintf(stderr, "mdm-webhookd: %s: unknown option \"%s\" (see --help)\n",
                where, name);
        return -1;
    }
    switch (o->kind) {
    case O_FLAG:
        *(int *) ((char *) c + o->off) =
            !val || !strcmp(val, "1") || !strcmp(val, "yes")
            || !strcmp(val, "on") || !strcmp(val, "true");
        return 0;
    case O_STR:
        if (!val) {
            goto noval;
        }
        free(*(char **) ((char *) c + o->off));
        *(char **) ((char *) c + o->off) = strdup(val);
        return 0;
    case O_DUR:
        if (!val) {
            goto noval;
        }
        if (parse_duration_ms(val, &v) || v < o->min || v > o->max) {
            fprintf(stderr, "mdm-webhookd: %s: bad duration for %s: \"%s\"\n",
                    where, name, val);
            return -1;
        }
        *(long long *) ((char *) c + o->off) = v;
        return 0;
    default:
        if (!val) {
            goto noval;
        }
        if (parse_int(val, &v, o->min, o->max)) {
            fprintf(stderr, "mdm-webhookd: %s: bad number for %s: \"%s\" "
                    "(%lld..%lld)\n", where, name, val, o->min, o->max);
            return -1;
        }
        *(long long *) ((char *) c + o->off) = v;
        return 0;
    }
noval:
    fprintf(stderr, "mdm-webhookd: %s: %s needs a value\n", where, name);
    return -1;
}


static int
read_file(conf_t *c, const char *path)
{
    FILE *f = fopen(path, "r");
    char line[4096], where[4200];
    int n = 0;

    if (!f) {
        fprintf(stderr, "mdm-webhookd: %s: %s\n", path, strerror(errno));
        return -1;
    }
    while (fgets(line, sizeof(line), f)) {
        char *p = line, *name, *val, *e;

        n++;
        while (isspace((unsigned char) *p)) {
            p++;
        }
        if (!*p || *p == '#') {
            continue;
        }
        e = p + strlen(p);
        while (e > p && isspace((unsigned char) e[-1])) {
            *--e = '\0';
        }
        name = p;
        while (*p && !isspace((unsigned char) *p) && *p != '=') {
            p++;
        }
        if (*p) {
            *p++ = '\0';
        }
        while (isspace((unsigned char) *p) || *p == '=') {
            p++;
        }
        val = *p ? p : NULL;
        snprintf(where, sizeof(where), "%s:%d", path, n);
        if (set_opt(c, name, val, where)) {
            fclose(f);
            return -1;
        }
    }
    fclose(f);
    return 0;
}


int
conf_load(conf_t *c, int argc, char **argv)
{
    const char *file = NULL;
    const opt_t *o;
    char host[256];
    int i;

    memset(c, 0, sizeof(*c));
    c->redis = strdup("unix:/run/redis/redis.sock");
    c->redis_timeout = 5000;
    c->group = strdup("mdm-webhookd");
    c->timeout = 10000;
    c->connect_timeout = 3000;
    c->parallel = 16;
    c->window = 10000;
    c->max_backlog = 1000000;
    c->max_attempts = 50;
    c->max_age = 86400000;
    c->retry_min = 1000;
    c->retry_max = 300000;
    c->max_dead = 10000;
    c->poll = 50;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];

        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(a, "-V") || !strcmp(a, "--version")) {
            printf("mdm-webhookd %s\n", WEBHOOKD_VERSION);
            exit(0);
        }
        if (!strcmp(a, "--config") && i + 1 < argc) {
            file = argv[++i];
        } else if (!strncmp(a, "--config=", 9)) {
            file = a + 9;
        }
    }
    if (file && read_file(c, file)) {
        return -1;
    }
    for (o = opts; o->name; o++) {
        char env[64], *p, *v;

        snprintf(env, sizeof(env), "MDM_WEBHOOKD_%s", o->name);
        for (p = env; *p; p++) {
            *p = *p == '-' ? '_' : (char) toupper((unsigned char) *p);
        }
        v = getenv(env);
        if (v && set_opt(c, o->name, v, env)) {
            return -1;
        }
    }
    for (i = 1; i < argc; i++) {
        char *a = argv[i], *eq, name[64];
        const char *val = NULL;

        if (!strcmp(a, "--config")) {
            i++;
            continue;
        }
        if (!strncmp(a, "--config=", 9)) {
            continue;
        }
        if (strncmp(a, "--", 2)) {
            fprintf(stderr, "mdm-webhookd: unexpected argument \"%s\" "
                    "(see --help)\n", a);
            return -1;
        }
        a += 2;
        eq = strchr(a, '=');
        if (eq) {
            snprintf(name, sizeof(name), "%.*s", (int) (eq - a), a);
            val = eq + 1;
        } else {
            snprintf(name, sizeof(name), "%s", a);
            for (o = opts; o->name; o++) {
                if (!strcmp(o->name, name)) {
                    break;
                }
            }
            if (o->name && o->kind != O_FLAG) {
                if (i + 1 >= argc) {
                    fprintf(stderr, "mdm-webhookd: --%s needs a value\n", name);
                    return -1;
                }
                val = argv[++i];
            }
        }
        if (set_opt(c, name, val, "command line")) {
            return -1;
        }
    }

    if (!c->url || strncmp(c->url, "http", 4)) {
        fprintf(stderr, "mdm-webhookd: --url http://... or https://... is "
                "required (see --help)\n");
        return -1;
    }
    if (!c->name) {
        if (gethostname(host, sizeof(host)) != 0) {
            snprintf(host, sizeof(host), "webhookd");
        }
        host[sizeof(host) - 1] = '\0';
        c->name = strdup(host);
    }
    if (c->retry_max < c->retry_min) {
        c->retry_max = c->retry_min;
    }
    if (c->hmac_file && !c->hmac) {
        FILE *f = fopen(c->hmac_file, "r");
        char buf[4096];
        size_t n;

        if (!f) {
            fprintf(stderr, "mdm-webhookd: %s: %s\n", c->hmac_file,
                    strerror(errno));
            return -1;
        }
        n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) {
            n--;
        }
        if (!n) {
            fprintf(stderr, "mdm-webhookd: %s: empty secret\n", c->hmac_file);
            return -1;
        }
        buf[n] = '\0';
        c->hmac = strdup(buf);
    }
    return 0;
}
