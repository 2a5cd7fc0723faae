/* unit.c: the propulsion unit's logic. See unit.h and docs/protocol.md sections 3-6.
 *
 * The structure follows firmware_bridge/unit.py (UnitCore) function by function, so that a
 * reader can check one against the other: receive -> timers -> frames -> command -> dispatch ->
 * handlers. dispatch() looks the (command, state) cell up in the state table generated into
 * states.h from messages.toml (refusal or action), the handlers and the timers take the next
 * state and the states an event applies in from the same table: no state test of their own.
 * Choices the spec leaves open are UnitCore's (see its module docstring), in particular:
 * - timers due run before a received chunk is handled;
 * - stale, bad-bank and duplicate FIREs still feed the link watchdog;
 * - the per-bank last executed step lives as long as the session;
 * - REALTIME valid_for_ms == 0 means no deadline;
 * - an expired challenge leaves the unit ARMING, and ARM_CONFIRM then gets BAD_NONCE;
 * - a duplicate FIRE re-sends the cached VALVE_REPORT (same seq, RETRANSMIT, flag bit 2), or
 *   ACK DUPLICATE while its REALTIME pulses still run;
 * - a new REALTIME FIRE cuts older pulses of its bank only on the channels it commands;
 * - HK watchdog_remaining_ms is 0 outside ARMING/ARMED; length_errors counts TOO_LONG too;
 * - health faults survive a reset in place; link faults, parameters and the HK counters do not
 *   (the board's RAM is cleared by a real reset: a reset in place does the same);
 * - 32-bit session tokens: mix32(host nonce ^ the entropy pool's next word ^ a counter), never 0
 *   or the previous one; the session_error_limit-th wrong token of a session is a LOCKOUT
 *   (valves closed, SAFE with INTRUSION, session void, LOCKOUT event);
 * - the step window: ARM_CONFIRM next_step sets every bank's floor, FIREs must be in
 *   (floor, floor + step_window], floors live as long as the session;
 * - tank pressure below min_feed_kpa: ARMING/ARMED -> SAFE (LOW_PRESSURE, arg1 the kPa), and
 *   ARM_REQUEST / ARM_CONFIRM are REJECTED_STATE while it stays below (unit_set_tank_kpa);
 * Board additions: the arm-enable input (ARM_CONFIRM refused with REJECTED_STATE while it says
 * disabled; going disabled while ARMED -> SAFE with reason COMMANDED, the operator's jumper
 * being a command).
 */
#include "unit.h"

#include <string.h>

#include "states.h"

/* The state table (docs/protocol.md section 5) lives in flash on the AVR: 2 x N_INPUTS x N_STATES
 * bytes that would otherwise be copied to its 8 KB of RAM at start. */
#ifdef __AVR__
#include <avr/pgmspace.h>
#define TABLE_BYTE(p) pgm_read_byte(p)
#else
#define PROGMEM
#define TABLE_BYTE(p) (*(p))
#endif

static const uint8_t state_cells[N_INPUTS][N_STATES] PROGMEM = STATE_TABLE_CELLS;
static const uint8_t state_next[N_INPUTS][N_STATES] PROGMEM = STATE_TABLE_NEXT;

/* What the table says for input `in` in the present state: ACT_x, CELL_REFUSE | result or
 * CELL_NONE. */
static uint8_t table_cell(const unit_t *u, uint8_t in)
{
    return TABLE_BYTE(&state_cells[in][u->state]);
}

/* The state after input `in` ends in `result` here, as the table says. */
static uint8_t table_next(const unit_t *u, uint8_t in, uint8_t result)
{
    if (result == RESULT_ACCEPTED)
        return TABLE_BYTE(&state_next[in][u->state]);
#define X(i, s, r, n)                                                                            \
    if (in == (i) && u->state == (s) && result == (r))                                           \
        return (n);
    STATE_TABLE_OTHER_NEXT(X)
#undef X
    return u->state;
}

#define RESULT(x) RESULT_##x
#define TM_INDEX(apid) ((uint8_t)((apid) - APID_UNIT_REPLY))

static int32_t since(uint32_t now, uint32_t then) { return (int32_t)(now - then); }
static uint8_t reached(uint32_t now, uint32_t deadline) { return since(now, deadline) >= 0; }

static uint32_t rng_next(unit_t *u)
{
    uint32_t x = u->rng; /* xorshift32 */
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    u->rng = x;
    return x;
}

/* Cost on the AVR (avr-gcc -Os, from the disassembly): 45 instructions (the shifts by 16 are
 * byte moves) and two __mulsi3 calls (hardware MUL, about 45 cycles each): under 200 cycles,
 * 13 us at 16 MHz, once per HELLO. The per-command cost of the session is a 4-byte compare
 * and, on a wrong token, one counter increment: under 20 cycles. */
uint32_t unit_mix32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x85EBCA6Bu;
    x ^= x >> 13;
    x *= 0xC2B2AE35u;
    x ^= x >> 16;
    return x;
}

void unit_add_entropy(unit_t *u, uint32_t x)
{
    u->rng ^= x * 2654435761u;
    if (u->rng == 0)
        u->rng = 0x2545F491u;
}

static uint16_t period_ticks(const unit_t *u)
{
#if TICK_US == 1000
    return u->period_ms; /* no 32-bit division (~600 AVR cycles) on every FIRE and report */
#else
    return (uint16_t)((uint32_t)u->period_ms * 1000u / TICK_US);
#endif
}

/* ------------------------------------------------------------------ output */

static void finish_idle(unit_t *u);
static void finish(unit_t *u, uint8_t i);

/* defer_tm: the reports of the pulses the last FIRE cut out wait (idle_due) until the unit
 * next says anything, finishes or reorders a pending pulse, or the board's main loop has a
 * pass to spare (unit_send_pending): the TM order, seqs and report cache are as if they had
 * gone out with that FIRE, and its pass does not build them. */
static void flush_idle(unit_t *u)
{
    if (u->idle_due) {
        u->idle_due = 0;
        finish_idle(u);
    }
}

/* COBS-encode a sealed packet and hand it to send(); ``corrupt``: with a failing CRC. */
static void frame_out(unit_t *u, uint8_t *pkt, uint8_t len, uint8_t corrupt)
{
    uint8_t frame[PROTO_MAX_PACKET + 2];
#if UNIT_FAULT_INJECTION
    if (corrupt) {
        uint8_t save = pkt[len - 1];
        pkt[len - 1] ^= 0x5A; /* the CRC's low byte: COBS-valid frame, failing CRC */
        uint8_t n = proto_cobs_encode(pkt, len, frame);
        pkt[len - 1] = save;
        u->cfg.send(u->cfg.ctx, frame, n);
        return;
    }
#else
    (void)corrupt;
#endif
    uint8_t n = proto_cobs_encode(pkt, len, frame);
    u->cfg.send(u->cfg.ctx, frame, n);
}

/* The oldest queued TM frame out: sealed, COBS-encoded, sent. */
static void tm_out_oldest(unit_t *u)
{
    unit_tm_t *e = &u->tmq[u->tmq_head];
    u->tmq_head = (uint8_t)((u->tmq_head + 1) % UNIT_TM_QUEUE);
    u->tmq_n--;
    if (!e->sealed && e->len)
        proto_seal_packet(e->pkt, e->len);
    frame_out(u, e->pkt, e->len, e->corrupt);
}

uint8_t unit_tm_waiting(const unit_t *u) { return (uint8_t)(u->tmq_n + u->idle_due); }

uint8_t unit_send_pending(unit_t *u)
{
    if (u->idle_due) { /* the next ended pulse's report, queued (a pass's work on its own) */
        uint8_t i = 0;
        while (i < u->n_pending && u->pending[i].active)
            i++;
        u->idle_due = 0; /* (its report must not flush the others first) */
        if (i < u->n_pending) {
            finish(u, i);
            for (i = 0; i < u->n_pending; i++)
                if (!u->pending[i].active)
                    u->idle_due = 1; /* more to come, in pending order */
            return 1;
        }
    }
    if (!u->tmq_n)
        return 0;
    unit_tm_t *e = &u->tmq[u->tmq_head];
    if (!e->sealed) { /* its CRC: a call of its own (the board: a pass) */
        if (e->len)
            proto_seal_packet(e->pkt, e->len);
        e->sealed = 1;
        return 1;
    }
    tm_out_oldest(u);
    return 1;
}

