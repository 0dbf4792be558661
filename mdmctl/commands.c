/*
 * Command plists: built from a RequestType and Key=Value / Key:=JSON
 * arguments, or read from a file, then checked against Apple's command
 * schemas (command_schema.c) before anything is queued.
 */

#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "mdmctl.h"


#define MDM_PATH_MAX  512


static const char *mdm_type_names[] = {
    "any value", "a string", "an integer", "a boolean", "data", "a date",
    "a real", "an array", "a dictionary"
};


static const mdm_command_key_t *
mdm_ckey(const char *rt, const char *path)
{
    size_t  i;

    for (i = 0; i < mdm_command_nkeys; i++) {
        if (strcmp(mdm_command_keys[i].request_type, rt) == 0
            && strcmp(mdm_command_keys[i].path, path) == 0)
        {
            return &mdm_command_keys[i];
        }
    }

    return NULL;
}


/* "Key" under "" and "Parent.Key" under "Parent" */
static void
mdm_child_path(char *out, const char *parent, const char *key)
{
    snprintf(out, MDM_PATH_MAX, "%s%s%s", parent, parent[0] ? "." : "", key);
}


static int
mdm_pt_of(plist_t node)
{
    switch (plist_get_node_type(node)) {
    case PLIST_STRING:
        return MDM_PT_STRING;
    case PLIST_UINT:
        return MDM_PT_INTEGER;
    case PLIST_BOOLEAN:
        return MDM_PT_BOOLEAN;
    case PLIST_DATA:
        return MDM_PT_DATA;
    case PLIST_DATE:
        return MDM_PT_DATE;
    case PLIST_REAL:
        return MDM_PT_REAL;
    case PLIST_ARRAY:
        return MDM_PT_ARRAY;
    case PLIST_DICT:
        return MDM_PT_DICT;
    default:
        return MDM_PT_ANY;
    }
}


/* An array of dictionaries told apart by "Item" (Settings). */
static int
mdm_has_variants(const char *rt, const char *path)
{
    size_t  i, n;

    n = strlen(path);
    for (i = 0; i < mdm_command_nkeys; i++) {
        if (strcmp(mdm_command_keys[i].request_type, rt) == 0
            && strncmp(mdm_command_keys[i].path, path, n) == 0
            && mdm_command_keys[i].path[n] == '['
            && mdm_command_keys[i].path[n + 1] != ']')
        {
            return 1;
        }
    }

    return 0;
}


static int
mdm_in_range(const char *range, const char *v)
{
    const char  *p, *end;
    size_t       n;

    n = strlen(v);
    for (p = range; ; p = end + 1) {
        end = strchr(p, '|');
        if (end == NULL) {
            return strcmp(p, v) == 0;
        }
        if ((size_t) (end - p) == n && strncmp(p, v, n) == 0) {
            return 1;
        }
    }
}


/* ---- checking ------------------------------------------------------------ */

typedef struct {
    const char  *rt;
    int          strict;
} mdm_check_t;


static int mdm_check_node(mdm_check_t *ck, const mdm_command_key_t *row,
    plist_t node, const char *path, const char *where);


static int
mdm_check_range(mdm_check_t *ck, const mdm_command_key_t *row, plist_t node,
    const char *where)
{
    int       rc;
    char     *s, buf[32];
    uint8_t   b;
    uint64_t  u;

    s = NULL;

    switch (plist_get_node_type(node)) {
    case PLIST_STRING:
        plist_get_string_val(node, &s);
        break;
    case PLIST_UINT:
        plist_get_uint_val(node, &u);
        snprintf(buf, sizeof(buf), "%lld", (long long) u);
        break;
    case PLIST_BOOLEAN:
        plist_get_bool_val(node, &b);
        snprintf(buf, sizeof(buf), "%s", b ? "true" : "false");
        break;
    default:
        return 0;
    }

    rc = mdm_in_range(row->range, s ? s : buf);
    if (!rc && strlen(row->range) > 80) {
        mdm_err("%s: %s: \"%s\" is not a known value (mdmctl command "
                "--keys %s lists them)", ck->rt, where, s ? s : buf, ck->rt);
    } else if (!rc) {
        mdm_err("%s: %s: \"%s\" is not one of %s", ck->rt, where,
                s ? s : buf, row->range);
    }

    free(s);
    return rc ? 0 : -1;
}


