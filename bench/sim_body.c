/*
 * Message bodies: what real devices send (check-ins, command reports with
 * realistic result keys) and the commands the simulator enqueues.  Command
 * UUIDs carry a per-run prefix and the command's index, so a report can be
 * checked off against the device's bitmap without a lookup table.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/sha.h>

#include "mdm_sim.h"


static const char  *sim_command_types[] = {
    "DeviceInformation", "ProfileList", "SecurityInfo"
};


static void
sim_hash(const char *udid, const char *salt, uint8_t out[32])
{
    char  buf[256];
    int   n;

    n = snprintf(buf, sizeof(buf), "%s/%s", salt, udid);
    SHA256((unsigned char *) buf, n < (int) sizeof(buf) ? n : 255, out);
}


static void
sim_uuid_from(const uint8_t h[16], char *out, size_t n)
{
    snprintf(out, n, "%02X%02X%02X%02X-%02X%02X-4%01X%02X-8%01X%02X-"
             "%02X%02X%02X%02X%02X%02X", h[0], h[1], h[2], h[3], h[4],
             h[5], h[6] & 0xf, h[7], h[8] & 0xf, h[9], h[10], h[11],
             h[12], h[13], h[14], h[15]);
}


void
sim_body_serial(const char *udid, char *out)
{
    int      i;
    uint8_t  h[32];
    static const char  alpha[] = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ";

    sim_hash(udid, "serial", h);
    out[0] = 'F';
    for (i = 1; i < 12; i++) {
        out[i] = alpha[h[i] % (sizeof(alpha) - 1)];
    }
    out[12] = '\0';
}


static void
sim_authenticate(sim_t *sim, sim_device_t *dev, sim_buf_t *b)
{
    char  serial[16];

    sim_body_serial(dev->udid, serial);
    sim_buf_printf(b, SIM_PLIST_HEAD
        "\t<key>BuildVersion</key>\n\t<string>21B74</string>\n"
        "\t<key>MessageType</key>\n\t<string>Authenticate</string>\n"
        "\t<key>OSVersion</key>\n\t<string>17.1</string>\n"
        "\t<key>ProductName</key>\n\t<string>iPad13,18</string>\n"
        "\t<key>SerialNumber</key>\n\t<string>%s</string>\n"
        "\t<key>Topic</key>\n\t<string>%s</string>\n"
        "\t<key>UDID</key>\n\t<string>%s</string>\n"
        SIM_PLIST_TAIL, serial, sim->conf.topic, dev->udid);
}


static void
sim_token_update(sim_t *sim, sim_device_t *dev, sim_buf_t *b)
{
    char     magic[40];
    uint8_t  token[32], h[32];

    sim_hash(dev->udid, "token", token);
    sim_hash(dev->udid, "magic", h);
    sim_uuid_from(h, magic, sizeof(magic));

    sim_buf_printf(b, SIM_PLIST_HEAD
        "\t<key>AwaitingConfiguration</key>\n\t<false/>\n"
        "\t<key>MessageType</key>\n\t<string>TokenUpdate</string>\n"
        "\t<key>PushMagic</key>\n\t<string>%s</string>\n"
        "\t<key>Token</key>\n\t<data>\n", magic);
    sim_buf_base64(b, token, sizeof(token), 1);
    sim_buf_printf(b, "\t</data>\n"
        "\t<key>Topic</key>\n\t<string>%s</string>\n"
        "\t<key>UDID</key>\n\t<string>%s</string>\n",
        sim->conf.topic, dev->udid);

    if (sim->conf.unlock_token) {
        /* the keybag blob differs per device: salt it with the token */
        memcpy(sim->unlock + 64, token, sizeof(token));
        sim_buf_printf(b, "\t<key>UnlockToken</key>\n\t<data>\n");
        sim_buf_base64(b, sim->unlock, sizeof(sim->unlock), 1);
        sim_buf_printf(b, "\t</data>\n");
    }

    sim_buf_add(b, SIM_PLIST_TAIL, sizeof(SIM_PLIST_TAIL) - 1);
}


