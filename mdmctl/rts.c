/*
 * mdmctl rts (set, show, clear): the ReturnToService answers a device gets
 * (redis-scripts/mdm.lua, mdm_rts_*), per device or the default.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "mdmctl.h"


static const struct option  mdm_rts_opts[] = {
    { "redis", required_argument, NULL, 'R' },
    { "user", required_argument, NULL, 'U' },
    { "password", required_argument, NULL, 'P' },
    { "db", required_argument, NULL, 'D' },
    { "json", no_argument, NULL, 'j' },
    { "disable", no_argument, NULL, 'x' },
    { "wifi", required_argument, NULL, 'W' },
    { "mdm", required_argument, NULL, 'M' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 }
};

#define MDM_RTS_REDIS_HELP                                                  \
    "Redis: --redis SPEC, --user, --password, --db as for the other admin\n" \
    "commands (mdmctl queue --help); --json: JSON output.\n"


typedef struct {
    const char  *target;        /* device id or "default" */
    int          disable;
    const char  *wifi;
    const char  *mdm;
} mdm_rts_args_t;


static int mdm_rts_set(int argc, char **argv);
static int mdm_rts_show(int argc, char **argv);
static int mdm_rts_clear(int argc, char **argv);


static const mdm_cmd_t  mdm_rts_cmds[] = {
    { "set", mdm_rts_set,
      "DEVICE|default [--disable] [--wifi FILE] [--mdm FILE]" },
    { "show", mdm_rts_show, "DEVICE|default: what the device is answered" },
    { "clear", mdm_rts_clear, "DEVICE|default: delete the setting" },
    { NULL, NULL, NULL }
};


int
mdm_rts_main(int argc, char **argv)
{
    return mdm_dispatch(mdm_rts_cmds, "rts", argc, argv);
}


/*
 * The target and the options, in either order (the usage puts the target
 * first; getopt stops at the first operand). Returns 0, or -(exit code).
 */
static int
mdm_rts_getopt(int argc, char **argv, const char *usage, int set,
    mdm_rts_args_t *a)
{
    int  ch, o;

    memset(a, 0, sizeof(mdm_rts_args_t));

    for ( ;; ) {
        while ((ch = mdm_getopt(argc, argv, mdm_rts_opts)) != -1) {
            o = mdm_admin_option(ch);
            if (o < 0) {
                return -MDM_USAGE;
            }
            if (o) {
                continue;
            }

            if (set && ch == 'x') {
                a->disable = 1;

            } else if (set && ch == 'W') {
                a->wifi = optarg;

            } else if (set && ch == 'M') {
                a->mdm = optarg;

            } else if (ch == 'h') {
                printf("usage: mdmctl %s %s%s", mdm_cmd_path, usage,
                       MDM_RTS_REDIS_HELP);
                return -1000;

            } else {
                for (o = 0; ch != '?' && mdm_rts_opts[o].name; o++) {
                    if (mdm_rts_opts[o].val == ch) {
                        mdm_err("--%s is an option of rts set only",
                                mdm_rts_opts[o].name);
                        break;
                    }
                }
                return -MDM_USAGE;
            }
        }

        if (optind >= argc || a->target != NULL) {
            break;
        }

        /* getopt skips argv[0]: the target becomes it */
        a->target = argv[optind];
        argc -= optind;
        argv += optind;
    }

    if (a->target == NULL || optind < argc) {
        mdm_err("give one device id or \"default\"");
        return -MDM_USAGE;
    }

    return 0;
}


#define MDM_RTS_OPTS(usage, set, a)                                         \
    do {                                                                    \
        int  n_;                                                            \
        n_ = mdm_rts_getopt(argc, argv, usage, set, a);                     \
        if (n_ == -1000) {                                                  \
            return MDM_OK;                                                  \
        }                                                                   \
        if (n_ < 0) {                                                       \
            return -n_;                                                     \
        }                                                                   \
    } while (0)


/* The PayloadType of a dict, or "". */
static const char *
mdm_rts_ptype(plist_t dict)
{
    plist_t  v;

    v = plist_dict_get_item(dict, "PayloadType");
    if (v == NULL || plist_get_node_type(v) != PLIST_STRING) {
        return "";
    }
    return plist_get_string_ptr(v, NULL);
}


/*
 * The bytes of a profile file, checked for what the device does with them:
 * a configuration profile (plist, or CMS signed: its signature checked, its
 * chain not) holding a payload of type need (exactly one for com.apple.mdm,
 * at least one otherwise). The size cap is mdm_rts_set's.
 */
