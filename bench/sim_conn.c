/*
 * One connection slot: non-blocking connect, TLS handshake with the current
 * device's certificate, one HTTP/1.1 request at a time on a keep-alive
 * connection, response parsed with http-parser.  Level-triggered epoll; the
 * interest set follows whatever OpenSSL says it is waiting for.
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>

#include <openssl/err.h>

#include "mdm_sim.h"


static int
sim_on_body(http_parser *p, const char *at, size_t len)
{
    sim_conn_t  *c = p->data;

    sim_buf_add(&c->body, at, len);
    return 0;
}


static int
sim_on_complete(http_parser *p)
{
    sim_conn_t  *c = p->data;

    c->resp_done = 1;
    return 0;
}


static http_parser_settings  sim_parser_settings = {
    .on_body = sim_on_body,
    .on_message_complete = sim_on_complete,
};


static int sim_conn_open(sim_t *sim, sim_conn_t *c);
static void sim_conn_opened(sim_t *sim, sim_conn_t *c);
static void sim_conn_fail(sim_t *sim, sim_conn_t *c, uint64_t *counter);


static void
sim_conn_events(sim_t *sim, sim_conn_t *c, uint32_t ev)
{
    struct epoll_event  ee;

    if (ev == c->events) {
        return;
    }

    ee.events = ev;
    ee.data.ptr = c;
    if (epoll_ctl(sim->epfd, c->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD,
                  c->fd, &ee) != 0)
    {
        sim_die("epoll_ctl: %s", strerror(errno));
    }
    c->events = ev;
}


/*
 * Handshakes cost far more than requests: a few hundred at a time keep a
 * thousand-device start-up from timing itself out.  Connections beyond
 * --max-connecting wait in a FIFO.
 */
static void
sim_conn_connect(sim_t *sim, sim_conn_t *c)
{
    if (sim->opening >= sim->conf.max_opening) {
        c->state = SIM_C_QUEUED;
        sim->queue[(sim->qhead + sim->qlen++) % sim->conf.conns] = c;
        return;
    }

    if (sim_conn_open(sim, c) != 0) {
        sim_conn_close(sim, c);
        c->got_bytes = 1;
        sim_conn_fail(sim, c, &sim->stats.err_connect);
    }
}


/* A connection left connect + handshake: let the next one in. */
static void
sim_conn_opened(sim_t *sim, sim_conn_t *c)
{
    sim_conn_t  *next;

    if (!c->opening) {
        return;
    }

    c->opening = 0;
    sim->opening--;

    while (sim->qlen && sim->opening < sim->conf.max_opening) {
        next = sim->queue[sim->qhead];
        sim->qhead = (sim->qhead + 1) % sim->conf.conns;
        sim->qlen--;
        sim_conn_connect(sim, next);
    }
}


void
sim_conn_close(sim_t *sim, sim_conn_t *c)
{
    if (c->ssl != NULL) {
        /* one non-blocking attempt at close_notify keeps server logs quiet */
        if (SSL_is_init_finished(c->ssl)) {
            SSL_shutdown(c->ssl);
        }
        SSL_free(c->ssl);
        c->ssl = NULL;
    }

    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }

    ERR_clear_error();
    c->events = 0;
    c->conn_dev = NULL;
    c->reqs_on_conn = 0;
    sim_conn_opened(sim, c);
}


static int
sim_conn_open(sim_t *sim, sim_conn_t *c)
{
    int  one;

    c->fd = socket(sim->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) {
        sim_die("socket: %s", strerror(errno));
    }

    one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    c->t_hs = sim_now();
    c->deadline = c->t_hs + sim->conf.timeout;
    c->conn_dev = c->dev;
    c->reqs_on_conn = 0;
    c->opening = 1;
    sim->opening++;

    if (connect(c->fd, (struct sockaddr *) &sim->addr, sim->addrlen) != 0
        && errno != EINPROGRESS)
    {
        return -1;
    }

    c->ssl = SSL_new(sim->ctx);
    if (c->ssl == NULL) {
        sim_die("SSL_new failed");
    }
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_tlsext_host_name(c->ssl, sim->conf.server_name);

    if (c->dev != NULL && c->dev->cert != NULL && !sim->conf.signature) {
        if (!SSL_use_certificate(c->ssl, c->dev->cert)
            || !SSL_use_PrivateKey(c->ssl, c->dev->key))
        {
            sim_die("cannot use the certificate of %s", c->dev->udid);
        }
    }

    SSL_set_connect_state(c->ssl);
    c->state = SIM_C_CONNECTING;
    sim_conn_events(sim, c, EPOLLOUT);

    return 0;
}


