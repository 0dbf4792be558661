/*
 * Checks an enrollment profile against the generated schema table (key
 * names, types, presence, allowed values, formats) and against the rules
 * Apple states in prose: one MDM payload, a com.apple.mgmt. topic, an
 * identity payload behind IdentityCertificateUUID, consistent access
 * rights, unique identifiers, and a removable profile.
 */

#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mdmctl.h"


#define MDM_PATH_MAX  256


static const char *const  mdm_type_names[] = {
    "any", "string", "integer", "boolean", "data", "date", "real", "array",
    "dictionary"
};


static int mdm_check_dict(const char *ptype, const char *common,
    const char *prefix, plist_t dict, const char *where);


static const mdm_schema_key_t *
mdm_schema_find(const char *ptype, const char *path)
{
    size_t  i;

    for (i = 0; i < mdm_schema_nkeys; i++) {
        if (strcmp(mdm_schema_keys[i].payload_type, ptype) == 0
            && strcmp(mdm_schema_keys[i].path, path) == 0)
        {
            return &mdm_schema_keys[i];
        }
    }
    return NULL;
}


static int
mdm_schema_known(const char *ptype)
{
    size_t  i;

    for (i = 0; i < mdm_schema_nkeys; i++) {
        if (strcmp(mdm_schema_keys[i].payload_type, ptype) == 0) {
            return 1;
        }
    }
    return 0;
}


static int
mdm_node_type(plist_t node)
{
    switch (plist_get_node_type(node)) {
    case PLIST_STRING:  return MDM_PT_STRING;
    case PLIST_UINT:    return MDM_PT_INTEGER;
    case PLIST_BOOLEAN: return MDM_PT_BOOLEAN;
    case PLIST_DATA:    return MDM_PT_DATA;
    case PLIST_DATE:    return MDM_PT_DATE;
    case PLIST_REAL:    return MDM_PT_REAL;
    case PLIST_ARRAY:   return MDM_PT_ARRAY;
    case PLIST_DICT:    return MDM_PT_DICT;
    default:            return -1;
    }
}


static int
mdm_in_range(const char *range, const char *value)
{
    size_t       n;
    const char  *p, *e;

    n = strlen(value);
    for (p = range; p != NULL; p = e ? e + 1 : NULL) {
        e = strchr(p, '|');
        if ((size_t) ((e ? e : p + strlen(p)) - p) == n
            && strncmp(p, value, n) == 0)
        {
            return 1;
        }
    }
    return 0;
}


static int
mdm_check_value(const char *ptype, const char *path,
    const mdm_schema_key_t *k, plist_t v, const char *where)
{
    int        t, rc;
    char       buf[32], sub[MDM_PATH_MAX];
    char      *s;
    uint32_t   i, n;
    uint64_t   u;
    regex_t    re;
    const mdm_schema_key_t  *item;

    t = mdm_node_type(v);
    if (k->type != MDM_PT_ANY && t != k->type) {
        mdm_err("%s: %s must be of type %s, not %s", where, path,
                mdm_type_names[k->type],
                t < 0 ? "unknown" : mdm_type_names[t]);
        return -1;
    }

    s = NULL;
    if (t == MDM_PT_STRING) {
        plist_get_string_val(v, &s);

    } else if (t == MDM_PT_INTEGER) {
        plist_get_uint_val(v, &u);
        snprintf(buf, sizeof(buf), "%llu", (unsigned long long) u);
        s = strdup(buf);
    }

    rc = 0;
    if (s != NULL && k->range != NULL && !mdm_in_range(k->range, s)) {
        mdm_err("%s: %s is \"%s\", allowed: %s", where, path, s, k->range);
        rc = -1;
    }

    if (rc == 0 && s != NULL && k->format != NULL
        && regcomp(&re, k->format, REG_EXTENDED | REG_NOSUB) == 0)
    {
        if (regexec(&re, s, 0, NULL, 0) != 0) {
            mdm_err("%s: %s \"%s\" does not match %s", where, path, s,
                    k->format);
            rc = -1;
        }
        regfree(&re);
    }

    free(s);
    if (rc != 0) {
        return rc;
    }

    /* the top level's payload array is checked payload by payload */
    if (strcmp(ptype, "TopLevel") == 0 && strcmp(path, "PayloadContent") == 0)
    {
        return 0;
    }

    if (t == MDM_PT_DICT) {
        return mdm_check_dict(ptype, NULL, path, v, where);
    }

    if (t == MDM_PT_ARRAY) {
        snprintf(sub, sizeof(sub), "%s[]", path);
        item = mdm_schema_find(ptype, sub);
        n = plist_array_get_size(v);
        for (i = 0; item != NULL && i < n; i++) {
            if (mdm_check_value(ptype, sub, item,
                                plist_array_get_item(v, i), where) != 0)
            {
                return -1;
            }
        }
    }

    return 0;
}


