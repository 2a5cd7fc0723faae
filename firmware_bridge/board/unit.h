/* unit.h: the propulsion unit's state machine (docs/protocol.md sections 3-6) in pure C99.
 *
 * No AVR calls: the board's main.c, the host harness and the fuzzer drive it the same way, like
 * firmware_bridge/unit.py's UnitCore (whose documented choices this mirrors):
 *
 *     unit_init(&u, &cfg);             cfg.send() gets every TM frame (COBS + 0x00)
 *     unit_boot(&u, now_us);           BOOT, BOOTED, SAFE
 *     unit_receive(&u, buf, n, now);   bytes from the UART, replies through cfg.send
 *     unit_tick(&u, now_us, late_us);  timers: pulse ends, link watchdog, arm idle, HK
 *     unit_open_mask(&u);              what the valve pins must show now
 *
 * Time is the unit's free-running microsecond clock as a wrapping uint32_t (pu_time_us); every
 * comparison is a wrap-safe signed difference, so the 71.6 min wrap is harmless (no interval the
 * unit measures exceeds 35 min).
 *
 * Differences from UnitCore that come from the board's size (documented, not behavioural for the
 * conformance suite): the retransmission reply cache holds UNIT_CACHE_SIZE entries keyed by
 * (msg_id, seq, CRC-16 of the payload) instead of 32 keyed by every field; at most
 * UNIT_MAX_PENDING REALTIME FIREs are in progress at once (a new one beyond that aborts the
 * oldest, reported with flag bit 1); HK uart_overruns adds the UART's own error counts
 * (data overrun DOR, frame error FE, receive ring overflow) that main.c reports through
 * unit.uart_hw_errors.
 */
#ifndef THRUSTER_UNIT_H
#define THRUSTER_UNIT_H

#include <stdint.h>

#include "dictionary.h"
#include "proto.h"

#ifndef UNIT_FAULT_INJECTION
#define UNIT_FAULT_INJECTION 1 /* compile FAULT_INJECT in (the board's normal build sets 0) */
#endif

#define UNIT_FW_VERSION 0x0100
#define UNIT_MAX_CHANNELS 32
#define UNIT_MAX_BANKS (UNIT_MAX_CHANNELS / CHANNELS_PER_BANK)
#define UNIT_MAX_PENDING 8
#define UNIT_CACHE_SIZE 8
#define UNIT_DEFAULT_TANK_KPA 1800
#define UNIT_BAD_FRAME_EVENT_GAP_US (LIMIT_BAD_FRAME_EVENT_GAP_MS * 1000UL)
#define UNIT_REPLY_MAX (PACKET_OVERHEAD + MSG_HELLO_ACK_LEN) /* the largest cached reply */

typedef void (*unit_send_fn)(void *ctx, const uint8_t *frame, uint8_t len);
/* A hardware reset (board: watchdog). Never returns on the board; NULL: reset in place. */
typedef void (*unit_reset_fn)(void *ctx);
/* Drive the valve outputs to ``mask`` now (board: the pins): ``mask`` is what the unit holds
 * open from now on, and the valves outside it close at once. Called when every valve closes
 * (STOP_ALL, DISARM, the link watchdog, any SAFE/FAULT), before the reports and events of the
 * closing are built (on the AVR those take tens of thousands of cycles: issue 17's pin traces),
 * when channels are cut at once (FAIL_OFF, a FIRE that commands a running channel off, the
 * oldest FIRE aborted), and with unit_open_mask() once a REALTIME FIRE has opened its pulses
 * (the newest pending: the board schedules each channel's edges, t_start and t_start + planned
 * ticks). NULL: nothing. */
typedef void (*unit_valves_fn)(void *ctx, uint32_t mask);
/* The board's valve clock (issue 17: what the unit reports must be true to the pins). NULL in
 * the host builds, which date every pulse start and cut with the now they were given (no change
 * there). The board switches valves on Timer1's tick edges:
 * - pulse_start(ctx, now): when a REALTIME FIRE being executed starts its pulses, a tick edge
 *   its tick interrupt opens them at (t_start: each pulse then ends on a tick edge, where the
 *   same interrupt closes it); a channel an older pulse holds open stays open up to that edge
 *   and is cut there, so the two reports add up to the pin's time;
 * - cut_time(ctx, now): when the valves the last valves() call closed at once went low (they
 *   are cut there: whole ticks completed by then);
 * and, with pulse_start set, the link watchdog's deadline is a tick edge (the board hands
 * unit_receive_at arrival stamps rounded up to one) at which its tick interrupt closes the
 * valves: the pulses the watchdog ends are cut at the deadline, not when the unit notices. */
