/*
 * mdmctl ddm: declarations, sets, assignments, DDM status and sync over
 * the mdm_ddm_* Redis Functions (redis-scripts/mdm.lua). Every Function
 * answers one JSON text: --json prints it as it came, the tables read it
 * with jansson. A change's fan-out to the enrollments of its sets is
 * bounded per call, so it is continued here (mdm_ddm_fanout) until done.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "mdmctl.h"


static int  mdm_ddm_dry_run;
static int  mdm_ddm_verbose;


static int mdm_ddm_put(int argc, char **argv);
static int mdm_ddm_get(int argc, char **argv);
static int mdm_ddm_list(int argc, char **argv);
static int mdm_ddm_delete(int argc, char **argv);
static int mdm_ddm_touch(int argc, char **argv);
static int mdm_ddm_set_add(int argc, char **argv);
static int mdm_ddm_set_remove(int argc, char **argv);
static int mdm_ddm_sets(int argc, char **argv);
static int mdm_ddm_assign(int argc, char **argv);
static int mdm_ddm_unassign(int argc, char **argv);
static int mdm_ddm_show(int argc, char **argv);
static int mdm_ddm_status(int argc, char **argv);
static int mdm_ddm_sync(int argc, char **argv);


static const mdm_cmd_t  mdm_ddm_cmds[] = {
    { "put", mdm_ddm_put,
      "store declarations from FILE or - (checked; --dry-run)" },
    { "get", mdm_ddm_get, "print a declaration as devices get it" },
    { "list", mdm_ddm_list, "list declarations: type, token, sets" },
    { "delete", mdm_ddm_delete, "delete declarations no set holds" },
    { "touch", mdm_ddm_touch,
      "new ServerTokens for the same content (re-apply)" },
    { "set-add", mdm_ddm_set_add, "add declarations to a set" },
    { "set-remove", mdm_ddm_set_remove, "take declarations out of a set" },
    { "sets", mdm_ddm_sets, "list sets with their members" },
    { "assign", mdm_ddm_assign, "assign sets to enrollments" },
    { "unassign", mdm_ddm_unassign, "take sets from enrollments" },
    { "show", mdm_ddm_show,
      "what an enrollment resolves to, its tokens, DDM on or off" },
    { "status", mdm_ddm_status,
      "an enrollment's declaration states, status items, errors" },
    { "sync", mdm_ddm_sync,
      "queue a DeclarativeManagement command and push, no change" },
    { NULL, NULL, NULL }
};


int
mdm_ddm_main(int argc, char **argv)
{
    return mdm_dispatch(mdm_ddm_cmds, "ddm", argc, argv);
}


/* ---- options ------------------------------------------------------------- */

static const struct option  mdm_ddm_change_opts[] = {
    { "verbose", no_argument, NULL, 'v' },
    { NULL, 0, NULL, 0 }
};

static const struct option  mdm_ddm_put_opts[] = {
    { "dry-run", no_argument, NULL, 'n' },
    { "verbose", no_argument, NULL, 'v' },
    { NULL, 0, NULL, 0 }
};


static int
mdm_ddm_opt(int ch)
{
    switch (ch) {
    case 'n':
        mdm_ddm_dry_run = 1;
        return 0;
    case 'v':
        mdm_ddm_verbose = 1;
        return 0;
    default:
        return -1;
    }
}


#define MDM_DDM_CHANGE_HELP                                                 \
    "  --verbose         show the fan-out's progress on stderr (default:\n" \
    "                    when stderr is a terminal, never with --json)\n"


/* ---- calls --------------------------------------------------------------- */

/*
 * One FCALL (FCALL_RO when ro); the reply parsed, and its text through
 * text when wanted. NULL once the error line is out.
 */
static json_t *
mdm_ddm_call(redisContext *c, int ro, const char *fn, int n,
    const char **args, const size_t *lens, char **text)
{
    json_t        *j;
    redisReply    *r;
    json_error_t   err;

    r = mdm_admin_fcall(c, ro, fn, n, args, lens);
    if (r == NULL) {
        return NULL;
    }

    if (r->type != REDIS_REPLY_STRING) {
        mdm_err("unexpected reply from %s (is the mdm library loaded?)", fn);
        freeReplyObject(r);
        return NULL;
    }

    j = json_loadb(r->str, r->len, JSON_DECODE_ANY, &err);
    if (j == NULL) {
        mdm_err("%s replied with no JSON: %s", fn, err.text);
        freeReplyObject(r);
        return NULL;
    }

    if (text) {
        *text = strndup(r->str, r->len);
    }

    freeReplyObject(r);
    return j;
}


