
/*
 * Copyright (C) The MDM module authors
 */


#include <stdio.h>
#include <string.h>
#include <stdint.h>
#include "ngx_http_mdm_message.h"


#define MDM_SHARED_IPAD_USER  "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"


typedef enum {
    MDM_T_STRING = 1,
    MDM_T_DATA,
    MDM_T_BOOL,
    MDM_T_TOKEN                       /* data, passed on as lowercase hex */
} mdm_key_type_e;


typedef struct {
    const char         *key;
    mdm_key_type_e      type;
    size_t              max;            /* bytes */
    int                 cut;            /* free text: cut, not refused */
} mdm_key_t;


typedef struct {
    const char         *name;
    mdm_msg_type_e      type;
} mdm_type_name_t;


static const char *mdm_string(plist_t dict, const char *key, size_t *len,
    int *bad);
static int mdm_valid_id(const char *s, size_t len);
static int mdm_resolve_ids(mdm_message_t *m, const char **err);
static int mdm_collect(mdm_message_t *m, const char **err);
static int mdm_cut(mdm_message_t *m, plist_t node, const mdm_key_t *k,
    const char **err);
static void mdm_too_long(mdm_message_t *m, const mdm_key_t *k,
    const char **err);
static void mdm_hex(const char *in, size_t len, char *out);
static int mdm_ddm_endpoint(mdm_message_t *m, const char **err);


static const mdm_type_name_t  mdm_types[] = {
    { "Authenticate", MDM_MSG_AUTHENTICATE },
    { "TokenUpdate", MDM_MSG_TOKEN_UPDATE },
    { "CheckOut", MDM_MSG_CHECKOUT },
    { "UserAuthenticate", MDM_MSG_USER_AUTHENTICATE },
    { "SetBootstrapToken", MDM_MSG_SET_BOOTSTRAP_TOKEN },
    { "GetBootstrapToken", MDM_MSG_GET_BOOTSTRAP_TOKEN },
    { "GetToken", MDM_MSG_GET_TOKEN },
    { "DeclarativeManagement", MDM_MSG_DECLARATIVE_MANAGEMENT },
    { NULL, MDM_MSG_NONE }
};


/*
 * The keys the store receives, with their schema types (Apple's
 * mdm/checkin YAML files) and size limits: what a device chose as a name
 * is cut to MDM_NAME_MAX, anything longer than an identifier or token can
 * be is refused. Unknown keys are ignored, as the protocol asks (they stay
 * in the raw message, which the check-in body limit bounds).
 */
static const mdm_key_t  mdm_keys[] = {
    { "Topic", MDM_T_STRING, MDM_LABEL_MAX, 0 },
    { "Token", MDM_T_TOKEN, MDM_TOKEN_MAX, 0 },
    { "PushMagic", MDM_T_STRING, MDM_ID_MAX, 0 },
    { "UnlockToken", MDM_T_DATA, MDM_BLOB_MAX, 0 },
    { "AwaitingConfiguration", MDM_T_BOOL, 0, 0 },
    { "UserShortName", MDM_T_STRING, MDM_LABEL_MAX, 0 },
    { "UserLongName", MDM_T_STRING, MDM_NAME_MAX, 1 },
    { "NotOnConsole", MDM_T_BOOL, 0, 0 },
    { "BootstrapToken", MDM_T_DATA, MDM_BLOB_MAX, 0 },
    { "SerialNumber", MDM_T_STRING, MDM_FACT_MAX, 0 },
    { "Model", MDM_T_STRING, MDM_FACT_MAX, 0 },
    { "ModelName", MDM_T_STRING, MDM_NAME_MAX, 1 },
    { "ProductName", MDM_T_STRING, MDM_FACT_MAX, 0 },
    { "OSVersion", MDM_T_STRING, MDM_FACT_MAX, 0 },
    { "BuildVersion", MDM_T_STRING, MDM_FACT_MAX, 0 },
    { "DeviceName", MDM_T_STRING, MDM_NAME_MAX, 1 },
    { "IMEI", MDM_T_STRING, MDM_FACT_MAX, 0 },
    { "MEID", MDM_T_STRING, MDM_FACT_MAX, 0 },
    { "DigestResponse", MDM_T_STRING, 4096, 0 },
    { "TokenServiceType", MDM_T_STRING, MDM_LABEL_MAX, 0 },
    { "Endpoint", MDM_T_STRING, 1024, 0 },
    { "Data", MDM_T_DATA, MDM_DDM_DATA_MAX, 0 },
    { NULL, 0, 0, 0 }
};