typedef uint32_t (*unit_time_fn)(void *ctx, uint32_t now_us);

typedef struct {
    uint8_t n_channels;   /* 1..32 */
    uint16_t fw_ver;
    uint16_t boot_count;
    uint8_t reset_cause;  /* enum reset_cause */
    uint8_t test_build;   /* FAULT_INJECT accepted, TEST_BUILD flag on every TM */
    uint16_t min_on_ticks;
    uint32_t dict_hash;
    uint32_t rng_seed;    /* entropy pool start; board: ADC noise, timer, boot count */
    unit_send_fn send;
    unit_reset_fn reset;
    void *ctx;
    unit_valves_fn valves;
    unit_time_fn pulse_start;
    unit_time_fn cut_time;
    /* 1: TM frames are queued, their CRC and COBS left to unit_send_pending() (the board's
     * main loop, one a pass when no received frame waits: issue 17, the pass bound). The frames,
     * their order and every state the unit keeps are those of 0 (send at once: the host
     * builds); only when they reach send() moves. */
    uint8_t defer_tm;
} unit_config_t;

typedef struct {
    uint32_t session;
    uint8_t has_session;
    uint8_t bank;
    uint16_t flags;
    uint16_t active;     /* channels of the bank still open */
    uint16_t failed, stuck;
    uint32_t step;
    uint32_t t_start;
    uint16_t planned[CHANNELS_PER_BANK];
    uint16_t executed[CHANNELS_PER_BANK];
} unit_pulse_t;

typedef struct {
    uint8_t valid;
    uint8_t msg_id;
    uint16_t seq;
    uint16_t payload_crc;
    uint8_t reply_len;   /* 0: the command had no reply */
    uint8_t reply[UNIT_REPLY_MAX];
} unit_cache_entry_t;

/* A TM frame waiting for unit_send_pending (defer_tm): its packet, the CRC still to seal
 * unless ``sealed``, ``corrupt`` when FAULT_INJECT CORRUPT_TX chose it. */
#define UNIT_TM_QUEUE 16
typedef struct {
    uint8_t len, sealed, corrupt;
    uint8_t pkt[PACKET_OVERHEAD + MAX_PAYLOAD_LEN];
} unit_tm_t;

typedef struct {
    uint16_t rx_frames, crc_errors, cobs_errors, length_errors, header_errors,
        unknown_id_errors, seq_gaps, uart_overruns, session_errors, dropped_rx, corrupted_tx,
        bad_frame_events_suppressed, fires_accepted, fires_executed, duplicate_fires, stale_fires,
        watchdog_trips, retransmits_answered, tx_frames;
} unit_counters_t;

typedef struct {
    unit_config_t cfg;
    uint8_t n_banks;
    uint16_t boot_count;
    uint8_t reset_cause;
    uint32_t rng;
    uint8_t state;
    uint8_t arm_enabled;
    /* hardware: survives a reset in place */
    uint32_t failed, stuck;
    uint16_t tank_kpa;
    uint16_t drop_rx, corrupt_tx;
    uint8_t stalled;
    uint32_t stall_until;
    uint16_t uart_hw_errors;   /* set by the board: DOR + FE + ring overflow */
    unit_counters_t c;
    uint32_t last_session;
    uint16_t sessions_made;
    /* RAM state of one power-on */
    uint8_t has_session;
    uint32_t session;
    uint8_t session_errors;    /* wrong tokens in this session: LOCKOUT at the limit */
    uint16_t step_window;      /* fixed at ARM_CONFIRM */
    uint8_t mode;
    uint16_t period_ms, watchdog_ms, hk_period_ms, min_on_ticks, max_on_ticks;
    uint8_t has_nonce;
    uint32_t nonce, challenge_t;
    uint32_t last_valid;
    uint32_t arrived;          /* unit_receive_at: when the bytes being handled arrived */
    uint8_t has_last_fire;
    uint32_t last_fire_t;
    uint32_t idle_from;
    uint8_t has_last_step[UNIT_MAX_BANKS];
    uint32_t bank_step[UNIT_MAX_BANKS];
    uint8_t has_floor;         /* an ARM_CONFIRM of this session set the floors */
    uint32_t bank_floor[UNIT_MAX_BANKS];
    uint8_t has_report[UNIT_MAX_BANKS];
    uint32_t report_step[UNIT_MAX_BANKS];
    uint16_t report_seq[UNIT_MAX_BANKS];
    uint8_t report[UNIT_MAX_BANKS][MSG_VALVE_REPORT_LEN];
    uint8_t n_pending;
    unit_pulse_t pending[UNIT_MAX_PENDING];
    uint8_t idle_due;          /* defer_tm: pulses a FIRE cut out, reported at the next TM */
    uint8_t ends_known;        /* next_end: no pending channel ends before it (a lower bound) */
    uint32_t next_end;
    uint32_t last_step;
    uint16_t tm_seq[3];        /* unit_reply, unit_event, valve_report */
    uint8_t has_rx_seq;
    uint16_t rx_seq;
    unit_cache_entry_t cache[UNIT_CACHE_SIZE];
    uint8_t cache_next;
    proto_parser_t parser;
    uint8_t has_next_hk;
    uint32_t next_hk;
    uint8_t has_bad_frame_event;
    uint32_t last_bad_frame_event;
    uint16_t bad_since_event;
    /* TM frames queued (defer_tm): a ring, tmq_n of them from tmq_head */
    uint8_t tmq_head, tmq_n;
    unit_tm_t tmq[UNIT_TM_QUEUE];
    /* reply capture for the retransmission cache */
    uint8_t capturing;
    uint8_t captured_len;
    uint8_t captured[UNIT_REPLY_MAX];
} unit_t;