/* Connects, calls one function with the arguments, disconnects. */
static json_t *
mdm_ddm_once(int ro, const char *fn, int n, const char **args, char **text)
{
    json_t        *j;
    redisContext  *c;

    c = mdm_admin_connect();
    if (c == NULL) {
        return NULL;
    }

    j = mdm_ddm_call(c, ro, fn, n, args, NULL, text);
    redisFree(c);
    return j;
}


static long long
mdm_ddm_int(json_t *o, const char *key)
{
    return (long long) json_integer_value(json_object_get(o, key));
}


/* Adds the integers of from to those of acc; "remaining" is replaced. */
static void
mdm_ddm_sum(json_t *acc, json_t *from)
{
    json_t      *v;
    const char  *k;

    json_object_foreach(from, k, v) {
        if (!json_is_integer(v)) {
            continue;
        }
        if (strcmp(k, "remaining") == 0) {
            json_object_set(acc, k, v);
            continue;
        }
        json_object_set_new(acc, k, json_integer(
            json_integer_value(json_object_get(acc, k))
            + json_integer_value(v)));
    }
}


/*
 * A change begins its fan-out in the same call; while sets are left to
 * go through ("remaining"), mdm_ddm_fanout continues it, and the counts
 * are added into the reply's "fanout". Returns 1 when it did, -1 on error.
 */
static int
mdm_ddm_fanout(redisContext *c, json_t *reply)
{
    int          steps;
    json_t      *f, *r;
    long long    left;

    f = json_object_get(reply, "fanout");
    if (!json_is_object(f)) {
        return 0;
    }

    for (steps = 0; (left = mdm_ddm_int(f, "remaining")) > 0; steps++) {
        if (!mdm_admin_json() && (mdm_ddm_verbose || isatty(2))) {
            fprintf(stderr, "mdmctl %s: fan-out: %lld enrollments synced, "
                    "%lld set%s to go\n", mdm_cmd_path,
                    mdm_ddm_int(f, "synced"), left, left == 1 ? "" : "s");
        }

        r = mdm_ddm_call(c, 0, "mdm_ddm_fanout", 0, NULL, NULL, NULL);
        if (r == NULL) {
            /* the jobs stay in mdm:ddm:dirty for the next change */
            mdm_err("the change is stored; its fan-out stopped with %lld "
                    "set%s to go (the next 'mdmctl ddm' change goes on)",
                    left, left == 1 ? "" : "s");
            return -1;
        }
        mdm_ddm_sum(f, r);
        json_decref(r);
    }

    return steps > 0;
}


/*
 * fn <fixed>... <id>... for every chunk of MDM_CHUNK ids: the replies'
 * counts summed. A list of several chunks is checked first, so that an
 * unknown id stops it before anything changed. *text is the reply when
 * there was one call.
 */
static json_t *
mdm_ddm_chunks(redisContext *c, const char *fn, int nfixed,
    const char **fixed, mdm_ids_t *ids, char **text)
{
    int           k;
    size_t        i, n;
    json_t       *sum, *r;
    const char  **args;

    if (ids->n > MDM_CHUNK && mdm_ids_exist(c, ids) != 0) {
        return NULL;
    }

    args = malloc((nfixed + MDM_CHUNK) * sizeof(char *));
    if (args == NULL) {
        mdm_err("out of memory");
        return NULL;
    }
    for (k = 0; k < nfixed; k++) {
        args[k] = fixed[k];
    }

    sum = NULL;

    for (i = 0; i < ids->n; i += n) {
        n = ids->n - i < MDM_CHUNK ? ids->n - i : MDM_CHUNK;
        memcpy(args + nfixed, ids->v + i, n * sizeof(char *));

        r = mdm_ddm_call(c, 0, fn, nfixed + (int) n, args, NULL,
                         i == 0 && n == ids->n ? text : NULL);
        if (r == NULL || !json_is_object(r)) {
            if (r) {
                mdm_err("%s replied with no JSON object", fn);
                json_decref(r);
            }
            if (i > 0) {
                mdm_err("stopped after %zu of %zu enrollments", i, ids->n);
            }
            json_decref(sum);
            sum = NULL;
            break;
        }

        if (sum == NULL) {
            sum = r;
            continue;
        }
        mdm_ddm_sum(sum, r);
        json_decref(r);
    }

    free(args);
    return sum;
}


/* ---- output -------------------------------------------------------------- */