/* Every queued TM out, in order (before a reset: what the unit said goes out first). */
static void send_all_pending(unit_t *u)
{
    flush_idle(u);
    while (u->tmq_n)
        tm_out_oldest(u);
}

/* A TM packet out (``sealed``: its CRC written; else proto_build_unsealed's), at once or, with
 * defer_tm, queued behind the others (a full queue sends its oldest first). */
static void send_packet_as(unit_t *u, uint8_t *pkt, uint8_t len, uint8_t sealed)
{
    uint8_t corrupt = 0;
    u->c.tx_frames++;
#if UNIT_FAULT_INJECTION
    if (u->corrupt_tx > 0) {
        u->corrupt_tx--;
        u->c.corrupted_tx++;
        corrupt = 1;
    }
#endif
    if (u->cfg.defer_tm) {
        if (u->tmq_n == UNIT_TM_QUEUE)
            tm_out_oldest(u);
        unit_tm_t *e = &u->tmq[(uint8_t)((u->tmq_head + u->tmq_n) % UNIT_TM_QUEUE)];
        u->tmq_n++;
        e->len = len;
        e->sealed = sealed;
        e->corrupt = corrupt;
        memcpy(e->pkt, pkt, len);
        return;
    }
    if (!sealed && len)
        proto_seal_packet(pkt, len);
    frame_out(u, pkt, len, corrupt);
}

static void send_packet(unit_t *u, uint8_t *pkt, uint8_t len)
{
    send_packet_as(u, pkt, len, 1);
}

/* Build and send a TM with the next sequence count of its APID; returns that count. */
static uint16_t emit(unit_t *u, uint8_t msg_id, uint16_t apid, const uint8_t *payload,
                     uint8_t len, uint8_t capture)
{
    uint8_t pkt[PROTO_MAX_PACKET];
    flush_idle(u); /* what came before this TM goes out before it */
    uint8_t i = TM_INDEX(apid);
    uint16_t seq = u->tm_seq[i];
    u->tm_seq[i] = (uint16_t)((seq + 1) % PROTO_SEQ_MODULO);
    uint8_t n = proto_build_unsealed(pkt, msg_id, seq, u->cfg.test_build ? FLAG_TEST_BUILD : 0,
                                     payload, len);
    uint8_t sealed = 0;
    if (capture && u->capturing && n <= UNIT_REPLY_MAX) {
        if (n) {
            proto_seal_packet(pkt, n);
            sealed = 1;
        }
        memcpy(u->captured, pkt, n);
        u->captured_len = n;
    }
    send_packet_as(u, pkt, n, sealed);
    return seq;
}

static void event(unit_t *u, uint32_t now, uint16_t ev, uint16_t a0, uint16_t a1, uint16_t a2)
{
    uint8_t p[MSG_EVENT_LEN];
    proto_put32(p + MSG_EVENT_OFF_PU_TIME_US, now);
    proto_put16(p + MSG_EVENT_OFF_EVENT, ev);
    p[MSG_EVENT_OFF_STATE] = u->state;
    proto_put16(p + MSG_EVENT_OFF_ARG0, a0);
    proto_put16(p + MSG_EVENT_OFF_ARG1, a1);
    proto_put16(p + MSG_EVENT_OFF_ARG2, a2);
    emit(u, MSG_EVENT, MSG_EVENT_APID, p, sizeof p, 0);
}

static void ack(unit_t *u, const proto_msg_t *m, uint8_t result)
{
    uint8_t p[MSG_ACK_LEN];
    proto_put16(p + MSG_ACK_OFF_ACKED_SEQ, m->seq);
    p[MSG_ACK_OFF_MSG_ID] = m->msg_id;
    p[MSG_ACK_OFF_RESULT] = result;
    emit(u, MSG_ACK, MSG_ACK_APID, p, sizeof p, 1);
}

/* ------------------------------------------------------------------ pulses */

static void report(unit_t *u, const unit_pulse_t *p)
{
    uint8_t r[MSG_VALVE_REPORT_LEN];
    uint16_t pt = period_ticks(u);
    proto_put32(r + MSG_VALVE_REPORT_OFF_STEP, p->step);
    proto_put32(r + MSG_VALVE_REPORT_OFF_T_START_PU_US, p->t_start);
    r[MSG_VALVE_REPORT_OFF_BANK] = p->bank;
    proto_put16(r + MSG_VALVE_REPORT_OFF_FLAGS, p->flags);
    for (uint8_t c = 0; c < CHANNELS_PER_BANK; c++) {
        uint16_t e = p->executed[c];
        if (((p->stuck >> c) & 1) && e < pt)
            e = pt;
        proto_put16(r + MSG_VALVE_REPORT_OFF_EXECUTED_TICKS + 2 * c, e);
    }
    proto_put16(r + MSG_VALVE_REPORT_OFF_FAILED_MASK, p->failed);
    proto_put16(r + MSG_VALVE_REPORT_OFF_STUCK_MASK, p->stuck);
    uint16_t seq = emit(u, MSG_VALVE_REPORT, MSG_VALVE_REPORT_APID, r, sizeof r, 0);
    if (p->has_session == u->has_session && p->session == u->session) {
        u->has_report[p->bank] = 1;
        u->report_step[p->bank] = p->step;
        u->report_seq[p->bank] = seq;
        memcpy(u->report[p->bank], r, sizeof r);
    }
    u->c.fires_executed++;
}

/* Cut the channels ``bits`` of the pulse at ``now``: the whole ticks each valve was open
 * before the cut (the board switches on tick edges), one division a pulse (the AVR's 32-bit
 * division is ~600 cycles). */
static void cut(unit_pulse_t *p, uint16_t bits, uint32_t now)
{
    bits &= p->active;
    if (!bits)
        return;
    int32_t dt = since(now, p->t_start);
    uint32_t ticks = dt > 0 ? (uint32_t)dt / TICK_US : 0;
    uint16_t bit = 1;
    for (uint8_t c = 0; c < CHANNELS_PER_BANK; c++, bit <<= 1)
        if (bits & bit)
            p->executed[c] = ticks < p->planned[c] ? (uint16_t)ticks : p->planned[c];
    p->flags |= 2;
    p->active &= (uint16_t)~bits;
}

static void remove_pending(unit_t *u, uint8_t i)
{
    for (uint8_t j = i; j + 1 < u->n_pending; j++)
        u->pending[j] = u->pending[j + 1];
    u->n_pending--;
}

/* Report pending[i] and drop it. */
static void finish(unit_t *u, uint8_t i)
{
    unit_pulse_t p = u->pending[i];
    remove_pending(u, i);
    report(u, &p);
}

/* Report and drop every pending pulse with no channel left open, in order. */
static void finish_idle(unit_t *u)
{
    uint8_t i = 0;
    while (i < u->n_pending) {
        if (!u->pending[i].active)
            finish(u, i);
        else
            i++;
    }
}

/* Every valve but the stuck ones closed, on the pins at once (see unit_valves_fn). */
static void valves_closed_now(unit_t *u)
{
    if (u->cfg.valves)
        u->cfg.valves(u->cfg.ctx, u->stuck);
}

/* When the valves the last valves() call closed went low (see unit_time_fn). */
static uint32_t cut_time(unit_t *u, uint32_t now)
{
    return u->cfg.cut_time ? u->cfg.cut_time(u->cfg.ctx, now) : now;
}

/* Every valve closed at once, then every pulse cut and reported. ``at``: when they closed if
 * the caller knows (the link watchdog's deadline on the board), else NULL (cut_time). */
static void close_all(unit_t *u, uint32_t now, const uint32_t *at)
{
    if (!u->n_pending)
        return;
    valves_closed_now(u);
    uint32_t t = at ? *at : cut_time(u, now);
    flush_idle(u); /* (after the valves: they close first) */
    while (u->n_pending) {
        cut(&u->pending[0], u->pending[0].active, t);
        finish(u, 0);
    }
}

/* Go SAFE or FAULT: every valve closed first (at ``at``, see close_all), then
 * SAFE_ENTERED(reason, arg1). */
