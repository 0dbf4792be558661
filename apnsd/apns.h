/* apns.c: libcurl multi contexts on the epoll loop. */
#ifndef MDM_APNS_H
#define MDM_APNS_H

#include "apnsd.h"

#define EV_CURL   1
#define EV_SIGNAL 2
/* EV_WAITER 3 is in store.c */

typedef void (*complete_fn)(item_t *it, xfer_t *x, mctx_t *m, CURLcode res,
                            long status, long http_version, long new_connections);

void apns_init(int epfd, complete_fn cb);
mctx_t *mctx_new(topic_t *t, ident_t *id);
void mctx_release(mctx_t *m);            /* drain, then free */
void apns_reap(void);                    /* free drained contexts */
int apns_send(item_t *it, mctx_t *m);    /* 0 = in flight */
void apns_abort(item_t *it);
void xfer_free(xfer_t *x);
void apns_socket_event(int fd, uint32_t events);
int64_t apns_next_timer(void);           /* monotonic ms, -1 = none */
void apns_run_timers(int64_t now);
void apns_shutdown(void);

#endif