static int
mdm_ddm_dump(json_t *j)
{
    int  rc;

    rc = json_dumpf(j, stdout, JSON_COMPACT | JSON_ENSURE_ASCII
                               | JSON_ENCODE_ANY);
    fputc('\n', stdout);
    return rc == 0 ? MDM_OK : MDM_ERROR;
}


/* --json: the reply as it came, or as summed when it took several calls. */
static int
mdm_ddm_json(json_t *j, const char *text)
{
    if (text) {
        printf("%s\n", text);
        return MDM_OK;
    }
    return mdm_ddm_dump(j);
}


/* A string as it is, any other value as JSON; "-" for none. */
static void
mdm_ddm_put_value(json_t *v, FILE *f)
{
    if (v == NULL || json_is_null(v)) {
        fputs("-", f);

    } else if (json_is_string(v)) {
        fputs(json_string_value(v), f);

    } else {
        json_dumpf(v, f, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_ENCODE_ANY);
    }
}


/*
 * A JSON array as "a, b", "-" when empty; the Functions' cjson writes an
 * empty array as {}, which is empty too.
 */
static void
mdm_ddm_put_list(json_t *a, const char *key)
{
    size_t   i;
    json_t  *v;

    if (!json_is_array(a) || json_array_size(a) == 0) {
        fputs("-", stdout);
        return;
    }

    json_array_foreach(a, i, v) {
        if (i > 0) {
            fputs(", ", stdout);
        }
        mdm_ddm_put_value(key ? json_object_get(v, key) : v, stdout);
    }
}


static const char *
mdm_ddm_s(json_t *o, const char *key)
{
    const char  *s;

    s = json_string_value(json_object_get(o, key));
    return s ? s : "-";
}


static const char *
mdm_ddm_time(json_t *o, const char *key, char *buf, size_t size)
{
    char  ms[24];

    snprintf(ms, sizeof(ms), "%lld", mdm_ddm_int(o, key));
    return mdm_time(ms, buf, size);
}


static void
mdm_ddm_print_fanout(json_t *reply)
{
    json_t     *f;
    long long   s, q, p;

    f = json_object_get(reply, "fanout");
    if (!json_is_object(f)) {
        return;
    }

    s = mdm_ddm_int(f, "synced");
    q = mdm_ddm_int(f, "queued");
    p = mdm_ddm_int(f, "pushes");
    printf("%lld enrollment%s synced: %lld DeclarativeManagement "
           "command%s queued, %lld push request%s\n", s, s == 1 ? "" : "s",
           q, q == 1 ? "" : "s", p, p == 1 ? "" : "s");
}


/*
 * A change's reply: fan-out continued, then --json or the human form.
 * Consumes reply and text.
 */
static int
mdm_ddm_changed(redisContext *c, json_t *reply, char *text,
    void (*human)(json_t *reply, void *ctx), void *ctx)
{
    int  rc, f;

    f = mdm_ddm_fanout(c, reply);
    if (f < 0) {
        rc = MDM_ERROR;

    } else if (mdm_admin_json()) {
        rc = mdm_ddm_json(reply, f ? NULL : text);

    } else {
        human(reply, ctx);
        rc = MDM_OK;
    }

    free(text);
    json_decref(reply);
    return rc;
}


/* ---- put, get, list, delete, touch --------------------------------------- */

/* All of stdin; NUL-terminated. */
static int
mdm_ddm_read_stdin(unsigned char **data, size_t *len)
{
    size_t          n, cap;
    unsigned char  *buf, *p;

    buf = NULL;
    n = 0;
    cap = 0;

    do {
        if (cap - n < 4096) {
            cap = cap ? cap * 2 : 65536;
            p = realloc(buf, cap + 1);
            if (p == NULL) {
                mdm_err("out of memory");
                free(buf);
                return -1;
            }
            buf = p;
        }
        n += fread(buf + n, 1, cap - n, stdin);
    } while (!feof(stdin) && !ferror(stdin));

    if (ferror(stdin)) {
        mdm_err("stdin: read failed");
        free(buf);
        return -1;
    }

    buf[n] = '\0';
    *data = buf;
    *len = n;
    return 0;
}