static int
mdm_rts_read(const char *path, const char *need, unsigned char **data,
    size_t *len)
{
    int        sig, n;
    plist_t    pl, content;
    uint32_t   i;

    if (mdm_read_file(path, data, len) != 0) {
        return -1;
    }

    if (*len == 0) {
        mdm_err("%s: empty file", path);
        goto failed;
    }

    pl = mdm_profile_parse(path, *data, *len, NULL, &sig, 1);
    if (pl == NULL) {
        goto failed;
    }

    n = 0;
    content = plist_dict_get_item(pl, "PayloadContent");

    if (plist_get_node_type(pl) != PLIST_DICT
        || strcmp(mdm_rts_ptype(pl), "Configuration") != 0
        || content == NULL || plist_get_node_type(content) != PLIST_ARRAY)
    {
        mdm_err("%s: not a configuration profile (PayloadType "
                "Configuration, a PayloadContent array)", path);
        plist_free(pl);
        goto failed;
    }

    for (i = 0; i < plist_array_get_size(content); i++) {
        if (strcmp(mdm_rts_ptype(plist_array_get_item(content, i)), need)
            == 0)
        {
            n++;
        }
    }

    plist_free(pl);

    if (n == 0 || (n > 1 && strcmp(need, "com.apple.mdm") == 0)) {
        mdm_err("%s: the profile must hold %s %s payload, not %d", path,
                strcmp(need, "com.apple.mdm") == 0 ? "exactly one"
                                                   : "at least one",
                need, n);
        goto failed;
    }

    return 0;

failed:

    free(*data);
    *data = NULL;
    return -1;
}


static redisReply *
mdm_rts_call(int ro, const char *fn, int n, const char **args,
    const size_t *lens)
{
    redisReply    *r;
    redisContext  *c;

    c = mdm_admin_connect();
    if (c == NULL) {
        return NULL;
    }

    r = mdm_admin_fcall(c, ro, fn, n, args, lens);
    redisFree(c);

    if (r && r->type == REDIS_REPLY_ERROR) {
        mdm_err("%s", r->str);
        freeReplyObject(r);
        return NULL;
    }

    return r;
}


static int
mdm_rts_set(int argc, char **argv)
{
    int              rc;
    size_t           lens[4];
    redisReply      *r, **e;
    const char      *args[4];
    unsigned char   *wifi, *mdm;
    mdm_rts_args_t   a;

    MDM_RTS_OPTS("DEVICE|default [--disable] [--wifi FILE] [--mdm FILE]\n"
                 "Sets what the device (or every device without a setting "
                 "of its\nown: default) is answered when it asks "
                 "ReturnToService: Enabled\n(false with --disable), the "
                 "Wi-Fi profile and the MDM profile\ninstalled after the "
                 "erase (plist or CMS signed, at most 1 MiB).\nThe whole "
                 "setting is replaced: a profile left out is removed.\n",
                 1, &a);

    wifi = NULL;
    mdm = NULL;
    lens[2] = 0;
    lens[3] = 0;
    rc = MDM_ERROR;

    if ((a.wifi && mdm_rts_read(a.wifi, "com.apple.wifi.managed", &wifi,
                                &lens[2]) != 0)
        || (a.mdm && mdm_rts_read(a.mdm, "com.apple.mdm", &mdm, &lens[3])
                     != 0))
    {
        goto done;
    }

    args[0] = a.target;
    lens[0] = strlen(a.target);
    args[1] = a.disable ? "0" : "1";
    lens[1] = 1;
    args[2] = wifi ? (char *) wifi : "";
    args[3] = mdm ? (char *) mdm : "";

    r = mdm_rts_call(0, "mdm_rts_set", 4, args, lens);
    if (r == NULL) {
        goto done;
    }

    if (r->type != REDIS_REPLY_ARRAY || r->elements < 6) {
        mdm_err("unexpected reply from mdm_rts_set");
        freeReplyObject(r);
        goto done;
    }

    e = r->element;

    if (mdm_admin_json()) {
        rc = mdm_admin_json_out(json_pack("{s:s,s:s,s:b,s:I,s:I,s:I}",
            "id", a.target, "source", e[1]->str,
            "enabled", e[2]->str[0] == '1',
            "wifi_bytes", (json_int_t) e[3]->integer,
            "mdm_bytes", (json_int_t) e[4]->integer,
            "updated_ms", (json_int_t) strtoll(e[5]->str, NULL, 10)));

    } else {
        printf("%s: ReturnToService %s", a.target,
               e[2]->str[0] == '1' ? "enabled" : "disabled");
        if (e[3]->integer) {
            printf(", Wi-Fi profile %lld bytes", e[3]->integer);
        }
        if (e[4]->integer) {
            printf(", MDM profile %lld bytes", e[4]->integer);
        }
        printf("\n");
        rc = MDM_OK;
    }

    freeReplyObject(r);

done:

    free(wifi);
    free(mdm);
    return rc;
}


