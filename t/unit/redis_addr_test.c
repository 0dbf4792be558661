
/*
 * Unit test of common/mdm_redis_addr.c, the Redis address grammar of the
 * module, mdm-apnsd and mdmctl. Prints TAP; t/42-redis-addr.t runs it.
 */


#include <stdio.h>
#include <string.h>

#include "mdm_redis_addr.h"


static int  n;
static int  failed;


static void
check(int ok, const char *what)
{
    n++;
    if (!ok) {
        failed++;
    }
    printf("%sok %d - %s\n", ok ? "" : "not ", n, what);
}


static void
spec_ok(const char *spec, const char *formatted, const char *user,
    const char *pass)
{
    char              err[256], buf[256], what[512];
    mdm_redis_addr_t  a;
    int               rc;

    rc = mdm_redis_addr_spec(&a, spec, err, sizeof(err));
    mdm_redis_addr_format(&a, buf, sizeof(buf));

    snprintf(what, sizeof(what), "'%s' -> '%s'%s%s", spec, formatted,
             rc ? ": " : "", rc ? err : "");
    check(rc == 0 && strcmp(buf, formatted) == 0
          && strcmp(a.username, user) == 0 && strcmp(a.password, pass) == 0,
          what);
}


static void
spec_bad(const char *spec, const char *needle)
{
    char              err[256], what[512];
    mdm_redis_addr_t  a;
    int               rc;

    err[0] = '\0';
    rc = mdm_redis_addr_spec(&a, spec, err, sizeof(err));

    snprintf(what, sizeof(what), "'%s' refused: %s", spec, err);
    check(rc == -1 && strstr(err, needle) != NULL, what);
}