static void
mdm_ddm_put_human(json_t *reply, void *ctx)
{
    size_t   i;
    json_t  *d, *a;

    (void) ctx;

    a = json_object_get(reply, "declarations");

    if (mdm_ddm_dry_run) {
        printf("%-40s %s\n", "IDENTIFIER", "TYPE");
    } else {
        printf("%-40s %-9s %s\n", "IDENTIFIER", "RESULT", "SERVER_TOKEN");
    }

    json_array_foreach(a, i, d) {
        if (mdm_ddm_dry_run) {
            printf("%-40s %s\n", mdm_ddm_s(d, "Identifier"),
                   mdm_ddm_s(d, "Type"));
        } else {
            printf("%-40s %-9s %s\n", mdm_ddm_s(d, "Identifier"),
                   mdm_ddm_s(d, "result"), mdm_ddm_s(d, "ServerToken"));
        }
    }

    if (mdm_ddm_dry_run) {
        i = json_is_array(a) ? json_array_size(a) : 0;
        printf("%zu declaration%s valid, nothing stored\n", i,
               i == 1 ? "" : "s");
    }

    mdm_ddm_print_fanout(reply);
}


static const char  mdm_ddm_put_usage[] =
    "[options] FILE | -\n"
    "\n"
    "Stores one declaration (a JSON object) or several (an array) from\n"
    "FILE or stdin, all or none. Each is checked against Apple's schemas\n"
    "and its references; an error names the declaration and the key. The\n"
    "same content keeps its ServerToken (\"unchanged\"); a changed one\n"
    "syncs the enrollments of its sets.\n"
    "\n"
    "  --dry-run         check only (mdm_ddm_check), nothing is stored\n"
    MDM_DDM_CHANGE_HELP
    MDM_REDIS_HELP;


static int
mdm_ddm_put(int argc, char **argv)
{
    int             rc;
    char           *text;
    size_t          len;
    json_t         *j;
    const char     *args[1];
    redisContext   *c;
    unsigned char  *data;

    MDM_OPTS(mdm_ddm_put_usage, mdm_ddm_put_opts, mdm_ddm_opt);

    if (argc != 1) {
        mdm_err("give one FILE (- for stdin)");
        return MDM_USAGE;
    }

    if (strcmp(argv[0], "-") == 0) {
        rc = mdm_ddm_read_stdin(&data, &len);
    } else {
        rc = mdm_read_file(argv[0], &data, &len);
    }
    if (rc != 0) {
        return MDM_ERROR;
    }

    if (strspn((char *) data, " \t\r\n") == len) {
        mdm_err("%s: no declaration", strcmp(argv[0], "-") == 0
                                      ? "stdin" : argv[0]);
        free(data);
        return MDM_ERROR;
    }

    c = mdm_admin_connect();
    if (c == NULL) {
        free(data);
        return MDM_ERROR;
    }

    args[0] = (char *) data;
    text = NULL;
    j = mdm_ddm_call(c, mdm_ddm_dry_run,
                     mdm_ddm_dry_run ? "mdm_ddm_check" : "mdm_ddm_put",
                     1, args, &len, &text);
    free(data);

    rc = j ? mdm_ddm_changed(c, j, text, mdm_ddm_put_human, NULL)
           : MDM_ERROR;
    redisFree(c);
    return rc;
}


static const char  mdm_ddm_get_usage[] =
    "[options] ID\n"
    "\n"
    "Prints a declaration as devices get it (with its ServerToken),\n"
    "indented; --json prints it as served, on one line.\n"
    "\n"
    MDM_REDIS_HELP;


static int
mdm_ddm_get(int argc, char **argv)
{
    int      rc;
    char    *text;
    json_t  *j;

    MDM_OPTS(mdm_ddm_get_usage, NULL, NULL);

    if (argc != 1) {
        mdm_err("give one declaration Identifier");
        return MDM_USAGE;
    }

    text = NULL;
    j = mdm_ddm_once(1, "mdm_ddm_get", 1, (const char **) argv, &text);
    if (j == NULL) {
        return MDM_ERROR;
    }

    if (mdm_admin_json()) {
        rc = mdm_ddm_json(j, text);

    } else {
        rc = json_dumpf(j, stdout, JSON_INDENT(2)) == 0 ? MDM_OK : MDM_ERROR;
        fputc('\n', stdout);
    }

    free(text);
    json_decref(j);
    return rc;
}


static const char  mdm_ddm_list_usage[] =
    "[options]\n"
    "\n"
    "Lists every declaration: Identifier, Type, ServerToken, the sets that\n"
    "hold it.\n"
    "\n"
    MDM_REDIS_HELP;


