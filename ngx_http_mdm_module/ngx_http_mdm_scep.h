
/*
 * Copyright (C) The MDM module authors
 *
 * The SCEP server (mdm_scep) and the enrollment profile (mdm_enroll): a
 * module of their own in the same .so, with the Redis connection of
 * ngx_http_mdm_module's server configuration.
 */


#ifndef _NGX_HTTP_MDM_SCEP_H_INCLUDED_
#define _NGX_HTTP_MDM_SCEP_H_INCLUDED_


#include "ngx_http_mdm.h"
#include "ngx_http_mdm_scep_msg.h"


#define NGX_HTTP_MDM_CHALLENGE_TAG   "@MDM_CHALLENGE@"


typedef struct {
    mdm_scep_ca_t               ca;          /* ca.ca NULL: none */
    ngx_str_t                   ca_der;      /* GetCACert */
    time_t                      validity;
    ngx_str_t                   challenge;   /* mdm_scep_challenge */
    ngx_flag_t                  des;

    ngx_str_t                   tpl;         /* mdm_enroll template */
    time_t                      enroll_ttl;
    X509                       *sign_cert;   /* mdm_enroll_sign */
    EVP_PKEY                   *sign_key;
    STACK_OF(X509)             *sign_chain;
} ngx_http_mdm_scep_loc_conf_t;


extern ngx_module_t  ngx_http_mdm_scep_module;


ngx_int_t ngx_http_mdm_enroll_handler(ngx_http_request_t *r);
char *ngx_http_mdm_enroll_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_mdm_enroll_sign_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_mdm_scep_random(u_char *out, size_t n);
void ngx_http_mdm_scep_free_x509(void *data);
void ngx_http_mdm_scep_free_pkey(void *data);


#endif /* _NGX_HTTP_MDM_SCEP_H_INCLUDED_ */