static int
mdm_check_dict(mdm_check_t *ck, plist_t dict, const char *path,
    const char *where)
{
    int                       rc;
    char                     *key, cpath[MDM_PATH_MAX], cwhere[MDM_PATH_MAX];
    char                      any[MDM_PATH_MAX];
    size_t                    i, n;
    plist_t                   val;
    const char               *rest;
    plist_dict_iter           it;
    const mdm_command_key_t  *r;

    /* required keys among the direct children of this path */
    n = strlen(path);
    for (i = 0; i < mdm_command_nkeys; i++) {
        r = &mdm_command_keys[i];
        if (!r->required || strcmp(r->request_type, ck->rt) != 0
            || strncmp(r->path, path, n) != 0)
        {
            continue;
        }
        rest = r->path + n;
        if (n) {
            if (*rest != '.') {
                continue;
            }
            rest++;
        }
        if (*rest == '\0' || strpbrk(rest, ".[*") != NULL) {
            continue;
        }
        if (plist_dict_get_item(dict, rest) == NULL) {
            mdm_err("%s: missing required key %s%s%s", ck->rt, where,
                    where[0] ? "." : "", rest);
            return -1;
        }
    }

    snprintf(any, sizeof(any), "%s%s*", path, path[0] ? "." : "");

    rc = 0;
    it = NULL;
    plist_dict_new_iter(dict, &it);

    for ( ;; ) {
        key = NULL;
        val = NULL;
        plist_dict_next_item(dict, it, &key, &val);
        if (key == NULL) {
            break;
        }

        mdm_child_path(cpath, path, key);
        mdm_child_path(cwhere, where, key);

        if (path[0] == '\0' && strcmp(key, "RequestType") == 0) {
            r = NULL;

        } else if ((r = mdm_ckey(ck->rt, cpath)) != NULL) {
            rc = mdm_check_node(ck, r, val, cpath, cwhere);

        } else if (mdm_ckey(ck->rt, any) == NULL) {
            if (ck->strict) {
                mdm_err("%s: unknown key %s", ck->rt, cwhere);
                rc = -1;
            } else {
                mdm_warn("%s: key %s is not in the schema", ck->rt, cwhere);
            }
        }

        free(key);
        if (rc != 0) {
            break;
        }
    }

    free(it);
    return rc;
}


static int
mdm_check_array(mdm_check_t *ck, plist_t arr, const char *path,
    const char *where)
{
    char                     *item, ipath[MDM_PATH_MAX];
    char                      iwhere[MDM_PATH_MAX];
    plist_t                   el, it;
    uint32_t                  i, n;
    const mdm_command_key_t  *r, *ir;

    snprintf(ipath, sizeof(ipath), "%s[]", path);
    ir = mdm_ckey(ck->rt, ipath);

    if (ir == NULL && !mdm_has_variants(ck->rt, path)) {
        return 0;
    }

    n = plist_array_get_size(arr);

    for (i = 0; i < n; i++) {
        el = plist_array_get_item(arr, i);
        snprintf(iwhere, sizeof(iwhere), "%s[%u]", where, i);

        r = ir;
        if (r == NULL) {
            if (plist_get_node_type(el) != PLIST_DICT) {
                mdm_err("%s: %s must be a dictionary", ck->rt, iwhere);
                return -1;
            }
            it = plist_dict_get_item(el, "Item");
            if (it == NULL || plist_get_node_type(it) != PLIST_STRING) {
                mdm_err("%s: %s has no Item string", ck->rt, iwhere);
                return -1;
            }
            item = NULL;
            plist_get_string_val(it, &item);
            snprintf(ipath, sizeof(ipath), "%s[%s]", path, item);
            r = mdm_ckey(ck->rt, ipath);
            if (r == NULL) {
                mdm_err("%s: %s: unknown Item \"%s\"", ck->rt, iwhere, item);
                free(item);
                return -1;
            }
            free(item);
        }

        if (mdm_check_node(ck, r, el, r->path, iwhere) != 0) {
            return -1;
        }
    }

    return 0;
}