static void
sim_result_keys(sim_device_t *dev, const char *type, sim_buf_t *b)
{
    char  serial[16];

    if (strcmp(type, "DeviceInformation") == 0) {
        sim_body_serial(dev->udid, serial);
        sim_buf_printf(b,
            "\t<key>QueryResponses</key>\n\t<dict>\n"
            "\t\t<key>AvailableDeviceCapacity</key>\n"
            "\t\t<real>97.53125</real>\n"
            "\t\t<key>BatteryLevel</key>\n\t\t<real>0.82</real>\n"
            "\t\t<key>BuildVersion</key>\n\t\t<string>21B74</string>\n"
            "\t\t<key>DeviceCapacity</key>\n\t\t<real>128</real>\n"
            "\t\t<key>DeviceName</key>\n\t\t<string>iPad %s</string>\n"
            "\t\t<key>IsSupervised</key>\n\t\t<true/>\n"
            "\t\t<key>Model</key>\n\t\t<string>MM9D3LL</string>\n"
            "\t\t<key>ModelName</key>\n\t\t<string>iPad</string>\n"
            "\t\t<key>OSVersion</key>\n\t\t<string>17.1</string>\n"
            "\t\t<key>ProductName</key>\n\t\t<string>iPad13,18</string>\n"
            "\t\t<key>SerialNumber</key>\n\t\t<string>%s</string>\n"
            "\t\t<key>UDID</key>\n\t\t<string>%s</string>\n"
            "\t\t<key>WiFiMAC</key>\n\t\t<string>f0:18:98:3a:%02x:%02x"
            "</string>\n\t</dict>\n", serial, serial, dev->udid,
            (dev->index >> 8) & 0xff, dev->index & 0xff);

    } else if (strcmp(type, "ProfileList") == 0) {
        sim_buf_printf(b,
            "\t<key>ProfileList</key>\n\t<array>\n\t\t<dict>\n"
            "\t\t\t<key>HasRemovalPasscode</key>\n\t\t\t<false/>\n"
            "\t\t\t<key>IsEncrypted</key>\n\t\t\t<false/>\n"
            "\t\t\t<key>IsManaged</key>\n\t\t\t<true/>\n"
            "\t\t\t<key>PayloadContent</key>\n\t\t\t<array>\n"
            "\t\t\t\t<dict>\n\t\t\t\t\t<key>PayloadIdentifier</key>\n"
            "\t\t\t\t\t<string>com.example.mdm.payload</string>\n"
            "\t\t\t\t\t<key>PayloadType</key>\n"
            "\t\t\t\t\t<string>com.apple.mdm</string>\n"
            "\t\t\t\t\t<key>PayloadVersion</key>\n"
            "\t\t\t\t\t<integer>1</integer>\n\t\t\t\t</dict>\n"
            "\t\t\t</array>\n"
            "\t\t\t<key>PayloadDisplayName</key>\n"
            "\t\t\t<string>MDM Enrollment</string>\n"
            "\t\t\t<key>PayloadIdentifier</key>\n"
            "\t\t\t<string>com.example.mdm.enroll</string>\n"
            "\t\t\t<key>PayloadRemovalDisallowed</key>\n\t\t\t<false/>\n"
            "\t\t\t<key>PayloadUUID</key>\n"
            "\t\t\t<string>9D2A5F3C-4B1E-4C7A-8E6F-1A2B3C4D5E6F</string>\n"
            "\t\t\t<key>PayloadVersion</key>\n\t\t\t<integer>1</integer>\n"
            "\t\t</dict>\n\t</array>\n");

    } else if (strcmp(type, "SecurityInfo") == 0) {
        sim_buf_printf(b,
            "\t<key>SecurityInfo</key>\n\t<dict>\n"
            "\t\t<key>HardwareEncryptionCaps</key>\n"
            "\t\t<integer>3</integer>\n"
            "\t\t<key>PasscodeCompliant</key>\n\t\t<true/>\n"
            "\t\t<key>PasscodeCompliantWithProfiles</key>\n\t\t<true/>\n"
            "\t\t<key>PasscodePresent</key>\n\t\t<true/>\n"
            "\t</dict>\n");
    }
}


/* Check-ins and Idle, which need only the device. */
void
sim_body_device(sim_t *sim, sim_device_t *dev, sim_kind_e kind,
    sim_buf_t *b)
{
    sim_buf_reset(b);

    switch (kind) {

    case SIM_RQ_AUTHENTICATE:
        sim_authenticate(sim, dev, b);
        break;

    case SIM_RQ_TOKEN_UPDATE:
        sim_token_update(sim, dev, b);
        break;

    default:
        sim_buf_printf(b, SIM_PLIST_HEAD
            "\t<key>Status</key>\n\t<string>Idle</string>\n"
            "\t<key>UDID</key>\n\t<string>%s</string>\n" SIM_PLIST_TAIL,
            dev ? dev->udid : "static");
        break;
    }
}


void
sim_body_build(sim_t *sim, sim_conn_t *c, sim_kind_e kind, sim_buf_t *b)
{
    sim_device_t  *dev;

    dev = c->dev;

    if (kind >= SIM_RQ_DDM_TOKENS && kind <= SIM_RQ_DDM_STATUS) {
        sim_ddm_body(sim, c, kind, b);
        return;
    }

    if (kind != SIM_RQ_ACK) {
        sim_body_device(sim, dev, kind, b);
        return;
    }

    sim_body_ack(dev, c->cmd_uuid, c->cmd_type, b);
}