/* "<bytes> bytes, sha256 <hex>" of a profile, or NULL for none. */
static json_t *
mdm_rts_profile(redisReply *e, char *text, size_t size)
{
    unsigned int   i, n;
    unsigned char  md[EVP_MAX_MD_SIZE];
    char           hex[2 * EVP_MAX_MD_SIZE + 1];

    if (e->type != REDIS_REPLY_STRING || e->len == 0) {
        snprintf(text, size, "none");
        return json_null();
    }

    EVP_Digest(e->str, e->len, md, &n, EVP_sha256(), NULL);
    for (i = 0; i < n; i++) {
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    }

    snprintf(text, size, "%zu bytes, sha256 %s", e->len, hex);
    return json_pack("{s:I,s:s}", "bytes", (json_int_t) e->len,
                     "sha256", hex);
}


static int
mdm_rts_show(int argc, char **argv)
{
    int              rc;
    char             wifi[200], mdm[200], when[32];
    time_t           t;
    json_t          *jw, *jm;
    struct tm        tm;
    long long        ms;
    redisReply      *r, **e;
    const char      *src, *args[1];
    mdm_rts_args_t   a;

    MDM_RTS_OPTS("DEVICE|default\n"
                 "Shows what the device is answered when it asks "
                 "ReturnToService,\nand which setting says so (its own, "
                 "the default, none).\n", 0, &a);

    args[0] = a.target;
    r = mdm_rts_call(1, "mdm_rts_get", 1, args, NULL);
    if (r == NULL) {
        return MDM_ERROR;
    }

    if (r->type != REDIS_REPLY_ARRAY || r->elements < 7) {
        mdm_err("unexpected reply from mdm_rts_get");
        freeReplyObject(r);
        return MDM_ERROR;
    }

    e = r->element;
    src = e[1]->str;
    ms = strtoll(e[5]->str, NULL, 10);
    jw = mdm_rts_profile(e[3], wifi, sizeof(wifi));
    jm = mdm_rts_profile(e[4], mdm, sizeof(mdm));

    if (mdm_admin_json()) {
        rc = mdm_admin_json_out(json_pack("{s:s,s:s,s:b,s:o,s:o,s:b,s:o}",
            "id", a.target, "source", src, "enabled", e[2]->str[0] == '1',
            "wifi", jw, "mdm", jm, "bootstrap_token", e[6]->str[0] == '1',
            "updated_ms", ms ? json_integer(ms) : json_null()));
        freeReplyObject(r);
        return rc;
    }

    json_decref(jw);
    json_decref(jm);

    when[0] = '\0';
    if (ms) {
        t = (time_t) (ms / 1000);
        gmtime_r(&t, &tm);
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    }

    printf("id              %s\n", a.target);
    printf("setting         %s\n",
           strcmp(src, "device") == 0 ? "its own"
           : strcmp(src, "default") == 0
             ? (strcmp(a.target, "default") == 0 ? "the default"
                : "the default (none of its own)")
           : "none: Enabled false");
    printf("enabled         %s\n", e[2]->str[0] == '1' ? "yes" : "no");
    printf("wifi profile    %s\n", wifi);
    printf("mdm profile     %s\n", mdm);
    if (strcmp(a.target, "default") != 0) {
        printf("bootstrap token %s\n", e[6]->str[0] == '1'
               ? "escrowed: sent with an enabled answer" : "none");
    }
    if (ms) {
        printf("updated         %s\n", when);
    }

    freeReplyObject(r);
    return MDM_OK;
}


static int
mdm_rts_clear(int argc, char **argv)
{
    int              rc;
    redisReply      *r;
    const char      *args[1];
    mdm_rts_args_t   a;

    MDM_RTS_OPTS("DEVICE|default\n"
                 "Deletes the setting: the device is then answered by the "
                 "default\n(the default: Enabled false).\n", 0, &a);

    args[0] = a.target;
    r = mdm_rts_call(0, "mdm_rts_clear", 1, args, NULL);
    if (r == NULL) {
        return MDM_ERROR;
    }

    if (r->type != REDIS_REPLY_INTEGER) {
        mdm_err("unexpected reply from mdm_rts_clear");
        freeReplyObject(r);
        return MDM_ERROR;
    }

    if (mdm_admin_json()) {
        rc = mdm_admin_json_out(json_pack("{s:s,s:b}", "id", a.target,
                                          "cleared", r->integer == 1));

    } else {
        printf("%s: %s\n", a.target, r->integer == 1 ? "setting cleared"
                                                     : "no setting");
        rc = MDM_OK;
    }

    freeReplyObject(r);
    return rc;
}