/* Required keys whose parent is "prefix" must be present in dict. */
static int
mdm_check_required(const char *ptype, const char *prefix, plist_t dict,
    const char *where)
{
    size_t       i, n;
    const char  *path, *name;

    n = strlen(prefix);
    for (i = 0; i < mdm_schema_nkeys; i++) {
        if (!mdm_schema_keys[i].required
            || strcmp(mdm_schema_keys[i].payload_type, ptype) != 0)
        {
            continue;
        }

        path = mdm_schema_keys[i].path;
        if (n) {
            if (strncmp(path, prefix, n) != 0 || path[n] != '.') {
                continue;
            }
            name = path + n + 1;

        } else {
            name = path;
        }

        if (strpbrk(name, ".[") != NULL || strcmp(name, "*") == 0) {
            continue;
        }

        if (plist_dict_get_item(dict, name) == NULL) {
            mdm_err("%s: required key %s%s%s is missing", where, prefix,
                    n ? "." : "", name);
            return -1;
        }
    }
    return 0;
}


static int
mdm_check_dict(const char *ptype, const char *common, const char *prefix,
    plist_t dict, const char *where)
{
    int                      rc;
    char                    *key;
    char                     path[MDM_PATH_MAX];
    plist_t                  v;
    plist_dict_iter          it;
    const char              *kt;
    const mdm_schema_key_t  *k;

    if (mdm_check_required(ptype, prefix, dict, where) != 0
        || (common && mdm_check_required(common, prefix, dict, where) != 0))
    {
        return -1;
    }

    rc = 0;
    it = NULL;
    plist_dict_new_iter(dict, &it);

    for ( ;; ) {
        key = NULL;
        v = NULL;
        plist_dict_next_item(dict, it, &key, &v);
        if (key == NULL) {
            break;
        }

        if (prefix[0]) {
            snprintf(path, sizeof(path), "%s.%s", prefix, key);
        } else {
            snprintf(path, sizeof(path), "%s", key);
        }

        kt = ptype;
        k = mdm_schema_find(ptype, path);
        if (k == NULL && common != NULL) {
            kt = common;
            k = mdm_schema_find(common, path);
        }
        if (k == NULL && prefix[0]) {
            snprintf(path, sizeof(path), "%s.*", prefix);
            kt = ptype;
            k = mdm_schema_find(ptype, path);
        }

        if (k == NULL) {
            mdm_err("%s: unknown key %s%s%s", where, prefix,
                    prefix[0] ? "." : "", key);
            rc = -1;

        } else {
            rc = mdm_check_value(kt, path, k, v, where);
        }

        free(key);
        if (rc != 0) {
            break;
        }
    }

    free(it);
    return rc;
}


static const char *
mdm_dict_string(plist_t dict, const char *key)
{
    plist_t  v;

    v = plist_dict_get_item(dict, key);
    if (v == NULL || plist_get_node_type(v) != PLIST_STRING) {
        return NULL;
    }
    return plist_get_string_ptr(v, NULL);
}


static int
mdm_check_rights(plist_t mdm, const char *where)
{
    plist_t   v;
    uint64_t  r;

    v = plist_dict_get_item(mdm, "AccessRights");
    if (v == NULL) {
        return 0;
    }

    plist_get_uint_val(v, &r);

    if (r == 0 || r > 8191) {
        mdm_err("%s: AccessRights must be 1..8191, not %llu", where,
                (unsigned long long) r);
        return -1;
    }

    if ((r & 2) && !(r & 1)) {
        mdm_err("%s: AccessRights: profile installation (2) needs profile"
                " inspection (1)", where);
        return -1;
    }

    if ((r & 128) && !(r & 64)) {
        mdm_err("%s: AccessRights: provisioning profile installation (128)"
                " needs provisioning profile inspection (64)", where);
        return -1;
    }

    return 0;
}


