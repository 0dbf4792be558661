/*
 * mdm-sim: an event-driven fleet of simulated Apple MDM devices.
 *
 * One process, one epoll loop: every connection slot drives one simulated
 * device at a time over keep-alive HTTPS with that device's own identity
 * certificate, so a single core can keep thousands of devices talking.
 */

#ifndef MDM_SIM_H
#define MDM_SIM_H

#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <sys/socket.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/evp.h>
#include <http_parser.h>


typedef enum {
    SIM_ENROLL = 0,
    SIM_POLL,
    SIM_CYCLE,
    SIM_MIXED,
    SIM_STATIC,
    SIM_ENQUEUE,
    SIM_GROWTH,
    SIM_DDM,
    SIM_DDM_FANOUT
} sim_scenario_e;

typedef enum {
    SIM_ENR_CHECKIN = 0,            /* FCALL mdm_checkin Authenticate */
    SIM_ENR_LIGHT,                  /* HSET of a minimal enrollment hash */
    SIM_ENR_NONE                    /* enrolled already */
} sim_enroll_e;

typedef enum {
    SIM_RQ_AUTHENTICATE = 0,
    SIM_RQ_TOKEN_UPDATE,
    SIM_RQ_IDLE,
    SIM_RQ_ACK,
    SIM_RQ_STATIC,
    SIM_RQ_DDM_TOKENS,              /* DeclarativeManagement check-ins */
    SIM_RQ_DDM_ITEMS,
    SIM_RQ_DDM_DECL,
    SIM_RQ_DDM_STATUS,
    SIM_RQ_NKINDS
} sim_kind_e;


typedef struct {
    const char       *host;
    int               port;
    const char       *server_name;
    const char       *checkin_path;
    const char       *connect_path;
    const char       *static_path;
    const char       *static_method;
    const char       *topic;
    const char       *udid_prefix;

    sim_scenario_e    scenario;
    int               devices;
    int               conns;
    int               max_opening;   /* concurrent connects + handshakes */
    double            duration;      /* seconds; 0 = until sessions done */
    uint64_t          max_requests;  /* 0 = no limit */
    uint32_t          sessions;      /* per device; 0 = until duration */
    double            rate;          /* session starts/s, 0 = closed loop */
    double            think_ms;      /* pause between a device's sessions */
    double            timeout;       /* seconds per request */
    double            mixed_checkin; /* share of mixed sessions with a
                                        TokenUpdate first */
    int               signature;     /* Mdm-Signature instead of TLS cert */
    int               sign_load;     /* sign, but send over TLS unsigned */
    int               rsa;           /* mint RSA-2048, not P-256 */
    int               unlock_token;
    int               json;
    int               verbose;
    int               warmup;        /* measure once every connection is up */
    int               ncpu;
    const char       *cpu_label[16]; /* --cpu-pid LABEL:PID */
    int               cpu_pid[16];

    const char       *ca_cert;
    const char       *ca_key;
    const char       *cert_file;    /* may contain %d (device index) */
    const char       *key_file;
    const char       *certs_dir;    /* cache of minted identities */

    const char       *redis;        /* unix path or host:port */
    int               commands;     /* enqueued per device (cycle, mixed) */
    int               targets;      /* enqueue, growth, --enqueue-during */
    const char       *target_prefix; /* their ids; default --udid-prefix */
    sim_enroll_e      enroll;       /* how the targets are enrolled */
    int               enroll_only;
    int               enqueue_chunk; /* ids per mdm_enqueue call */
    int               enqueue_pace;  /* --enqueue-during: % of Redis time */
    int               expires;      /* seconds, 0 = none */
    int               enqueue_during; /* poll etc.: enqueue to the targets
                                        while the fleet talks */
    int               cleanup;      /* delete the targets' keys after */
    double            answer;       /* growth: share that acknowledges */
    const char       *gc_command;   /* growth: run instead of mdm_sweep */
    int               ddm_decls;    /* ddm: declarations in the fleet's set */
} sim_conf_t;