static void leave_armed_at(unit_t *u, uint32_t now, const uint32_t *at, uint8_t new_state,
                           uint8_t reason, uint16_t arg1)
{
    close_all(u, now, at);
    uint8_t old = u->state;
    if (old == new_state)
        return;
    u->has_nonce = 0;
    u->state = new_state;
    if (old == STATE_ARMING || old == STATE_ARMED || new_state == STATE_SAFE)
        event(u, now, EVENT_SAFE_ENTERED, reason, arg1, 0);
}

static void leave_armed_with(unit_t *u, uint32_t now, uint8_t new_state, uint8_t reason,
                             uint16_t arg1)
{
    leave_armed_at(u, now, NULL, new_state, reason, arg1);
}

static void leave_armed(unit_t *u, uint32_t now, uint8_t new_state, uint8_t reason)
{
    leave_armed_with(u, now, new_state, reason, 0);
}

/* Below the minimum feed pressure thruster starts are not qualified: no arming, no firing. */
static uint8_t pressure_low(const unit_t *u) { return u->tank_kpa < LIMIT_MIN_FEED_KPA; }

#if UNIT_FAULT_INJECTION
/* Cut the channels in bits (unit-wide) in every pending pulse (FAIL_OFF). */
static void cut_channels(unit_t *u, uint32_t bits, uint32_t now)
{
    flush_idle(u);
    uint32_t open = unit_open_mask(u);
    if (u->cfg.valves && (open & bits & ~u->stuck)) {
        u->cfg.valves(u->cfg.ctx, open & ~(bits & ~u->stuck)); /* at once on the pins */
        now = cut_time(u, now);                                 /* cut when they went low */
    }
    uint8_t i = 0;
    while (i < u->n_pending) {
        unit_pulse_t *p = &u->pending[i];
        cut(p, (uint16_t)(bits >> (p->bank * CHANNELS_PER_BANK)), now);
        if (!p->active)
            finish(u, i);
        else
            i++;
    }
}
#endif

/* ------------------------------------------------------------------ lifecycle */

/* A new session (or none): what the old one knew about steps and reports is void. */
static void end_session(unit_t *u, uint8_t has, uint32_t session)
{
    u->has_session = has;
    u->session = session;
    u->session_errors = 0;
    u->has_nonce = 0;
    u->has_floor = 0;
    memset(u->has_last_step, 0, sizeof u->has_last_step);
    memset(u->has_report, 0, sizeof u->has_report);
    u->has_last_fire = 0;
    u->last_step = 0;
}

static void power_on(unit_t *u)
{
    end_session(u, 0, 0);
    u->step_window = LIMIT_STEP_WINDOW_MIN;
    memset(&u->c, 0, sizeof u->c); /* HK counts since this boot, as after a real reset */
    u->drop_rx = 0;                 /* link faults: a reset ends them */
    u->corrupt_tx = 0;
    u->stalled = 0;
    u->mode = MODE_LOCKSTEP;
    u->period_ms = 100;
    u->watchdog_ms = LIMIT_WATCHDOG_MS_DEFAULT;
    u->hk_period_ms = LIMIT_HK_PERIOD_MS_DEFAULT;
    u->min_on_ticks = u->cfg.min_on_ticks;
    u->max_on_ticks = LIMIT_MAX_ON_TICKS_CAP;
    u->challenge_t = 0;
    u->last_valid = 0;
    u->idle_from = 0;
    u->n_pending = 0;
    u->idle_due = 0;
    u->ends_known = 0;
    memset(u->tm_seq, 0, sizeof u->tm_seq);
    u->has_rx_seq = 0;
    memset(u->cache, 0, sizeof u->cache);
    u->cache_next = 0;
    proto_init(&u->parser);
    u->has_next_hk = 0;
    u->has_bad_frame_event = 0;
    u->bad_since_event = 0;
    u->capturing = 0;
}

void unit_init(unit_t *u, const unit_config_t *cfg)
{
    memset(u, 0, sizeof *u);
    u->cfg = *cfg;
    if (u->cfg.n_channels < 1 || u->cfg.n_channels > UNIT_MAX_CHANNELS)
        u->cfg.n_channels = UNIT_MAX_CHANNELS;
#if !UNIT_FAULT_INJECTION
    u->cfg.test_build = 0;
#endif
    u->n_banks = (uint8_t)((u->cfg.n_channels + CHANNELS_PER_BANK - 1) / CHANNELS_PER_BANK);
    u->boot_count = cfg->boot_count;
    u->reset_cause = cfg->reset_cause;
    u->rng = cfg->rng_seed ? cfg->rng_seed : 0x2545F491u;
    u->state = STATE_BOOT;
    u->arm_enabled = 1;
    u->tank_kpa = UNIT_DEFAULT_TANK_KPA;
    power_on(u);
}

void unit_boot(unit_t *u, uint32_t now)
{
    uint8_t p[MSG_BOOT_LEN];
    proto_put16(p + MSG_BOOT_OFF_FW_VER, u->cfg.fw_ver);
    p[MSG_BOOT_OFF_PROTO_VER] = PROTO_VERSION;
    proto_put16(p + MSG_BOOT_OFF_BOOT_COUNT, u->boot_count);
    p[MSG_BOOT_OFF_RESET_CAUSE] = u->reset_cause;
    p[MSG_BOOT_OFF_N_CHANNELS] = u->cfg.n_channels;
    proto_put32(p + MSG_BOOT_OFF_DICT_HASH, u->cfg.dict_hash);
    emit(u, MSG_BOOT, MSG_BOOT_APID, p, sizeof p, 0);
    u->state = table_next(u, IN_BOOT_DONE, RESULT_ACCEPTED);
    event(u, now, EVENT_BOOTED, u->boot_count, u->reset_cause, 0);
    if (u->hk_period_ms) {
        u->has_next_hk = 1;
        u->next_hk = now + (uint32_t)u->hk_period_ms * 1000u;
    }
}

void unit_reset(unit_t *u, uint32_t now, uint8_t cause)
{
    close_all(u, now, NULL);
    send_all_pending(u); /* what the old boot said goes out before the new BOOT */
    u->boot_count++;
    u->reset_cause = cause;
    power_on(u);
    u->state = table_next(u, IN_RESET, RESULT_ACCEPTED);
    unit_boot(u, now);
}

/* Every valve closed in every state; the state after is the table's (STOP_ALL). */
void unit_stop_all(unit_t *u, uint32_t now)
{
    if (table_cell(u, IN_STOP_ALL) != CELL_NONE)
        leave_armed(u, now, table_next(u, IN_STOP_ALL, RESULT_ACCEPTED), SAFE_REASON_COMMANDED);
}

void unit_force_fault(unit_t *u, uint32_t now)
{
    if (table_cell(u, IN_SELF_CHECK_FAULT) != CELL_NONE)
        leave_armed(u, now, table_next(u, IN_SELF_CHECK_FAULT, RESULT_ACCEPTED), 0);
}

void unit_set_arm_enable(unit_t *u, uint8_t enabled, uint32_t now)
{
    u->arm_enabled = enabled ? 1 : 0;
    if (!enabled && table_cell(u, IN_ARM_ENABLE_OFF) != CELL_NONE)
        leave_armed(u, now, table_next(u, IN_ARM_ENABLE_OFF, RESULT_ACCEPTED),
                    SAFE_REASON_ARM_DISABLED);
}

void unit_set_tank_kpa(unit_t *u, uint16_t kpa, uint32_t now)
{
    u->tank_kpa = kpa;
    if (pressure_low(u) && table_cell(u, IN_TANK_LOW) != CELL_NONE)
        leave_armed_with(u, now, table_next(u, IN_TANK_LOW, RESULT_ACCEPTED),
                         SAFE_REASON_LOW_PRESSURE, kpa);
}

uint32_t unit_open_mask(const unit_t *u)
{
    uint32_t mask = u->stuck;
    for (uint8_t i = 0; i < u->n_pending; i++)
        mask |= (uint32_t)u->pending[i].active << (u->pending[i].bank * CHANNELS_PER_BANK);
    return mask;
}

/* ------------------------------------------------------------------ timers */

static uint8_t watchdog_active(const unit_t *u)
{
    return table_cell(u, IN_WATCHDOG) != CELL_NONE;
}

uint8_t unit_watchdog_deadline(const unit_t *u, uint32_t *deadline_us)
{
    *deadline_us = u->last_valid + (uint32_t)u->watchdog_ms * 1000u;
    return u->state != STATE_BOOT && watchdog_active(u);
}

/* The valves open at ``now``: a pulse whose start is still to come (the board's next tick
 * edge) is not open yet. */
