/*
 * mdmctl entry point: a table of subcommands. Each area registers one
 * entry here and dispatches its own verbs with mdm_dispatch().
 */

#include <stdio.h>
#include <string.h>

#include <openssl/err.h>

#include "mdmctl.h"


static const mdm_cmd_t  mdm_commands[] = {
    { "pki", mdm_pki_main,
      "development PKI: ca, server and device certificates" },
    { "profile", mdm_profile_main,
      "enrollment profile (.mobileconfig): create, check, sign" },
    { "pushcert", mdm_pushcert_main,
      "APNs push certificate: csr, vendor-sign, info, p12, pem" },
    /* admin commands (queue, enqueue, results, ...) are added here */
    { "command", mdm_command_main,
      "build and check a command plist (print only)" },
    { "enqueue", mdm_enqueue_main,
      "queue a command for enrollments and push them" },
    { "push", mdm_push_main, "request APNs pushes for enrollments" },
    { "queue", mdm_queue_main, "show an enrollment's command queue" },
    { "cancel", mdm_cancel_main, "take a queued command off a queue" },
    { "clear", mdm_clear_main, "empty enrollments' command queues" },
    { "gc", mdm_gc_main, "expire what is due now (the sweep)" },
    { "forget", mdm_forget_main, "delete enrollments completely" },
    { "results", mdm_results_main, "show a command's result on a device" },
    { "status", mdm_status_main, "show a command's status on every target" },
    { "devices", mdm_devices_main, "list enrollments, recently seen first" },
    { "show", mdm_show_main, "show one enrollment" },
    { "escrow", mdm_escrow_main,
      "export an enrollment's UnlockToken or BootstrapToken" },
    { "unbind", mdm_unbind_main,
      "release a device's certificate binding (re-enrollment)" },
    { "conf", mdm_conf_main,
      "show or change settings and policy (mdm:conf, mdm:policy)" },
    { "secret", mdm_secret_main,
      "key files for the tokens sealed in Redis: keygen, check" },
    { "events", mdm_events_main, "follow the event stream" },
    /* SCEP (issue 11) */
    { "scep", mdm_scep_main,
      "SCEP server: challenge, issued, revoke" },
    { "renew", mdm_renew_main,
      "queue a fresh enrollment profile: a new identity by SCEP" },
    /* issue 10 */
    { "rts", mdm_rts_main,
      "ReturnToService answers, per device or default: set, show, clear" },
    /* declarative device management (issue 10) */
    { "ddm", mdm_ddm_main,
      "declarations, sets, assignments, DDM status and sync" },
    { NULL, NULL, NULL }
};


static void
mdm_list(const mdm_cmd_t *cmds, const char *group, FILE *f)
{
    const mdm_cmd_t  *c;

    fprintf(f, "usage: mdmctl %s%s<command> [options]\n\ncommands:\n",
            group, group[0] ? " " : "");
    for (c = cmds; c->name; c++) {
        fprintf(f, "  %-12s %s\n", c->name, c->summary);
    }
    fprintf(f, "\n'mdmctl %s%s<command> --help' shows its options.\n",
            group, group[0] ? " " : "");
}


int
mdm_dispatch(const mdm_cmd_t *cmds, const char *group, int argc,
    char **argv)
{
    const mdm_cmd_t  *c;

    if (argc < 2) {
        mdm_list(cmds, group, stderr);
        return MDM_USAGE;
    }

    if (strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0
        || strcmp(argv[1], "-h") == 0)
    {
        mdm_list(cmds, group, stdout);
        return MDM_OK;
    }

    for (c = cmds; c->name; c++) {
        if (strcmp(c->name, argv[1]) == 0) {
            break;
        }
    }

    if (c->name == NULL) {
        mdm_err("unknown command \"%s\" (try 'mdmctl %s%shelp')", argv[1],
                group, group[0] ? " " : "");
        return MDM_USAGE;
    }

    /* the error prefix names the full command: "mdmctl pki server" */
    snprintf(mdm_cmd_path, sizeof(mdm_cmd_path), "%s%s%s", group,
             group[0] ? " " : "", c->name);

    return c->handler(argc - 1, argv + 1);
}


int
main(int argc, char **argv)
{
    int  rc;

    rc = mdm_dispatch(mdm_commands, "", argc, argv);

    ERR_clear_error();
    return rc;
}
