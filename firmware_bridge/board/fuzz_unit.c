/* fuzz_unit.c: libFuzzer target over the parser and the state machine (make fuzz).
 *
 * The input is split into chunks: each chunk starts with a control byte; its low 4 bits give
 * the chunk length (0..15 bytes fed to unit_receive), its high 4 bits how many milliseconds the
 * unit clock advances first (with a unit_tick). Bit 7 of the control byte also toggles the
 * arm-enable input every 16th chunk. So the fuzzer explores byte splits, timer interleavings
 * and, through the valid frames it finds (the harness seeds the unit with a fixed RNG and a
 * fixed dictionary hash), the whole command table. A "valid-frame" mode (first byte odd) wraps
 * each chunk in a correct packet of the id in its first byte, with the session token patched
 * in, so deep states (ARMED, REALTIME pulses, faults) are reached quickly. A "timed" mode (bit 1
 * of the first byte) runs the unit as the board does (unit_config_t.pulse_start, cut_time,
 * valves): REALTIME pulses start at the next 1 ms edge at least 200 us ahead, and every
 * pending pulse must start on such an edge.
 *
 * Invariants checked after every step (abort() on failure, which libFuzzer reports):
 * - every TM frame the unit sends decodes with the C parser, is at most 64 bytes, is TM;
 * - outside ARMED, no valve is open except stuck-open ones;
 * - no valve opens without a valid FIRE executed in ARMED (malformed frames, other commands and
 *   timer ticks can only close valves);
 * - n_pending <= UNIT_MAX_PENDING.
 * The whole frame-by-frame parser is also cross-checked: proto_feed over a frame and
 * proto_decode_frame agree.
 *
 * A twin unit V runs the same inputs as the board does (unit_config_t.defer_tm: TM frames
 * queued, sent by unit_send_pending a few calls a step, as the board's main loop does when it
 * has a pass to spare): every byte it sends must be the next byte U (which sends at once)
 * sent, and once V's queue is drained at the end the two streams are equal; their states and
 * open masks agree after every step (issue 17: the pass bound changes when, never what).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "unit.h"

static unit_t U, V;

/* U's TM bytes V has not sent yet (V lags U: its frames wait in its queue). */
#define TWIN_LAG 16384u
static uint8_t lag[TWIN_LAG];
static uint32_t lag_head, lag_n;

static void lag_push(const uint8_t *frame, uint8_t len)
{
    for (uint8_t i = 0; i < len; i++) {
        if (lag_n == TWIN_LAG)
            abort(); /* V fell further behind than its queue can hold */
        lag[(lag_head + lag_n++) % TWIN_LAG] = frame[i];
    }
}

static void twin_tx(void *ctx, const uint8_t *frame, uint8_t len)
{
    (void)ctx;
    for (uint8_t i = 0; i < len; i++) {
        if (!lag_n || lag[lag_head] != frame[i])
            abort(); /* the deferring unit said something else, or in another order */
        lag_head = (lag_head + 1) % TWIN_LAG;
        lag_n--;
    }
}

static void twin_check(void)
{
    if (V.state != U.state || unit_open_mask(&V) != unit_open_mask(&U) ||
        V.n_pending > UNIT_MAX_PENDING)
        abort();
}

static void check_tx(void *ctx, const uint8_t *frame, uint8_t len)
{
    (void)ctx;
    lag_push(frame, len);
    if (len > MAX_WIRE_BYTES || len < 2 || frame[len - 1] != 0)
        abort();
    proto_parser_t p;
    proto_msg_t m;
    proto_init(&p);
    int ok = 0;
    for (uint8_t i = 0; i < len; i++) {
        proto_status_t st = proto_feed(&p, frame[i], &m);
        if (st == PROTO_OK) {
            if (m.is_tc)
                abort();
            ok++;
        } else if (st != PROTO_INCOMPLETE && st != PROTO_BAD_CRC) { /* CRC: CORRUPT_TX */
            abort();
        }
    }
    (void)ok;
}