/* A request failed; a stale keep-alive connection gets one silent retry. */
static void
sim_conn_fail(sim_t *sim, sim_conn_t *c, uint64_t *counter)
{
    int  stale;

    stale = (c->state == SIM_C_WRITING || c->state == SIM_C_READING)
            && !c->got_bytes && c->reqs_on_conn > 0 && !c->retried;

    sim_conn_close(sim, c);

    if (stale) {
        sim->stats.retries++;
        c->retried = 1;
        c->out_off = 0;
        sim_conn_connect(sim, c);
        return;
    }

    if (sim->conf.verbose) {
        fprintf(stderr, "mdm-sim: %s: request failed in state %d\n",
                c->dev ? c->dev->udid : "static", (int) c->state);
    }

    (*counter)++;
    c->state = SIM_C_IDLE;
    sim_warm(sim, c);
    sim_device_failed(sim, c);
}


void
sim_conn_send(sim_t *sim, sim_conn_t *c, sim_kind_e kind)
{
    const char  *path, *ct, *method;
    size_t       len;
    sim_buf_t   *body, *sig;

    switch (kind) {
    case SIM_RQ_AUTHENTICATE:
    case SIM_RQ_TOKEN_UPDATE:
    case SIM_RQ_DDM_TOKENS:
    case SIM_RQ_DDM_ITEMS:
    case SIM_RQ_DDM_DECL:
    case SIM_RQ_DDM_STATUS:
        path = sim->conf.checkin_path;
        ct = "application/x-apple-aspen-mdm-checkin";
        method = "PUT";
        break;
    case SIM_RQ_STATIC:
        path = sim->conf.static_path;
        ct = "application/x-apple-aspen-mdm; charset=UTF-8";
        method = sim->conf.static_method;
        break;
    default:
        path = sim->conf.connect_path;
        ct = "application/x-apple-aspen-mdm; charset=UTF-8";
        method = "PUT";
        break;
    }

    c->kind = kind;
    body = &c->scratch;
    sig = &c->sig;
    sim_body_build(sim, c, kind, body);
    len = strcmp(method, "GET") == 0 ? 0 : body->len;

    sim_buf_reset(sig);
    if ((sim->conf.signature || sim->conf.sign_load) && len) {
        sim_pki_sign(c->dev, body->data, len, sig);
    }

    sim_buf_reset(&c->out);
    sim_buf_printf(&c->out, "%s %s HTTP/1.1\r\nHost: %s\r\n"
                   "User-Agent: mdm-sim\r\n", method, path,
                   sim->conf.server_name);
    if (len) {
        sim_buf_printf(&c->out, "Content-Type: %s\r\n"
                       "Content-Length: %zu\r\n", ct, len);
    }
    if (sig->len && sim->conf.signature) {
        sim_buf_printf(&c->out, "Mdm-Signature: %s\r\n", sig->data);
    }
    sim_buf_add(&c->out, "\r\n", 2);
    sim_buf_add(&c->out, body->data, len);
    sim_buf_reset(&c->body);

    c->out_off = 0;
    c->retried = 0;
    c->got_bytes = 0;
    c->resp_done = 0;
    http_parser_init(&c->parser, HTTP_RESPONSE);
    c->parser.data = c;

    c->t_req = sim->conf.rate > 0 ? c->next_at : sim_now();
    c->deadline = sim_now() + sim->conf.timeout;
    sim->started++;

    if (c->fd < 0 || c->conn_dev != c->dev) {
        sim_conn_close(sim, c);
        sim_conn_connect(sim, c);
        return;
    }

    c->state = SIM_C_WRITING;
    sim_conn_io(sim, c, EPOLLOUT);
}


static void
sim_conn_want(sim_t *sim, sim_conn_t *c, int rc)
{
    switch (SSL_get_error(c->ssl, rc)) {
    case SSL_ERROR_WANT_READ:
        sim_conn_events(sim, c, EPOLLIN);
        return;
    case SSL_ERROR_WANT_WRITE:
        sim_conn_events(sim, c, EPOLLOUT);
        return;
    case SSL_ERROR_ZERO_RETURN:
        sim_conn_fail(sim, c, &sim->stats.err_closed);
        return;
    default:
        if (sim->conf.verbose) {
            ERR_print_errors_fp(stderr);
        }
        sim_conn_fail(sim, c, c->state == SIM_C_HANDSHAKE
                              ? &sim->stats.err_tls
                              : &sim->stats.err_closed);
        return;
    }
}


