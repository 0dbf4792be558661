/*
 * mdmctl scep (challenge, issued, revoke) and mdmctl renew: the operator's
 * side of the SCEP server in nginx (redis-scripts/mdm.lua, "SCEP").
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>
#include <openssl/rand.h>

#include "mdmctl.h"


#define MDM_TAG        "@MDM_CHALLENGE@"
#define MDM_TAG_LEN    (sizeof(MDM_TAG) - 1)


static const struct option  mdm_scep_opts[] = {
    { "redis", required_argument, NULL, 'R' },
    { "user", required_argument, NULL, 'U' },
    { "password", required_argument, NULL, 'P' },
    { "db", required_argument, NULL, 'D' },
    { "json", no_argument, NULL, 'j' },
    { "ttl", required_argument, NULL, 't' },
    { "count", required_argument, NULL, 'n' },
    { "offset", required_argument, NULL, 'o' },
    { "profile", required_argument, NULL, 'p' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 }
};

#define MDM_SCEP_REDIS_HELP                                                 \
    "Redis: --redis SPEC, --user, --password, --db as for the other admin\n" \
    "commands (mdmctl queue --help).\n"


typedef struct {
    long         ttl;
    long         count;
    long         offset;
    const char  *profile;
} mdm_scep_args_t;


static int mdm_scep_challenge(int argc, char **argv);
static int mdm_scep_issued(int argc, char **argv);
static int mdm_scep_revoke(int argc, char **argv);


static const mdm_cmd_t  mdm_scep_cmds[] = {
    { "challenge", mdm_scep_challenge,
      "mint single-use challenges: [--ttl S] [--count N]" },
    { "issued", mdm_scep_issued, "list the certificates issued" },
    { "revoke", mdm_scep_revoke,
      "refuse a certificate on every device endpoint: SERIAL|SHA256" },
    { NULL, NULL, NULL }
};


int
mdm_scep_main(int argc, char **argv)
{
    return mdm_dispatch(mdm_scep_cmds, "scep", argc, argv);
}


/* Options; returns how many argv entries were used, or -(exit code). */
static int
mdm_scep_getopt(int argc, char **argv, const char *usage, mdm_scep_args_t *a)
{
    int  ch, o;

    a->ttl = 3600;
    a->count = 1;
    a->offset = 0;
    a->profile = NULL;
    optind = 1;

    while ((ch = mdm_getopt(argc, argv, mdm_scep_opts)) != -1) {
        o = mdm_admin_option(ch);
        if (o < 0) {
            return -MDM_USAGE;
        }
        if (o) {
            continue;
        }

        switch (ch) {
        case 't':
            if (mdm_parse_int(optarg, 10, 2592000, &a->ttl) != 0) {
                mdm_err("--ttl must be 10 to 2592000 seconds");
                return -MDM_USAGE;
            }
            break;
        case 'n':
            if (mdm_parse_int(optarg, 1, 1000, &a->count) != 0) {
                mdm_err("--count must be 1 to 1000");
                return -MDM_USAGE;
            }
            break;
        case 'o':
            if (mdm_parse_int(optarg, 0, 1000000000, &a->offset) != 0) {
                mdm_err("--offset must be a number");
                return -MDM_USAGE;
            }
            break;
        case 'p':
            a->profile = optarg;
            break;
        case 'h':
            printf("usage: mdmctl %s %s\n%s", mdm_cmd_path, usage,
                   MDM_SCEP_REDIS_HELP);
            return -1000;
        default:
            return -MDM_USAGE;
        }
    }

    return optind;
}


#define MDM_SCEP_OPTS(usage, a)                                             \
    do {                                                                    \
        int  n_;                                                            \
        n_ = mdm_scep_getopt(argc, argv, usage, a);                         \
        if (n_ == -1000) {                                                  \
            return MDM_OK;                                                  \
        }                                                                   \
        if (n_ < 0) {                                                       \
            return -n_;                                                     \
        }                                                                   \
        argc -= n_;                                                         \
        argv += n_;                                                         \
    } while (0)


/* 128 random bits as 32 hex digits: printable for every SCEP client. */
static int
mdm_scep_new_challenge(char out[33])
{
    int             i;
    unsigned char   rnd[16];

    if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
        mdm_err_ssl("no random bytes");
        return -1;
    }

    for (i = 0; i < 16; i++) {
        snprintf(out + 2 * i, 3, "%02x", rnd[i]);
    }

    return 0;
}


