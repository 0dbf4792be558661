
/*
 * Copyright (C) The MDM module authors
 *
 * A bounded pre-scan of an XML plist body, run before libplist sees it.
 * Pure C, no nginx types: the message fuzzer links it directly.
 */


#ifndef _NGX_HTTP_MDM_PLIST_SCAN_H_INCLUDED_
#define _NGX_HTTP_MDM_PLIST_SCAN_H_INCLUDED_


#include <stddef.h>


#define MDM_SCAN_DEPTH_MAX     64            /* largest depth bound taken */


/*
 * Walks the body with libplist 2.2's own tokenizer rules and returns NULL
 * when libplist would build at most depth_max levels of dict/array, at most
 * elements_max elements, and unescape entities in bounded time; otherwise
 * a short static reason. It refuses some input libplist would accept
 * (unknown constructs, a nested <plist>), never the other way round.
 */
const char *mdm_plist_scan(const char *body, size_t len, int depth_max,
    size_t elements_max);


#endif /* _NGX_HTTP_MDM_PLIST_SCAN_H_INCLUDED_ */
