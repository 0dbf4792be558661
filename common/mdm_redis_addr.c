
/*
 * Copyright (C) The MDM module authors
 */


#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>

#include "mdm_redis_addr.h"


static int mdm_redis_addr_error(char *err, size_t errlen, const char *what,
    const char *s, size_t len);
static int mdm_redis_addr_copy(char *dst, size_t size, const char *s,
    size_t len);
static int mdm_redis_addr_number(const char *s, size_t len, int max);
static int mdm_redis_addr_node(char *hbuf, size_t hsize, int *portp,
    const char *s, size_t len, char *err, size_t errlen);
static int mdm_redis_addr_name(char *dst, size_t size, const char *s,
    size_t len);


int
mdm_redis_addr_parse(mdm_redis_addr_t *a, const char *s, size_t len,
    char *err, size_t errlen)
{
    const char        *p, *end, *comma;
    mdm_redis_node_t  *n;

    if (len >= 5 && memcmp(s, "unix:", 5) == 0) {
        if (len == 5 || s[5] != '/' || memchr(s, '\0', len) != NULL
            || mdm_redis_addr_copy(a->host, sizeof(a->host), s + 5, len - 5)
               != 0)
        {
            return mdm_redis_addr_error(err, errlen,
                       "needs an absolute unix socket path of at most 107 "
                       "bytes", s, len);
        }

        a->type = MDM_REDIS_ADDR_UNIX;
        a->port = 0;
        return 0;
    }

    if (len >= 9 && memcmp(s, "sentinel=", 9) == 0) {
        a->nsentinels = 0;
        p = s + 9;
        end = s + len;

        do {
            comma = memchr(p, ',', end - p);
            if (comma == NULL) {
                comma = end;
            }

            if (a->nsentinels == MDM_REDIS_SENTINELS_MAX) {
                return mdm_redis_addr_error(err, errlen,
                           "names more than 8 sentinels", s, len);
            }

            n = &a->sentinels[a->nsentinels];
            if (mdm_redis_addr_node(n->host, sizeof(n->host), &n->port,
                                    p, comma - p, err, errlen)
                != 0)
            {
                return -1;
            }

            a->nsentinels++;
            p = comma + 1;

        } while (comma < end);

        a->type = MDM_REDIS_ADDR_SENTINEL;
        a->host[0] = '\0';
        a->port = 0;
        return 0;
    }

    if (mdm_redis_addr_node(a->host, sizeof(a->host), &a->port, s, len,
                            err, errlen)
        != 0)
    {
        return -1;
    }

    a->type = MDM_REDIS_ADDR_TCP;

    return 0;
}


/* IPv4:port or [IPv6]:port into host (no brackets) and port. */

static int
mdm_redis_addr_node(char *hbuf, size_t hsize, int *portp, const char *s,
    size_t len, char *err, size_t errlen)
{
    int             port;
    const char     *colon, *host, *end;
    size_t          hlen;
    unsigned char   buf[16];

    end = s + len;

    if (len && s[0] == '[') {
        host = s + 1;
        colon = memchr(s, ']', len);
        if (colon == NULL || colon + 1 == end || colon[1] != ':') {
            return mdm_redis_addr_error(err, errlen,
                       "is not [IPv6]:port", s, len);
        }
        hlen = colon - host;
        colon++;

    } else {
        host = s;
        colon = memchr(s, ':', len);
        if (colon == NULL) {
            return mdm_redis_addr_error(err, errlen,
                       "is not unix:/path, IPv4:port, [IPv6]:port or "
                       "sentinel=IP:port,...", s, len);
        }
        if (memchr(colon + 1, ':', end - colon - 1) != NULL) {
            return mdm_redis_addr_error(err, errlen,
                       "looks like IPv6: write it as [IPv6]:port", s, len);
        }
        hlen = colon - host;
    }

    if (mdm_redis_addr_copy(hbuf, hsize, host, hlen) != 0
        || inet_pton(host == s ? AF_INET : AF_INET6, hbuf, buf) != 1)
    {
        return mdm_redis_addr_error(err, errlen,
                   "needs an IP address, not a host name (resolving it "
                   "would block)", s, len);
    }

    port = mdm_redis_addr_number(colon + 1, end - colon - 1, 65535);
    if (port <= 0) {
        return mdm_redis_addr_error(err, errlen, "has no valid port", s, len);
    }

    *portp = port;

    return 0;
}


