/*
 * Copyright (C) The MDM module authors
 *
 * mdm-webhookd: delivers the device events of mdm:events to a webhook
 * receiver (README.md).
 */

#ifndef _WEBHOOKD_H_INCLUDED_
#define _WEBHOOKD_H_INCLUDED_

#include <stddef.h>
#include <stdio.h>

#define WEBHOOKD_VERSION     "0.1"
#define WEBHOOK_LIB_VERSION  "1"          /* mdm_webhook_version */

typedef struct {
    char       *url;
    char       *redis;
    long long   redis_timeout;           /* ms */
    char       *group;
    char       *name;
    int         from_start;
    char       *hmac_file;
    char       *hmac;
    char       *ca_file;
    long long   timeout;                 /* ms */
    long long   connect_timeout;         /* ms */
    long long   parallel;
    long long   window;
    long long   max_backlog;
    long long   max_attempts;
    long long   max_age;                 /* ms */
    long long   retry_min, retry_max;    /* ms */
    long long   max_dead;
    long long   poll;                    /* ms */
    int         verbose;
} conf_t;

int conf_load(conf_t *c, int argc, char **argv);
void usage(FILE *f);
int parse_duration_ms(const char *s, long long *out);

#endif /* _WEBHOOKD_H_INCLUDED_ */