static int
mdm_ddm_list(int argc, char **argv)
{
    int      rc;
    char    *text;
    size_t   i;
    json_t  *j, *d;

    MDM_OPTS(mdm_ddm_list_usage, NULL, NULL);

    if (argc != 0) {
        mdm_err("no arguments expected");
        return MDM_USAGE;
    }

    text = NULL;
    j = mdm_ddm_once(1, "mdm_ddm_list", 0, NULL, &text);
    if (j == NULL) {
        return MDM_ERROR;
    }

    rc = MDM_OK;

    if (mdm_admin_json()) {
        rc = mdm_ddm_json(j, text);

    } else {
        printf("%-40s %-56s %-40s %s\n", "IDENTIFIER", "TYPE",
               "SERVER_TOKEN", "SETS");
        json_array_foreach(j, i, d) {
            printf("%-40s %-56s %-40s ", mdm_ddm_s(d, "Identifier"),
                   mdm_ddm_s(d, "Type"), mdm_ddm_s(d, "ServerToken"));
            mdm_ddm_put_list(json_object_get(d, "sets"), NULL);
            fputc('\n', stdout);
        }
    }

    free(text);
    json_decref(j);
    return rc;
}


static const char  mdm_ddm_delete_usage[] =
    "[options] ID...\n"
    "\n"
    "Deletes declarations, all or none: refused while a set holds one, or\n"
    "another declaration references it (set-remove it, or delete that\n"
    "one with it).\n"
    "\n"
    MDM_REDIS_HELP;


static int
mdm_ddm_delete(int argc, char **argv)
{
    int        rc;
    char      *text;
    json_t    *j;
    long long  n;

    MDM_OPTS(mdm_ddm_delete_usage, NULL, NULL);

    if (argc < 1) {
        mdm_err("give one or more declaration Identifiers");
        return MDM_USAGE;
    }

    text = NULL;
    j = mdm_ddm_once(0, "mdm_ddm_delete", argc, (const char **) argv, &text);
    if (j == NULL) {
        return MDM_ERROR;
    }

    if (mdm_admin_json()) {
        rc = mdm_ddm_json(j, text);

    } else {
        n = mdm_ddm_int(j, "deleted");
        printf("%lld declaration%s deleted\n", n, n == 1 ? "" : "s");
        rc = MDM_OK;
    }

    free(text);
    json_decref(j);
    return rc;
}


static void
mdm_ddm_touch_human(json_t *reply, void *ctx)
{
    size_t   i;
    json_t  *d;

    (void) ctx;

    printf("%-40s %s\n", "IDENTIFIER", "SERVER_TOKEN");
    json_array_foreach(json_object_get(reply, "declarations"), i, d) {
        printf("%-40s %s\n", mdm_ddm_s(d, "Identifier"),
               mdm_ddm_s(d, "ServerToken"));
    }

    mdm_ddm_print_fanout(reply);
}


/* A change of fn with the arguments as they are; its fan-out continued. */
static int
mdm_ddm_change(const char *fn, int argc, char **argv,
    void (*human)(json_t *reply, void *ctx), void *ctx)
{
    int            rc;
    char          *text;
    json_t        *j;
    redisContext  *c;

    c = mdm_admin_connect();
    if (c == NULL) {
        return MDM_ERROR;
    }

    text = NULL;
    j = mdm_ddm_call(c, 0, fn, argc, (const char **) argv, NULL, &text);
    rc = j ? mdm_ddm_changed(c, j, text, human, ctx) : MDM_ERROR;

    redisFree(c);
    return rc;
}


static const char  mdm_ddm_touch_usage[] =
    "[options] ID...\n"
    "\n"
    "Gives declarations a new ServerToken for the same content, so that\n"
    "devices apply them again; the enrollments of their sets are synced.\n"
    "\n"
    MDM_DDM_CHANGE_HELP
    MDM_REDIS_HELP;


static int
mdm_ddm_touch(int argc, char **argv)
{
    MDM_OPTS(mdm_ddm_touch_usage, mdm_ddm_change_opts, mdm_ddm_opt);

    if (argc < 1) {
        mdm_err("give one or more declaration Identifiers");
        return MDM_USAGE;
    }

    return mdm_ddm_change("mdm_ddm_touch", argc, argv, mdm_ddm_touch_human,
                          NULL);
}


/* ---- sets ---------------------------------------------------------------- */

static void
mdm_ddm_set_human(json_t *reply, void *ctx)
{
    const char  **a;
    long long     n;

    a = ctx;
    n = mdm_ddm_int(reply, a[0]);

    printf("%lld declaration%s %s set %s\n", n, n == 1 ? "" : "s",
           strcmp(a[0], "added") == 0 ? "added to" : "removed from", a[1]);

    mdm_ddm_print_fanout(reply);
}


static const char  mdm_ddm_set_add_usage[] =
    "[options] SET ID...\n"
    "\n"
    "Adds declarations to SET (created when new; a name of letters,\n"
    "digits, '.', '_', '-'). A set holds what its declarations reference:\n"
    "add an activation with its configurations, a configuration with its\n"
    "assets. The enrollments assigned to SET are synced.\n"
    "\n"
    MDM_DDM_CHANGE_HELP
    MDM_REDIS_HELP;


