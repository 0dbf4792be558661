/*
 * Small helpers: monotonic clock, growable buffers, fatal errors.
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "mdm_sim.h"


double
sim_now(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}


void
sim_die(const char *fmt, ...)
{
    va_list  ap;

    va_start(ap, fmt);
    fprintf(stderr, "mdm-sim: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}


static void
sim_buf_reserve(sim_buf_t *b, size_t n)
{
    size_t  cap;

    if (b->len + n + 1 <= b->cap) {
        return;
    }

    cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n + 1) {
        cap *= 2;
    }

    b->data = realloc(b->data, cap);
    if (b->data == NULL) {
        sim_die("out of memory");
    }
    b->cap = cap;
}


void
sim_buf_reset(sim_buf_t *b)
{
    b->len = 0;
}


void
sim_buf_add(sim_buf_t *b, const void *p, size_t n)
{
    sim_buf_reserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}


void
sim_buf_printf(sim_buf_t *b, const char *fmt, ...)
{
    int      n;
    va_list  ap;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);

    sim_buf_reserve(b, n);

    va_start(ap, fmt);
    vsnprintf(b->data + b->len, n + 1, fmt, ap);
    va_end(ap);
    b->len += n;
}


/*
 * Base64; wrapped in 68-column lines the way devices format <data> values,
 * or on one line for a header.
 */
void
sim_buf_base64(sim_buf_t *b, const uint8_t *p, size_t n, int wrap)
{
    size_t  chunk;

    while (n) {
        chunk = n > 51 ? 51 : n;
        sim_buf_reserve(b, 4 * ((chunk + 2) / 3) + 2);
        b->len += EVP_EncodeBlock((unsigned char *) b->data + b->len,
                                  p, chunk);
        if (wrap) {
            b->data[b->len++] = '\n';
        }
        b->data[b->len] = '\0';
        p += chunk;
        n -= chunk;
    }
}