static uint32_t open_at(const unit_t *u, uint32_t now)
{
    uint32_t mask = u->stuck;
    for (uint8_t i = 0; i < u->n_pending; i++)
        if (reached(now, u->pending[i].t_start))
            mask |= (uint32_t)u->pending[i].active << (u->pending[i].bank * CHANNELS_PER_BANK);
    return mask;
}

static void send_hk(unit_t *u, uint32_t now)
{
    uint8_t p[MSG_HK_LEN];
    uint32_t remaining = 0;
    if (watchdog_active(u)) {
        int32_t left = since(u->last_valid + (uint32_t)u->watchdog_ms * 1000u, now);
        remaining = left > 0 ? (uint32_t)left / 1000u : 0;
        if (remaining > 0xFFFF)
            remaining = 0xFFFF;
    }
    uint32_t overruns = (uint32_t)u->c.uart_overruns + u->uart_hw_errors;
    proto_put32(p + MSG_HK_OFF_PU_TIME_US, now);
    p[MSG_HK_OFF_STATE] = u->state;
    proto_put16(p + MSG_HK_OFF_WATCHDOG_REMAINING_MS, (uint16_t)remaining);
    proto_put16(p + MSG_HK_OFF_RX_FRAMES, u->c.rx_frames);
    proto_put16(p + MSG_HK_OFF_CRC_ERRORS, u->c.crc_errors);
    proto_put16(p + MSG_HK_OFF_COBS_ERRORS, u->c.cobs_errors);
    proto_put16(p + MSG_HK_OFF_LENGTH_ERRORS, u->c.length_errors);
    proto_put16(p + MSG_HK_OFF_SEQ_GAPS, u->c.seq_gaps);
    proto_put16(p + MSG_HK_OFF_UART_OVERRUNS, (uint16_t)overruns);
    proto_put16(p + MSG_HK_OFF_SESSION_ERRORS, u->c.session_errors);
    proto_put32(p + MSG_HK_OFF_LAST_STEP, u->last_step);
    proto_put32(p + MSG_HK_OFF_OPEN_MASK, open_at(u, now));
    proto_put32(p + MSG_HK_OFF_FAILED_MASK, u->failed);
    proto_put32(p + MSG_HK_OFF_STUCK_MASK, u->stuck);
    proto_put16(p + MSG_HK_OFF_TANK_KPA, u->tank_kpa);
    emit(u, MSG_HK, MSG_HK_APID, p, sizeof p, 0);
}

/* The first end of pending pulse ``p``'s open channels (t_start when none is open). */
static uint32_t first_end(const unit_pulse_t *p)
{
    uint16_t least = 0xFFFF, bit = 1;
    for (uint8_t c = 0; c < CHANNELS_PER_BANK; c++, bit <<= 1)
        if ((p->active & bit) && p->planned[c] < least)
            least = p->planned[c];
    return p->t_start + (uint32_t)(p->active ? least : 0) * TICK_US;
}

/* Report the pulse that was pending[i] when the scan began: the pulses finished since (bits
 * of *gone, by their index then) moved the ones after them down. */
static void finish_scanned(unit_t *u, uint8_t i, uint8_t *gone)
{
    uint8_t idx = i;
    for (uint8_t j = 0; j < i; j++)
        if ((*gone >> j) & 1)
            idx--;
    *gone |= (uint8_t)(1u << i);
    finish(u, idx);
}

static void run_timers(unit_t *u, uint32_t now, uint32_t late_us)
{
    if (u->state == STATE_BOOT)
        return;
    if (u->stalled && reached(now, u->stall_until))
        u->stalled = 0;
    uint8_t wd_on = watchdog_active(u);
    uint32_t wd_deadline = u->last_valid + (uint32_t)u->watchdog_ms * 1000u;
    /* Pulses that ended (before the watchdog would have cut them), in time order; a pulse is
     * reported when its last channel closes. One scan (32 channels: ~2,000 AVR cycles) ends
     * every channel whose end has come, and only when one may have: the unit runs its timers
     * at every tick and every received chunk. The pulses it leaves with no channel open are
     * reported in the order of their last channel's end, ties in pending order: the order in
     * which ending one channel at a time (earliest end first, ties in scan order) closes them.
     * (Ending one channel a scan cost 106,000 cycles when a bank's 16 pulses ended on one
     * tick: issue 17.) */
    if (u->n_pending && (!u->ends_known || reached(now, u->next_end))) {
        uint8_t idle0 = 0; /* defer_tm: pulses already ended whose reports wait: bit i */
        if (u->idle_due)
            for (uint8_t i = 0; i < u->n_pending; i++)
                if (!u->pending[i].active)
                    idle0 |= (uint8_t)(1u << i);
        u->idle_due = 0; /* idle0 holds them: no report below flushes them out of order */
        uint8_t active_left = 0;
        uint8_t later = 0;
        uint32_t first = 0; /* the earliest end not taken now */
        uint8_t done = 0;   /* pending[i] closed by this scan: bit i */
        uint32_t last_end[UNIT_MAX_PENDING] = {0};
        for (uint8_t i = 0; i < u->n_pending; i++) {
            unit_pulse_t *p = &u->pending[i];
            uint16_t bit = 1, ended = 0;
            if (!p->active)
                continue;
            /* its first end (16-bit compares): when that has not come, none has (one 32-bit
             * sum a pulse, not a channel: the scan runs in the pass that takes a STOP_ALL) */
            uint32_t end0 = first_end(p);
            if (!reached(now, end0) || (wd_on && since(end0, wd_deadline) > 0)) {
                if (!later || since(end0, first) < 0)
                    first = end0;
                later = 1;
                active_left = 1;
                continue;
            }
            /* Its channels ending now: planned ticks <= lim, the whole ticks since t_start
             * (and to the watchdog's deadline): two divisions a pulse, 16-bit compares a
             * channel (a 32-bit product a channel was ~250 cycles: 4,000 a bank). The ends
             * are t_start + planned * TICK_US: reached(now, end) <=> planned <= d / TICK_US,
             * and end after the deadline <=> planned > w / TICK_US. end0 has come, so d >= 0. */
            uint32_t d = (uint32_t)since(now, p->t_start);
            uint32_t lim = d / TICK_US;
            if (wd_on) {
                int32_t w = since(wd_deadline, p->t_start);
                uint32_t wl = w < 0 ? 0 : (uint32_t)w / TICK_US;
                if (wl < lim)
                    lim = wl;
            }
            uint16_t lim16 = lim > 0xFFFF ? 0xFFFF : (uint16_t)lim;
            uint16_t most = 0, least = 0xFFFF; /* the latest end taken, the first not */
            bit = 1;
            for (uint8_t c = 0; c < CHANNELS_PER_BANK; c++, bit <<= 1) {
                if (!(p->active & bit))
                    continue;
                uint16_t pl = p->planned[c];
                if (pl > lim16) {
                    if (pl < least)
                        least = pl;
                    continue;
                }
                if (pl >= most)
                    most = pl;
                ended |= bit;
                p->executed[c] = pl;
            }
            if (least != 0xFFFF) {
                uint32_t end = p->t_start + (uint32_t)least * TICK_US;
                if (!later || since(end, first) < 0)
                    first = end;
                later = 1;
            }
            if (ended) {
                last_end[i] = p->t_start + (uint32_t)most * TICK_US;
                p->active &= (uint16_t)~ended;
                if (!p->active)
                    done |= (uint8_t)(1u << i);
            }
            active_left |= p->active != 0;
        }
        /* defer_tm: when that order is the pending order (ends on one tick: a bank's 16
         * pulses) and every report already waiting (idle0) comes before them in it, they are
         * reported later, one a pass (idle_due), like a FIRE's cut ones. Else the waiting
         * ones first, in pending order, then these. */
        if (u->cfg.defer_tm && done) {
            int8_t prev = -1;
            uint8_t in_order = 1;
            for (uint8_t i = 0; i < UNIT_MAX_PENDING; i++) {
                if (((done >> i) & 1) && prev >= 0 && since(last_end[i], last_end[prev]) < 0)
                    in_order = 0;
                if ((idle0 >> i) & 1 && prev >= 0)
                    in_order = 0; /* a waiting report after one of these */
                if ((done >> i) & 1)
                    prev = (int8_t)i;
            }
            if (in_order) {
                done = 0;
                u->idle_due = 1;
            }
        }
        if (idle0 && !done)
            u->idle_due = 1; /* still waiting (with the deferred ones, in pending order) */
        uint8_t gone = 0; /* finished: the pulses after them moved down */
        if (done && idle0) {
            for (uint8_t i = 0; i < UNIT_MAX_PENDING; i++)
                if ((idle0 >> i) & 1)
                    finish_scanned(u, i, &gone);
        }
        while (done) {    /* the earliest last end first, ties in pending order */
            int8_t bi = -1;
            for (uint8_t i = 0; i < UNIT_MAX_PENDING; i++)
                if (((done >> i) & 1) && (bi < 0 || since(last_end[i], last_end[bi]) < 0))
                    bi = (int8_t)i;
            done &= (uint8_t) ~(1u << bi);
            finish_scanned(u, (uint8_t)bi, &gone);
        }
        if (active_left) { /* (the pulses left are not all ended ones) */
            u->ends_known = later;
            u->next_end = first;
        }
    }
    if (wd_on && reached(now, wd_deadline)) {
        uint32_t since_ms = (uint32_t)since(now, u->last_valid) / 1000u;
        u->c.watchdog_trips++;
        valves_closed_now(u); /* before WATCHDOG_TRIP goes out: the bound is on the pins */
        event(u, now, EVENT_WATCHDOG_TRIP, (uint16_t)(since_ms > 0xFFFF ? 0xFFFF : since_ms),
              (uint16_t)(late_us > 0xFFFF ? 0xFFFF : late_us), 0);
        /* the board closed the pins at the deadline (a tick edge): the pulses are cut there */
        leave_armed_at(u, now, u->cfg.pulse_start ? &wd_deadline : NULL,
                       table_next(u, IN_WATCHDOG, RESULT_ACCEPTED), SAFE_REASON_WATCHDOG, 0);
    }
    if (table_cell(u, IN_ARM_IDLE) != CELL_NONE &&
        reached(now, u->idle_from + LIMIT_ARM_IDLE_MS * 1000u))
        leave_armed(u, now, table_next(u, IN_ARM_IDLE, RESULT_ACCEPTED), SAFE_REASON_ARM_TIMEOUT);
    if (table_cell(u, IN_CHALLENGE_EXPIRED) != CELL_NONE && u->has_nonce &&
        since(now, u->challenge_t) > (int32_t)(LIMIT_ARM_CHALLENGE_MS * 1000u))
        u->has_nonce = 0; /* expired: an ARM_CONFIRM now is BAD_NONCE */
    if (u->has_next_hk && reached(now, u->next_hk)) {
        if (!u->stalled)
            send_hk(u, now);
        u->next_hk += (uint32_t)u->hk_period_ms * 1000u;
        if (since(u->next_hk, now) <= 0)
            u->next_hk = now + (uint32_t)u->hk_period_ms * 1000u;
    }
}

