
/*
 * Copyright (C) The MDM module authors
 *
 * libFuzzer target for the device message decoder: the first byte picks
 * check-in or command report, the rest is the body as nginx would hand it
 * over. Every input must come back as parsed or refused, never crash or
 * leak. And the pre-scan must hold what it promises: whenever it lets a
 * body through and libplist decodes it, the tree is at most MDM_NEST_MAX
 * levels deep with at most MDM_ELEMENTS_MAX nodes.
 */


#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "ngx_http_mdm_message.h"


static size_t mdm_fuzz_walk(plist_t node, int depth, size_t *nodes);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int             rc;
    size_t          nodes;
    const char     *err, *body;
    mdm_message_t   m;
    mdm_msg_kind_e  kind;

    if (size < 1) {
        return 0;
    }

    kind = (data[0] & 1) ? MDM_KIND_REPORT : MDM_KIND_CHECKIN;
    body = (const char *) data + 1;
    err = NULL;

    rc = mdm_message_parse(&m, kind, body, size - 1, &err);

    /* whatever passed the scanner, libplist built within its bounds */
    if (m.root) {
        nodes = 0;
        if (mdm_fuzz_walk(m.root, 1, &nodes) > MDM_NEST_MAX
            || nodes > MDM_ELEMENTS_MAX)
        {
            __builtin_trap();
        }
    }

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


/*
 * The dict/array levels of the tree below and including node, at depth;
 * stops one level past the bound.
 */

static size_t
mdm_fuzz_walk(plist_t node, int depth, size_t *nodes)
{
    size_t           d, max;
    uint32_t         i, n;
    plist_t          item;
    plist_type       t;
    plist_dict_iter  it;

    (*nodes)++;
    t = plist_get_node_type(node);

    if (t != PLIST_ARRAY && t != PLIST_DICT) {
        return depth - 1;
    }

    max = depth;

    if (depth > MDM_NEST_MAX) {
        return depth;
    }

    if (t == PLIST_ARRAY) {
        n = plist_array_get_size(node);

        for (i = 0; i < n; i++) {
            d = mdm_fuzz_walk(plist_array_get_item(node, i), depth + 1, nodes);
            max = d > max ? d : max;
        }

    } else if (t == PLIST_DICT) {
        it = NULL;
        plist_dict_new_iter(node, &it);

        for ( ;; ) {
            item = NULL;
            plist_dict_next_item(node, it, NULL, &item);
            if (item == NULL) {
                break;
            }

            d = mdm_fuzz_walk(item, depth + 1, nodes);
            max = d > max ? d : max;
        }

        free(it);
    }

    return max;
}