static int
mdm_check_node(mdm_check_t *ck, const mdm_command_key_t *row, plist_t node,
    const char *path, const char *where)
{
    int  pt;

    pt = mdm_pt_of(node);

    if (row->type != MDM_PT_ANY && pt != row->type) {
        mdm_err("%s: %s must be %s, not %s", ck->rt,
                where[0] ? where : "Command", mdm_type_names[row->type],
                mdm_type_names[pt]);
        return -1;
    }

    if (row->range && mdm_check_range(ck, row, node, where) != 0) {
        return -1;
    }

    if (pt == MDM_PT_DICT && row->type != MDM_PT_ANY) {
        return mdm_check_dict(ck, node, path, where);
    }

    if (pt == MDM_PT_ARRAY && row->type != MDM_PT_ANY) {
        return mdm_check_array(ck, node, path, where);
    }

    return 0;
}


static int
mdm_command_check(mdm_command_t *cmd)
{
    plist_t                   c;
    mdm_check_t               ck;
    const mdm_command_key_t  *row;

    row = mdm_ckey(cmd->request_type, "");
    if (row == NULL) {
        return 0;
    }

    ck.rt = cmd->request_type;
    ck.strict = cmd->strict;
    c = plist_dict_get_item(cmd->plist, "Command");

    return mdm_check_node(&ck, row, c, "", "");
}


/* ---- values from arguments ----------------------------------------------- */

static plist_t
mdm_data_value(const char *key, const char *s)
{
    int             n, pad;
    size_t          len;
    plist_t         p;
    unsigned char  *buf;

    if (s[0] == '@') {
        if (mdm_read_file(s + 1, &buf, &len) != 0) {
            return NULL;
        }
        p = plist_new_data((char *) buf, len);
        free(buf);
        return p;
    }

    len = strlen(s);
    buf = malloc(len / 4 * 3 + 3);
    if (buf == NULL) {
        return NULL;
    }

    n = (len % 4 == 0) ? EVP_DecodeBlock(buf, (unsigned char *) s, len) : -1;
    if (n < 0) {
        mdm_err("%s: not base64 (use %s=@FILE to read a file)", key, key);
        free(buf);
        return NULL;
    }

    /* EVP_DecodeBlock counts the padding as zero bytes */
    for (pad = 0; len > 0 && s[len - 1] == '=' && pad < 2; len--, pad++) {
        /* void */
    }

    p = plist_new_data((char *) buf, n - pad);
    free(buf);
    return p;
}


static plist_t
mdm_scalar_value(const char *key, int type, const char *s)
{
    char    *end;
    double   d;
    long     l;

    switch (type) {

    case MDM_PT_INTEGER:
        if (mdm_parse_int(s, LONG_MIN, LONG_MAX, &l) != 0) {
            mdm_err("%s must be an integer, not \"%s\"", key, s);
            return NULL;
        }
        return plist_new_uint((uint64_t) (int64_t) l);

    case MDM_PT_REAL:
        d = strtod(s, &end);
        if (end == s || *end != '\0') {
            mdm_err("%s must be a number, not \"%s\"", key, s);
            return NULL;
        }
        return plist_new_real(d);

    case MDM_PT_BOOLEAN:
        if (strcmp(s, "true") == 0 || strcmp(s, "yes") == 0
            || strcmp(s, "1") == 0)
        {
            return plist_new_bool(1);
        }
        if (strcmp(s, "false") == 0 || strcmp(s, "no") == 0
            || strcmp(s, "0") == 0)
        {
            return plist_new_bool(0);
        }
        mdm_err("%s must be a boolean (true or false), not \"%s\"", key, s);
        return NULL;

    case MDM_PT_DATA:
        return mdm_data_value(key, s);

    case MDM_PT_STRING:
    case MDM_PT_ANY:
        return plist_new_string(s);

    default:
        mdm_err("%s is %s: give it as %s:=JSON", key, mdm_type_names[type],
                key);
        return NULL;
    }
}