void unit_tick(unit_t *u, uint32_t now, uint32_t late_us) { run_timers(u, now, late_us); }

/* ------------------------------------------------------------------ commands */

/* The host's nonce makes every session new even on a deterministic unit (QEMU); the pool
 * (ADC noise, boot count, Timer1 at every received chunk) makes it unpredictable to a writer
 * that never read the line. */
static uint32_t new_session(unit_t *u, uint32_t host_nonce)
{
    for (;;) {
        u->sessions_made++;
        uint32_t s = unit_mix32(host_nonce ^ rng_next(u) ^ (u->sessions_made * 0x9E3779B9u));
        if (s != 0 && s != u->last_session) {
            u->last_session = s;
            return s;
        }
    }
}


/* Someone without the session is guessing: every valve closed, SAFE, session void. */
static void lockout(unit_t *u, uint32_t now, uint8_t msg_id)
{
    if (table_cell(u, IN_LOCKOUT) != CELL_NONE)
        leave_armed(u, now, table_next(u, IN_LOCKOUT, RESULT_ACCEPTED), SAFE_REASON_INTRUSION);
    event(u, now, EVENT_LOCKOUT, u->session_errors, msg_id, 0);
    end_session(u, 0, 0);
}

static void on_hello(unit_t *u, const proto_msg_t *m, uint32_t now)
{
    const uint8_t *q = m->payload;
    uint8_t mode = q[MSG_HELLO_OFF_MODE];
    uint16_t period = proto_get16(q + MSG_HELLO_OFF_PERIOD_MS);
    uint8_t result;
    uint8_t has = u->has_session;
    uint32_t session = u->session;
    if (proto_get32(q + MSG_HELLO_OFF_DICT_HASH) != u->cfg.dict_hash ||
        q[MSG_HELLO_OFF_PROTO_VER] != PROTO_VERSION) {
        result = RESULT(DICT_MISMATCH);
        has = 0;
        session = 0;
    } else if (mode != MODE_LOCKSTEP && mode != MODE_REALTIME) {
        result = RESULT(BAD_MODE);
    } else if (period < LIMIT_PERIOD_MS_MIN || period > LIMIT_PERIOD_MS_MAX) {
        result = RESULT(BAD_PARAM);
    } else {
        result = RESULT(ACCEPTED);
        has = 1;
        session = new_session(u, proto_get32(q + MSG_HELLO_OFF_HOST_NONCE));
    }
    if (result == RESULT(ACCEPTED) || result == RESULT(DICT_MISMATCH)) {
        /* any session ends here, whatever the outcome; the state after is the table's */
        uint8_t next = table_next(u, IN_HELLO, result);
        if (next != u->state)
            leave_armed(u, now, next, SAFE_REASON_NEW_SESSION);
        end_session(u, has, session);
        if (result == RESULT(ACCEPTED)) {
            u->mode = mode;
            u->period_ms = period;
        }
    }
    uint8_t p[MSG_HELLO_ACK_LEN];
    p[MSG_HELLO_ACK_OFF_RESULT] = result;
    proto_put32(p + MSG_HELLO_ACK_OFF_SESSION, result == RESULT(ACCEPTED) ? session : 0);
    proto_put16(p + MSG_HELLO_ACK_OFF_FW_VER, u->cfg.fw_ver);
    p[MSG_HELLO_ACK_OFF_PROTO_VER] = PROTO_VERSION;
    proto_put32(p + MSG_HELLO_ACK_OFF_DICT_HASH, u->cfg.dict_hash);
    p[MSG_HELLO_ACK_OFF_N_CHANNELS] = u->cfg.n_channels;
    proto_put16(p + MSG_HELLO_ACK_OFF_TICK_US, TICK_US);
    proto_put16(p + MSG_HELLO_ACK_OFF_MIN_ON_TICKS, u->min_on_ticks);
    proto_put16(p + MSG_HELLO_ACK_OFF_WATCHDOG_MS, u->watchdog_ms);
    p[MSG_HELLO_ACK_OFF_MODE] = u->mode;
    proto_put16(p + MSG_HELLO_ACK_OFF_BOOT_COUNT, u->boot_count);
    emit(u, MSG_HELLO_ACK, MSG_HELLO_ACK_APID, p, sizeof p, 1);
}

static void on_heartbeat(unit_t *u, const proto_msg_t *m, uint32_t now)
{
    (void)now;
    u->last_valid = u->arrived;
    if (m->flags & FLAG_ACK_REQ)
        ack(u, m, RESULT(ACCEPTED));
}

static void on_ping(unit_t *u, const proto_msg_t *m, uint32_t now)
{
    uint8_t p[MSG_PONG_LEN];
    memcpy(p + MSG_PONG_OFF_NONCE, m->payload + MSG_PING_OFF_NONCE, 4);
    memcpy(p + MSG_PONG_OFF_T1_HOST_US, m->payload + MSG_PING_OFF_T1_HOST_US, 8);
    proto_put32(p + MSG_PONG_OFF_T2_PU_US, now);
    proto_put32(p + MSG_PONG_OFF_T3_PU_US, now);
    emit(u, MSG_PONG, MSG_PONG_APID, p, sizeof p, 1);
}