/* The DDM scenarios: the fleet's sync and the fan-out of one change. */
typedef struct {
    uint64_t          status_bytes; /* the StatusReport JSON of a sync */
    uint64_t          devices;      /* memory: enrollments measured */
    long long         mem[6];       /* MEMORY USAGE summed: ddm, dsets,
                                       dadv, dstat, ditems; the set's
                                       enrollment set */
    double            assign_ms;    /* fan-out: the assignment, set-up */
    uint64_t          calls;        /* touch + fanout calls */
    uint64_t          synced;       /* their replies, summed */
    uint64_t          queued;
    uint64_t          pushes;
    double            total_ms;
    double            max_ms;
    double            server_max_ms; /* SLOWLOG, 0 if < 10 ms */
    uint64_t          have_cmd;     /* checked: DM command in the queue */
    uint64_t          have_push;    /*   push requested */
    uint64_t          commands;     /* distinct CommandUUIDs, all DM */
    uint64_t          not_dm;       /* of which not DeclarativeManagement */
} sim_ddm_t;


/* A chunked enqueue of one command, as the client saw it. */
typedef struct {
    char              uuid[64];
    uint64_t          calls;
    uint64_t          queued;       /* reply: targets queued */
    uint64_t          already;      /* reply: ids skipped, queued before */
    double            total_ms;     /* wall time of all the calls */
    double            max_ms;       /* the longest single call */
    double            server_max_ms; /* the same in SLOWLOG, 0 if < 10 ms */
    double            t_start;
    double            t_end;
    int64_t           memory;       /* used_memory delta */
    int               retry;        /* first chunk again: 1 done, -1 refused */
    uint64_t          retry_queued;
    uint64_t          retry_already;
    char              retry_error[160];
} sim_enq_t;


/*
 * The growth scenario: memory left behind by one expiring command, bytes
 * above the baseline (targets enrolled, nothing queued): used_memory, and
 * MEMORY STATS dataset.bytes (without client and AOF buffers, key tables).
 */
typedef struct {
    int64_t           base;         /* used_memory at the baseline */
    int64_t           base_dataset;
    int64_t           queued;       /* after the enqueue */
    int64_t           answered;     /* after the reports */
    int64_t           swept;        /* after the sweep ... */
    int64_t           swept_dataset;
    int64_t           swept_ttl;    /* ... of which keys with a TTL */
    int64_t           swept_streams; /* ... and the capped streams */
    int64_t           ht_swept;     /* ... and db hash tables */
    int64_t           after_ttl;    /* once those keys expired */
    int64_t           after_dataset;
    int64_t           after_streams;
    int64_t           ht_after;
    long long         keys_base;    /* MEMORY USAGE of every key but the */
    long long         nkeys_base;   /*   streams, and the key count */
    long long         keys_after;
    long long         nkeys_after;
    uint64_t          answers;
    uint64_t          ttl_keys;     /* keys of the step with a TTL */
    uint64_t          left_keys;    /* queues (no TTL) left after the sweep */
    int               cmd_left;     /* mdm:cmd:UUID exists after it */
    uint64_t          sweep_calls;
    uint64_t          expired;      /* mdm_sweep replies, summed */
    uint64_t          released;
    double            sweep_ms;
    double            sweep_max_ms; /* --gc: Redis' SLOWLOG, 0 if < 10 ms */
    double            expiry_wait_s;
    double            ttl_wait_s;
    int64_t           result_ttl;
} sim_growth_t;


/* The XML property list around a message's keys. */
#define SIM_PLIST_HEAD                                                       \
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"                           \
    "<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" "                \
    "\"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n"                  \
    "<plist version=\"1.0\">\n<dict>\n"

#define SIM_PLIST_TAIL  "</dict>\n</plist>\n"


/* Log-linear latency histogram in microseconds (about 1.6% precision). */
#define SIM_HIST_SUB    64
#define SIM_HIST_N      (128 + 40 * SIM_HIST_SUB)

typedef struct {
    uint64_t          count;
    uint64_t          sum;
    uint64_t          max;
    uint64_t          buckets[SIM_HIST_N];
} sim_hist_t;