void unit_init(unit_t *u, const unit_config_t *cfg);
void unit_boot(unit_t *u, uint32_t now_us);
void unit_receive(unit_t *u, const uint8_t *data, uint16_t n, uint32_t now_us);
/* unit_receive of bytes that arrived at ``arrived_us`` (at or before now_us, or up to a tick
 * after it on a board with pulse_start, whose stamps are rounded up to a tick edge; later
 * counts as now_us): the link watchdog counts from there (last_valid), so a board that takes its bytes
 * late (a long main-loop pass) does not extend it. unit_receive is arrived_us == now_us. */
void unit_receive_at(unit_t *u, const uint8_t *data, uint16_t n, uint32_t now_us,
                     uint32_t arrived_us);
/* late_us: how late the caller runs this tick, i.e. how long ago its timer fell due (0: on
 * time). A WATCHDOG_TRIP found by this tick carries it (arg1, at most 65535): the unit's logic
 * (it closed at the first tick it ran after the deadline) is judged apart from the scheduling
 * of the CPU it runs on, as an RTOS reports a task's overrun. */
void unit_tick(unit_t *u, uint32_t now_us, uint32_t late_us);
uint32_t unit_open_mask(const unit_t *u);
/* The link watchdog's deadline (last_valid + watchdog_ms); returns whether it runs now. */
uint8_t unit_watchdog_deadline(const unit_t *u, uint32_t *deadline_us);
/* The arm-enable input (board pin): disabled refuses ARM_CONFIRM, and ARMED -> SAFE. */
void unit_set_arm_enable(unit_t *u, uint8_t enabled, uint32_t now_us);
/* Mix entropy (timer counts at byte arrival, ADC noise) into the session/nonce generator. */
void unit_add_entropy(unit_t *u, uint32_t x);
/* MurmurHash3's fmix32, as firmware_bridge/unit.py's mix32 (session tokens). */
uint32_t unit_mix32(uint32_t x);
/* STOP_ALL without a command (shutdown), and the board's self-check entering FAULT. */
void unit_stop_all(unit_t *u, uint32_t now_us);
void unit_force_fault(unit_t *u, uint32_t now_us);
/* A reset in place (host builds, or a board whose reset hook returned). */
void unit_reset(unit_t *u, uint32_t now_us, uint8_t cause);
/* A new tank pressure [kPa] (a transducer, or FAULT_INJECT TANK_PRESSURE): below the
 * dictionary's min_feed_kpa an ARMING/ARMED unit closes every valve and goes SAFE
 * (LOW_PRESSURE), and arming is refused while it stays below. */
void unit_set_tank_kpa(unit_t *u, uint16_t kpa, uint32_t now_us);
/* defer_tm: the TM frames queued (0: none); unit_send_pending() seals, COBS-encodes and
 * send()s the oldest (returns 0 when none waited). */
uint8_t unit_tm_waiting(const unit_t *u);
uint8_t unit_send_pending(unit_t *u);
/* Apply a fault (enum fault) as the bench would; FAULT_INJECT calls it. */
void unit_inject_fault(unit_t *u, uint8_t kind, uint16_t arg, uint32_t now_us);

#endif /* THRUSTER_UNIT_H */