static void on_arm_request(unit_t *u, const proto_msg_t *m, uint32_t now)
{
    if (pressure_low(u)) { /* the state was checked by the table */
        ack(u, m, RESULT(REJECTED_STATE));
        return;
    }
    uint32_t nonce;
    do
        nonce = rng_next(u);
    while (nonce == 0);
    u->nonce = nonce;
    u->has_nonce = 1;
    u->challenge_t = now;
    u->last_valid = u->arrived;
    u->state = table_next(u, IN_ARM_REQUEST, RESULT_ACCEPTED);
    uint8_t p[MSG_ARM_CHALLENGE_LEN];
    proto_put32(p + MSG_ARM_CHALLENGE_OFF_NONCE, nonce);
    proto_put16(p + MSG_ARM_CHALLENGE_OFF_VALID_MS, LIMIT_ARM_CHALLENGE_MS);
    emit(u, MSG_ARM_CHALLENGE, MSG_ARM_CHALLENGE_APID, p, sizeof p, 1);
}

static void on_arm_confirm(unit_t *u, const proto_msg_t *m, uint32_t now)
{
    const uint8_t *q = m->payload;
    if (pressure_low(u)) { /* never while ARMING (TANK_LOW leaves it): defence in depth */
        ack(u, m, RESULT(REJECTED_STATE));
        return;
    }
    if (!u->arm_enabled) {
        ack(u, m, RESULT(ARM_DISABLED));
        return;
    }
    uint16_t max_on = proto_get16(q + MSG_ARM_CONFIRM_OFF_MAX_ON_TICKS);
    uint32_t next_step = proto_get32(q + MSG_ARM_CONFIRM_OFF_NEXT_STEP);
    if (max_on < 1 || max_on > LIMIT_MAX_ON_TICKS_CAP || next_step == 0) {
        ack(u, m, RESULT(BAD_PARAM));
        return;
    }
    if (u->has_floor) { /* a step this session already passed */
        for (uint8_t b = 0; b < u->n_banks; b++) {
            if (next_step <= u->bank_floor[b]) {
                ack(u, m, RESULT(STALE));
                return;
            }
        }
    }
    uint8_t fresh = u->has_nonce &&
                    since(now, u->challenge_t) <= (int32_t)(LIMIT_ARM_CHALLENGE_MS * 1000u);
    if (!fresh || proto_get32(q + MSG_ARM_CONFIRM_OFF_NONCE) != u->nonce) {
        leave_armed(u, now, table_next(u, IN_ARM_CONFIRM, RESULT_BAD_NONCE),
                    SAFE_REASON_BAD_NONCE);
        ack(u, m, RESULT(BAD_NONCE));
        return;
    }
    u->has_nonce = 0;
    u->max_on_ticks = max_on;
    for (uint8_t b = 0; b < u->n_banks; b++)
        u->bank_floor[b] = next_step - 1;
    u->has_floor = 1;
    /* every step a host can lose before the link watchdog trips anyway, at least the minimum */
    uint16_t w = (uint16_t)((u->watchdog_ms + u->period_ms - 1u) / u->period_ms + 1u);
    u->step_window = w > LIMIT_STEP_WINDOW_MIN ? w : (uint16_t)LIMIT_STEP_WINDOW_MIN;
    u->last_valid = u->arrived;
    u->idle_from = now;
    u->has_last_fire = 0;
    u->state = table_next(u, IN_ARM_CONFIRM, RESULT_ACCEPTED);
    ack(u, m, RESULT(ACCEPTED));
    event(u, now, EVENT_ARMED, max_on, 0, 0);
}

static void on_disarm(unit_t *u, const proto_msg_t *m, uint32_t now)
{
    uint8_t was = u->state;
    leave_armed(u, now, table_next(u, IN_DISARM, RESULT_ACCEPTED), SAFE_REASON_COMMANDED);
    if (was == STATE_ARMING || was == STATE_ARMED)
        event(u, now, EVENT_DISARMED, 0, 0, 0);
    ack(u, m, RESULT(ACCEPTED));
}

static void on_stop_all(unit_t *u, const proto_msg_t *m, uint32_t now)
{
    unit_stop_all(u, now);
    if (m->flags & FLAG_ACK_REQ)
        ack(u, m, RESULT(ACCEPTED));
}

static void on_set_param(unit_t *u, const proto_msg_t *m, uint32_t now)
{
    uint8_t param = m->payload[MSG_SET_PARAM_OFF_PARAM];
    int32_t v = (int32_t)proto_get32(m->payload + MSG_SET_PARAM_OFF_VALUE);
    uint8_t ok;
    switch (param) {
    case PARAM_WATCHDOG_MS:
        ok = v >= (int32_t)LIMIT_WATCHDOG_MS_MIN && v <= (int32_t)LIMIT_WATCHDOG_MS_MAX;
        break;
    case PARAM_HK_PERIOD_MS:
        ok = v == 0 || (v >= 20 && v <= 10000);
        break;
    case PARAM_MIN_ON_TICKS:
        ok = v >= 0 && v <= 1000;
        break;
    default:
        ok = 0;
    }
    if (!ok) {
        ack(u, m, RESULT(BAD_PARAM));
        return;
    }
    if (param == PARAM_WATCHDOG_MS) {
        u->watchdog_ms = (uint16_t)v;
    } else if (param == PARAM_HK_PERIOD_MS) {
        u->hk_period_ms = (uint16_t)v;
        u->has_next_hk = v != 0;
        u->next_hk = now + (uint32_t)v * 1000u;
    } else {
        u->min_on_ticks = (uint16_t)v;
    }
    ack(u, m, RESULT(ACCEPTED));
}

void unit_inject_fault(unit_t *u, uint8_t kind, uint16_t arg, uint32_t now)
{
#if UNIT_FAULT_INJECTION
    if (u->state != STATE_BOOT)
        event(u, now, EVENT_FAULT_INJECTED, kind, arg, 0);
    uint32_t bits = arg == 0xFFFF ? (u->cfg.n_channels >= 32 ? 0xFFFFFFFFu
                                                             : (1u << u->cfg.n_channels) - 1u)
                                  : (arg < 32 ? 1ul << arg : 0);
    switch (kind) {
    case FAULT_DROP_RX:
        u->drop_rx = (uint16_t)(u->drop_rx + arg);
        break;
    case FAULT_CORRUPT_TX:
        u->corrupt_tx = (uint16_t)(u->corrupt_tx + arg);
        break;
    case FAULT_STALL_MS:
        u->stalled = 1;
        u->stall_until = now + (uint32_t)arg * 1000u;
        break;
    case FAULT_RESET:
        close_all(u, now, NULL);
        send_all_pending(u); /* on the wire before the board resets */
        if (u->cfg.reset) {
            u->cfg.reset(u->cfg.ctx); /* the board: never returns */
            return;
        }
        unit_reset(u, now, RESET_CAUSE_SOFTWARE);
        break;
    case FAULT_FAIL_OFF:
        u->failed |= bits;
        cut_channels(u, bits, now);
        break;
    case FAULT_STUCK_OPEN:
        u->stuck |= bits;
        break;
    case FAULT_CLEAR:
        u->failed &= ~bits;
        u->stuck &= ~bits;
        break;
    case FAULT_TANK_PRESSURE:
        unit_set_tank_kpa(u, arg, now);
        break;
    default:
        break;
    }
#else
    (void)u;
    (void)kind;
    (void)arg;
    (void)now;
#endif
}

static void on_fault_inject(unit_t *u, const proto_msg_t *m, uint32_t now)
{
    uint8_t kind = m->payload[MSG_FAULT_INJECT_OFF_FAULT];
    uint16_t arg = proto_get16(m->payload + MSG_FAULT_INJECT_OFF_ARG);
    if (!u->cfg.test_build || kind < FAULT_DROP_RX || kind > FAULT_CLEAR) {
        ack(u, m, RESULT(UNSUPPORTED));
        return;
    }
    if (((kind == FAULT_FAIL_OFF || kind == FAULT_STUCK_OPEN) && arg >= u->cfg.n_channels) ||
        (kind == FAULT_CLEAR && arg >= u->cfg.n_channels && arg != 0xFFFF)) {
        ack(u, m, RESULT(BAD_PARAM));
        return;
    }
    if (m->flags & FLAG_ACK_REQ)
        ack(u, m, RESULT(ACCEPTED));
    unit_inject_fault(u, kind, arg, now);
}

/* ------------------------------------------------------------------ FIRE */