int
main(void)
{
    char              err[64], buf[8];
    mdm_redis_addr_t  a;

    spec_ok("unix:/run/redis/redis.sock", "unix:/run/redis/redis.sock",
            "", "");
    spec_ok("127.0.0.1:6379", "127.0.0.1:6379", "", "");
    spec_ok("  10.0.0.5:1   db=3 ", "10.0.0.5:1 db=3", "", "");
    spec_ok("[::1]:6380 username=mdm-nginx password=s3cr=t",
            "[::1]:6380", "mdm-nginx", "s3cr=t");
    spec_ok("[fe80::1]:65535\tdb=9999", "[fe80::1]:65535 db=9999", "", "");

    /* Sentinel: the primary is asked for; replicas= confirms writes */
    spec_ok("sentinel=127.0.0.1:26379,[::1]:26380,10.0.0.2:26381 "
            "master=mdm", "sentinel=127.0.0.1:26379,[::1]:26380,"
            "10.0.0.2:26381 master=mdm", "", "");
    spec_ok("sentinel=127.0.0.1:26379 master=mdm sentinel_password=x=y "
            "password=p replicas=1", "sentinel=127.0.0.1:26379 master=mdm "
            "replicas=1", "", "p");
    spec_ok("127.0.0.1:6379 replicas=2 wait_timeout=250",
            "127.0.0.1:6379 replicas=2", "", "");

    spec_bad("sentinel=127.0.0.1:26379", "needs master=");
    spec_bad("sentinel=localhost:26379 master=m", "not a host name");
    spec_bad("sentinel=127.0.0.1:26379, master=m", "is not unix:/path");
    spec_bad("sentinel= master=m", "is not unix:/path");
    spec_bad("sentinel=1.1.1.1:1,1.1.1.1:2,1.1.1.1:3,1.1.1.1:4,1.1.1.1:5,"
             "1.1.1.1:6,1.1.1.1:7,1.1.1.1:8,1.1.1.1:9 master=m",
             "more than 8");
    spec_bad("127.0.0.1:6379 master=m", "needs sentinel=");
    spec_bad("127.0.0.1:6379 sentinel_password=x", "needs sentinel=");
    spec_bad("sentinel=127.0.0.1:26379 master=a\x01b", "printable");
    spec_bad("127.0.0.1:6379 replicas=-1", "0 to 9999");
    spec_bad("127.0.0.1:6379 replicas=10000", "0 to 9999");
    spec_bad("127.0.0.1:6379 replicas=1 wait_timeout=0", "1 to 99999");
    spec_bad("127.0.0.1:6379 wait_timeout=100", "needs replicas=");

    spec_bad("redis.example.com:6379", "not a host name");
    spec_bad("localhost:6379", "not a host name");
    spec_bad("::1:6379", "[IPv6]:port");
    spec_bad("[::1]6379", "[IPv6]:port");
    spec_bad("[::1", "[IPv6]:port");
    spec_bad("[127.0.0.1]:6379", "not a host name");
    spec_bad("127.0.0.1", "unix:/path");
    spec_bad("127.0.0.1:", "no valid port");
    spec_bad("127.0.0.1:0", "no valid port");
    spec_bad("127.0.0.1:65536", "no valid port");
    spec_bad("127.0.0.1:+80", "no valid port");
    spec_bad("127.0.0.1:6379 db=-1", "0 to 9999");
    spec_bad("127.0.0.1:6379 db=10000", "0 to 9999");
    spec_bad("127.0.0.1:6379 db=", "not username=");
    spec_bad("127.0.0.1:6379 timeout=1s", "not username=");
    spec_bad("unix:relative.sock", "absolute");
    spec_bad("unix:", "absolute");
    spec_bad("", "empty");
    spec_bad("   ", "empty");

    /* a password is never echoed in an error */
    memset(buf, 'x', sizeof(buf));
    {
        char  big[600];

        memset(big, 'p', sizeof(big));
        memcpy(big, "password=", 9);
        big[sizeof(big) - 1] = '\0';
        err[0] = '\0';
        check(mdm_redis_addr_option(&a, big, strlen(big), err, sizeof(err))
              == -1 && strstr(err, "ppp") == NULL,
              "an oversized password is refused without echoing it");
    }

    /* unix path of 107 bytes fits sun_path, 108 does not */
    {
        char  path[5 + 109];

        memcpy(path, "unix:/", 6);
        memset(path + 6, 'a', 106);
        path[112] = '\0';
        check(mdm_redis_addr_parse(&a, path, strlen(path), err, sizeof(err))
              == 0, "unix path of 107 bytes");
        path[112] = 'a';
        path[113] = '\0';
        check(mdm_redis_addr_parse(&a, path, strlen(path), err, sizeof(err))
              == -1, "unix path of 108 bytes refused");
    }

    check(mdm_redis_addr_option(&a, "timeout=3s", 10, err, sizeof(err)) == 1,
          "other options are left to the caller");

    check(mdm_redis_addr_spec(&a, "sentinel=127.0.0.1:26379 master=m "
                              "sentinel_password=s3 replicas=1", err,
                              sizeof(err)) == 0
          && a.type == MDM_REDIS_ADDR_SENTINEL && a.nsentinels == 1
          && a.sentinels[0].port == 26379
          && strcmp(a.sentinel_password, "s3") == 0
          && a.wait_timeout == MDM_REDIS_WAIT_DEFAULT,
          "sentinel fields, default wait_timeout");

    /* a sentinel password is never echoed either */
    {
        char  big[600];

        memset(big, 'p', sizeof(big));
        memcpy(big, "sentinel_password=", 18);
        big[sizeof(big) - 1] = '\0';
        err[0] = '\0';
        check(mdm_redis_addr_option(&a, big, strlen(big), err, sizeof(err))
              == -1 && strstr(err, "ppp") == NULL,
              "an oversized sentinel password is refused without echo");
    }

    /* format truncates safely */
    mdm_redis_addr_spec(&a, "127.0.0.1:6379 db=2", err, sizeof(err));
    check(mdm_redis_addr_format(&a, buf, sizeof(buf)) == 7
          && strlen(buf) == 7, "format truncates within the buffer");

    printf("1..%d\n", n);
    return failed != 0;
}
