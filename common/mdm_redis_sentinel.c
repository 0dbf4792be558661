/*
 * Copyright (C) The MDM module authors
 */


#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>

#include "mdm_redis_sentinel.h"


int
mdm_redis_sentinel_primary(const mdm_redis_addr_t *a, int timeout_ms,
    char *host, size_t hostlen, int *port, char *err, size_t errlen)
{
    int                      i, p;
    struct timeval           tv;
    redisReply              *r;
    redisContext            *c;
    unsigned char            buf[16];
    const mdm_redis_node_t  *n;

    snprintf(err, errlen, "no sentinel configured");

    tv.tv_sec = timeout_ms / 1000;
    tv.tv_usec = (timeout_ms % 1000) * 1000;

    for (i = 0; i < a->nsentinels; i++) {
        n = &a->sentinels[i];

        c = redisConnectWithTimeout(n->host, n->port, tv);
        if (c == NULL || c->err) {
            snprintf(err, errlen, "sentinel %s:%d: %s", n->host, n->port,
                     c ? c->errstr : "out of memory");
            redisFree(c);
            continue;
        }

        redisSetTimeout(c, tv);

        if (a->sentinel_password[0]) {
            r = redisCommand(c, "AUTH %s", a->sentinel_password);
            freeReplyObject(r);
        }

        r = redisCommand(c, "SENTINEL get-master-addr-by-name %s", a->master);
        if (r == NULL) {
            snprintf(err, errlen, "sentinel %s:%d: %s", n->host, n->port,
                     c->errstr[0] ? c->errstr : "connection lost");
            redisFree(c);
            continue;
        }

        p = 0;
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2
            && r->element[0]->type == REDIS_REPLY_STRING
            && r->element[1]->type == REDIS_REPLY_STRING
            && r->element[0]->len < hostlen)
        {
            memcpy(host, r->element[0]->str, r->element[0]->len);
            host[r->element[0]->len] = '\0';
            p = atoi(r->element[1]->str);

            /* an IP, never a name: the grammar resolves nothing */
            if (p <= 0 || p > 65535
                || (inet_pton(AF_INET, host, buf) != 1
                    && inet_pton(AF_INET6, host, buf) != 1))
            {
                p = 0;
            }
        }

        if (p == 0) {
            snprintf(err, errlen, "sentinel %s:%d: no usable address for "
                     "master \"%s\"%s%s", n->host, n->port, a->master,
                     r->type == REDIS_REPLY_ERROR ? ": " : "",
                     r->type == REDIS_REPLY_ERROR ? r->str : "");
            freeReplyObject(r);
            redisFree(c);
            continue;
        }

        freeReplyObject(r);
        redisFree(c);
        *port = p;
        return 0;
    }

    return -1;
}


int
mdm_redis_role_is_master(redisContext *c, char *err, size_t errlen)
{
    int          ok;
    redisReply  *r;

    r = redisCommand(c, "ROLE");
    if (r == NULL) {
        snprintf(err, errlen, "ROLE: %s",
                 c->errstr[0] ? c->errstr : "connection lost");
        return -1;
    }

    ok = r->type == REDIS_REPLY_ARRAY && r->elements > 0
         && r->element[0]->type == REDIS_REPLY_STRING
         && strcmp(r->element[0]->str, "master") == 0;

    if (!ok) {
        snprintf(err, errlen, "not the primary (ROLE %s)",
                 r->type == REDIS_REPLY_ARRAY && r->elements > 0
                 && r->element[0]->str ? r->element[0]->str
                 : r->type == REDIS_REPLY_ERROR ? r->str : "?");
    }

    freeReplyObject(r);

    return ok;
}


int
mdm_redis_wait_replicas(redisContext *c, const mdm_redis_addr_t *a,
    char *err, size_t errlen)
{
    long long    n;
    redisReply  *r;

    if (a->replicas == 0) {
        return 0;
    }

    r = redisCommand(c, "WAIT %d %d", a->replicas, a->wait_timeout);
    if (r == NULL) {
        snprintf(err, errlen, "WAIT: %s",
                 c->errstr[0] ? c->errstr : "connection lost");
        return -1;
    }

    n = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;

    if (n < a->replicas) {
        snprintf(err, errlen, "written on the primary, but %lld of "
                 "replicas=%d confirmed it within %d ms%s%s", n < 0 ? 0 : n,
                 a->replicas, a->wait_timeout,
                 r->type == REDIS_REPLY_ERROR ? ": " : "",
                 r->type == REDIS_REPLY_ERROR ? r->str : "");
        freeReplyObject(r);
        return -1;
    }

    freeReplyObject(r);

    return 0;
}