int
mdm_redis_addr_option(mdm_redis_addr_t *a, const char *s, size_t len,
    char *err, size_t errlen)
{
    if (len > 9 && memcmp(s, "username=", 9) == 0) {
        if (mdm_redis_addr_name(a->username, sizeof(a->username),
                                s + 9, len - 9) != 0)
        {
            return mdm_redis_addr_error(err, errlen,
                       "needs a printable name of at most 127 bytes", s, len);
        }

        return 0;
    }

    if (len > 7 && memcmp(s, "master=", 7) == 0) {
        if (mdm_redis_addr_name(a->master, sizeof(a->master),
                                s + 7, len - 7) != 0)
        {
            return mdm_redis_addr_error(err, errlen,
                       "needs a printable name of at most 127 bytes", s, len);
        }

        return 0;
    }

    if (len > 18 && memcmp(s, "sentinel_password=", 18) == 0) {
        if (memchr(s, '\0', len) != NULL
            || mdm_redis_addr_copy(a->sentinel_password,
                                   sizeof(a->sentinel_password),
                                   s + 18, len - 18) != 0)
        {
            return mdm_redis_addr_error(err, errlen,
                       "needs at most 511 bytes", "sentinel_password=", 18);
        }

        return 0;
    }

    if (len > 9 && memcmp(s, "replicas=", 9) == 0) {
        a->replicas = mdm_redis_addr_number(s + 9, len - 9,
                                            MDM_REDIS_REPLICAS_MAX);
        if (a->replicas < 0) {
            a->replicas = 0;
            return mdm_redis_addr_error(err, errlen,
                       "needs a number from 0 to 9999", s, len);
        }

        return 0;
    }

    if (len > 13 && memcmp(s, "wait_timeout=", 13) == 0) {
        a->wait_timeout = mdm_redis_addr_number(s + 13, len - 13, 99999);
        if (a->wait_timeout <= 0) {
            a->wait_timeout = 0;
            return mdm_redis_addr_error(err, errlen,
                       "needs milliseconds from 1 to 99999", s, len);
        }

        return 0;
    }

    if (len > 9 && memcmp(s, "password=", 9) == 0) {
        if (memchr(s, '\0', len) != NULL
            || mdm_redis_addr_copy(a->password, sizeof(a->password),
                                   s + 9, len - 9) != 0)
        {
            /* never echo a password */
            return mdm_redis_addr_error(err, errlen,
                       "needs at most 511 bytes", "password=", 9);
        }

        return 0;
    }

    if (len > 3 && memcmp(s, "db=", 3) == 0) {
        a->db = mdm_redis_addr_number(s + 3, len - 3, MDM_REDIS_DB_MAX);
        if (a->db < 0) {
            a->db = 0;
            return mdm_redis_addr_error(err, errlen,
                       "needs a number from 0 to 9999", s, len);
        }

        return 0;
    }

    return 1;
}


int
mdm_redis_addr_spec(mdm_redis_addr_t *a, const char *spec, char *err,
    size_t errlen)
{
    int          rc, first;
    const char  *p, *t;

    memset(a, 0, sizeof(mdm_redis_addr_t));
    first = 1;
    p = spec;

    for ( ;; ) {
        while (*p == ' ' || *p == '\t') {
            p++;
        }

        if (*p == '\0') {
            break;
        }

        t = p;
        while (*p && *p != ' ' && *p != '\t') {
            p++;
        }

        if (first) {
            if (mdm_redis_addr_parse(a, t, p - t, err, errlen) != 0) {
                return -1;
            }

            first = 0;
            continue;
        }

        rc = mdm_redis_addr_option(a, t, p - t, err, errlen);
        if (rc == 1) {
            return mdm_redis_addr_error(err, errlen,
                                        "is not " MDM_REDIS_ADDR_OPTIONS,
                                        t, p - t);
        }

        if (rc != 0) {
            return -1;
        }
    }

    if (first) {
        return mdm_redis_addr_error(err, errlen, "is empty", "", 0);
    }

    return mdm_redis_addr_check(a, err, errlen);
}