static const char  *mdm_statuses[] = {
    "Idle", "Acknowledged", "Error", "CommandFormatError", "NotNow", NULL
};


int
mdm_message_parse(mdm_message_t *m, mdm_msg_kind_e kind, const char *body,
    size_t len, const char **err)
{
    int                     bad;
    size_t                  n;
    const char             *s;
    const mdm_type_name_t  *t;

    memset(m, 0, sizeof(mdm_message_t));

    if (len == 0) {
        *err = "empty body";
        return 400;
    }

    if (len > UINT32_MAX) {
        *err = "body too large";
        return 400;
    }

    /*
     * Devices send XML (Apple's protocol reference, every capture). A
     * binary plist can share objects and nest without end, and libplist
     * 2.2 expands and recurses through all of it: refuse it.
     */
    if (plist_is_binary(body, len)) {
        *err = "binary property list (devices send XML plists)";
        return 400;
    }

    s = mdm_plist_scan(body, len, MDM_NEST_MAX, MDM_ELEMENTS_MAX);
    if (s != NULL) {
        *err = s;
        return 400;
    }

    plist_from_memory(body, (uint32_t) len, &m->root);

    if (m->root == NULL) {
        *err = "body is not a property list";
        return 400;
    }

    if (plist_get_node_type(m->root) != PLIST_DICT) {
        *err = "property list is not a dictionary";
        return 400;
    }

    bad = 0;

    if (kind == MDM_KIND_REPORT) {
        m->type = MDM_MSG_REPORT;
        m->type_name = "Report";

        m->status = mdm_string(m->root, "Status", &m->status_len, &bad);
        if (m->status == NULL) {
            *err = bad ? "Status is not a string" : "Status missing";
            return 400;
        }

        for (n = 0; mdm_statuses[n]; n++) {
            if (strlen(mdm_statuses[n]) == m->status_len
                && memcmp(mdm_statuses[n], m->status, m->status_len) == 0)
            {
                break;
            }
        }

        if (mdm_statuses[n] == NULL) {
            *err = "unknown Status";
            return 400;
        }

        m->command_uuid = mdm_string(m->root, "CommandUUID",
                                     &m->command_uuid_len, &bad);
        if (bad) {
            *err = "CommandUUID is not a string";
            return 400;
        }

        if (n != 0 && (m->command_uuid == NULL || m->command_uuid_len == 0)) {
            *err = "CommandUUID missing";
            return 400;
        }

        if (m->command_uuid && !mdm_valid_id(m->command_uuid,
                                             m->command_uuid_len))
        {
            *err = "CommandUUID has invalid characters";
            return 400;
        }

        return mdm_resolve_ids(m, err);
    }

    s = mdm_string(m->root, "MessageType", &n, &bad);
    if (s == NULL) {
        *err = bad ? "MessageType is not a string" : "MessageType missing";
        return 400;
    }

    for (t = mdm_types; t->name; t++) {
        if (strlen(t->name) == n && memcmp(t->name, s, n) == 0) {
            break;
        }
    }

    if (t->name == NULL) {
        *err = "unknown MessageType";
        return 400;
    }

    m->type = t->type;
    m->type_name = t->name;

    m->topic = mdm_string(m->root, "Topic", &m->topic_len, &bad);
    if (bad) {
        *err = "Topic is not a string";
        return 400;
    }

    if ((m->type == MDM_MSG_AUTHENTICATE || m->type == MDM_MSG_TOKEN_UPDATE)
        && (m->topic == NULL || m->topic_len == 0))
    {
        *err = "Topic missing";
        return 400;
    }

    if (mdm_resolve_ids(m, err) != 0) {
        return 400;
    }

    if (mdm_collect(m, err) != 0) {
        return 400;
    }

    if (m->type == MDM_MSG_DECLARATIVE_MANAGEMENT) {
        return mdm_ddm_endpoint(m, err);
    }

    return 0;
}


/*
 * The DDM Endpoint grammar: tokens, declaration-items, status, or
 * declaration/<kind>/<Identifier>. The identifier becomes part of a Redis
 * key and of log lines: 1-64 octets, no '/', no "..", no control bytes.
 */

