/*
 * Secrets at rest (common/mdm_secret.h): making and checking key files,
 * and opening the sealed values the admin verbs read from Redis.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "mdmctl.h"
#include "mdm_secret.h"


static int mdm_secret_keygen_main(int argc, char **argv);
static int mdm_secret_check_main(int argc, char **argv);
static const mdm_secret_ring_t *mdm_secret_ring(void);


const char  *mdm_secret_file;


static const mdm_cmd_t  mdm_secret_cmds[] = {
    { "keygen", mdm_secret_keygen_main,
      "add a new key (the one that seals from now on) to a key file" },
    { "check", mdm_secret_check_main, "list a key file's key ids" },
    { NULL, NULL, NULL }
};


int
mdm_secret_main(int argc, char **argv)
{
    return mdm_dispatch(mdm_secret_cmds, "secret", argc, argv);
}


static const char  mdm_secret_keygen_usage[] =
    "[--id ID] [FILE]\n"
    "\n"
    "Makes a random AES-256 key and appends it to FILE (created mode 0600)\n"
    "or prints it. The last key of a file seals new values and every key\n"
    "opens, so rotating is: keygen into the file nginx and mdmctl read,\n"
    "reload nginx, keep the old lines while values sealed with them remain.\n"
    "\n"
    "  --id ID           key id, 1-32 of A-Z a-z 0-9 . _ - (default: the\n"
    "                    UTC time, YYYYMMDD-HHMMSS)\n";


static int
mdm_secret_keygen_main(int argc, char **argv)
{
    int         ch, fd, rc;
    char       *id, line[128], stamp[32];
    time_t      now;
    struct tm   tm;
    ssize_t     n;

    static const struct option  opts[] = {
        { "id", required_argument, NULL, 'i' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };

    id = NULL;

    while ((ch = mdm_getopt(argc, argv, opts)) != -1) {
        switch (ch) {
        case 'i':
            id = optarg;
            break;
        case 'h':
            return mdm_usage(mdm_secret_keygen_usage);
        default:
            return MDM_USAGE;
        }
    }

    argc -= optind;
    argv += optind;

    if (argc > 1) {
        mdm_err("give at most one key file");
        return MDM_USAGE;
    }

    if (id == NULL) {
        now = time(NULL);
        gmtime_r(&now, &tm);
        strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", &tm);
        id = stamp;
    }

    if (mdm_secret_keygen(id, line, sizeof(line)) != 0) {
        mdm_err("key id \"%s\" must be 1-%d of A-Z a-z 0-9 . _ -", id,
                MDM_SECRET_ID_MAX);
        return MDM_USAGE;
    }

    rc = MDM_OK;

    if (argc == 0) {
        fputs(line, stdout);

    } else {
        fd = open(argv[0], O_WRONLY | O_CREAT | O_APPEND, 0600);
        n = fd == -1 ? -1 : write(fd, line, strlen(line));
        if (n != (ssize_t) strlen(line) || close(fd) != 0) {
            mdm_err("%s: %s", argv[0], strerror(errno));
            rc = MDM_ERROR;

        } else {
            fprintf(stderr, "key %s added to %s; it seals from now on\n", id,
                    argv[0]);
        }
    }

    OPENSSL_cleanse(line, sizeof(line));

    return rc;
}


static const char  mdm_secret_check_usage[] =
    "[FILE]\n"
    "\n"
    "Reads a key file (default: $MDM_SECRET_KEY) as nginx does and lists\n"
    "its key ids, the sealing one last.\n";


static int
mdm_secret_check_main(int argc, char **argv)
{
    int                       i;
    const mdm_secret_ring_t  *ring;

    if (argc == 2 && (strcmp(argv[1], "--help") == 0
                      || strcmp(argv[1], "-h") == 0))
    {
        return mdm_usage(mdm_secret_check_usage);
    }

    if (argc > 2) {
        mdm_err("give at most one key file");
        return MDM_USAGE;
    }

    if (argc == 2) {
        mdm_secret_file = argv[1];
    }

    ring = mdm_secret_ring();
    if (ring == NULL) {
        if (mdm_secret_file == NULL) {
            mdm_err("give a key file (or set $MDM_SECRET_KEY)");
        }
        return MDM_ERROR;
    }

    for (i = 0; i < ring->n; i++) {
        printf("%s%s\n", ring->keys[i].id, i == ring->n - 1 ? " (seals)" : "");
    }

    return MDM_OK;
}


/*
 * The key file of --secret-key or $MDM_SECRET_KEY, read once. NULL when
 * none is given or it does not load (then with the error line).
 */
static const mdm_secret_ring_t *
mdm_secret_ring(void)
{
    int                       loose;
    char                      err[256];
    static int                loaded;
    static mdm_secret_ring_t  ring;

    if (loaded) {
        return loaded > 0 ? &ring : NULL;
    }

    loaded = -1;

    if (mdm_secret_file == NULL) {
        mdm_secret_file = getenv("MDM_SECRET_KEY");
    }

    if (mdm_secret_file == NULL || mdm_secret_file[0] == '\0') {
        mdm_secret_file = NULL;
        return NULL;
    }

    if (mdm_secret_load(&ring, mdm_secret_file, &loose, err, sizeof(err))
        != 0)
    {
        mdm_err("%s", err);
        return NULL;
    }

    if (loose) {
        mdm_warn("%s is readable by group or others; chmod 600 it",
                 mdm_secret_file);
    }

    loaded = 1;

    return &ring;
}


/*
 * Opens, in place, a value of field read from the hash of enrollment id
 * (the clear value is never longer). Returns 0, or -1 with the error line.
 */
int
mdm_secret_reply(const char *field, const char *id, char *str, size_t *len)
{
    int                       rc;
    size_t                    n, size;
    unsigned char            *buf;
    const mdm_secret_ring_t  *ring;
    char                      err[256];

    if (!mdm_secret_is_sealed((unsigned char *) str, *len)) {
        return 0;
    }

    ring = mdm_secret_ring();
    if (ring == NULL && mdm_secret_file) {
        return -1;
    }

    size = *len;
    buf = malloc(size);
    if (buf == NULL) {
        mdm_err("out of memory");
        return -1;
    }

    rc = mdm_secret_open(ring, field, id, strlen(id), (unsigned char *) str,
                         size, buf, &n, err, sizeof(err));
    if (rc == 0) {
        memcpy(str, buf, n);
        *len = n;

    } else {
        mdm_err("%s: %s%s", id, err,
                ring ? "" : " (give --secret-key FILE or $MDM_SECRET_KEY)");
    }

    OPENSSL_cleanse(buf, size);
    free(buf);

    return rc;
}
