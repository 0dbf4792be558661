/*
 * Copyright (C) The MDM module authors
 *
 * Which Redis is the primary, asked of the sentinels of a sentinel= spec
 * in turn, for mdm-apnsd and mdmctl: blocking hiredis, each sentinel
 * bounded by timeout_ms. The module asks asynchronously on nginx's loop
 * instead (ngx_http_mdm_sentinel.c).
 */


#ifndef _MDM_REDIS_SENTINEL_H_INCLUDED_
#define _MDM_REDIS_SENTINEL_H_INCLUDED_


#include <hiredis/hiredis.h>

#include "mdm_redis_addr.h"


/* 0 with host (an IP literal) and port set; -1 with err set. */
int mdm_redis_sentinel_primary(const mdm_redis_addr_t *a, int timeout_ms,
    char *host, size_t hostlen, int *port, char *err, size_t errlen);

/* 1 when c's ROLE is "master", 0 when not (err says what), -1 lost. */
int mdm_redis_role_is_master(redisContext *c, char *err, size_t errlen);

/* WAIT a->replicas a->wait_timeout: 0 when enough acked, else -1 + err. */
int mdm_redis_wait_replicas(redisContext *c, const mdm_redis_addr_t *a,
    char *err, size_t errlen);


#endif /* _MDM_REDIS_SENTINEL_H_INCLUDED_ */