static int
mdm_ddm_endpoint(mdm_message_t *m, const char **err)
{
    int                 i;
    size_t              n, k;
    const char         *s, *id;
    static const char  *kinds[] = {
        "activation", "asset", "configuration", "management", NULL
    };

    s = NULL;
    n = 0;

    for (i = 0; i < m->nkv; i++) {
        if (strcmp(m->kv[i].key, "Endpoint") == 0) {
            s = m->kv[i].val;
            n = m->kv[i].len;
        }
    }

    if (s == NULL) {
        *err = "DeclarativeManagement without Endpoint";
        return 400;
    }

    m->endpoint = s;
    m->endpoint_len = n;

    if ((n == 6 && memcmp(s, "tokens", 6) == 0)
        || (n == 17 && memcmp(s, "declaration-items", 17) == 0)
        || (n == 6 && memcmp(s, "status", 6) == 0))
    {
        return 0;
    }

    if (n < 12 || memcmp(s, "declaration/", 12) != 0) {
        *err = "unknown DeclarativeManagement Endpoint";
        return 400;
    }

    s += 12;
    n -= 12;

    for (i = 0; kinds[i]; i++) {
        k = strlen(kinds[i]);
        if (n > k && memcmp(s, kinds[i], k) == 0 && s[k] == '/') {
            break;
        }
    }

    if (kinds[i] == NULL) {
        *err = "declaration Endpoint with an unknown kind";
        return 400;
    }

    id = s + k + 1;
    n -= k + 1;

    if (n == 0 || n > MDM_DDM_ID_MAX) {
        *err = "declaration Identifier empty or over 64 octets";
        return 400;
    }

    for (k = 0; k < n; k++) {
        if ((unsigned char) id[k] < 0x20 || id[k] == 0x7f || id[k] == '/'
            || (id[k] == '.' && k + 1 < n && id[k + 1] == '.'))
        {
            *err = "declaration Identifier with '/', '..' or a control byte";
            return 400;
        }
    }

    return 0;
}


void
mdm_message_free(mdm_message_t *m)
{
    if (m->root) {
        plist_free(m->root);
        m->root = NULL;
    }
}


/* A string value; NULL when absent; *bad when present with another type. */

static const char *
mdm_string(plist_t dict, const char *key, size_t *len, int *bad)
{
    uint64_t     l;
    plist_t      node;
    const char  *s;

    *len = 0;
    node = plist_dict_get_item(dict, key);

    if (node == NULL) {
        return NULL;
    }

    if (plist_get_node_type(node) != PLIST_STRING) {
        *bad = 1;
        return NULL;
    }

    s = plist_get_string_ptr(node, &l);
    *len = (size_t) l;

    return s;
}


/*
 * Ids become Redis key parts and hash tags: refuse separators, braces,
 * white space and control characters.
 */

static int
mdm_valid_id(const char *s, size_t len)
{
    size_t  i;

    if (len == 0 || len > MDM_ID_MAX) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if ((unsigned char) s[i] <= 0x20 || (unsigned char) s[i] >= 0x7f
            || s[i] == ':' || s[i] == '{' || s[i] == '}')
        {
            return 0;
        }
    }

    return 1;
}


/* NanoMDM's normalisation of enrollment ids (protocol section 0.1). */

static int
mdm_resolve_ids(mdm_message_t *m, const char **err)
{
    int          bad;
    size_t       ulen, slen;
    const char  *user, *shortname;

    bad = 0;
    user = NULL;
    ulen = 0;

    m->device_id = mdm_string(m->root, "UDID", &m->device_id_len, &bad);

    if (m->device_id) {
        user = mdm_string(m->root, "UserID", &ulen, &bad);
        m->channel = user ? "User" : "Device";

        if (user && ulen == sizeof(MDM_SHARED_IPAD_USER) - 1
            && memcmp(user, MDM_SHARED_IPAD_USER, ulen) == 0)
        {
            shortname = mdm_string(m->root, "UserShortName", &slen, &bad);
            if (shortname == NULL) {
                *err = "Shared iPad user without UserShortName";
                return 400;
            }

            user = shortname;
            ulen = slen;
            m->channel = "SharediPad";
        }

    } else {
        m->device_id = mdm_string(m->root, "EnrollmentID", &m->device_id_len,
                                  &bad);
        if (m->device_id) {
            user = mdm_string(m->root, "EnrollmentUserID", &ulen, &bad);
            m->channel = user ? "UserEnrollmentUser" : "UserEnrollmentDevice";
        }
    }

    if (bad) {
        *err = "an id is not a string";
        return 400;
    }

    if (m->device_id == NULL) {
        *err = "no UDID or EnrollmentID";
        return 400;
    }

    if (!mdm_valid_id(m->device_id, m->device_id_len)
        || (user && !mdm_valid_id(user, ulen)))
    {
        *err = "id empty, too long or with invalid characters";
        return 400;
    }

    memcpy(m->enrollment_id, m->device_id, m->device_id_len);
    m->enrollment_id_len = m->device_id_len;

    if (user) {
        m->enrollment_id[m->enrollment_id_len++] = ':';
        memcpy(m->enrollment_id + m->enrollment_id_len, user, ulen);
        m->enrollment_id_len += ulen;
    }

    m->enrollment_id[m->enrollment_id_len] = '\0';

    return 0;
}


