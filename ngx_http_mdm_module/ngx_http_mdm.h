
/*
 * Copyright (C) The MDM module authors
 */


#ifndef _NGX_HTTP_MDM_H_INCLUDED_
#define _NGX_HTTP_MDM_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>

#include "ngx_http_mdm_message.h"
#include "ngx_http_mdm_verify.h"
#include "mdm_secret.h"
#include "mdm_redis_addr.h"
#include "mdm_keys.h"


/* The Redis Functions library version this module speaks. */
#define NGX_HTTP_MDM_LIB_VERSION      "5"

#define NGX_HTTP_MDM_CHECKIN          1
#define NGX_HTTP_MDM_COMMAND          2
#define NGX_HTTP_MDM_ENDPOINT         3      /* told apart by Content-Type */

#define NGX_HTTP_MDM_UA_DECLINE       0
#define NGX_HTTP_MDM_UA_ACCEPT        1

#define NGX_HTTP_MDM_ID_TLS           1
#define NGX_HTTP_MDM_ID_SIGNATURE     2
#define NGX_HTTP_MDM_ID_HEADER        3
#define NGX_HTTP_MDM_ID_AUTO          4

#define NGX_HTTP_MDM_RETRY_AFTER      "5"

/* mdm_max_body defaults: check-ins are a few KB, reports can be MBs */
#define NGX_HTTP_MDM_MAX_CHECKIN      (64 * 1024)
#define NGX_HTTP_MDM_MAX_REPORT       (2 * 1024 * 1024)


/* One distinct Redis: a worker keeps one connection to it. */
typedef struct {
    mdm_redis_addr_t            addr;        /* common/mdm_redis_addr.h */
    ngx_str_t                   name;        /* for log lines, no password */
    ngx_msec_t                  timeout;     /* the longest of its users */
    redisAsyncContext          *ac;
    ngx_uint_t                  state;
    ngx_uint_t                  checking;    /* a version check in flight */
    ngx_uint_t                  complained;  /* logged this mismatch */
    ngx_msec_t                  backoff;
    ngx_msec_t                  last_reply;
    ngx_event_t                 reconnect_ev;
    ngx_event_t                 check_ev;
    ngx_queue_t                 waiting;     /* calls made during setup */
    ngx_connection_t            dummy;       /* the timers' data */

    /* sentinel=: the primary as last told (ngx_http_mdm_sentinel.c) */
    char                        primary[46];
    int                         primary_port;
    ngx_uint_t                  primary_known;
    ngx_uint_t                  next_sentinel;
    ngx_uint_t                  tried;       /* sentinels asked this round */
    ngx_uint_t                  sub_next;
    redisAsyncContext          *sac;         /* asking for the primary */
    redisAsyncContext          *sub;         /* +switch-master */
    ngx_event_t                 ask_ev;      /* the ask's deadline */
    ngx_event_t                 sub_ev;      /* resubscribe */
} ngx_http_mdm_redis_conn_t;


typedef struct {
    ngx_array_t                 conns;       /* of redis_conn_t * */
    ngx_flag_t                  configured;  /* any mdm_redis */
    mdm_secret_ring_t          *secrets;     /* mdm_secret_key, or NULL */
} ngx_http_mdm_main_conf_t;


/* mdm_redis: http level, or a server (a tenant) of its own */
typedef struct {
    ngx_http_mdm_redis_conn_t  *redis;
    ngx_msec_t                  timeout;
} ngx_http_mdm_srv_conf_t;


typedef struct {
    ngx_uint_t                  endpoint;
    ngx_array_t                *topics;      /* of ngx_str_t */
    ngx_uint_t                  user_auth;
    ngx_uint_t                  identity;
    ngx_int_t                   header;      /* variable index, header mode */
    mdm_verifier_t             *verifier;    /* mdm_device_ca */
    ngx_array_t                *proxies;     /* of ngx_cidr_t */
    ngx_flag_t                  require_id_in_cert;
    size_t                      max_checkin; /* mdm_max_body */
    size_t                      max_report;
    ngx_flag_t                  device_auth; /* mdm_device_auth */
} ngx_http_mdm_loc_conf_t;


/* What became of a Redis call (ngx_http_mdm_redis_call). */
#define NGX_HTTP_MDM_REDIS_REPLY      0   /* a reply, or an unexpected error */
#define NGX_HTTP_MDM_REDIS_TIMEOUT    1   /* no reply in time; may still run */
#define NGX_HTTP_MDM_REDIS_DOWN       2   /* connection lost before a reply */
#define NGX_HTTP_MDM_REDIS_REFUSED    3   /* transient error: OOM, BUSY... */

typedef struct ngx_http_mdm_redis_op_s  ngx_http_mdm_redis_op_t;

