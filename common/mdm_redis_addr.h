
/*
 * Copyright (C) The MDM module authors
 *
 * The Redis address grammar shared by the module, mdm-apnsd and mdmctl:
 *
 *   spec    = addr *( SP option )
 *   addr    = node | "unix:" absolute-path | "sentinel=" node *( "," node )
 *   node    = IPv4 ":" port | "[" IPv6 "]" ":" port
 *   option  = "username=" name | "password=" secret | "db=" 0..9999
 *           | "master=" name | "sentinel_password=" secret
 *           | "replicas=" 0..9999 | "wait_timeout=" 1..99999 (ms)
 *
 * sentinel= asks those Sentinels for the primary of master= (required
 * with it); replicas=N has each write confirmed by WAIT N wait_timeout.
 *
 * Host names are refused: resolving them would block an event loop.
 * Pure C, no allocation: parsed into fixed buffers.
 */


#ifndef _MDM_REDIS_ADDR_H_INCLUDED_
#define _MDM_REDIS_ADDR_H_INCLUDED_


#include <stddef.h>


#define MDM_REDIS_ADDR_UNIX      1
#define MDM_REDIS_ADDR_TCP       2
#define MDM_REDIS_ADDR_SENTINEL  3       /* the primary is asked for */

#define MDM_REDIS_DB_MAX         9999
#define MDM_REDIS_SENTINELS_MAX  8
#define MDM_REDIS_REPLICAS_MAX   9999
#define MDM_REDIS_ADDR_OPTIONS   "username=, password=, db=, master=, " \
                                 "sentinel_password=, replicas= or " \
                                 "wait_timeout="
#define MDM_REDIS_WAIT_DEFAULT   1000    /* ms, when replicas= alone */


typedef struct {
    char        host[46];         /* IP literal, no brackets */
    int         port;
} mdm_redis_node_t;


typedef struct {
    int         type;             /* MDM_REDIS_ADDR_UNIX or _TCP */
    char        host[108];        /* unix path, or IP literal, no brackets */
    int         port;             /* TCP only */
    char        username[128];    /* "": AUTH with the password alone */
    char        password[512];    /* "": no AUTH */
    int         db;
    int         nsentinels;       /* SENTINEL: sentinels[0..n-1] */
    mdm_redis_node_t  sentinels[MDM_REDIS_SENTINELS_MAX];
    char        master[128];      /* SENTINEL: the monitored name */
    char        sentinel_password[512];   /* "": no AUTH to Sentinels */
    int         replicas;         /* WAIT for this many after a write */
    int         wait_timeout;     /* ms; 0 until checked */
} mdm_redis_addr_t;


/* The addr token alone; 0, or -1 with err set. */
int mdm_redis_addr_parse(mdm_redis_addr_t *a, const char *s, size_t len,
    char *err, size_t errlen);

/* One option; 0, -1 with err set, or 1 when it is not one of ours. */
int mdm_redis_addr_option(mdm_redis_addr_t *a, const char *s, size_t len,
    char *err, size_t errlen);

/* The options' agreement (master= with sentinel=...); 0 or -1 with err. */
int mdm_redis_addr_check(mdm_redis_addr_t *a, char *err, size_t errlen);

/* A whole spec, fields separated by blanks; a reset *a comes first. */
int mdm_redis_addr_spec(mdm_redis_addr_t *a, const char *spec, char *err,
    size_t errlen);

/* The address for log lines (and " db=N"), never the password. */
int mdm_redis_addr_format(const mdm_redis_addr_t *a, char *buf, size_t n);


#endif /* _MDM_REDIS_ADDR_H_INCLUDED_ */