static void execute(unit_t *u, const proto_msg_t *m, uint32_t now)
{
    flush_idle(u); /* the pending pulses as they would be had the last FIRE reported them */
    u->c.fires_accepted++; /* a FIRE executed in ARMED: the only way a valve opens */
    const uint8_t *q = m->payload;
    uint8_t bank = q[MSG_FIRE_OFF_BANK];
    uint32_t step = proto_get32(q + MSG_FIRE_OFF_STEP);
    uint16_t mask = proto_get16(q + MSG_FIRE_OFF_MASK);
    uint16_t limit = u->max_on_ticks;
    uint16_t pt = period_ticks(u);
    if (pt < limit)
        limit = pt;
    if (limit > LIMIT_MAX_ON_TICKS_CAP)
        limit = LIMIT_MAX_ON_TICKS_CAP;
    uint8_t base = (uint8_t)(bank * CHANNELS_PER_BANK);
    uint16_t failed = (uint16_t)(u->failed >> base);
    uint16_t stuck = (uint16_t)(u->stuck >> base);
    /* Scratch in static storage, not on the stack: the AVR reaches a stack frame this large
     * (two 86-byte pulses) only with pointer arithmetic on every access (ldd reaches 63
     * bytes), which made this function ~5,500 cycles a FIRE. execute never re-enters. */
    static unit_pulse_t pulse, held;
    memset(&pulse, 0, sizeof pulse);
    uint16_t act = 0; /* the channels with ticks to run */
    uint16_t bit = 1;
    for (uint8_t c = 0; c < CHANNELS_PER_BANK; c++, bit <<= 1) {
        if (!(mask & bit) || base + c >= u->cfg.n_channels)
            continue;
        uint16_t asked = proto_get16(q + MSG_FIRE_OFF_ON_TICKS + 2 * c);
        uint16_t v = asked;
        if (v > limit)
            v = limit;
        if (v > 0 && v < u->min_on_ticks) {
            v = (uint32_t)2 * v >= u->min_on_ticks ? u->min_on_ticks : 0;
            if (v > limit)
                v = 0;
        }
        if (v != asked) {
            pulse.flags |= 1;
            event(u, now, EVENT_CLAMPED, (uint16_t)(base + c), asked, v);
        }
        if (failed & bit)
            v = 0;
        pulse.planned[c] = v;
        if (v)
            act |= bit;
    }
    /* On the board a REALTIME pulse starts at a tick edge to come (pulse_start). */
    uint8_t timed = u->mode == MODE_REALTIME && act && u->cfg.pulse_start;
    /* Older pulses of this bank are cut on the channels this FIRE commands: at once where it
     * does not open them again, at its start where it does (the board holds those open up to
     * that edge, so the two reports add up to the pin's time). */
    uint16_t at_once = timed ? (uint16_t)(mask & ~act) : mask;
    uint16_t older = 0;
    for (uint8_t i = 0; i < u->n_pending; i++)
        if (u->pending[i].bank == bank)
            older |= u->pending[i].active;
    uint32_t t_cut = now;
    uint32_t shut = ((uint32_t)(uint16_t)(older & at_once) << base) & ~u->stuck;
    if (shut && u->cfg.valves) {
        u->cfg.valves(u->cfg.ctx, unit_open_mask(u) & ~shut);
        t_cut = cut_time(u, now);
    }
    uint32_t start = timed ? u->cfg.pulse_start(u->cfg.ctx, now) : now;
    for (uint8_t i = 0; i < u->n_pending; i++) {
        unit_pulse_t *p = &u->pending[i];
        if (p->bank != bank)
            continue;
        cut(p, mask & at_once, t_cut);
        cut(p, mask & ~at_once, start);
    }
    if (!timed) /* reports of the pulses cut out, in order (timed: after the valves moved) */
        finish_idle(u);
    u->has_last_step[bank] = 1;
    u->bank_step[bank] = step;
    u->bank_floor[bank] = step;
    u->last_step = step;
    u->idle_from = now;
    pulse.has_session = u->has_session;
    pulse.session = u->session;
    pulse.step = step;
    pulse.bank = bank;
    pulse.t_start = start;
    pulse.failed = failed;
    pulse.stuck = stuck;
    if (u->mode == MODE_LOCKSTEP) {
        memcpy(pulse.executed, pulse.planned, sizeof pulse.executed);
        report(u, &pulse);
        return;
    }
    pulse.active = act;
    if (!pulse.active) {
        report(u, &pulse);
        return;
    }
    uint8_t has_held = 0;
    if (u->n_pending == UNIT_MAX_PENDING) { /* board limit */
        uint8_t idle = 0;
        while (idle < u->n_pending && u->pending[idle].active)
            idle++;
        if (idle < u->n_pending) { /* a pulse cut out above: reported once the valves moved */
            held = u->pending[idle];
            has_held = 1;
            remove_pending(u, idle);
        } else { /* abort the oldest FIRE, at once */
            unit_pulse_t *p = &u->pending[0];
            uint32_t t = now, off = ((uint32_t)p->active << (p->bank * CHANNELS_PER_BANK));
            if (u->cfg.valves && (off & ~u->stuck)) {
                u->cfg.valves(u->cfg.ctx, unit_open_mask(u) & ~(off & ~u->stuck));
                t = cut_time(u, now);
            }
            cut(p, p->active, t);
            finish(u, 0);
        }
    }
    u->pending[u->n_pending++] = pulse;
    if (u->n_pending == 1) {
        u->ends_known = 0; /* what the bound said of older pulses is void */
    } else if (u->ends_known) { /* its first end, if earlier than the others' */
        uint16_t least = 0xFFFF;
        for (uint8_t c = 0; c < CHANNELS_PER_BANK; c++)
            if (pulse.planned[c] && pulse.planned[c] < least)
                least = pulse.planned[c];
        uint32_t end = start + (uint32_t)least * TICK_US;
        if (since(end, u->next_end) < 0)
            u->next_end = end;
    }
    if (u->cfg.valves) /* the pins open now (board: at start), not when the caller's pass ends */
        u->cfg.valves(u->cfg.ctx, unit_open_mask(u));
    if (has_held)
        report(u, &held);
    if (u->cfg.defer_tm)
        u->idle_due = 1; /* the pulses this FIRE cut out: reported later, in this order */
    else
        finish_idle(u); /* the pulses this FIRE cut out, once the valves moved */
}

static void on_fire(unit_t *u, const proto_msg_t *m, uint32_t now)
{
    const uint8_t *q = m->payload;
    u->last_valid = u->arrived; /* a FIRE of the session, whatever becomes of it */
    uint8_t had_prev = u->has_last_fire;
    uint32_t prev = u->last_fire_t;
    u->has_last_fire = 1;
    u->last_fire_t = now;
    uint8_t bank = q[MSG_FIRE_OFF_BANK];
    uint32_t step = proto_get32(q + MSG_FIRE_OFF_STEP);
    if (bank >= u->n_banks) {
        ack(u, m, RESULT(BAD_PARAM));
        return;
    }
    uint8_t has_last = u->has_last_step[bank];
    uint32_t last = u->bank_step[bank];
    if (has_last && step == last) {
        u->c.duplicate_fires++;
        event(u, now, EVENT_DUP_FIRE, (uint16_t)(step >> 16), (uint16_t)step, 0);
        if (u->has_report[bank] && u->report_step[bank] == step) {
            uint8_t r[MSG_VALVE_REPORT_LEN];
            uint8_t pkt[PROTO_MAX_PACKET];
            memcpy(r, u->report[bank], sizeof r);
            uint16_t flags = proto_get16(r + MSG_VALVE_REPORT_OFF_FLAGS);
            proto_put16(r + MSG_VALVE_REPORT_OFF_FLAGS, (uint16_t)(flags | 4));
            uint8_t n = proto_build_packet(
                pkt, MSG_VALVE_REPORT, u->report_seq[bank],
                (uint8_t)(FLAG_RETRANSMIT | (u->cfg.test_build ? FLAG_TEST_BUILD : 0)), r,
                sizeof r);
            send_packet(u, pkt, n);
        } else {
            ack(u, m, RESULT(DUPLICATE)); /* REALTIME: still running */
        }
        return;
    }
    uint32_t floor = u->bank_floor[bank]; /* set for every bank by ARM_CONFIRM */
    uint16_t valid_for = proto_get16(q + MSG_FIRE_OFF_VALID_FOR_MS);
    uint8_t why = 0; /* STALE_FIRE arg2: 1 not after the floor, 2 past valid_for_ms, 3 ahead */
    if (step <= floor)
        why = 1;
    else if (step - floor > u->step_window)
        why = 3;
    else if (u->mode == MODE_REALTIME && had_prev && valid_for &&
             since(now, prev) > (int32_t)((uint32_t)valid_for * 1000u))
        why = 2;
    if (why) {
        u->c.stale_fires++;
        event(u, now, EVENT_STALE_FIRE, (uint16_t)(step >> 16), (uint16_t)step, why);
        ack(u, m, why == 3 ? RESULT(STEP_AHEAD) : RESULT(STALE));
        return;
    }
    execute(u, m, now);
}