/* FCALL mdm_scep_mint for n fresh challenges; 0 when Redis took them. */
static int
mdm_scep_mint(redisContext *c, long ttl, const char *device, long n,
    char (*ch)[33])
{
    int          rc;
    long         i;
    char         sttl[24];
    redisReply  *r;
    const char **args;

    args = calloc(n + 2, sizeof(char *));
    if (args == NULL) {
        mdm_err("out of memory");
        return -1;
    }

    snprintf(sttl, sizeof(sttl), "%ld", ttl);
    args[0] = sttl;
    args[1] = device;

    for (i = 0; i < n; i++) {
        if (mdm_scep_new_challenge(ch[i]) != 0) {
            free(args);
            return -1;
        }
        args[i + 2] = ch[i];
    }

    r = mdm_admin_fcall(c, 0, "mdm_scep_mint", (int) n + 2, args, NULL);
    free(args);

    rc = -1;
    if (r && r->type == REDIS_REPLY_INTEGER && r->integer == n) {
        rc = 0;
    } else if (r && r->type == REDIS_REPLY_ERROR) {
        mdm_err("%s", r->str);
    } else if (r) {
        mdm_err("unexpected reply from mdm_scep_mint");
    }

    freeReplyObject(r);
    return rc;
}


static int
mdm_scep_challenge(int argc, char **argv)
{
    int               rc;
    long              i;
    char            (*ch)[33];
    redisContext     *c;
    mdm_scep_args_t   a;

    MDM_SCEP_OPTS("[--ttl SECONDS] [--count N]\n"
                  "Mints single-use SCEP challenges (default: one, valid an "
                  "hour)\nand prints them, one a line.\n", &a);

    if (argc != 0) {
        mdm_err("no arguments besides the options");
        return MDM_USAGE;
    }

    ch = calloc(a.count, sizeof(*ch));
    if (ch == NULL) {
        mdm_err("out of memory");
        return MDM_ERROR;
    }

    c = mdm_admin_connect();
    if (c == NULL) {
        free(ch);
        return MDM_ERROR;
    }

    rc = mdm_scep_mint(c, a.ttl, "", a.count, ch);
    redisFree(c);

    if (rc == 0) {
        for (i = 0; i < a.count; i++) {
            printf("%s\n", ch[i]);
        }
    }

    free(ch);
    return rc == 0 ? MDM_OK : MDM_ERROR;
}


static const char *
mdm_scep_str(redisReply *r)
{
    return (r && r->type == REDIS_REPLY_STRING) ? r->str : "";
}


static int
mdm_scep_issued(int argc, char **argv)
{
    size_t            i;
    char              off[24], cnt[24], when[32];
    time_t            t;
    struct tm         tm;
    redisReply       *r, **e;
    const char       *args[2];
    redisContext     *c;
    mdm_scep_args_t   a;

    MDM_SCEP_OPTS("[--offset N] [--count N]\n"
                  "Lists issued certificates, latest notAfter first "
                  "(default 100):\nSHA-256, serial, notAfter, device, "
                  "revoked, subject.\n", &a);

    if (a.count == 1) {
        a.count = 100;
    }

    snprintf(off, sizeof(off), "%ld", a.offset);
    snprintf(cnt, sizeof(cnt), "%ld", a.count);
    args[0] = off;
    args[1] = cnt;

    c = mdm_admin_connect();
    if (c == NULL) {
        return MDM_ERROR;
    }

    r = mdm_admin_fcall(c, 1, "mdm_scep_issued", 2, args, NULL);
    redisFree(c);

    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        if (r && r->type == REDIS_REPLY_ERROR) {
            mdm_err("%s", r->str);
        }
        freeReplyObject(r);
        return MDM_ERROR;
    }

    for (i = 0; i < r->elements; i++) {
        e = r->element[i]->element;
        if (r->element[i]->type != REDIS_REPLY_ARRAY
            || r->element[i]->elements < 7)
        {
            continue;
        }

        t = (time_t) (strtoll(mdm_scep_str(e[4]), NULL, 10) / 1000);
        gmtime_r(&t, &tm);
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);

        if (mdm_admin_json()) {
            printf("{\"sha256\":\"%s\",\"serial\":\"%s\",\"not_after\":"
                   "\"%s\",\"device\":\"%s\",\"revoked\":%s}\n",
                   mdm_scep_str(e[0]), mdm_scep_str(e[1]), when,
                   mdm_scep_str(e[3]), e[6]->integer ? "true" : "false");
            continue;
        }

        printf("%s %s %s %s %s %s\n", mdm_scep_str(e[0]), mdm_scep_str(e[1]),
               when, mdm_scep_str(e[3])[0] ? mdm_scep_str(e[3]) : "-",
               e[6]->integer ? "revoked" : "valid", mdm_scep_str(e[2]));
    }

    freeReplyObject(r);
    return MDM_OK;
}