static void invariants(void)
{
    uint32_t open = unit_open_mask(&U) & ~U.stuck;
    if (U.state != STATE_ARMED && open)
        abort();
    if (U.n_pending > UNIT_MAX_PENDING)
        abort();
}

static void feed_valid(uint8_t id, const uint8_t *data, uint8_t n, uint16_t seq, uint32_t now)
{
    uint8_t payload[MAX_PAYLOAD_LEN];
    uint8_t pkt[PROTO_MAX_PACKET];
    uint8_t frame[PROTO_MAX_PACKET + 2];
    int plen = proto_payload_len(id, NULL, NULL);
    if (plen < 0)
        id = MSG_PING, plen = MSG_PING_LEN;
    memset(payload, 0, sizeof payload);
    memcpy(payload, data, n < plen ? n : (uint8_t)plen);
    /* Most of the time give it the right session, hash, nonce or bank so it goes deep. */
    if (plen >= 4 && id != MSG_PING && id != MSG_HELLO && !(n && (data[0] & 0x80)))
        proto_put32(payload, U.session);
    if (id == MSG_HELLO && !(n > 1 && (data[1] & 0x80))) {
        payload[MSG_HELLO_OFF_PROTO_VER] = PROTO_VERSION;
        proto_put32(payload + MSG_HELLO_OFF_DICT_HASH, DICT_HASH);
        payload[MSG_HELLO_OFF_MODE] &= 1;
        if (proto_get16(payload + MSG_HELLO_OFF_PERIOD_MS) < 10)
            proto_put16(payload + MSG_HELLO_OFF_PERIOD_MS, 100);
    }
    if (id == MSG_ARM_CONFIRM && !(n > 1 && (data[1] & 0x80))) {
        proto_put32(payload + MSG_ARM_CONFIRM_OFF_NONCE, U.nonce);
        if (!(n > 3 && (data[3] & 0x80))) /* mostly the next step after the last one */
            proto_put32(payload + MSG_ARM_CONFIRM_OFF_NEXT_STEP, U.last_step + 1u);
    }
    if (id == MSG_FIRE) {
        payload[MSG_FIRE_OFF_BANK] &= 1;
        if (!(n > 3 && (data[3] & 0x80))) /* mostly inside the step window (or a duplicate) */
            proto_put32(payload + MSG_FIRE_OFF_STEP,
                        U.bank_floor[payload[MSG_FIRE_OFF_BANK]] + (n > 3 ? data[3] & 3 : 1));
    }
    uint8_t flags = n > 2 ? data[2] & 0x0F : 0;
    uint8_t len = proto_build_packet(pkt, id, seq, flags, payload, (uint8_t)plen);
    uint8_t f = proto_cobs_encode(pkt, len, frame);
    unit_receive(&U, frame, f, now);
    unit_receive(&V, frame, f, now);
}