/* reply: NULL unless REPLY or REFUSED; hiredis frees it on return */
typedef void (*ngx_http_mdm_redis_handler_pt)(ngx_int_t rc,
    redisReply *reply, void *data);


/* Per-request state; also feeds the $mdm_* variables. */
typedef struct {
    mdm_message_t               msg;
    ngx_str_t                   enrollment_id;
    ngx_str_t                   message_type;
    ngx_str_t                   error;
    ngx_str_t                   status;
    ngx_str_t                   command_uuid;
    ngx_str_t                   request_type;
    ngx_str_t                   ddm_endpoint;
    ngx_str_t                   body;
    ngx_str_t                   cert;        /* cert_sha256, for $mdm_* */
    u_char                      cert_sha256[65];
    time_t                      cert_not_after;
    X509                       *x509;        /* freed with the request */
    ngx_http_mdm_redis_op_t    *op;          /* the FCALL in flight */
    ngx_uint_t                  kind;        /* mdm_msg_kind_e */
    ngx_uint_t                  auth;        /* mdm_device_auth's answer,
                                                an HTTP status; 0 until it
                                                came */
} ngx_http_mdm_ctx_t;


extern ngx_module_t  ngx_http_mdm_module;


/* handler: request -> identity -> message -> store -> response */
ngx_int_t ngx_http_mdm_handler(ngx_http_request_t *r);
void ngx_http_mdm_respond(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *ct, u_char *body, size_t len);
void ngx_http_mdm_refuse(ngx_http_request_t *r, ngx_uint_t status,
    const char *reason);
void ngx_http_mdm_refuse_log(ngx_http_request_t *r, ngx_uint_t status,
    const char *reason);
char *ngx_http_mdm_max_body_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/* identity */
ngx_int_t ngx_http_mdm_identify(ngx_http_request_t *r,
    ngx_http_mdm_ctx_t *ctx, const char **reason);
ngx_int_t ngx_http_mdm_check_cert_names(ngx_http_request_t *r,
    ngx_http_mdm_ctx_t *ctx);
char *ngx_http_mdm_identity_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_mdm_device_ca_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_mdm_trusted_proxy_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/* store: one FCALL per device request */
ngx_int_t ngx_http_mdm_store(ngx_http_request_t *r, ngx_http_mdm_ctx_t *ctx);
void ngx_http_mdm_op_cleanup(void *data);
u_char *ngx_http_mdm_deadline(ngx_http_mdm_srv_conf_t *mscf, u_char *p);
u_char *ngx_http_mdm_copy(ngx_http_request_t *r, redisReply *e, size_t *len,
    const char *prefix);

/* mdm_device_auth: the device identity guards a location nginx serves */
char *ngx_http_mdm_device_auth_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_mdm_device_auth_init(ngx_conf_t *cf);

/* secrets at rest */
char *ngx_http_mdm_secret_key_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_mdm_secret_seal(ngx_http_request_t *r, mdm_message_t *m,
    const char *key, ngx_str_t *val);
const char *ngx_http_mdm_secret_open(ngx_http_request_t *r, const char *field,
    const char *owner, size_t owner_len, ngx_str_t *val);

/* redis */
ngx_int_t ngx_http_mdm_redis_init_process(ngx_cycle_t *cycle);
void ngx_http_mdm_redis_exit_process(ngx_cycle_t *cycle);
ngx_int_t ngx_http_mdm_redis_call(ngx_http_mdm_redis_conn_t *rc, int argc,
    const char **argv, const size_t *argvlen, ngx_msec_t timeout,
    ngx_log_t *log, ngx_http_mdm_redis_handler_pt handler, void *data,
    ngx_http_mdm_redis_op_t **op);
void ngx_http_mdm_redis_cancel(ngx_http_mdm_redis_op_t *op);
ngx_int_t ngx_http_mdm_redis_attach(redisAsyncContext *ac, ngx_log_t *log);
void ngx_http_mdm_redis_found(ngx_http_mdm_redis_conn_t *rc);
void ngx_http_mdm_redis_unfound(ngx_http_mdm_redis_conn_t *rc);
void ngx_http_mdm_redis_switched(ngx_http_mdm_redis_conn_t *rc);

/* metrics: counters the adapter feeds (ngx_http_mdm_metrics.c) */
void ngx_http_mdm_metrics_rtt(uint64_t usec);
void ngx_http_mdm_metrics_reconnect(void);
uint64_t ngx_http_mdm_metrics_now_us(void);

/* sentinel */
void ngx_http_mdm_sentinel_init(ngx_http_mdm_redis_conn_t *rc);
void ngx_http_mdm_sentinel_ask(ngx_http_mdm_redis_conn_t *rc);
void ngx_http_mdm_sentinel_stop(ngx_http_mdm_redis_conn_t *rc);


#endif /* _NGX_HTTP_MDM_H_INCLUDED_ */