static int
mdm_ddm_set_add(int argc, char **argv)
{
    const char  *ctx[2];

    MDM_OPTS(mdm_ddm_set_add_usage, mdm_ddm_change_opts, mdm_ddm_opt);

    if (argc < 2) {
        mdm_err("give a set and one or more declaration Identifiers");
        return MDM_USAGE;
    }

    ctx[0] = "added";
    ctx[1] = argv[0];
    return mdm_ddm_change("mdm_ddm_set_add", argc, argv, mdm_ddm_set_human,
                          ctx);
}


static const char  mdm_ddm_set_remove_usage[] =
    "[options] SET ID...\n"
    "\n"
    "Takes declarations out of SET; refused when one that stays references\n"
    "one that goes. The enrollments assigned to SET are synced.\n"
    "\n"
    MDM_DDM_CHANGE_HELP
    MDM_REDIS_HELP;


static int
mdm_ddm_set_remove(int argc, char **argv)
{
    const char  *ctx[2];

    MDM_OPTS(mdm_ddm_set_remove_usage, mdm_ddm_change_opts, mdm_ddm_opt);

    if (argc < 2) {
        mdm_err("give a set and one or more declaration Identifiers");
        return MDM_USAGE;
    }

    ctx[0] = "removed";
    ctx[1] = argv[0];
    return mdm_ddm_change("mdm_ddm_set_remove", argc, argv,
                          mdm_ddm_set_human, ctx);
}


static const char  mdm_ddm_sets_usage[] =
    "[options]\n"
    "\n"
    "Lists every set: how many enrollments it is assigned to, its\n"
    "declarations.\n"
    "\n"
    MDM_REDIS_HELP;


static int
mdm_ddm_sets(int argc, char **argv)
{
    int      rc;
    char    *text;
    size_t   i;
    json_t  *j, *s;

    MDM_OPTS(mdm_ddm_sets_usage, NULL, NULL);

    if (argc != 0) {
        mdm_err("no arguments expected");
        return MDM_USAGE;
    }

    text = NULL;
    j = mdm_ddm_once(1, "mdm_ddm_sets", 0, NULL, &text);
    if (j == NULL) {
        return MDM_ERROR;
    }

    rc = MDM_OK;

    if (mdm_admin_json()) {
        rc = mdm_ddm_json(j, text);

    } else {
        printf("%-32s %11s %s\n", "SET", "ENROLLMENTS", "DECLARATIONS");
        json_array_foreach(j, i, s) {
            printf("%-32s %11lld ", mdm_ddm_s(s, "set"),
                   mdm_ddm_int(s, "enrollments"));
            mdm_ddm_put_list(json_object_get(s, "declarations"), NULL);
            fputc('\n', stdout);
        }
    }

    free(text);
    json_decref(j);
    return rc;
}


/* ---- assign, unassign, sync ---------------------------------------------- */

/*
 * fn over enrollment ids (positional, "-" from stdin) after the fixed
 * arguments, in chunks; prints the summed counts.
 */
static int
mdm_ddm_enrollments(const char *fn, int nfixed, const char **fixed,
    int argc, char **argv, const char *what)
{
    int            rc, f;
    char          *text;
    json_t        *j;
    mdm_ids_t      ids;
    long long      n, q, a, p;
    redisContext  *c;

    memset(&ids, 0, sizeof(ids));
    c = NULL;
    j = NULL;
    text = NULL;
    f = 0;
    rc = MDM_ERROR;

    if (mdm_ids_args(&ids, argc, argv, NULL, NULL) != 0
        || (c = mdm_admin_connect()) == NULL
        || (j = mdm_ddm_chunks(c, fn, nfixed, fixed, &ids, &text)) == NULL
        || (f = mdm_ddm_fanout(c, j)) < 0)
    {
        goto done;
    }

    if (mdm_admin_json()) {
        rc = mdm_ddm_json(j, f ? NULL : text);
        goto done;
    }

    q = mdm_ddm_int(j, "queued");
    p = mdm_ddm_int(j, "pushes");

    if (what) {
        /* mdm_ddm_unassign counts "unassigned" (or "assigned") */
        n = mdm_ddm_int(j, json_object_get(j, what) ? what : "assigned");
        printf("%lld assignment%s %s for %zu enrollment%s: ", n,
               n == 1 ? "" : "s",
               strcmp(what, "assigned") == 0 ? "added" : "removed", ids.n,
               ids.n == 1 ? "" : "s");

    } else {
        a = mdm_ddm_int(j, "already");
        printf("%zu enrollment%s (%lld had one pending): ", ids.n,
               ids.n == 1 ? "" : "s", a);
    }

    printf("%lld DeclarativeManagement command%s queued, %lld push "
           "request%s\n", q, q == 1 ? "" : "s", p, p == 1 ? "" : "s");
    rc = MDM_OK;

done:

    free(text);
    json_decref(j);
    mdm_ids_free(&ids);
    redisFree(c);
    return rc;
}