static int
mdm_scep_revoke(int argc, char **argv)
{
    int               rc;
    redisReply       *r;
    const char       *args[1];
    redisContext     *c;
    mdm_scep_args_t   a;

    MDM_SCEP_OPTS("SERIAL|SHA256\n"
                  "Revokes a certificate: every device endpoint refuses it "
                  "from now on.\n", &a);

    if (argc != 1) {
        mdm_err("give one serial (hex) or SHA-256 (64 hex digits)");
        return MDM_USAGE;
    }

    args[0] = argv[0];

    c = mdm_admin_connect();
    if (c == NULL) {
        return MDM_ERROR;
    }

    r = mdm_admin_fcall(c, 0, "mdm_scep_revoke", 1, args, NULL);
    redisFree(c);

    rc = MDM_ERROR;
    if (r && r->type == REDIS_REPLY_STRING) {
        printf("revoked %s\n", r->str);
        rc = MDM_OK;
    } else if (r && r->type == REDIS_REPLY_ERROR) {
        mdm_err("%s", r->str);
    }

    freeReplyObject(r);
    return rc;
}


/* The template with every MDM_TAG replaced by ch; malloc()ed. */
static char *
mdm_scep_fill(const unsigned char *tpl, size_t len, const char *ch,
    size_t *outlen)
{
    char        *out, *q;
    size_t       n, i;

    n = 0;
    for (i = 0; i + MDM_TAG_LEN <= len; i++) {
        if (memcmp(tpl + i, MDM_TAG, MDM_TAG_LEN) == 0) {
            n++;
        }
    }

    if (n == 0) {
        mdm_err("the profile has no " MDM_TAG " (make it with mdmctl profile "
                "create --scep-url URL --scep-challenge " MDM_TAG ")");
        return NULL;
    }

    out = malloc(len + n * 32 + 1);
    if (out == NULL) {
        mdm_err("out of memory");
        return NULL;
    }

    q = out;
    for (i = 0; i < len; /* void */) {
        if (i + MDM_TAG_LEN <= len
            && memcmp(tpl + i, MDM_TAG, MDM_TAG_LEN) == 0)
        {
            memcpy(q, ch, 32);
            q += 32;
            i += MDM_TAG_LEN;
            continue;
        }
        *q++ = tpl[i++];
    }

    *outlen = q - out;
    return out;
}


/*
 * mdmctl renew: for each device, a renewal challenge minted for it and an
 * InstallProfile of the enrollment profile (same PayloadIdentifiers, so it
 * replaces the installed one) carrying it. The device enrolls by SCEP with
 * that challenge; its first request with the new certificate moves the
 * binding (mdm.lua scep_renewal_move).
 */
int
mdm_renew_main(int argc, char **argv)
{
    int               rc, i;
    char              ch[1][33], *prof, *xml, uuid[37];
    size_t            tlen, plen;
    uint32_t          xlen;
    redisReply       *r;
    const char       *args[5];
    redisContext     *c;
    unsigned char    *tpl;
    mdm_command_t     cmd;
    mdm_scep_args_t   a;

    MDM_SCEP_OPTS("--profile TEMPLATE [--ttl SECONDS] ID...\n"
                  "Queues for each device an InstallProfile of TEMPLATE (the "
                  "file mdm_enroll\nserves) with a renewal challenge minted "
                  "for that device (default ttl:\n7 days).\n", &a);

    if (a.profile == NULL || argc < 1) {
        mdm_err("give --profile TEMPLATE and one or more device ids");
        return MDM_USAGE;
    }

    if (a.ttl == 3600) {
        a.ttl = 7 * 86400;
    }

    if (mdm_read_file(a.profile, &tpl, &tlen) != 0) {
        return MDM_ERROR;
    }

    c = mdm_admin_connect();
    if (c == NULL) {
        free(tpl);
        return MDM_ERROR;
    }

    rc = MDM_OK;

    for (i = 0; i < argc; i++) {
        if (mdm_scep_mint(c, a.ttl, argv[i], 1, ch) != 0) {
            rc = MDM_ERROR;
            continue;
        }

        prof = mdm_scep_fill(tpl, tlen, ch[0], &plen);
        if (prof == NULL) {
            rc = MDM_ERROR;
            break;
        }

        mdm_uuid(uuid);
        xml = NULL;

        if (mdm_command_build(&cmd, "InstallProfile", 0, NULL, NULL, uuid)
            != 0
            || mdm_command_set_data(&cmd, "Payload", prof, plen) != 0
            || mdm_command_xml(&cmd, &xml, &xlen) != 0)
        {
            mdm_command_free(&cmd);
            free(prof);
            rc = MDM_ERROR;
            break;
        }

        args[0] = xml;
        args[1] = "5";
        args[2] = "0";
        args[3] = "0";
        args[4] = argv[i];

        r = mdm_admin_fcall(c, 0, "mdm_enqueue", 5, args, NULL);

        if (r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1) {
            printf("%s: InstallProfile %s queued (renewal challenge valid "
                   "%lds)\n", argv[i], uuid, a.ttl);
        } else {
            mdm_err("%s: %s", argv[i], r && r->type == REDIS_REPLY_ERROR
                                       ? r->str : "enqueue failed");
            rc = MDM_ERROR;
        }

        freeReplyObject(r);
        free(xml);
        free(prof);
        mdm_command_free(&cmd);
    }

    redisFree(c);
    free(tpl);

    return rc;
}
