
/*
 * Copyright (C) The MDM module authors
 *
 * Decoding and validation of device messages (check-ins and command
 * reports). Pure C on top of libplist: no nginx types and no I/O, so it can
 * be unit-tested and fuzzed on its own.
 */


#ifndef _NGX_HTTP_MDM_MESSAGE_H_INCLUDED_
#define _NGX_HTTP_MDM_MESSAGE_H_INCLUDED_


#include <stddef.h>
#include <plist/plist.h>

#include "ngx_http_mdm_plist_scan.h"


#define MDM_ID_MAX        128
#define MDM_TOKEN_MAX     128         /* APNs token bytes we accept */
#define MDM_NEST_MAX      32          /* dict/array nesting we accept */
#define MDM_ELEMENTS_MAX  100000      /* XML elements in one body */
#define MDM_KV_MAX        32
#define MDM_TRUNC_MAX     4

/* Stored device facts (bytes): names are cut, the others refused (400). */
#define MDM_NAME_MAX      256         /* DeviceName, UserLongName, ... */
#define MDM_FACT_MAX      64          /* SerialNumber, OSVersion, ... */
#define MDM_LABEL_MAX     256         /* Topic, UserShortName, ... */
#define MDM_BLOB_MAX      16384       /* UnlockToken, BootstrapToken */

/* DDM: the check-in body limit (mdm_max_body) caps a StatusReport first */
#define MDM_DDM_DATA_MAX  (4 * 1024 * 1024)
#define MDM_DDM_ID_MAX    64


typedef enum {
    MDM_MSG_NONE = 0,
    MDM_MSG_AUTHENTICATE,
    MDM_MSG_TOKEN_UPDATE,
    MDM_MSG_CHECKOUT,
    MDM_MSG_USER_AUTHENTICATE,
    MDM_MSG_SET_BOOTSTRAP_TOKEN,
    MDM_MSG_GET_BOOTSTRAP_TOKEN,
    MDM_MSG_GET_TOKEN,
    MDM_MSG_DECLARATIVE_MANAGEMENT,
    MDM_MSG_REPORT                    /* command endpoint */
} mdm_msg_type_e;


typedef enum {
    MDM_KIND_CHECKIN = 1,
    MDM_KIND_REPORT
} mdm_msg_kind_e;


/* A field passed on to the store, named after the Apple key. */
typedef struct {
    const char         *key;
    const char         *val;
    size_t              len;
} mdm_kv_t;


/* A free-text value cut to its limit, for the caller's log line. */
typedef struct {
    const char         *key;
    size_t              len;            /* as sent */
} mdm_trunc_t;


typedef struct {
    plist_t             root;
    mdm_msg_type_e      type;
    const char         *type_name;      /* MessageType or "Report" */

    const char         *topic;
    size_t              topic_len;

    const char         *device_id;      /* UDID or EnrollmentID */
    size_t              device_id_len;
    const char         *channel;        /* Device, User, SharediPad, ... */

    char                enrollment_id[2 * MDM_ID_MAX + 2];
    size_t              enrollment_id_len;

    const char         *status;         /* reports */
    size_t              status_len;
    const char         *command_uuid;
    size_t              command_uuid_len;

    const char         *endpoint;       /* DeclarativeManagement */
    size_t              endpoint_len;

    mdm_kv_t            kv[MDM_KV_MAX];
    int                 nkv;

    mdm_trunc_t         trunc[MDM_TRUNC_MAX];
    int                 ntrunc;

    char                reason[80];     /* a refusal naming its key */

    char                token_hex[2 * MDM_TOKEN_MAX + 1];
} mdm_message_t;


/*
 * Parses and validates a body. Returns 0 on success, or an HTTP status
 * (400) with *err set to a short static reason. On success and on failure
 * the caller must call mdm_message_free().
 */
int mdm_message_parse(mdm_message_t *m, mdm_msg_kind_e kind,
    const char *body, size_t len, const char **err);
void mdm_message_free(mdm_message_t *m);


#endif /* _NGX_HTTP_MDM_MESSAGE_H_INCLUDED_ */