static const char  mdm_ddm_assign_usage[] =
    "[options] ENROLLMENT | - SET...\n"
    "\n"
    "Assigns the sets to an enrollment (\"-\": to the enrollment ids on\n"
    "stdin, one a line, sent 2,000 per call). Enrollments whose sets\n"
    "changed get a DeclarativeManagement command and a push. An unknown\n"
    "set or enrollment changes nothing.\n"
    "\n"
    MDM_DDM_CHANGE_HELP
    MDM_REDIS_HELP;

static const char  mdm_ddm_unassign_usage[] =
    "[options] ENROLLMENT | - SET...\n"
    "\n"
    "Takes the sets from an enrollment (\"-\": from the enrollment ids on\n"
    "stdin, one a line, sent 2,000 per call); those that changed are\n"
    "synced.\n"
    "\n"
    MDM_DDM_CHANGE_HELP
    MDM_REDIS_HELP;


static int
mdm_ddm_assignment(int argc, char **argv, const char *fn, const char *what)
{
    int           rc, i;
    char          nsets[16];
    const char  **fixed;

    if (argc < 2) {
        mdm_err("give an enrollment id (or -) and one or more sets");
        return MDM_USAGE;
    }

    fixed = malloc(argc * sizeof(char *));
    if (fixed == NULL) {
        mdm_err("out of memory");
        return MDM_ERROR;
    }

    snprintf(nsets, sizeof(nsets), "%d", argc - 1);
    fixed[0] = nsets;
    for (i = 1; i < argc; i++) {
        fixed[i] = argv[i];
    }

    rc = mdm_ddm_enrollments(fn, argc, fixed, 1, argv, what);
    free(fixed);
    return rc;
}


static int
mdm_ddm_assign(int argc, char **argv)
{
    MDM_OPTS(mdm_ddm_assign_usage, mdm_ddm_change_opts, mdm_ddm_opt);

    return mdm_ddm_assignment(argc, argv, "mdm_ddm_assign", "assigned");
}


static int
mdm_ddm_unassign(int argc, char **argv)
{
    MDM_OPTS(mdm_ddm_unassign_usage, mdm_ddm_change_opts, mdm_ddm_opt);

    return mdm_ddm_assignment(argc, argv, "mdm_ddm_unassign", "unassigned");
}


static const char  mdm_ddm_sync_usage[] =
    "[options] ENROLLMENT... | -\n"
    "\n"
    "Queues a DeclarativeManagement command and requests a push for each\n"
    "enrollment, without a change (\"-\": ids from stdin, one a line,\n"
    "sent 2,000 per call); one with a command pending gets no second.\n"
    "\n"
    MDM_DDM_CHANGE_HELP
    MDM_REDIS_HELP;


static int
mdm_ddm_sync(int argc, char **argv)
{
    MDM_OPTS(mdm_ddm_sync_usage, mdm_ddm_change_opts, mdm_ddm_opt);

    return mdm_ddm_enrollments("mdm_ddm_sync", 0, NULL, argc, argv, NULL);
}


/* ---- show, status -------------------------------------------------------- */

static const char  mdm_ddm_show_usage[] =
    "[options] ENROLLMENT\n"
    "\n"
    "Shows what an enrollment resolves to: whether DDM is on, its sets,\n"
    "its declarations, the DeclarationsToken and Timestamp devices get,\n"
    "a DeclarativeManagement command still queued.\n"
    "\n"
    MDM_REDIS_HELP;


