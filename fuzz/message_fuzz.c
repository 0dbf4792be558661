
/*
 * Copyright (C) The MDM module authors
 *
 * libFuzzer target for the device message decoder: the first byte picks
 * check-in or command report, the rest is the body as nginx would hand it
 * over. Every input must come back as parsed or refused, never crash or
 * leak.
 */


#include <stdint.h>
#include <stddef.h>
#include <string.h>

#include "ngx_http_mdm_message.h"


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int             rc;
    const char     *err;
    mdm_message_t   m;
    mdm_msg_kind_e  kind;

    if (size < 1) {
        return 0;
    }

    kind = (data[0] & 1) ? MDM_KIND_REPORT : MDM_KIND_CHECKIN;
    err = NULL;

    rc = mdm_message_parse(&m, kind, (const char *) data + 1, size - 1, &err);

    if (rc == 0) {
        /* what the store would read must be there and bounded */
        if (m.enrollment_id_len == 0
            || m.enrollment_id_len >= sizeof(m.enrollment_id)
            || strlen(m.enrollment_id) != m.enrollment_id_len)
        {
            __builtin_trap();
        }

    } else if (err == NULL) {
        __builtin_trap();
    }

    mdm_message_free(&m);

    return 0;
}