static int
mdm_collect(mdm_message_t *m, const char **err)
{
    uint8_t           b;
    plist_t           node;
    uint64_t          l;
    plist_type        pt;
    mdm_kv_t         *kv;
    const char       *v;
    const mdm_key_t  *k;

    for (k = mdm_keys; k->key; k++) {
        node = plist_dict_get_item(m->root, k->key);
        if (node == NULL) {
            continue;
        }

        pt = plist_get_node_type(node);
        kv = &m->kv[m->nkv];
        kv->key = k->key;

        switch (k->type) {

        case MDM_T_STRING:
            if (pt != PLIST_STRING) {
                goto bad_type;
            }

            plist_get_string_ptr(node, &l);

            if (l > k->max && mdm_cut(m, node, k, err) != 0) {
                return 400;
            }

            kv->val = plist_get_string_ptr(node, &l);
            kv->len = (size_t) l;
            break;

        case MDM_T_DATA:
        case MDM_T_TOKEN:
            if (pt != PLIST_DATA) {
                goto bad_type;
            }
            v = plist_get_data_ptr(node, &l);

            if (l > k->max) {
                mdm_too_long(m, k, err);
                return 400;
            }

            if (k->type == MDM_T_TOKEN) {
                if (l == 0 || l > MDM_TOKEN_MAX) {
                    *err = "Token empty or too long";
                    return 400;
                }
                mdm_hex(v, (size_t) l, m->token_hex);
                v = m->token_hex;
                l *= 2;
            }

            kv->val = v;
            kv->len = (size_t) l;
            break;

        case MDM_T_BOOL:
            if (pt != PLIST_BOOLEAN) {
                goto bad_type;
            }
            plist_get_bool_val(node, &b);
            kv->val = b ? "1" : "0";
            kv->len = 1;
            break;
        }

        m->nkv++;
        continue;

    bad_type:

        *err = "a key has the wrong type";
        return 400;
    }

    if (m->type == MDM_MSG_TOKEN_UPDATE) {
        if (plist_dict_get_item(m->root, "Token") == NULL) {
            *err = "TokenUpdate without Token";
            return 400;
        }

        node = plist_dict_get_item(m->root, "PushMagic");
        if (node == NULL) {
            *err = "TokenUpdate without PushMagic";
            return 400;
        }
    }

    return 0;
}


/*
 * A name over its limit is cut at a UTF-8 character boundary, in the tree
 * too (the raw message is stored from it); the caller logs it. Anything
 * else over its limit is refused.
 */

static int
mdm_cut(mdm_message_t *m, plist_t node, const mdm_key_t *k, const char **err)
{
    size_t       n;
    uint64_t     l;
    const char  *s;
    char         buf[MDM_NAME_MAX + 1];

    s = plist_get_string_ptr(node, &l);

    if (!k->cut || k->max > MDM_NAME_MAX) {
        mdm_too_long(m, k, err);
        return 400;
    }

    /* back off continuation bytes: the cut is before a lead byte */
    for (n = k->max; n > 0 && ((unsigned char) s[n] & 0xc0) == 0x80; n--) {
        /* void */
    }

    memcpy(buf, s, n);
    buf[n] = '\0';
    plist_set_string_val(node, buf);

    if (m->ntrunc < MDM_TRUNC_MAX) {
        m->trunc[m->ntrunc].key = k->key;
        m->trunc[m->ntrunc].len = (size_t) l;
        m->ntrunc++;
    }

    return 0;
}


static void
mdm_too_long(mdm_message_t *m, const mdm_key_t *k, const char **err)
{
    snprintf(m->reason, sizeof(m->reason), "%s longer than %zu bytes",
             k->key, k->max);
    *err = m->reason;
}


static void
mdm_hex(const char *in, size_t len, char *out)
{
    size_t             i;
    static const char  hex[] = "0123456789abcdef";

    for (i = 0; i < len; i++) {
        out[2 * i] = hex[(unsigned char) in[i] >> 4];
        out[2 * i + 1] = hex[(unsigned char) in[i] & 0xf];
    }

    out[2 * len] = '\0';
}