static void
mdm_ddm_show_human(json_t *j)
{
    char     tbuf[32];
    size_t   i;
    json_t  *d, *a;

    printf("%-24s %s\n", "enrollment", mdm_ddm_s(j, "enrollment"));
    if (json_is_true(json_object_get(j, "on"))) {
        printf("%-24s on since %s\n", "ddm",
               mdm_ddm_time(j, "on_ms", tbuf, sizeof(tbuf)));
    } else {
        printf("%-24s off (no DeclarativeManagement message yet)\n", "ddm");
    }
    printf("%-24s ", "sets");
    mdm_ddm_put_list(json_object_get(j, "sets"), NULL);
    printf("\n%-24s %s\n", "DeclarationsToken",
           mdm_ddm_s(j, "DeclarationsToken"));
    printf("%-24s %s\n", "Timestamp", mdm_ddm_s(j, "Timestamp"));
    printf("%-24s %s\n", "pending_command",
           mdm_ddm_s(j, "pending_command"));
    if (json_object_get(j, "status_ms")) {
        printf("%-24s %s\n", "last_status",
               mdm_ddm_time(j, "status_ms", tbuf, sizeof(tbuf)));
    }

    a = json_object_get(j, "declarations");
    if (!json_is_array(a) || json_array_size(a) == 0) {
        printf("no declarations\n");
        return;
    }

    printf("\n%-14s %-40s %s\n", "KIND", "IDENTIFIER", "SERVER_TOKEN");
    json_array_foreach(a, i, d) {
        printf("%-14s %-40s %s\n", mdm_ddm_s(d, "Kind"),
               mdm_ddm_s(d, "Identifier"), mdm_ddm_s(d, "ServerToken"));
    }
}


static const char  mdm_ddm_status_usage[] =
    "[options] ENROLLMENT\n"
    "\n"
    "Shows an enrollment's last status reports: each declaration's state\n"
    "(active, valid, server-token, reasons), the latest value of every\n"
    "status item, the errors of the last report.\n"
    "\n"
    MDM_REDIS_HELP;


static void
mdm_ddm_status_human(json_t *j)
{
    char         tbuf[32];
    size_t       i;
    json_t      *v, *a, *r;
    const char  *k;

    printf("%-24s %s\n", "enrollment", mdm_ddm_s(j, "enrollment"));
    printf("%-24s %s\n", "last_report",
           mdm_ddm_time(j, "report_ms", tbuf, sizeof(tbuf)));
    printf("%-24s %s\n", "last_full_report",
           mdm_ddm_time(j, "full_report_ms", tbuf, sizeof(tbuf)));

    a = json_object_get(j, "declarations");
    if (json_object_size(a) > 0) {
        printf("\n%-40s %-6s %-8s %-40s %s\n", "DECLARATION", "ACTIVE",
               "VALID", "SERVER_TOKEN", "REASONS");
        json_object_foreach(a, k, v) {
            r = json_object_get(v, "active");
            printf("%-40s %-6s %-8s %-40s ", k,
                   json_is_boolean(r) ? (json_is_true(r) ? "yes" : "no")
                                      : "-",
                   mdm_ddm_s(v, "valid"), mdm_ddm_s(v, "server-token"));
            mdm_ddm_put_list(json_object_get(v, "reasons"), "code");
            fputc('\n', stdout);
        }
    }

    a = json_object_get(j, "items");
    if (json_object_size(a) > 0) {
        printf("\n%-40s %s\n", "STATUS_ITEM", "VALUE");
        json_object_foreach(a, k, v) {
            printf("%-40s ", k);
            mdm_ddm_put_value(v, stdout);
            fputc('\n', stdout);
        }
    }

    a = json_object_get(j, "errors");
    if (json_is_array(a) && json_array_size(a) > 0) {
        printf("\nerrors:\n");
        json_array_foreach(a, i, v) {
            printf("  ");
            mdm_ddm_put_value(v, stdout);
            fputc('\n', stdout);
        }
    }
}


static int
mdm_ddm_enrollment(int argc, char **argv, const char *usage, const char *fn,
    void (*human)(json_t *j))
{
    int      rc;
    char    *text;
    json_t  *j;

    MDM_OPTS(usage, NULL, NULL);

    if (argc != 1) {
        mdm_err("give one enrollment id");
        return MDM_USAGE;
    }

    text = NULL;
    j = mdm_ddm_once(1, fn, 1, (const char **) argv, &text);
    if (j == NULL) {
        return MDM_ERROR;
    }

    rc = MDM_OK;
    if (mdm_admin_json()) {
        rc = mdm_ddm_json(j, text);
    } else {
        human(j);
    }

    free(text);
    json_decref(j);
    return rc;
}


static int
mdm_ddm_show(int argc, char **argv)
{
    return mdm_ddm_enrollment(argc, argv, mdm_ddm_show_usage, "mdm_ddm_show",
                              mdm_ddm_show_human);
}


static int
mdm_ddm_status(int argc, char **argv)
{
    return mdm_ddm_enrollment(argc, argv, mdm_ddm_status_usage,
                              "mdm_ddm_status", mdm_ddm_status_human);
}
