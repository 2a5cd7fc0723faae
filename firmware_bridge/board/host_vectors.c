/* host_vectors: run wire frames through the C parser on the host and print what it decoded.
 *
 * Input: a text file, one frame per line as hex (the whole wire frame, 0x00 delimiter
 * included); anything after the first space is ignored (tests/test_firmware_host.py puts the
 * expected outcome there for a human reading the file). Blank lines and lines starting with '#'
 * are skipped.
 *
 * Output, per input line N, two lines:
 *   N frame <result>            the frame without its final 0x00 through proto_decode_frame()
 *   N bytes <result>[ <result>]  every byte through proto_feed(), each non-INCOMPLETE status
 * where <result> is `ok:<id>:<seq>:<flags>:<payload hex>` or `err:<kind>` with the codec's
 * error kinds (cobs crc length header unknown_id too_long), or `none` if nothing completed.
 *
 * `host_vectors --unit-smoke` instead drives unit.c through a short session (boot, HELLO,
 * ARM, FIRE, watchdog) and prints every TM frame as hex: a quick host check of the state
 * machine outside the fuzzer.
 *
 * `host_vectors --unit-stdin` serves one unit (32 channels, test build, min_on_ticks 5, seed 7)
 * to a driver on stdin, one command per line, so that a test can run the same scenario through
 * unit.c and through firmware_bridge/unit.py's UnitCore:
 *   boot NOW            unit_boot
 *   rx NOW HEX          unit_receive of the bytes HEX
 *   tick NOW [LATE]     unit_tick (LATE: how late the tick runs, us; default 0)
 *   tank NOW KPA        unit_set_tank_kpa (a pressure reading)
 *   reset NOW           unit_reset with cause SOFTWARE (a reset in place)
 *   armen NOW 0|1       unit_set_arm_enable (the board's arm-enable input)
 *   mix X               prints `mix HEX`: unit_mix32(X)
 *   state               prints `state S open_mask HEX tank KPA`
 * Every TM frame the command makes is printed as `tx HEX`, and each command's output ends with
 * a line `.`.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "unit.h"

static const char *kind(proto_status_t st)
{
    switch (st) {
    case PROTO_BAD_COBS: return "cobs";
    case PROTO_BAD_CRC: return "crc";
    case PROTO_BAD_LEN: return "length";
    case PROTO_BAD_HEADER: return "header";
    case PROTO_UNKNOWN_ID: return "unknown_id";
    case PROTO_TOO_LONG: return "too_long";
    default: return "?";
    }
}

static void print_result(proto_status_t st, const proto_msg_t *m)
{
    if (st == PROTO_OK) {
        printf("ok:%u:%u:%u:", m->msg_id, m->seq, m->flags);
        for (uint8_t i = 0; i < m->payload_len; i++)
            printf("%02x", m->payload[i]);
    } else {
        printf("err:%s", kind(st));
    }
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

static void tx_print(void *ctx, const uint8_t *frame, uint8_t len)
{
    (void)ctx;
    printf("tx ");
    for (uint8_t i = 0; i < len; i++)
        printf("%02x", frame[i]);
    printf("\n");
}

static void feed_cmd(unit_t *u, uint8_t id, uint16_t seq, uint8_t flags, const uint8_t *payload,
                     uint8_t plen, uint32_t now)
{
    uint8_t pkt[PROTO_MAX_PACKET];
    uint8_t frame[PROTO_MAX_PACKET + 2];
    uint8_t n = proto_build_packet(pkt, id, seq, flags, payload, plen);
    uint8_t f = proto_cobs_encode(pkt, n, frame);
    printf("rx %02x at %lu us\n", id, (unsigned long)now);
    unit_receive(u, frame, f, now);
}

static int unit_smoke(void)
{
    unit_t u;
    unit_config_t cfg = {32, UNIT_FW_VERSION, 1, RESET_CAUSE_POWER_ON, 1, 5, DICT_HASH, 7,
                         tx_print, NULL, NULL, NULL, NULL, NULL, 0};
    uint8_t p[MAX_PAYLOAD_LEN];
    unit_init(&u, &cfg);
    unit_boot(&u, 0);
    memset(p, 0, sizeof p);
    p[MSG_HELLO_OFF_PROTO_VER] = PROTO_VERSION;
    proto_put32(p + MSG_HELLO_OFF_HOST_NONCE, 0x12345678u);
    proto_put32(p + MSG_HELLO_OFF_DICT_HASH, DICT_HASH);
    p[MSG_HELLO_OFF_MODE] = MODE_REALTIME;
    proto_put16(p + MSG_HELLO_OFF_PERIOD_MS, 100);
    feed_cmd(&u, MSG_HELLO, 1, 0, p, MSG_HELLO_LEN, 1000);
    uint32_t session = u.session;
    proto_put32(p, session);
    feed_cmd(&u, MSG_ARM_REQUEST, 2, 0, p, MSG_ARM_REQUEST_LEN, 2000);
    proto_put32(p + MSG_ARM_CONFIRM_OFF_NONCE, u.nonce);
    proto_put16(p + MSG_ARM_CONFIRM_OFF_MAX_ON_TICKS, 50);
    proto_put32(p + MSG_ARM_CONFIRM_OFF_NEXT_STEP, 1);
    feed_cmd(&u, MSG_ARM_CONFIRM, 3, FLAG_ACK_REQ, p, MSG_ARM_CONFIRM_LEN, 3000);
    memset(p, 0, sizeof p);
    proto_put32(p + MSG_FIRE_OFF_SESSION, session);
    proto_put32(p + MSG_FIRE_OFF_STEP, 1);
    p[MSG_FIRE_OFF_BANK] = 0;
    proto_put16(p + MSG_FIRE_OFF_MASK, 0x0003);
    proto_put16(p + MSG_FIRE_OFF_ON_TICKS, 20);
    proto_put16(p + MSG_FIRE_OFF_ON_TICKS + 2, 3);
    feed_cmd(&u, MSG_FIRE, 4, 0, p, MSG_FIRE_LEN, 4000);
    for (uint32_t t = 5000; t <= 400000; t += 1000) {
        unit_tick(&u, t, 0);
        if (t == 10000)
            printf("open_mask %08lx\n", (unsigned long)unit_open_mask(&u));
    }
    printf("state %u open_mask %08lx\n", u.state, (unsigned long)unit_open_mask(&u));
    return u.state == STATE_SAFE ? 0 : 1;
}

static int unit_stdin(void)
{
    unit_t u;
    unit_config_t cfg = {32, UNIT_FW_VERSION, 1, RESET_CAUSE_POWER_ON, 1, 5, DICT_HASH, 7,
                         tx_print, NULL, NULL, NULL, NULL, NULL, 0};
    unit_init(&u, &cfg);
    static char line[4096];
    static uint8_t data[2048];
    while (fgets(line, sizeof line, stdin)) {
        char cmd[16];
        int used = 0;
        if (sscanf(line, "%15s%n", cmd, &used) != 1)
            continue;
        char *arg = line + used;
        uint32_t now = (uint32_t)strtoul(arg, &arg, 10);
        if (strcmp(cmd, "state") == 0) {
            printf("state %u open_mask %08lx tank %u\n", u.state,
                   (unsigned long)unit_open_mask(&u), u.tank_kpa);
        } else if (strcmp(cmd, "boot") == 0) {
            unit_boot(&u, now);
        } else if (strcmp(cmd, "tick") == 0) {
            unit_tick(&u, now, (uint32_t)strtoul(arg, NULL, 10));
        } else if (strcmp(cmd, "tank") == 0) {
            unit_set_tank_kpa(&u, (uint16_t)strtoul(arg, NULL, 10), now);
        } else if (strcmp(cmd, "reset") == 0) {
            unit_reset(&u, now, RESET_CAUSE_SOFTWARE);
        } else if (strcmp(cmd, "armen") == 0) {
            unit_set_arm_enable(&u, (uint8_t)strtoul(arg, NULL, 10), now);
        } else if (strcmp(cmd, "mix") == 0) {
            printf("mix %08lx\n", (unsigned long)unit_mix32(now));
        } else if (strcmp(cmd, "rx") == 0) {
            while (*arg == ' ')
                arg++;
            uint16_t n = 0;
            for (size_t i = 0; hexval(arg[i]) >= 0 && hexval(arg[i + 1]) >= 0 && n < sizeof data;
                 i += 2)
                data[n++] = (uint8_t)(hexval(arg[i]) << 4 | hexval(arg[i + 1]));
            unit_receive(&u, data, n, now);
        } else {
            fprintf(stderr, "unknown command %s\n", cmd);
            return 2;
        }
        printf(".\n");
        fflush(stdout);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--unit-smoke") == 0)
        return unit_smoke();
    if (argc == 2 && strcmp(argv[1], "--unit-stdin") == 0)
        return unit_stdin();
    if (argc != 2) {
        fprintf(stderr, "usage: host_vectors FILE | --unit-smoke | --unit-stdin\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "r");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    static char line[8192];
    static uint8_t wire[4096];
    uint8_t scratch[PROTO_MAX_FRAME];
    unsigned lineno = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        if (line[0] == '#' || line[0] == '\n' || line[0] == '\r')
            continue;
        size_t n = 0;
        for (size_t i = 0; hexval(line[i]) >= 0 && hexval(line[i + 1]) >= 0 && n < sizeof wire;
             i += 2)
            wire[n++] = (uint8_t)(hexval(line[i]) << 4 | hexval(line[i + 1]));
        proto_msg_t m;
        size_t flen = (n > 0 && wire[n - 1] == 0) ? n - 1 : n;
        printf("%u frame ", lineno);
        print_result(proto_decode_frame(wire, (uint16_t)flen, scratch, &m), &m);
        printf("\n%u bytes", lineno);
        proto_parser_t parser;
        proto_init(&parser);
        int any = 0;
        for (size_t i = 0; i < n; i++) {
            proto_status_t st = proto_feed(&parser, wire[i], &m);
            if (st == PROTO_INCOMPLETE)
                continue;
            printf(" ");
            print_result(st, &m);
            any = 1;
        }
        printf(any ? "\n" : " none\n");
    }
    fclose(f);
    return 0;
}