int
mdm_redis_addr_check(mdm_redis_addr_t *a, char *err, size_t errlen)
{
    if (a->type == MDM_REDIS_ADDR_SENTINEL && a->master[0] == '\0') {
        return mdm_redis_addr_error(err, errlen, "needs master=NAME",
                                    "sentinel=", 9);
    }

    if (a->type != MDM_REDIS_ADDR_SENTINEL
        && (a->master[0] || a->sentinel_password[0]))
    {
        return mdm_redis_addr_error(err, errlen, "needs sentinel=IP:port,...",
                                    a->master[0] ? "master=" :
                                    "sentinel_password=",
                                    a->master[0] ? 7 : 18);
    }

    if (a->wait_timeout && a->replicas == 0) {
        return mdm_redis_addr_error(err, errlen, "needs replicas=N",
                                    "wait_timeout=", 13);
    }

    if (a->wait_timeout == 0) {
        a->wait_timeout = MDM_REDIS_WAIT_DEFAULT;
    }

    return 0;
}


int
mdm_redis_addr_format(const mdm_redis_addr_t *a, char *buf, size_t n)
{
    int  rc, i;

    if (a->type == MDM_REDIS_ADDR_SENTINEL) {
        rc = snprintf(buf, n, "sentinel=");
        for (i = 0; i < a->nsentinels && rc >= 0 && (size_t) rc < n; i++) {
            rc += snprintf(buf + rc, n - rc,
                           strchr(a->sentinels[i].host, ':')
                           ? "%s[%s]:%d" : "%s%s:%d", i ? "," : "",
                           a->sentinels[i].host, a->sentinels[i].port);
        }

        if (rc >= 0 && (size_t) rc < n) {
            rc += snprintf(buf + rc, n - rc, " master=%s", a->master);
        }

    } else if (a->type == MDM_REDIS_ADDR_UNIX) {
        rc = snprintf(buf, n, "unix:%s", a->host);

    } else if (strchr(a->host, ':')) {
        rc = snprintf(buf, n, "[%s]:%d", a->host, a->port);

    } else {
        rc = snprintf(buf, n, "%s:%d", a->host, a->port);
    }

    if (rc >= 0 && (size_t) rc < n && a->db) {
        rc += snprintf(buf + rc, n - rc, " db=%d", a->db);
    }

    if (rc >= 0 && (size_t) rc < n && a->replicas) {
        rc += snprintf(buf + rc, n - rc, " replicas=%d", a->replicas);
    }

    if (rc < 0) {
        return 0;
    }

    return (size_t) rc < n ? rc : (int) n - 1;
}


static int
mdm_redis_addr_error(char *err, size_t errlen, const char *what,
    const char *s, size_t len)
{
    if (errlen) {
        snprintf(err, errlen, "\"%.*s\" %s", (int) (len > 200 ? 200 : len),
                 s, what);
    }

    return -1;
}


static int
mdm_redis_addr_copy(char *dst, size_t size, const char *s, size_t len)
{
    if (len == 0 || len >= size) {
        return -1;
    }

    memcpy(dst, s, len);
    dst[len] = '\0';

    return 0;
}


/* A user or master name: printable, no blanks. */

static int
mdm_redis_addr_name(char *dst, size_t size, const char *s, size_t len)
{
    size_t  i;

    for (i = 0; i < len; i++) {
        if ((unsigned char) s[i] <= ' ' || s[i] == 0x7f) {
            return -1;
        }
    }

    return mdm_redis_addr_copy(dst, size, s, len);
}


/* Digits only, no sign or blanks: 0..max, else -1. */

static int
mdm_redis_addr_number(const char *s, size_t len, int max)
{
    int     n;
    size_t  i;

    if (len == 0 || len > 5) {
        return -1;
    }

    n = 0;
    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        n = n * 10 + (s[i] - '0');
    }

    return n <= max ? n : -1;
}