/* ------------------------------------------------------------------ input */

static uint8_t needs_session(uint8_t id)
{
    return id != MSG_HELLO && id != MSG_PING && id != MSG_STOP_ALL;
}

/* The state table's input for a command message id (N_INPUTS: not a command). */
static uint8_t command_input(uint8_t id)
{
    switch (id) {
#define X(in, msg)                                                                               \
    case msg: return in;
        STATE_TABLE_COMMANDS(X)
#undef X
    default: return N_INPUTS;
    }
}

/* One command in the present state, as the state table says: refused with the cell's result, or
 * handed to the cell's action (whose handler takes the next state from the table). */
static void dispatch(unit_t *u, const proto_msg_t *m, uint32_t now)
{
    uint8_t in = command_input(m->msg_id);
    uint8_t cell = in < N_INPUTS ? table_cell(u, in) : (uint8_t)(CELL_REFUSE | RESULT(UNSUPPORTED));
    if (cell & CELL_REFUSE) {
        ack(u, m, CELL_RESULT(cell)); /* UNSUPPORTED: a TM id sent to the unit */
        return;
    }
    switch (cell) {
#define X(act, name)                                                                             \
    case act: on_##name(u, m, now); break;
        STATE_TABLE_COMMAND_ACTIONS(X)
#undef X
    default: break; /* CELL_NONE */
    }
}

static uint8_t is_cached(uint8_t id)
{
    return id == MSG_HELLO || id == MSG_ARM_REQUEST || id == MSG_ARM_CONFIRM ||
           id == MSG_DISARM || id == MSG_SET_PARAM || id == MSG_FAULT_INJECT;
}

static void command(unit_t *u, const proto_msg_t *m, uint32_t now)
{
    if (m->msg_id != MSG_STOP_ALL)
        flush_idle(u); /* STOP_ALL: after the valves closed (close_all) */
    uint8_t cached = is_cached(m->msg_id);
    uint16_t pcrc = 0;
    if (cached) {
        pcrc = proto_crc16(m->payload, m->payload_len);
        if (m->flags & FLAG_RETRANSMIT) {
            for (uint8_t i = 0; i < UNIT_CACHE_SIZE; i++) {
                unit_cache_entry_t *e = &u->cache[i];
                if (e->valid && e->msg_id == m->msg_id && e->seq == m->seq &&
                    e->payload_crc == pcrc) {
                    u->c.retransmits_answered++;
                    if (e->reply_len) {
                        flush_idle(u);
                        uint8_t pkt[UNIT_REPLY_MAX];
                        memcpy(pkt, e->reply, e->reply_len);
                        pkt[7] |= FLAG_RETRANSMIT;
                        proto_seal_packet(pkt, e->reply_len);
                        send_packet(u, pkt, e->reply_len);
                    }
                    return;
                }
            }
        }
        u->capturing = 1;
        u->captured_len = 0;
    }
    /* every session field is the payload's first 4 bytes */
    if (needs_session(m->msg_id) &&
        (!u->has_session || proto_get32(m->payload) != u->session)) {
        u->c.session_errors++;
        event(u, now, EVENT_SESSION_REJECTED, m->msg_id, 0, 0);
        ack(u, m, RESULT(BAD_SESSION));
        if (u->has_session && ++u->session_errors >= LIMIT_SESSION_ERROR_LIMIT) {
            lockout(u, now, m->msg_id);
        }
    } else {
        uint16_t boots = u->boot_count;
        dispatch(u, m, now);
        if (boots != u->boot_count)
            cached = 0; /* reset in place: the cache belongs to the old boot */
    }
    if (cached) {
        unit_cache_entry_t *e = &u->cache[u->cache_next];
        u->cache_next = (uint8_t)((u->cache_next + 1) % UNIT_CACHE_SIZE);
        e->valid = 1;
        e->msg_id = m->msg_id;
        e->seq = m->seq;
        e->payload_crc = pcrc;
        e->reply_len = u->captured_len;
        memcpy(e->reply, u->captured, u->captured_len);
    }
    u->capturing = 0;
}

static void count_seq(unit_t *u, const proto_msg_t *m)
{
    if (m->flags & FLAG_RETRANSMIT)
        return;
    if (m->msg_id == MSG_HELLO || !u->has_rx_seq) {
        u->rx_seq = m->seq; /* a new host may start its counts anywhere */
        u->has_rx_seq = 1;
        return;
    }
    uint16_t gap = (uint16_t)((m->seq - u->rx_seq - 1u) & (PROTO_SEQ_MODULO - 1));
    if (gap && gap < PROTO_SEQ_MODULO / 2)
        u->c.seq_gaps++;
    if (gap < PROTO_SEQ_MODULO / 2)
        u->rx_seq = m->seq;
}

static void bad_frame(unit_t *u, proto_status_t st, uint32_t now)
{
    uint8_t kind = 0;
    switch (st) {
    case PROTO_BAD_COBS: u->c.cobs_errors++; kind = FRAME_ERROR_COBS; break;
    case PROTO_BAD_CRC: u->c.crc_errors++; kind = FRAME_ERROR_CRC; break;
    case PROTO_BAD_LEN: u->c.length_errors++; kind = FRAME_ERROR_LENGTH; break;
    case PROTO_TOO_LONG: u->c.length_errors++; kind = FRAME_ERROR_TOO_LONG; break;
    case PROTO_BAD_HEADER: u->c.header_errors++; kind = FRAME_ERROR_HEADER; break;
    case PROTO_UNKNOWN_ID: u->c.unknown_id_errors++; kind = FRAME_ERROR_UNKNOWN_ID; break;
    default: break;
    }
    u->bad_since_event++;
    if (!u->has_bad_frame_event ||
        since(now, u->last_bad_frame_event) >= (int32_t)UNIT_BAD_FRAME_EVENT_GAP_US) {
        event(u, now, EVENT_BAD_FRAME, kind, u->bad_since_event, 0);
        u->has_bad_frame_event = 1;
        u->last_bad_frame_event = now;
        u->bad_since_event = 0;
    } else {
        u->c.bad_frame_events_suppressed++;
    }
}

void unit_receive(unit_t *u, const uint8_t *data, uint16_t n, uint32_t now)
{
    unit_receive_at(u, data, n, now, now);
}

void unit_receive_at(unit_t *u, const uint8_t *data, uint16_t n, uint32_t now, uint32_t arrived)
{
    /* never after now; on the board (pulse_start set) up to a tick after: its stamps are
     * rounded up to the tick edge where its tick interrupt applies the watchdog */
    u->arrived = since(arrived, now) > (u->cfg.pulse_start ? (int32_t)TICK_US : 0) ? now : arrived;
    run_timers(u, now, 0);
    if (!((STATES_HEARING_COMMANDS >> u->state) & 1)) /* BOOT */
        return;
    if (u->stalled) {
        if (n)
            u->c.uart_overruns++;
        return;
    }
    uint8_t discard = 0;
    for (uint16_t i = 0; i < n; i++) {
        proto_msg_t m;
        proto_status_t st = proto_feed(&u->parser, data[i], &m);
        if (st == PROTO_INCOMPLETE || discard)
            continue;
#if UNIT_FAULT_INJECTION
        if (u->drop_rx > 0) {
            u->drop_rx--;
            u->c.dropped_rx++;
            continue;
        }
#endif
        if (st != PROTO_OK) {
            bad_frame(u, st, now);
            continue;
        }
        u->c.rx_frames++;
        count_seq(u, &m);
        uint16_t boots = u->boot_count;
        command(u, &m, now);
        if (boots != u->boot_count)
            return; /* reset: the rest of this chunk is lost (the parser is new) */
        if (u->stalled)
            discard = 1; /* stall: later frames of this chunk are lost */
    }
}