typedef struct {
    uint64_t          requests;
    uint64_t          by_kind[SIM_RQ_NKINDS];
    uint64_t          status[600];
    uint64_t          err_connect;
    uint64_t          err_tls;
    uint64_t          err_timeout;
    uint64_t          err_closed;
    uint64_t          err_protocol;
    uint64_t          handshakes;
    uint64_t          retries;
    uint64_t          sessions;
    uint64_t          devices_done;

    uint64_t          cmd_enqueued;
    uint64_t          cmd_received;
    uint64_t          cmd_acked;
    uint64_t          cmd_duplicate;
    uint64_t          cmd_foreign;
    uint64_t          cmd_missing;

    double            enqueue_ms;
    sim_enq_t         enq;              /* enqueue, --enqueue-during */
    sim_growth_t      growth;
    sim_ddm_t         ddm;
    double            cleanup_ms;
    double            enroll_ms;        /* enqueue: direct enrollment */
    int64_t           enroll_memory;    /* used_memory delta, bytes */
    int64_t           enqueue_memory;
    double            t_start;
    double            t_end;
    uint64_t          warmup_requests;
    double            cpu_us[17];     /* per --cpu-pid, then the simulator */
    double            machine_us[2];  /* all CPUs: busy, busy + idle */

    sim_hist_t        latency;
    sim_hist_t        handshake;
} sim_stats_t;


typedef struct {
    int               index;
    char              udid[64];
    X509             *cert;
    EVP_PKEY         *key;
    uint32_t          sessions;
    uint8_t          *acked;        /* one bit per enqueued command */
    int               done;         /* cycle: queue drained */
    uint32_t          failures;     /* consecutive failed sessions */
    char             *signed_body;  /* the last body signed, and its */
    size_t            signed_len;   /*   Mdm-Signature: an Idle poll is */
    char             *signature;    /*   the same bytes every time, and */
    size_t            signature_len; /*  RSA signing would bound the sim */
} sim_device_t;


typedef enum {
    SIM_C_IDLE = 0,
    SIM_C_WAIT,                     /* scheduled, in the timer heap */
    SIM_C_QUEUED,                   /* waiting for a handshake slot */
    SIM_C_CONNECTING,
    SIM_C_HANDSHAKE,
    SIM_C_WRITING,
    SIM_C_READING,
    SIM_C_DONE
} sim_conn_state_e;

typedef struct {
    char             *data;
    size_t            len;
    size_t            cap;
} sim_buf_t;

/* One entry of a DeclarationItemsResponse, fetched next in the sync. */
#define SIM_DDM_MAX     64

typedef struct {
    char              id[96];
    char              token[48];
    int               kind;         /* 0-3: activation ... management */
} sim_ddm_item_t;

typedef struct {
    int               id;
    int               fd;
    SSL              *ssl;
    sim_conn_state_e  state;
    uint32_t          events;

    int               dev_first;    /* devices id, id + conns, ... */
    int               dev_cursor;
    sim_device_t     *dev;
    sim_device_t     *conn_dev;     /* identity of the open connection */

    sim_buf_t         out;
    size_t            out_off;
    sim_buf_t         scratch;        /* request body being built */
    sim_buf_t         sig;            /* its Mdm-Signature */
    sim_buf_t         body;           /* response body */
    http_parser       parser;
    int               resp_done;
    int               got_bytes;
    uint32_t          reqs_on_conn;

    sim_kind_e        kind;
    double            t_req;
    double            t_hs;
    double            deadline;
    double            next_at;
    size_t            heap_idx;
    int               retried;
    int               warm;           /* finished its first request */
    int               parked;         /* waiting for the warm-up to end */
    int               opening;        /* counted in sim->opening */

    char              cmd_uuid[64];
    char              cmd_type[64];

    sim_ddm_item_t   *ddm;          /* the sync's declaration-items */
    int               ddm_n;
    int               ddm_next;     /* the next one to fetch */
} sim_conn_t;


typedef struct {
    sim_conf_t        conf;
    sim_stats_t       stats;
    SSL_CTX          *ctx;
    struct sockaddr_storage  addr;
    socklen_t         addrlen;
    sim_device_t     *devices;
    sim_conn_t       *conns;
    int               epfd;
    int               stopping;
    int               active;       /* connections not idle or done */
    uint64_t          started;      /* requests started */
    int               warming;
    int               opening;      /* connections in connect + handshake */
    sim_conn_t      **queue;        /* waiting to connect, a ring */
    size_t            qhead;
    size_t            qlen;
    int               nwarm;
    double            end;          /* when to stop starting sessions */

    sim_conn_t      **heap;
    size_t            nheap;

    char              run_prefix[32];  /* command UUID prefix of this run */

    char            **targets;      /* --enqueue-during: ids, command */
    sim_buf_t         bg_plist;
    void             *bg_rc;        /* its own Redis connection */
    int               bg_started;
    int               bg_done;      /* set by the thread (atomic) */
    pthread_t         bg_thread;
    uint8_t           unlock[1288];
} sim_t;