/* Key=a,b,c for arrays of scalars (DeviceInformation Queries=...). */
static plist_t
mdm_list_value(const char *rt, const char *path, const char *key,
    const char *s)
{
    char                     *copy, *tok, *save, ipath[MDM_PATH_MAX];
    plist_t                   arr, v;
    const mdm_command_key_t  *ir;

    snprintf(ipath, sizeof(ipath), "%s[]", path);
    ir = mdm_ckey(rt, ipath);

    if (ir == NULL || ir->type == MDM_PT_DICT || ir->type == MDM_PT_ARRAY) {
        mdm_err("%s is an array: give it as %s:=JSON", key, key);
        return NULL;
    }

    arr = plist_new_array();
    copy = strdup(s);

    for (tok = strtok_r(copy, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save))
    {
        v = mdm_scalar_value(key, ir->type, tok);
        if (v == NULL) {
            plist_free(arr);
            arr = NULL;
            break;
        }
        plist_array_append_item(arr, v);
    }

    free(copy);
    return arr;
}


/*
 * JSON to plist, typed by the schema where it knows the path: numbers
 * become integers unless a real is wanted, strings become data (base64,
 * or @FILE) where data is wanted. Anything else is left to the checker.
 */
static plist_t
mdm_json_value(const char *rt, const char *path, const char *key, json_t *j)
{
    char                      cpath[MDM_PATH_MAX];
    size_t                    i;
    plist_t                   p, v;
    json_t                   *el, *item;
    const char               *k;
    const mdm_command_key_t  *row;

    row = path ? mdm_ckey(rt, path) : NULL;

    switch (json_typeof(j)) {

    case JSON_OBJECT:
        p = plist_new_dict();
        json_object_foreach(j, k, el) {
            mdm_child_path(cpath, path ? path : "", k);
            v = mdm_json_value(rt, path && mdm_ckey(rt, cpath) ? cpath : NULL,
                               key, el);
            if (v == NULL) {
                plist_free(p);
                return NULL;
            }
            plist_dict_set_item(p, k, v);
        }
        return p;

    case JSON_ARRAY:
        p = plist_new_array();
        json_array_foreach(j, i, el) {
            cpath[0] = '\0';
            if (path) {
                snprintf(cpath, sizeof(cpath), "%s[]", path);
                item = json_object_get(el, "Item");
                if (mdm_ckey(rt, cpath) == NULL && json_is_string(item)) {
                    snprintf(cpath, sizeof(cpath), "%s[%s]", path,
                             json_string_value(item));
                }
            }
            v = mdm_json_value(rt, mdm_ckey(rt, cpath) ? cpath : NULL, key,
                               el);
            if (v == NULL) {
                plist_free(p);
                return NULL;
            }
            plist_array_append_item(p, v);
        }
        return p;

    case JSON_STRING:
        if (row && row->type == MDM_PT_DATA) {
            return mdm_data_value(key, json_string_value(j));
        }
        return plist_new_string(json_string_value(j));

    case JSON_INTEGER:
        if (row && row->type == MDM_PT_REAL) {
            return plist_new_real((double) json_integer_value(j));
        }
        return plist_new_uint((uint64_t) json_integer_value(j));

    case JSON_REAL:
        return plist_new_real(json_real_value(j));

    case JSON_TRUE:
        return plist_new_bool(1);

    case JSON_FALSE:
        return plist_new_bool(0);

    default:
        mdm_err("%s: null has no plist form", key);
        return NULL;
    }
}


/*
 * One Key=Value or Key:=JSON argument into the Command dictionary; dotted
 * keys (ReturnToService.Enabled=true) reach into nested dictionaries.
 */