static int
mdm_check_mdm_payload(plist_t content, plist_t mdm, const char *where)
{
    uint32_t     i, n;
    plist_t      p;
    const char  *topic, *id, *t, *u;

    topic = mdm_dict_string(mdm, "Topic");
    if (topic && strncmp(topic, "com.apple.mgmt.", 15) != 0) {
        mdm_err("%s: Topic \"%s\" must begin with com.apple.mgmt.", where,
                topic);
        return -1;
    }

    id = mdm_dict_string(mdm, "IdentityCertificateUUID");
    n = plist_array_get_size(content);

    for (i = 0; id && i < n; i++) {
        p = plist_array_get_item(content, i);
        t = mdm_dict_string(p, "PayloadType");
        u = mdm_dict_string(p, "PayloadUUID");
        if (u == NULL || t == NULL || strcmp(u, id) != 0) {
            continue;
        }

        if (strcmp(t, "com.apple.security.scep") != 0
            && strcmp(t, "com.apple.security.pkcs12") != 0
            && strcmp(t, "com.apple.security.acme") != 0)
        {
            mdm_err("%s: IdentityCertificateUUID points at a %s payload, not"
                    " an identity", where, t);
            return -1;
        }
        return mdm_check_rights(mdm, where);
    }

    mdm_err("%s: IdentityCertificateUUID %s matches no payload", where,
            id ? id : "(none)");
    return -1;
}


/* Returns 0 when valid; otherwise prints one error line and returns -1. */
int
mdm_profile_validate(plist_t profile, int quiet)
{
    int          nmdm;
    char         where[96];
    uint32_t     i, j, n;
    plist_t      content, p, v, mdm;
    const char  *t, *a, *b;
    uint8_t      no;

    if (plist_get_node_type(profile) != PLIST_DICT) {
        mdm_err("the profile is not a dictionary");
        return -1;
    }

    if (mdm_check_dict("TopLevel", NULL, "", profile, "top level") != 0) {
        return -1;
    }

    /* the enrollment must stay removable by the user (see README) */
    v = plist_dict_get_item(profile, "PayloadRemovalDisallowed");
    if (v != NULL) {
        plist_get_bool_val(v, &no);
        if (no) {
            mdm_err("top level: PayloadRemovalDisallowed is true: the MDM"
                    " enrollment profile must stay removable");
            return -1;
        }
    }

    v = plist_dict_get_item(profile, "IsEncrypted");
    no = 0;
    if (v != NULL) {
        plist_get_bool_val(v, &no);
    }

    if (no || plist_dict_get_item(profile, "EncryptedPayloadContent") != NULL)
    {
        mdm_err("top level: encrypted profiles are not supported");
        return -1;
    }

    content = plist_dict_get_item(profile, "PayloadContent");
    n = plist_array_get_size(content);
    nmdm = 0;
    mdm = NULL;

    for (i = 0; i < n; i++) {
        p = plist_array_get_item(content, i);
        if (plist_get_node_type(p) != PLIST_DICT) {
            mdm_err("payload %u is not a dictionary", i + 1);
            return -1;
        }

        t = mdm_dict_string(p, "PayloadType");
        snprintf(where, sizeof(where), "payload %u (%s)", i + 1,
                 t ? t : "no PayloadType");

        if (t == NULL || !mdm_schema_known(t)) {
            mdm_err("%s: unknown payload type", where);
            return -1;
        }

        if (mdm_check_dict(t, "CommonPayloadKeys", "", p, where) != 0) {
            return -1;
        }

        if (strcmp(t, "com.apple.mdm") == 0) {
            nmdm++;
            mdm = p;
        }

        /* identifiers and UUIDs must be unique within the profile */
        for (j = 0; j < i; j++) {
            a = mdm_dict_string(plist_array_get_item(content, j),
                                "PayloadUUID");
            b = mdm_dict_string(p, "PayloadUUID");
            if (a && b && strcasecmp(a, b) == 0) {
                mdm_err("%s: PayloadUUID %s is not unique", where, b);
                return -1;
            }
            a = mdm_dict_string(plist_array_get_item(content, j),
                                "PayloadIdentifier");
            b = mdm_dict_string(p, "PayloadIdentifier");
            if (a && b && strcmp(a, b) == 0) {
                mdm_err("%s: PayloadIdentifier %s is not unique", where, b);
                return -1;
            }
        }
    }

    if (nmdm != 1) {
        mdm_err("the profile must hold exactly one com.apple.mdm payload,"
                " not %d", nmdm);
        return -1;
    }

    for (i = 0; i < n; i++) {
        if (plist_array_get_item(content, i) == mdm) {
            break;
        }
    }
    snprintf(where, sizeof(where), "payload %u (com.apple.mdm)", i + 1);

    if (mdm_check_mdm_payload(content, mdm, where) != 0) {
        return -1;
    }

    if (!quiet) {
        printf("profile OK: %u payloads, %s\n", n,
               mdm_dict_string(profile, "PayloadIdentifier"));
    }
    return 0;
}