static void
sim_conn_done(sim_t *sim, sim_conn_t *c)
{
    int     status, keep;
    double  now;

    now = sim_now();
    status = c->parser.status_code;
    keep = http_should_keep_alive(&c->parser);

    sim->stats.requests++;
    sim->stats.by_kind[c->kind]++;
    sim->stats.status[status > 0 && status < 600 ? status : 0]++;
    sim_hist_add(&sim->stats.latency,
                 (uint64_t) ((now - c->t_req) * 1e6));
    sim->stats.t_end = now;
    c->reqs_on_conn++;

    if (!keep) {
        sim_conn_close(sim, c);
    } else {
        sim_conn_events(sim, c, EPOLLIN);
    }

    c->state = SIM_C_IDLE;
    sim_warm(sim, c);
    sim_device_response(sim, c, status);
}


void
sim_conn_io(sim_t *sim, sim_conn_t *c, uint32_t events)
{
    int        rc, err;
    size_t     parsed;
    socklen_t  len;
    char       buf[16384];

    switch (c->state) {

    case SIM_C_CONNECTING:
        err = 0;
        len = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
            sim_conn_fail(sim, c, &sim->stats.err_connect);
            return;
        }
        c->state = SIM_C_HANDSHAKE;
        /* fall through */

    case SIM_C_HANDSHAKE:
        rc = SSL_do_handshake(c->ssl);
        if (rc != 1) {
            sim_conn_want(sim, c, rc);
            return;
        }
        sim_conn_opened(sim, c);
        sim->stats.handshakes++;
        sim_hist_add(&sim->stats.handshake,
                     (uint64_t) ((sim_now() - c->t_hs) * 1e6));
        if (sim->conf.rate <= 0 && c->reqs_on_conn == 0 && !c->retried) {
            c->t_req = sim_now();
        }
        c->state = SIM_C_WRITING;
        /* fall through */

    case SIM_C_WRITING:
        while (c->out_off < c->out.len) {
            rc = SSL_write(c->ssl, c->out.data + c->out_off,
                           (int) (c->out.len - c->out_off));
            if (rc <= 0) {
                sim_conn_want(sim, c, rc);
                return;
            }
            c->out_off += rc;
        }
        c->state = SIM_C_READING;
        sim_conn_events(sim, c, EPOLLIN);
        return;

    case SIM_C_READING:
        for ( ;; ) {
            rc = SSL_read(c->ssl, buf, sizeof(buf));
            if (rc <= 0) {
                sim_conn_want(sim, c, rc);
                return;
            }
            c->got_bytes = 1;
            parsed = http_parser_execute(&c->parser, &sim_parser_settings,
                                         buf, rc);
            if (c->parser.http_errno != HPE_OK || parsed != (size_t) rc) {
                if (sim->conf.verbose) {
                    fprintf(stderr, "mdm-sim: bad response: %s\n",
                            http_errno_description(
                                HTTP_PARSER_ERRNO(&c->parser)));
                }
                c->got_bytes = 1;
                sim_conn_fail(sim, c, &sim->stats.err_protocol);
                return;
            }
            if (c->resp_done) {
                sim_conn_done(sim, c);
                return;
            }
        }

    default:
        /* an idle keep-alive connection became readable: server closed */
        if (events && c->fd >= 0) {
            rc = SSL_read(c->ssl, buf, sizeof(buf));
            if (rc <= 0 && SSL_get_error(c->ssl, rc) != SSL_ERROR_WANT_READ) {
                sim_conn_close(sim, c);
            }
        }
        return;
    }
}


void
sim_conn_check_timeouts(sim_t *sim, double now)
{
    int          i;
    sim_conn_t  *c;

    for (i = 0; i < sim->conf.conns; i++) {
        c = &sim->conns[i];
        if (c->state >= SIM_C_CONNECTING && c->state <= SIM_C_READING
            && now > c->deadline)
        {
            c->got_bytes = 1;       /* no silent retry after a timeout */
            sim_conn_fail(sim, c, &sim->stats.err_timeout);
        }
    }
}