static int
mdm_set_arg(mdm_command_t *cmd, plist_t command, const char *arg)
{
    int                       json, typed;
    char                     *key, *val, *p, *dot, path[MDM_PATH_MAX];
    char                      any[MDM_PATH_MAX], parent[MDM_PATH_MAX];
    plist_t                   dict, sub, v;
    json_t                   *j;
    json_error_t              jerr;
    const mdm_command_key_t  *row;

    key = strdup(arg);
    val = strchr(key, '=');
    *val++ = '\0';
    json = (val - key >= 2 && val[-2] == ':');
    if (json) {
        val[-2] = '\0';
    }

    if (key[0] == '\0') {
        mdm_err("\"%s\": no key before =", arg);
        free(key);
        return -1;
    }

    dict = command;
    path[0] = '\0';
    typed = 1;
    row = NULL;
    v = NULL;

    for (p = key; ; p = dot + 1) {
        dot = strchr(p, '.');
        if (dot) {
            *dot = '\0';
        }

        snprintf(any, sizeof(any), "%s%s*", path, path[0] ? "." : "");
        if (typed) {
            mdm_child_path(parent, path, p);
            memcpy(path, parent, sizeof(path));
            row = mdm_ckey(cmd->request_type, path);
            if (row == NULL && mdm_ckey(cmd->request_type, any) != NULL) {
                typed = 0;
            } else if (row == NULL || strcmp(p, "RequestType") == 0) {
                mdm_err("%s: unknown key %s (mdmctl command --keys %s lists "
                        "them)", cmd->request_type, key, cmd->request_type);
                goto failed;
            }
        }

        if (dot == NULL) {
            break;
        }

        if (typed && row->type != MDM_PT_DICT) {
            mdm_err("%s: %s is %s, not a dictionary", cmd->request_type, p,
                    mdm_type_names[row->type]);
            goto failed;
        }

        sub = plist_dict_get_item(dict, p);
        if (sub == NULL) {
            sub = plist_new_dict();
            plist_dict_set_item(dict, p, sub);
        } else if (plist_get_node_type(sub) != PLIST_DICT) {
            mdm_err("%s: %s given twice", cmd->request_type, p);
            goto failed;
        }
        dict = sub;
        *dot = '.';
    }

    if (plist_dict_get_item(dict, p) != NULL) {
        mdm_err("%s: %s given twice", cmd->request_type, key);
        goto failed;
    }

    if (json) {
        j = json_loads(val, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
        if (j == NULL) {
            mdm_err("%s: bad JSON: %s", key, jerr.text);
            goto failed;
        }
        v = mdm_json_value(cmd->request_type, typed ? path : NULL, key, j);
        json_decref(j);

    } else if (typed && row->type == MDM_PT_ARRAY) {
        v = mdm_list_value(cmd->request_type, path, key, val);

    } else {
        v = mdm_scalar_value(key, typed ? row->type : MDM_PT_STRING, val);
    }

    if (v == NULL) {
        goto failed;
    }

    plist_dict_set_item(dict, p, v);
    free(key);
    return 0;

failed:

    free(key);
    return -1;
}


/* ---- building ------------------------------------------------------------ */

/* CommandUUIDs go into Redis keys: the characters the Functions accept. */
static int
mdm_uuid_ok(const char *u)
{
    size_t  n;

    n = strlen(u);
    return n > 0 && n <= 128 && strspn(u, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                          "abcdefghijklmnopqrstuvwxyz"
                                          "0123456789-._") == n;
}


int
mdm_command_set_uuid(mdm_command_t *cmd, const char *uuid)
{
    char  fresh[37];

    if (uuid == NULL) {
        mdm_uuid(fresh);
        uuid = fresh;

    } else if (!mdm_uuid_ok(uuid)) {
        mdm_err("CommandUUID \"%s\": use letters, digits, - . _ "
                "(at most 128)", uuid);
        return -1;
    }

    plist_dict_set_item(cmd->plist, "CommandUUID", plist_new_string(uuid));
    return 0;
}


int
mdm_command_set_data(mdm_command_t *cmd, const char *key, const char *data,
    size_t len)
{
    plist_dict_set_item(plist_dict_get_item(cmd->plist, "Command"), key,
                        plist_new_data(data, len));
    return 0;
}


static int
mdm_command_from_file(mdm_command_t *cmd, const char *path)
{
    char            *s;
    size_t           len;
    plist_t          p, c, rt, u;
    unsigned char   *data;

    if (mdm_read_file(path, &data, &len) != 0) {
        return -1;
    }

    p = NULL;
    plist_from_memory((char *) data, len, &p);
    free(data);

    if (p == NULL || plist_get_node_type(p) != PLIST_DICT) {
        mdm_err("%s: not a property list dictionary", path);
        plist_free(p);
        return -1;
    }

    c = plist_dict_get_item(p, "Command");
    rt = c ? plist_dict_get_item(c, "RequestType") : NULL;
    if (c == NULL || plist_get_node_type(c) != PLIST_DICT || rt == NULL
        || plist_get_node_type(rt) != PLIST_STRING)
    {
        mdm_err("%s: no Command dictionary with a RequestType string", path);
        plist_free(p);
        return -1;
    }

    cmd->plist = p;
    s = NULL;
    plist_get_string_val(rt, &s);
    cmd->request_type = s;

    u = plist_dict_get_item(p, "CommandUUID");
    if (u == NULL) {
        return mdm_command_set_uuid(cmd, NULL);
    }

    s = NULL;
    if (plist_get_node_type(u) == PLIST_STRING) {
        plist_get_string_val(u, &s);
    }
    if (s == NULL || !mdm_uuid_ok(s)) {
        mdm_err("%s: CommandUUID must be a string of letters, digits, "
                "- . _", path);
        free(s);
        return -1;
    }
    free(s);
    return 0;
}


/*
 * From arguments (rt and Key=Value items) or from a plist file; a given
 * uuid replaces the generated or the file's CommandUUID.
 */
int
mdm_command_build(mdm_command_t *cmd, const char *rt, int nkv, char **kv,
    const char *plist_file, const char *uuid)
{
    int      i;
    plist_t  c;

    memset(cmd, 0, sizeof(mdm_command_t));

    if (plist_file) {
        if (mdm_command_from_file(cmd, plist_file) != 0) {
            return -1;
        }
        cmd->known = mdm_ckey(cmd->request_type, "") != NULL;
        if (!cmd->known) {
            mdm_warn("RequestType %s is not in the schema; sent unchecked",
                     cmd->request_type);
        }
        return uuid ? mdm_command_set_uuid(cmd, uuid) : 0;
    }

    cmd->request_type = strdup(rt);
    cmd->strict = 1;
    cmd->known = mdm_ckey(rt, "") != NULL;

    if (!cmd->known) {
        mdm_err("unknown RequestType %s (mdmctl command --list shows them)",
                rt);
        return -1;
    }

    cmd->plist = plist_new_dict();
    c = plist_new_dict();
    plist_dict_set_item(c, "RequestType", plist_new_string(rt));
    plist_dict_set_item(cmd->plist, "Command", c);

    if (mdm_command_set_uuid(cmd, uuid) != 0) {
        return -1;
    }

    for (i = 0; i < nkv; i++) {
        if (mdm_set_arg(cmd, c, kv[i]) != 0) {
            return -1;
        }
    }

    if (strcmp(rt, "ClearPasscode") == 0
        && plist_dict_get_item(c, "UnlockToken") == NULL)
    {
        cmd->unlock_token = 1;
    }

    return 0;
}


/* Checks the command and returns its XML (free with plist_to_xml_free). */
int
mdm_command_xml(mdm_command_t *cmd, char **xml, uint32_t *len)
{
    if (mdm_command_check(cmd) != 0) {
        return -1;
    }

    *xml = NULL;
    plist_to_xml(cmd->plist, xml, len);
    if (*xml == NULL) {
        mdm_err("cannot serialise the command");
        return -1;
    }

    return 0;
}


void
mdm_command_free(mdm_command_t *cmd)
{
    plist_free(cmd->plist);
    free((char *) cmd->request_type);
    cmd->plist = NULL;
    cmd->request_type = NULL;
}


/* ---- mdmctl command ------------------------------------------------------ */

static void
mdm_command_list(void)
{
    size_t  i;

    for (i = 0; i < mdm_command_nkeys; i++) {
        if (mdm_command_keys[i].path[0] == '\0') {
            printf("%s\n", mdm_command_keys[i].request_type);
        }
    }
}


static int
mdm_command_keys_of(const char *rt)
{
    size_t                    i;
    const char               *t;
    const mdm_command_key_t  *r;

    if (mdm_ckey(rt, "") == NULL) {
        mdm_err("unknown RequestType %s (mdmctl command --list shows them)",
                rt);
        return MDM_ERROR;
    }

    for (i = 0; i < mdm_command_nkeys; i++) {
        r = &mdm_command_keys[i];
        if (strcmp(r->request_type, rt) != 0 || r->path[0] == '\0') {
            continue;
        }
        t = mdm_type_names[r->type];
        if (strncmp(t, "an ", 3) == 0) {
            t += 3;
        } else if (strncmp(t, "a ", 2) == 0) {
            t += 2;
        }
        printf("%-40s %-10s %s%s%s\n", r->path, t,
               r->required ? "required" : "optional",
               r->range ? " " : "", r->range ? r->range : "");
    }

    return MDM_OK;
}


/* Key=Value and Key:=JSON arguments: a key, then = (ids never have one). */
int
mdm_is_kv(const char *arg)
{
    size_t  n;

    n = strcspn(arg, "=");
    return arg[n] == '=' && n > 0
           && (isalpha((unsigned char) arg[0]) || arg[0] == '_');
}


static const char  mdm_command_usage[] =
    "[options] <RequestType> [Key=Value | Key:=JSON]...\n"
    "       mdmctl command --plist FILE [--uuid UUID]\n"
    "       mdmctl command --list | --keys <RequestType>\n"
    "\n"
    "Builds a command plist, checks it against Apple's schema and prints\n"
    "it (XML). Values are typed by the schema: integers, booleans\n"
    "(true/false), data as base64 or @FILE, arrays of strings as a,b,c;\n"
    "dictionaries and other arrays as JSON (Key:='{...}'). Dotted keys\n"
    "reach into dictionaries (ReturnToService.Enabled=true).\n"
    "\n"
    "  --uuid UUID       CommandUUID to use (default: a fresh UUID)\n"
    "  --plist FILE      check a complete command plist instead\n"
    "  --out FILE        write the plist there instead of stdout\n"
    "  --list            list the known RequestTypes\n"
    "  --keys RT         list the keys of a RequestType\n";


int
mdm_command_main(int argc, char **argv)
{
    int             ch, rc, nkv;
    char           *xml;
    uint32_t        len;
    const char     *uuid, *plist_file, *out;
    mdm_command_t   cmd;

    static const struct option  opts[] = {
        { "uuid", required_argument, NULL, 'u' },
        { "plist", required_argument, NULL, 'p' },
        { "out", required_argument, NULL, 'o' },
        { "list", no_argument, NULL, 'l' },
        { "keys", required_argument, NULL, 'k' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };

    uuid = NULL;
    plist_file = NULL;
    out = NULL;

    while ((ch = mdm_getopt(argc, argv, opts)) != -1) {
        switch (ch) {
        case 'u':
            uuid = optarg;
            break;
        case 'p':
            plist_file = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case 'l':
            mdm_command_list();
            return MDM_OK;
        case 'k':
            return mdm_command_keys_of(optarg);
        case 'h':
            return mdm_usage(mdm_command_usage);
        default:
            return MDM_USAGE;
        }
    }

    argc -= optind;
    argv += optind;

    if (plist_file ? argc != 0 : argc < 1) {
        mdm_err("%s", plist_file ? "--plist takes no other arguments"
                                 : "RequestType missing");
        return MDM_USAGE;
    }

    for (nkv = 1; !plist_file && nkv < argc; nkv++) {
        if (!mdm_is_kv(argv[nkv])) {
            mdm_err("\"%s\" is not Key=Value or Key:=JSON", argv[nkv]);
            return MDM_USAGE;
        }
    }

    rc = MDM_ERROR;

    if (mdm_command_build(&cmd, plist_file ? NULL : argv[0],
                          plist_file ? 0 : argc - 1, argv + 1, plist_file,
                          uuid) == 0
        && mdm_command_xml(&cmd, &xml, &len) == 0)
    {
        if (out) {
            rc = mdm_write_file(out, xml, len, 0644, 1) == 0
                 ? MDM_OK : MDM_ERROR;
        } else {
            rc = fwrite(xml, 1, len, stdout) == len ? MDM_OK : MDM_ERROR;
        }
        plist_to_xml_free(xml);
    }

    mdm_command_free(&cmd);
    return rc;
}