/* The Acknowledged report of command uuid (of type) with its result keys. */
void
sim_body_ack(sim_device_t *dev, const char *uuid, const char *type,
    sim_buf_t *b)
{
    sim_buf_reset(b);
    sim_buf_printf(b, SIM_PLIST_HEAD
        "\t<key>CommandUUID</key>\n\t<string>%s</string>\n", uuid);
    sim_result_keys(dev, type, b);
    sim_buf_printf(b,
        "\t<key>Status</key>\n\t<string>Acknowledged</string>\n"
        "\t<key>UDID</key>\n\t<string>%s</string>\n" SIM_PLIST_TAIL,
        dev->udid);
}


/* What the module passes to mdm_checkin for a check-in of this device. */
void
sim_body_checkin_fields(sim_t *sim, sim_device_t *dev, sim_kind_e kind,
    const char **kv, size_t *lens, int *n, char *hex)
{
    int      i;
    char     serial[16];
    uint8_t  token[32];
    static const char  digits[] = "0123456789abcdef";

    *n = 0;
    kv[(*n)++] = "Topic";
    kv[(*n)++] = sim->conf.topic;

    if (kind == SIM_RQ_AUTHENTICATE) {
        sim_body_serial(dev->udid, serial);
        memcpy(hex, serial, 13);
        kv[(*n)++] = "SerialNumber";
        kv[(*n)++] = hex;
        kv[(*n)++] = "ProductName";
        kv[(*n)++] = "iPad13,18";
        kv[(*n)++] = "OSVersion";
        kv[(*n)++] = "17.1";
        kv[(*n)++] = "BuildVersion";
        kv[(*n)++] = "21B74";
    } else {
        sim_hash(dev->udid, "token", token);
        for (i = 0; i < 32; i++) {
            hex[2 * i] = digits[token[i] >> 4];
            hex[2 * i + 1] = digits[token[i] & 0xf];
        }
        hex[64] = '\0';
        kv[(*n)++] = "Token";
        kv[(*n)++] = hex;
        kv[(*n)++] = "PushMagic";
        kv[(*n)++] = "3A1F2C4D-5E6F-4A7B-8C9D-0E1F2A3B4C5D";
        kv[(*n)++] = "AwaitingConfiguration";
        kv[(*n)++] = "0";
    }

    for (i = 0; i < *n; i++) {
        lens[i] = strlen(kv[i]);
    }
}


void
sim_body_uuid(sim_t *sim, int k, char *out, size_t n)
{
    snprintf(out, n, "%s%012X", sim->run_prefix, (unsigned) k);
}


/* The command's index for a UUID of this run, -1 for any other UUID. */
int
sim_body_uuid_index(sim_t *sim, const char *uuid)
{
    char   *end;
    size_t  plen;
    long    k;

    plen = strlen(sim->run_prefix);
    if (strlen(uuid) != plen + 12
        || strncasecmp(uuid, sim->run_prefix, plen) != 0)
    {
        return -1;
    }

    k = strtol(uuid + plen, &end, 16);
    if (*end != '\0' || k < 0 || k >= sim->conf.commands) {
        return -1;
    }

    return (int) k;
}


void
sim_body_command(sim_t *sim, int k, sim_buf_t *b)
{
    char         uuid[64];
    const char  *type;

    sim_body_uuid(sim, k, uuid, sizeof(uuid));
    type = sim_command_types[k % 3];

    sim_buf_reset(b);
    sim_buf_printf(b, SIM_PLIST_HEAD
        "\t<key>Command</key>\n\t<dict>\n"
        "\t\t<key>RequestType</key>\n\t\t<string>%s</string>\n", type);

    if (k % 3 == 0) {
        sim_buf_printf(b, "\t\t<key>Queries</key>\n\t\t<array>\n"
            "\t\t\t<string>AvailableDeviceCapacity</string>\n"
            "\t\t\t<string>BatteryLevel</string>\n"
            "\t\t\t<string>BuildVersion</string>\n"
            "\t\t\t<string>DeviceCapacity</string>\n"
            "\t\t\t<string>DeviceName</string>\n"
            "\t\t\t<string>IsSupervised</string>\n"
            "\t\t\t<string>Model</string>\n"
            "\t\t\t<string>ModelName</string>\n"
            "\t\t\t<string>OSVersion</string>\n"
            "\t\t\t<string>ProductName</string>\n"
            "\t\t\t<string>SerialNumber</string>\n"
            "\t\t\t<string>UDID</string>\n"
            "\t\t\t<string>WiFiMAC</string>\n"
            "\t\t</array>\n");
    }

    sim_buf_printf(b, "\t</dict>\n"
        "\t<key>CommandUUID</key>\n\t<string>%s</string>\n"
        SIM_PLIST_TAIL, uuid);
}