/* The board's valve clock, on the fuzzer's clock (edges: multiples of 1 ms from FUZZ_T0). */
#define FUZZ_T0 0xFFF00000u
static uint32_t fuzz_start(void *ctx, uint32_t now)
{
    (void)ctx;
    uint32_t k = (now - FUZZ_T0 + 200u) / 1000u + 1u;
    return FUZZ_T0 + k * 1000u;
}
static uint32_t fuzz_cut(void *ctx, uint32_t now)
{
    (void)ctx;
    return now;
}
static void fuzz_valves(void *ctx, uint32_t mask)
{
    const unit_t *u = ctx ? &V : &U;
    if (mask & ~(unit_open_mask(u) | u->stuck))
        abort(); /* the valves never open what the unit does not hold open */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t timed = size > 0 && (data[0] & 2);
    unit_config_t cfg = {32, UNIT_FW_VERSION, 1, RESET_CAUSE_POWER_ON, 1, 5, DICT_HASH, 12345,
                         check_tx, NULL, NULL, timed ? fuzz_valves : NULL,
                         timed ? fuzz_start : NULL, timed ? fuzz_cut : NULL, 0};
    lag_head = lag_n = 0;
    unit_init(&U, &cfg);
    unit_config_t twin = cfg;
    twin.send = twin_tx;
    twin.ctx = &V; /* (fuzz_valves: which unit) */
    twin.defer_tm = 1;
    unit_init(&V, &twin);
    uint32_t now = FUZZ_T0; /* start near the wrap so wrap-around paths run */
    unit_boot(&U, now);
    unit_boot(&V, now);
    if (size == 0) {
        while (unit_send_pending(&V))
            ;
        return lag_n ? (abort(), 0) : 0;
    }
    uint8_t valid_mode = data[0] & 1;
    size_t i = 1;
    uint16_t seq = 0;
    unsigned chunk = 0;
    while (i < size) {
        uint8_t ctl = data[i++];
        uint8_t n = ctl & 0x0F;
        now += (uint32_t)(ctl >> 4) * (ctl & 0x40 ? 97000u : 1000u);
        uint32_t open_before = unit_open_mask(&U) & ~U.stuck;
        unit_tick(&U, now, 0);
        unit_tick(&V, now, 0);
        if ((unit_open_mask(&U) & ~U.stuck) & ~open_before)
            abort(); /* a tick opened a valve */
        invariants();
        open_before = unit_open_mask(&U) & ~U.stuck;
        uint16_t fires_before = U.c.fires_accepted;
        if (i + n > size)
            n = (uint8_t)(size - i);
        if (++chunk % 16 == 0 && (ctl & 0x80)) {
            unit_set_arm_enable(&V, !U.arm_enabled, now);
            unit_set_arm_enable(&U, !U.arm_enabled, now);
        }
        if (valid_mode && n >= 1) {
            static const uint8_t ids[] = {MSG_HELLO, MSG_HEARTBEAT, MSG_PING, MSG_ARM_REQUEST,
                                          MSG_ARM_CONFIRM, MSG_DISARM, MSG_STOP_ALL, MSG_FIRE,
                                          MSG_SET_PARAM, MSG_FAULT_INJECT, MSG_BOOT};
            feed_valid(ids[data[i] % sizeof ids], data + i + 1, (uint8_t)(n - 1), seq++, now);
        } else {
            unit_receive(&U, data + i, n, now);
            unit_receive(&V, data + i, n, now);
            /* cross-check the whole-frame decoder on the same bytes */
            uint8_t scratch[PROTO_MAX_FRAME];
            proto_msg_t m1, m2;
            proto_parser_t p;
            proto_init(&p);
            proto_status_t s1 = PROTO_INCOMPLETE;
            for (uint8_t k = 0; k < n; k++)
                if (data[i + k] == 0)
                    break;
                else
                    s1 = proto_feed(&p, data[i + k], &m1);
            uint8_t len = 0;
            while (len < n && data[i + len] != 0)
                len++;
            if (s1 != PROTO_TOO_LONG) {
                s1 = proto_feed(&p, 0, &m1);
                proto_status_t s2 = proto_decode_frame(data + i, len, scratch, &m2);
                if (len > 0 && s1 != s2)
                    abort();
                if (s1 == PROTO_OK && (m1.msg_id != m2.msg_id || m1.seq != m2.seq ||
                                       memcmp(m1.payload, m2.payload, m1.payload_len)))
                    abort();
            }
        }
        invariants();
        if (((unit_open_mask(&U) & ~U.stuck) & ~open_before) && U.c.fires_accepted == fires_before)
            abort(); /* a valve opened without a valid FIRE */
        for (uint8_t k = 0; timed && k < U.n_pending; k++)
            if ((U.pending[k].t_start - FUZZ_T0) % 1000u)
                abort(); /* a board pulse starts on a tick edge */
        twin_check();
        for (uint8_t k = 0; k < ((ctl >> 2) & 3); k++) /* the board's spare passes */
            unit_send_pending(&V);
        i += n;
    }
    unit_stop_all(&U, now);
    unit_stop_all(&V, now);
    twin_check();
    while (unit_send_pending(&V))
        ;
    if (lag_n)
        abort(); /* V said less than U */
    if (unit_open_mask(&U) & ~U.stuck)
        abort();
    return 0;
}