struct redisContext;

/* sim_util.c */
double sim_now(void);
void sim_buf_reset(sim_buf_t *b);
void sim_buf_add(sim_buf_t *b, const void *p, size_t n);
void sim_buf_printf(sim_buf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void sim_buf_base64(sim_buf_t *b, const uint8_t *p, size_t n, int wrap);
void sim_die(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));

/* mdm_sim.c */
void sim_warm(sim_t *sim, sim_conn_t *c);

/* sim_stats.c */
void sim_hist_add(sim_hist_t *h, uint64_t us);
uint64_t sim_hist_pct(const sim_hist_t *h, double pct);
void sim_stats_print(sim_t *sim, int json);

/* sim_pki.c */
void sim_pki_init(sim_t *sim);
void sim_pki_sign(sim_device_t *dev, const char *body, size_t len,
    sim_buf_t *out);

/* sim_body.c */
void sim_body_build(sim_t *sim, sim_conn_t *c, sim_kind_e kind,
    sim_buf_t *out);
void sim_body_device(sim_t *sim, sim_device_t *dev, sim_kind_e kind,
    sim_buf_t *b);
void sim_body_checkin_fields(sim_t *sim, sim_device_t *dev, sim_kind_e kind,
    const char **kv, size_t *lens, int *n, char *hex);
void sim_body_command(sim_t *sim, int k, sim_buf_t *out);
void sim_body_ack(sim_device_t *dev, const char *uuid, const char *type,
    sim_buf_t *b);
void sim_body_uuid(sim_t *sim, int k, char *out, size_t n);
void sim_body_serial(const char *udid, char *out);
int sim_body_uuid_index(sim_t *sim, const char *uuid);

/* sim_conn.c */
void sim_conn_send(sim_t *sim, sim_conn_t *c, sim_kind_e kind);
void sim_conn_io(sim_t *sim, sim_conn_t *c, uint32_t events);
void sim_conn_close(sim_t *sim, sim_conn_t *c);
void sim_conn_check_timeouts(sim_t *sim, double now);

/* sim_device.c */
void sim_device_start(sim_t *sim, sim_conn_t *c);
void sim_device_response(sim_t *sim, sim_conn_t *c, int status);
void sim_device_failed(sim_t *sim, sim_conn_t *c);
void sim_device_timer(sim_t *sim, sim_conn_t *c);
void sim_device_resume(sim_t *sim, sim_conn_t *c, double now);
void sim_heap_push(sim_t *sim, sim_conn_t *c);
sim_conn_t *sim_heap_top(sim_t *sim);
void sim_heap_pop(sim_t *sim);

/* sim_redis.c */
void sim_redis_enqueue(sim_t *sim);
void sim_redis_bulk(sim_t *sim);
void sim_redis_growth(sim_t *sim);
void sim_redis_bg_prepare(sim_t *sim);
void sim_redis_bg_start(sim_t *sim);
int sim_redis_bg_done(sim_t *sim);
void sim_redis_bg_finish(sim_t *sim);
struct redisContext *sim_redis_connect(const char *addr);
char **sim_redis_ids(const char *prefix, int n);
void sim_redis_ids_free(char **ids);
void sim_redis_enroll(sim_t *sim, struct redisContext *rc, int n,
    char **ids);
double sim_redis_slowest(struct redisContext *rc, const char *fn);
void sim_redis_drain(struct redisContext *rc, int n, const char *what);
long long sim_redis_info(struct redisContext *rc, const char *section,
    const char *field);
void sim_redis_cleanup(sim_t *sim, struct redisContext *rc, int n,
    char **ids, const char *uuid);

/* sim_ddm.c */
void sim_ddm_body(sim_t *sim, sim_conn_t *c, sim_kind_e kind, sim_buf_t *b);
int sim_ddm_next(sim_t *sim, sim_conn_t *c);
void sim_ddm_setup(sim_t *sim);
void sim_ddm_memory(sim_t *sim);
void sim_ddm_fanout(sim_t *sim);

#endif /* MDM_SIM_H */
