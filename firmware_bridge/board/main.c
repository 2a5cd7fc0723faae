/* main.c: the board side of the propulsion unit, ATmega2560 @ 16 MHz, avr-libc, no Arduino core.
 *
 * Design notes (there is no README in this folder on purpose: the notes live with the code).
 *
 * Reset path. early_init() sits in .init3: it runs after avr-libc has set the stack and the zero
 * register, before .data/.bss are initialised and long before main(). It drives every valve pin
 * low and makes it an output (the pin table comes from hw_configs/rigs/mega2560-bench.toml via
 * pins.h), saves and clears MCUSR (WDRF must be cleared or the watchdog stays armed at 16 ms),
 * and enables the hardware watchdog (WDTO_250MS). main() feeds it once per loop pass, so a hung
 * firmware resets the board with every valve closed, and BOOT reports reset_cause WATCHDOG.
 *
 * Reset cause and boot count. reset_cause is MCUSR's low four bits, which are exactly the
 * dictionary's POWER_ON 1 / EXTERNAL 2 / BROWN_OUT 4 / WATCHDOG 8; a commanded reset
 * (FAULT_INJECT RESET) leaves a marker in .noinit RAM and reports SOFTWARE 16 (also reported
 * when no flag is set: a jump to the reset vector). boot_count lives in EEPROM (address 0: magic,
 * 2: count, 4: last reset cause) and is mirrored in .noinit RAM with a check word, because
 * qemu-system-avr does not persist EEPROM across its (jump-to-0) reset. Health faults injected
 * by the bench (FAIL_OFF, STUCK_OPEN, tank pressure) model hardware: the main loop mirrors them
 * into .noinit RAM, and every reset but power-on and brown-out (watchdog, external/DTR,
 * commanded) restores them, like the emulator's; a power cycle (a new QEMU) clears them. Link
 * faults (DROP_RX, CORRUPT_TX, STALL_MS) and the HK counters start again from zero.
 *
 * Tank pressure. The bench rig has no pressure transducer: tank_kpa is UNIT_DEFAULT_TANK_KPA, or
 * what FAULT_INJECT TANK_PRESSURE set (kept over a commanded reset, above). Every change goes
 * through unit_set_tank_kpa(), which applies the minimum feed pressure (min_feed_kpa: an
 * ARMING/ARMED unit goes SAFE with reason LOW_PRESSURE, arming is refused while below). A rig
 * with a transducer samples it in the main loop and hands each reading to unit_set_tank_kpa().
 *
 * Commanded reset. The watchdog is set to 15 ms and the CPU waits for it. qemu-system-avr 7.2
 * does not model the watchdog, so after 60 ms of waiting the firmware jumps to the reset vector
 * with interrupts off; the C runtime starts over exactly as after a real reset (early_init again,
 * .bss cleared, peripherals reconfigured by main).
 *
 * USART0 at 115200 bit/s with U2X: UBRR0 = 16 gives 117647 bit/s, +2.1 % error (within the
 * receiver's tolerance; 250000 would be exact, but the host tools and the conformance client
 * open the port at 115200). 8N1. Receive is interrupt driven into a 256-byte ring (22 ms of the
 * line); the ISR counts data overruns (DOR0), frame errors (FE0) and ring overflows; HK
 * uart_overruns reports their sum (plus the unit's own stall losses). The parser (proto.c)
 * decodes COBS and sums the CRC as the bytes come, so the pass that takes a frame's delimiter
 * only checks its header. Transmit goes through a 2 KB ring drained by the UDRE interrupt (174
 * ms of the line): at the maximum FIRE rate the unit's TM outruns the line by about 9 bytes a
 * step, and the ring holds that backlog for over 200 steps, so no pass waits for the wire (the
 * simavr harness counts the waits: none, docs/bench.md section 9); a frame that finds it full
 * waits, feeding the watchdog, and is never dropped. A whole frame is queued at once, so frames
 * never interleave. The unit's TM frames wait in its own queue first (see "Pass bound": 16
 * packets, ~960 bytes of RAM; a full queue sends its oldest at once). QEMU ignores the baud
 * rate.
 *
 * Time. Timer1 in CTC mode (WGM12), prescaler 8, OCR1A = 1999: a compare match every 1 ms
 * (tick_us = 1000), counted by the ISR. pu_time_us = ms * 1000 + TCNT1 / 2, read atomically with
 * the pending-compare flag so it never steps back; its tick edges are the multiples of 1000 us
 * (g_ms * 1000). The main loop calls unit_tick() on every new millisecond. A pass is not always
 * short (a FIRE's takes 15,000-20,000 cycles with the interrupts meanwhile, see "Pass bound"),
 * so the valve pins never wait for the main loop: see "Pin timing".
 *
 * Pass bound (issue 17: STOP_ALL at the maximum FIRE rate). A STOP_ALL waits for the pass in
 * progress when its last byte lands, then for its own pass up to the valves (unit.c closes them
 * before it builds the closing's reports). So no pass does more than one heavy thing:
 * (1) a pass parses at most PASS_BYTES (16) received bytes and stops at the first delimiter
 *     (uart_take): it handles one frame at most (a lone 0x00 is none), and the COBS and CRC of
 *     the bytes before it were done by the passes that took them (proto_feed);
 * (2) the unit queues its TM frames (unit_config_t.defer_tm): unit_send_pending() does one step
 *     a call, the next ended pulse's report, a frame's CRC, or a frame's COBS and copy to the TX
 *     ring (each ~3,000-6,000 cycles), and the main loop calls it only in a pass that handled
 *     no frame, while no complete frame waits (rx_delims_*), and only when the pass has run
 *     under PASS_SPARE_US (250 us) so far. The reports of pulses a FIRE cut, and of pulses
 *     ending on one tick, wait in pending order until the unit next says anything or handles a
 *     command other than STOP_ALL (unit.c, idle_due): the frames, their order, seqs and content
 *     are the immediate unit's (the fuzzer runs a twin with defer_tm on every input and checks
 *     every byte), only when they reach the TX ring moves (a few ms at the maximum rate);
 * (3) the unit's timers end every due channel in one scan (ending one channel a 32-channel scan
 *     made a bank's 16 pulses ending on one tick a 106,000-cycle pass).
 * simavr at the maximum FIRE rate (docs/bench.md section 9): STOP_ALL's last byte to every pin
 * low 3,900-13,400 cycles (0.24-0.84 ms; was up to 82,280), a FIRE's pass 15,000-20,000, the
 * worst pass the final STOP_ALL's (29,000-33,000: the closing's reports after the valves; was
 * 45,000-49,000, and 104,000-166,000 where a bank's pulses ended on their own). Not met: the
 * one-tick target (16,000) for the STOP_ALL and FIRE passes.
 *
 * Pin timing (issue 17: what the unit reports is true to the pins). Every valve edge is the
 * tick interrupt's, on a tick edge, except a closing at once:
 * (1) A REALTIME FIRE's pulses start at the first tick edge at least START_MARGIN_US (200 us)
 *     after the unit executes it (unit_config_t.pulse_start): that edge is the report's
 *     t_start, the valves callback (valves_now) schedules each channel's rise there and its fall
 *     t_start + planned ticks later, and the Timer1 compare ISR applies them (the next edge of
 *     the schedule, precomputed: its valves written first, then the edge after found by a scan
 *     with interrupts on). The unit ends the pulse in its records at that same edge (its clock
 *     passes it when the interrupt fires), so a pulse lasts its reported ticks within the
 *     interrupt's latency (simavr: -55..+8 us), and HK's open_mask at pu_time_us (pulses
 *     started and not ended then) is what the pins show. A FIRE that re-commands a channel an
 *     older pulse holds cuts that one at its start: the valve stays high through it (or, when
 *     the older one ends a tick before, falls there and rises again at the start: reopen), so
 *     the two reports add up to the pin's time.
 * (2) Valves that close at once (STOP_ALL, DISARM, a lockout, any SAFE or FAULT, FAIL_OFF, a
 *     channel a FIRE commands off): the unit calls the valves callback first, which drives them
 *     low, takes them off the schedule and stamps the moment (unit_config_t.cut_time); the unit
 *     cuts the pulses there (whole ticks run by then: a cut pulse is never shorter on its pin
 *     than reported, and less than a tick longer) and only then builds the closing's reports.
 * (3) The link watchdog: the USART RX ISR stamps each frame's delimiter (g_ms, TCNT1) in a FIFO;
 *     the unit counts last_valid from that stamp less RX_STAMP_MARGIN_US (100 us) rounded up to
 *     the next tick edge (unit_receive_at), so its deadline is a tick edge: the tick interrupt
 *     drives every valve but the stuck ones low there, before anything else, and the unit cuts
 *     the pulses at that deadline (not when its main loop notices), then sends WATCHDOG_TRIP
 *     and goes SAFE. The valves close 250 ms - 100 us to 251 ms after the frame's last byte.
 * Stuck-open valves (FAULT_INJECT STUCK_OPEN) are never scheduled and stay high. Everything the
 * ISR shares with the main loop is written there in ATOMIC_BLOCKs of at most ~560 cycles (the
 * ticks of a new pulse are written with interrupts on first; the interrupt reads a channel's
 * ticks only once it is on the schedule). LOCKSTEP FIREs are executed in virtual time and never
 * move a pin.
 *
 * Tick lateness. Each pass that sees a new millisecond runs the tick (before it takes the bytes
 * that wait, which arrived after the tick fell due) and tells unit_tick() how late it runs it:
 * tens of microseconds on the board, milliseconds when QEMU's vCPU thread is held off the CPU
 * of a loaded machine. A WATCHDOG_TRIP carries that figure (arg1), and the fault campaign judges
 * the unit's logic on it apart from the scheduling, as it does the emulator's.
 *
 * QEMU. qemu-system-avr puts the I/O registers behind its global lock, the lock its I/O thread
 * also needs to hand the USART a received byte. The main loop leaves the I/O registers alone on
 * a pass with nothing to do: the valve pins are written when the open mask changes and once per
 * tick (they hold their level in between), and the rest of a pass works on RAM (the rings,
 * g_ms). (QEMU 7.2's SLEEP does not halt its vCPU, so idling the CPU would not help there.)
 *
 * Arm-enable input PD7 (Arduino pin 38), pull-up on, active low: a jumper to GND enables arming.
 * Sampled every millisecond and debounced over 10 ms; open -> ARM_CONFIRM refused and ARMED ->
 * SAFE. qemu-system-avr 7.2 has no GPIO model and reads the pin as 0, i.e. "enabled", so the
 * QEMU build needs no special case (ARM_ENABLE_IGNORED=1 forces "enabled" anyway if ever needed).
 *
 * Entropy for sessions and nonces: ADC noise of the floating ADC0 input at boot plus Timer1's
 * count at every received chunk (the host's byte timing), mixed into the unit's xorshift32.
 *
 * Build flags: TEST_BUILD=1 compiles FAULT_INJECT in (and sets the TEST_BUILD frame flag);
 * the normal build answers FAULT_INJECT with UNSUPPORTED.
 */
#include <avr/eeprom.h>
#include <avr/interrupt.h>
#include <avr/io.h>
#include <avr/wdt.h>
#include <util/atomic.h>
#include <util/delay.h>

#include <string.h>

#include "pins.h"
#include "unit.h"

#ifndef TEST_BUILD
#define TEST_BUILD 0
#endif
#ifndef ARM_ENABLE_IGNORED
#define ARM_ENABLE_IGNORED 0
#endif


#define CAT(a, b) a##b
#define XCAT(a, b) CAT(a, b)
#define UBRR_U2X ((F_CPU + 4UL * RIG_BAUD) / (8UL * RIG_BAUD) - 1UL) /* 16 at 115200 */
#define RX_RING 256u /* powers of two: the index masks below rely on it */
#define PASS_BYTES 16u /* received bytes a main-loop pass parses at most (~60 cycles each) */
#define PASS_SPARE_US 250u /* a pass sends a queued TM frame only if it has run less so far */
#define TX_RING 2048u
#define ARM_DEBOUNCE_MS 10
#define SOFT_MAGIC 0xB0C7u
#define EE_MAGIC 0xB007u

/* ---- .noinit: survives a jump to the reset vector (and a watchdog reset), not a power cycle */
static uint8_t reset_flags __attribute__((section(".noinit")));
static uint16_t soft_magic __attribute__((section(".noinit")));
static uint16_t soft_boot_count __attribute__((section(".noinit")));
static uint16_t soft_check __attribute__((section(".noinit")));
static uint8_t soft_reset_requested __attribute__((section(".noinit")));
static uint32_t soft_failed __attribute__((section(".noinit")));
static uint32_t soft_stuck __attribute__((section(".noinit")));
static uint16_t soft_tank __attribute__((section(".noinit")));

void early_init(void) __attribute__((naked, used, section(".init3")));
void early_init(void)
{
#define VALVES_CLOSED(L, M)                                                                    \
    XCAT(PORT, L) &= (uint8_t) ~(M);                                                           \
    XCAT(DDR, L) |= (M);
    VALVE_PORTS(VALVES_CLOSED)
#undef VALVES_CLOSED
    reset_flags = MCUSR;
    MCUSR = 0;
    wdt_enable(WDTO_250MS);
}

/* ---- time */
static volatile uint32_t g_ms;

#define ARM_PIN_REG XCAT(PIN, ARM_ENABLE_PORT)
#define ARM_PORT_REG XCAT(PORT, ARM_ENABLE_PORT)
#define ARM_DDR_REG XCAT(DDR, ARM_ENABLE_PORT)

/* ---- the valves' schedule, applied by the tick interrupt (see "Pin timing" above). Tick
 * numbers are g_ms's low 16 bits: every edge is due within 32 s (a pulse lasts at most
 * LIMIT_MAX_ON_TICKS_CAP ticks, the watchdog at most LIMIT_WATCHDOG_MS_MAX). The main loop
 * writes all of these inside ATOMIC_BLOCK. */
static volatile uint32_t pins;     /* what the valve pins show */
static volatile uint32_t sched;    /* channels with an edge to come: open_tick, then close_tick */
static volatile uint32_t to_open;  /* those of sched still to rise (at open_tick[ch]) */
static volatile uint16_t open_tick[N_CHANNELS], close_tick[N_CHANNELS];
static volatile uint32_t reopen;   /* those of sched that fall at close_tick, then rise again: */
static volatile uint16_t reopen_tick[N_CHANNELS], reclose_tick[N_CHANNELS]; /* a new pulse's */
static volatile uint8_t ev_armed;  /* the next edge of the schedule: at ev_tick ev_open rise, */
static volatile uint16_t ev_tick;  /* ev_close fall */
static volatile uint32_t ev_open, ev_close;
static volatile uint8_t wd_armed;  /* the link watchdog's deadline, on the pins too */
static volatile uint16_t wd_tick;
static volatile uint32_t wd_keep;  /* stuck-open valves: the watchdog leaves them */
static volatile uint16_t late_starts; /* pulses scheduled after their start edge (none seen) */

/* Drive the valve pins to ``mask`` (the other bits of their ports left alone). */
static void valves_write(uint32_t mask)
{
#define PORT_BYTE(L, M) uint8_t CAT(v_, L) = 0;
    VALVE_PORTS(PORT_BYTE)
#undef PORT_BYTE
#define CHANNEL_BIT(ch, L, bit, pin)                                                           \
    if (mask & (1UL << (ch)))                                                                  \
        CAT(v_, L) |= (uint8_t)(1u << (bit));
    VALVE_CHANNELS(CHANNEL_BIT)
#undef CHANNEL_BIT
#define PORT_WRITE(L, M) XCAT(PORT, L) = (uint8_t)((XCAT(PORT, L) & (uint8_t) ~(M)) | CAT(v_, L));
    VALVE_PORTS(PORT_WRITE)
#undef PORT_WRITE
}

/* The schedule's next edge after tick ``t``. Called by the tick interrupt once it applied an
 * edge; the scan (~40 cycles a scheduled channel) runs with interrupts on, so a received byte
 * never waits for it (the RX and UDRE handlers touch none of this; the main loop cannot run
 * until it ends, and the next compare is a tick away). */
static void next_edge(uint16_t t, uint32_t re)
{
    uint32_t s = sched, rise = to_open;
    sei();
    if (re) { /* fell for their old pulse: rise for the new one at its start */
        uint32_t bit = 1;
        for (uint8_t ch = 0; ch < N_CHANNELS; ch++, bit <<= 1)
            if (re & bit) {
                open_tick[ch] = reopen_tick[ch];
                close_tick[ch] = reclose_tick[ch];
            }
    }
    /* byte by byte (the AVR's own width; little endian), through pointers */
    uint8_t sv[4], rv[4], o[4] = {0, 0, 0, 0}, c[4] = {0, 0, 0, 0};
    memcpy(sv, &s, 4);
    memcpy(rv, &rise, 4);
    uint8_t any = 0;
    uint16_t best = 0;
    const volatile uint16_t *op = open_tick, *cp = close_tick;
    for (uint8_t b = 0; b < 4; b++, op += 8, cp += 8) {
        uint8_t sb = sv[b], rb = rv[b];
        if (!sb)
            continue; /* a port with nothing scheduled */
        uint8_t bit = 1;
        for (uint8_t k = 0; k < 8; k++, bit <<= 1) {
            if (!(sb & bit))
                continue;
            uint8_t up = rb & bit;
            uint16_t at = up ? op[k] : cp[k];
            int16_t d = (int16_t)(at - t);
            if (d <= 0)
                at = (uint16_t)(t + 1); /* overdue (a late start): the next tick */
            if (!any || (int16_t)(at - best) < 0) {
                any = 1;
                best = at;
                memset(o, 0, sizeof o);
                memset(c, 0, sizeof c);
            }
            if (at == best) {
                if (up)
                    o[b] |= bit;
                else
                    c[b] |= bit;
            }
        }
    }
    uint32_t eo, ec;
    memcpy(&eo, o, 4);
    memcpy(&ec, c, 4);
    cli();
    ev_tick = best;
    ev_open = eo;
    ev_close = ec;
    ev_armed = any;
}

ISR(TIMER1_COMPA_vect)
{
    uint32_t ms = g_ms + 1;
    g_ms = ms;
    uint16_t t = (uint16_t)ms;
    if (wd_armed && (int16_t)(t - wd_tick) >= 0) { /* the link watchdog: first, at once */
        wd_armed = 0;
        uint32_t p = pins, keep = p & wd_keep;
        if (p != keep) {
            valves_write(keep);
            pins = keep;
        }
        sched = 0;
        to_open = 0;
        reopen = 0;
        ev_armed = 0;
    }
    if (ev_armed && (int16_t)(t - ev_tick) >= 0) { /* the edge first, then the next one */
        uint32_t o = ev_open, c = ev_close, p = pins;
        uint32_t q = (p | o) & ~c;
        if (q != p) {
            valves_write(q);
            pins = q;
        }
        uint32_t re = c & reopen;
        to_open = (to_open & ~o) | re;
        sched &= ~(c & ~re);
        reopen &= ~re;
        next_edge(t, re);
    }
}

static uint32_t now_us(void)
{
    uint32_t ms;
    uint16_t t;
    ATOMIC_BLOCK(ATOMIC_RESTORESTATE)
    {
        ms = g_ms;
        t = TCNT1;
        if (TIFR1 & _BV(OCF1A)) { /* a compare the ISR has not counted yet */
            t = TCNT1;
            ms++;
        }
    }
    return ms * 1000UL + (t >> 1);
}

static uint32_t now_ms(void)
{
    uint32_t ms;
    ATOMIC_BLOCK(ATOMIC_RESTORESTATE) { ms = g_ms; }
    return ms;
}

/* ---- USART0 */
static volatile uint8_t rx_buf[RX_RING];
static volatile uint8_t rx_head, rx_tail;
static volatile uint16_t uart_dor, uart_fe, uart_ring_drops;
static volatile uint8_t tx_buf[TX_RING];
static volatile uint16_t tx_head, tx_tail; /* tx_head: written by the main loop with interrupts off */
/* When each frame waiting in the receive ring ended (g_ms and TCNT1 at the RX interrupt of its
 * delimiter): a FIFO the RX ISR fills and uart_take empties, a frame at a time. Full: a frame
 * gets no stamp, and it takes an older one (the watchdog counts from earlier, never later). */
#define RX_STAMPS 8u
/* The stamp is read when the RX interrupt runs, L_rx after the byte; the valves fall when the
 * tick interrupt runs, L_tick after its edge. The unit counts the link watchdog from the stamp
 * less RX_STAMP_MARGIN_US rounded up to the next tick edge (the watchdog then ends on a tick
 * edge, where the tick interrupt closes the valves). From the byte, the valves so fall at most
 * watchdog_ms + 1 tick - RX_STAMP_MARGIN_US + L_rx + L_tick later, and at least watchdog_ms -
 * RX_STAMP_MARGIN_US + L_rx + L_tick (never after its time, at most the margin before it). The
 * margin must cover L_rx + L_tick + the interrupt's own cycles to the pin write: each latency
 * is bounded by the longest interrupts-off stretch (558 cycles) plus one other interrupt (the
 * RX or UDRE one, under 200 cycles), so the sum stays under 1,600 cycles (100 us); simavr
 * measured at most 603 + 410 at the maximum FIRE rate (docs/bench.md section 9). With 40 us
 * (640 cycles) a frame whose byte fell just after a tick edge closed up to ~25 us past
 * watchdog + 1 tick. */
#define RX_STAMP_MARGIN_US 100u
static volatile uint32_t rx_stamp_ms[RX_STAMPS];
static volatile uint16_t rx_stamp_t[RX_STAMPS];
static volatile uint8_t rx_stamp_head, rx_stamp_tail;
/* Delimiters put in the receive ring (the RX ISR) and taken from it (uart_take): a complete
 * frame waits while they differ. */
static volatile uint8_t rx_delims_in;
static uint8_t rx_delims_out;

ISR(USART0_RX_vect)
{
    uint16_t t = TCNT1; /* first: the stamp is a few cycles after the byte's stop bit */
    uint8_t status = UCSR0A;
    uint8_t b = UDR0;
    if (status & _BV(DOR0))
        uart_dor++;
    if (status & _BV(FE0))
        uart_fe++; /* kept: the frame's CRC rejects it */
    uint8_t next = (uint8_t)((rx_head + 1) & (RX_RING - 1));
    if (next == rx_tail) {
        uart_ring_drops++;
        return;
    }
    if (b == 0) { /* a frame ends: its stamp before its delimiter is in the ring */
        rx_delims_in++;
        uint8_t h = rx_stamp_head, nh = (uint8_t)((h + 1) & (RX_STAMPS - 1));
        if (nh != rx_stamp_tail) {
            uint32_t ms = g_ms;
            if ((TIFR1 & _BV(OCF1A)) && t < 1000) /* the tick ISR waits behind this one */
                ms++;
            rx_stamp_ms[h] = ms;
            rx_stamp_t[h] = t;
            rx_stamp_head = nh;
        }
    }
    rx_buf[rx_head] = b;
    rx_head = next;
}

ISR(USART0_UDRE_vect)
{
    uint16_t tail = tx_tail;
    if (tx_head == tail) {
        UCSR0B &= (uint8_t)~_BV(UDRIE0);
        return;
    }
    UDR0 = tx_buf[tail];
    tx_tail = (uint16_t)((tail + 1) & (TX_RING - 1));
}

static void uart_init(void)
{
    UCSR0A = _BV(U2X0);
    UBRR0 = (uint16_t)UBRR_U2X;
    UCSR0C = _BV(UCSZ01) | _BV(UCSZ00);
    UCSR0B = _BV(RXEN0) | _BV(TXEN0) | _BV(RXCIE0);
}

/* Bytes queued in the TX ring. */
static uint16_t tx_used(void)
{
    uint16_t tail;
    ATOMIC_BLOCK(ATOMIC_RESTORESTATE) { tail = tx_tail; }
    return (uint16_t)((tx_head - tail) & (TX_RING - 1));
}

/* Queue a whole frame (frames never interleave). The ring holds about 87 ms of the line: more
 * than the unit sends at the maximum FIRE rate between two steps, so a pass never waits for the
 * wire (docs/bench.md section 9); a frame that finds it full waits rather than being lost. */
static void uart_send(void *ctx, const uint8_t *frame, uint8_t len)
{
    (void)ctx;
    while (tx_used() + len > TX_RING - 1) /* full: wait for the wire */
        wdt_reset();
    uint16_t head = tx_head;
    for (uint8_t i = 0; i < len; i++) {
        tx_buf[head] = frame[i];
        head = (uint16_t)((head + 1) & (TX_RING - 1));
    }
    ATOMIC_BLOCK(ATOMIC_FORCEON)
    {
        tx_head = head;
        UCSR0B |= _BV(UDRIE0);
    }
}

static void uart_flush(void)
{
    while (tx_used())
        wdt_reset();
    _delay_us(200); /* the last byte leaving the shift register (87 us at 115200) */
}

/* Takes the bytes waiting, up to ``max`` and the first delimiter (a pass handles one frame at
 * most). *arrived_us: when the frame they end arrived for the link watchdog (its delimiter's
 * stamp less RX_STAMP_MARGIN_US, rounded up to a tick edge). */
static uint8_t uart_take(uint8_t *out, uint8_t max, uint32_t *arrived_us, uint8_t *framed)
{
    static uint32_t ms; /* the last stamp: a frame whose stamp did not fit takes it */
    static uint16_t t;
    static uint8_t in_frame; /* bytes since the last delimiter: a lone 0x00 ends no frame */
    uint8_t first = 1; /* *arrived_us, *framed: left alone when the bytes end no frame */
    uint8_t n = 0;
    while (n < max && rx_tail != rx_head) {
        uint8_t b = rx_buf[rx_tail];
        out[n++] = b;
        rx_tail = (uint8_t)((rx_tail + 1) & (RX_RING - 1));
        if (b != 0) {
            in_frame = 1;
        } else if (!in_frame) { /* a lone delimiter: nothing to the parser, no pass of its own */
            uint8_t tail = rx_stamp_tail;
            if (tail != rx_stamp_head)
                rx_stamp_tail = (uint8_t)((tail + 1) & (RX_STAMPS - 1));
            rx_delims_out++;
        } else {
            in_frame = 0;
            uint8_t tail = rx_stamp_tail;
            if (tail != rx_stamp_head) {
                if (first) {
                    ms = rx_stamp_ms[tail]; /* written before the head moved past it */
                    t = rx_stamp_t[tail];
                }
                rx_stamp_tail = (uint8_t)((tail + 1) & (RX_STAMPS - 1));
            }
            if (first) /* the stamp less the margin, rounded up to its tick edge */
                *arrived_us = ((int16_t)(t >> 1) > (int16_t)RX_STAMP_MARGIN_US ? ms + 1 : ms) *
                              1000UL;
            first = 0;
            *framed = 1;
            rx_delims_out++;
            break;
        }
    }
    return n;
}

/* A complete frame waits in the receive ring. */
static uint8_t rx_frame_waiting(void) { return rx_delims_in != rx_delims_out; }

static uint16_t uart_errors(void)
{
    uint16_t e;
    ATOMIC_BLOCK(ATOMIC_RESTORESTATE) { e = (uint16_t)(uart_dor + uart_fe + uart_ring_drops); }
    return e;
}

static unit_t unit;

/* The tick (g_ms's count) at or after pu time ``us`` = ``whole_ms`` ms + a few ms from now (no
 * 32-bit division: pu_time_us wraps at 2^32 us, g_ms at 2^32 ms, so it is counted from now). */
static uint16_t tick_at_or_after(uint32_t us, uint16_t whole_ms, uint32_t now, uint32_t ms)
{
    int32_t x = (int32_t)(us - now) + (int32_t)(now - ms * 1000UL) - (int32_t)whole_ms * 1000;
    uint16_t k = (uint16_t)(ms + whole_ms);
    while (x > 0) {
        x -= 1000;
        k++;
    }
    while (x <= -1000) {
        x += 1000;
        k--;
    }
    return k;
}

/* The current tick number and pu time, consistent with each other. */
static uint32_t now_tick(uint32_t *now)
{
    uint32_t t = now_us(), ms = now_ms();
    if ((int32_t)(t - ms * 1000UL) >= 1000) /* a compare the ISR has not counted yet */
        ms++;
    *now = t;
    return ms;
}

/* Computed before an ATOMIC_BLOCK, not in it: the block's barrier holds memory accesses only,
 * and GCC may sink arithmetic on registers (a loop) into the interrupts-off region. */
#define DONE_BEFORE(x) __asm__ __volatile__("" : "+r"(x))

/* The link watchdog's deadline (a tick edge: the arrival stamps are rounded up to one) on the
 * pins: the interrupt closes every valve but the stuck ones at that tick. Already due: closed
 * here (the unit trips at its next tick). */
static uint32_t synced_open, synced_dl; /* what the last sync worked from */
static uint8_t synced_wd;

static void wd_sync(void)
{
    uint32_t deadline, now;
    uint8_t on = unit_watchdog_deadline(&unit, &deadline);
    synced_wd = on;
    synced_dl = deadline;
    uint32_t ms = now_tick(&now);
    uint16_t at = on ? tick_at_or_after(deadline, unit.watchdog_ms, now, ms) : 0;
    uint32_t stuck = unit.stuck;
    DONE_BEFORE(at);
    ATOMIC_BLOCK(ATOMIC_FORCEON)
    {
        if (on && (int16_t)((uint16_t)g_ms - at) >= 0) {
            on = 0;
            sched = 0;
            to_open = 0;
            reopen = 0;
            ev_armed = 0;
            uint32_t p = pins & stuck;
            valves_write(p);
            pins = p;
        }
        wd_tick = at;
        wd_keep = stuck;
        wd_armed = on;
    }
}

/* unit_time_fn pulse_start: the first tick edge at least START_MARGIN_US from now, so the
 * schedule is set before it (the unit's valves callback follows within a few hundred cycles). */
#define START_MARGIN_US 200u
static uint8_t opening;     /* pulse_start called: the next valves_now opens the newest pulse */
static uint16_t start_tick; /* ... at this tick */
static uint32_t cut_us;     /* when valves_now last closed valves at once */

static uint32_t pulse_start(void *ctx, uint32_t now_unused)
{
    (void)ctx;
    (void)now_unused; /* the pass's start: the clock now is later */
    uint32_t now;
    uint32_t ms = now_tick(&now);
    uint32_t k = ms + 1;
    if ((uint16_t)(now - ms * 1000UL) > 1000u - START_MARGIN_US)
        k++;
    opening = 1;
    start_tick = (uint16_t)k;
    return k * 1000UL;
}

static uint32_t cut_time(void *ctx, uint32_t now)
{
    (void)ctx;
    (void)now;
    return cut_us;
}

/* Drop the channels outside ``open`` (what the unit holds open) from the pins and the
 * schedule, at once; stuck-open valves high. Interrupts off. */
static uint32_t pins_keep(uint32_t open, uint32_t stuck)
{
    uint32_t drop = ((pins | sched) & ~open) | (sched & stuck);
    if (drop) {
        sched &= ~drop;
        to_open &= ~drop;
        reopen &= ~drop;
        ev_open &= ~drop;
        ev_close &= ~drop;
    }
    return (pins & ~drop & open) | (open & stuck);
}

/* Channels classified to fall and rise again (reopen) whose old fall the tick interrupt
 * applied before they were committed: they rise at the start like any other. */
static void fell_since(uint32_t fell, uint16_t t0)
{
    uint32_t bit = 1;
    for (uint8_t ch = 0; ch < N_CHANNELS; ch++, bit <<= 1)
        if (fell & bit) {
            open_tick[ch] = t0;
            close_tick[ch] = reclose_tick[ch];
        }
}

/* unit_valves_fn: ``mask`` is what the unit holds open from now on. Channels outside it close
 * at once (STOP_ALL, the link watchdog, any SAFE, a cut: before the unit builds the reports of
 * the closing), stamped for cut_time. After pulse_start, the newest pending pulse (a REALTIME
 * FIRE) is scheduled: its channels rise at start_tick and each falls at start_tick + its
 * planned ticks, in the tick interrupt; a channel an older pulse holds open stays high up to
 * the start (the unit cut it there) and on through the new pulse. */
static void valves_now(void *ctx, uint32_t mask)
{
    (void)ctx;
    uint32_t stuck = unit.stuck;
    uint32_t up = 0;
    uint16_t ub = 0;
    uint16_t t0 = start_tick;
    uint16_t at[CHANNELS_PER_BANK];
    volatile uint16_t *ot = open_tick, *ct = close_tick;
    uint8_t base = 0;
    if (opening) {
        opening = 0;
        const unit_pulse_t *p = &unit.pending[unit.n_pending - 1];
        base = (uint8_t)(p->bank * CHANNELS_PER_BANK);
        up = ((uint32_t)p->active << base) & mask & ~stuck;
        ub = (uint16_t)(up >> base);
        ot += base;
        ct += base;
        for (uint8_t c = 0; c < CHANNELS_PER_BANK; c++)
            at[c] = (uint16_t)(t0 + p->planned[c]);
    }
    /* The new pulse's ticks are written with interrupts on: the tick interrupt reads
     * open_tick only for channels still to rise, close_tick for those high, reopen_* only for
     * those in reopen, and none of these writes can change what it does before the pulse's
     * start (200 us or more away). A channel an older pulse still has on the schedule (the
     * unit cut it at this start): one still to rise rises at its own tick and falls at the new
     * end; one high that falls at or after the start runs on to the new end; one that falls
     * before the start falls, then rises again at the start (reopen). */
    uint16_t runs_on = 0, again = 0;
    uint32_t busy = 0, old = 0;
    if (up) {
        ATOMIC_BLOCK(ATOMIC_FORCEON)
        {
            busy = sched & up;
            old = to_open | reopen;
        }
        uint32_t w = busy & old, r = busy & reopen;
        uint16_t bb = base ? (uint16_t)(busy >> 16) : (uint16_t)busy;
        uint16_t wt = base ? (uint16_t)(w >> 16) : (uint16_t)w; /* 2 banks */
        uint16_t rt = base ? (uint16_t)(r >> 16) : (uint16_t)r;
        volatile uint16_t *ra = reopen_tick + base, *rc = reclose_tick + base;
        uint16_t bit = 1;
        for (uint8_t c = 0; c < CHANNELS_PER_BANK; c++, bit <<= 1) {
            if (!(ub & bit))
                continue;
            if (!(bb & bit)) { /* off the schedule */
                ot[c] = t0;
                ct[c] = at[c];
            } else if (wt & bit) { /* still to rise (or to rise again) for an older pulse */
                if (rt & bit)
                    rc[c] = at[c]; /* its fall for the oldest pulse stays */
                else
                    ct[c] = at[c];
            } else if ((int16_t)(ct[c] - t0) >= 0) {
                ot[c] = t0;
                ct[c] = at[c];
                runs_on |= bit;
            } else {
                ra[c] = t0;
                rc[c] = at[c];
                again |= bit;
            }
        }
    }
    DONE_BEFORE(up);
    DONE_BEFORE(runs_on);
    DONE_BEFORE(again);
    uint32_t ms;
    uint16_t tc;
    uint8_t due;
    /* interrupts off for a few hundred cycles: a received byte waits less than a frame */
    ATOMIC_BLOCK(ATOMIC_FORCEON)
    {
        uint32_t q = pins_keep(mask, stuck);
        if (q != pins) {
            valves_write(q);
            pins = q;
        }
        tc = TCNT1; /* when they went low (cut_us, below) */
        ms = g_ms;
        due = (TIFR1 & _BV(OCF1A)) != 0;
        if (up) {
            uint32_t re = base ? (uint32_t)again << 16 : again;
            uint32_t on = base ? (uint32_t)runs_on << 16 : runs_on;
            uint32_t fell = busy & ~sched; /* closed by the interrupt since: rise at the start */
            if (fell & re) {
                fell_since(fell & re, t0);
                re &= ~fell;
            }
            sched |= up;
            to_open |= up & ~re;
            reopen |= re;
            ev_close &= ~on; /* an older pulse's fall no longer applies */
            up &= ~re;       /* they rise once they fell (the interrupt finds it then) */
            if ((int16_t)((uint16_t)g_ms - t0) >= 0) { /* its edge passed: up now (never seen) */
                late_starts++;
                q = pins | up;
                valves_write(q);
                pins = q;
                uint16_t next = (uint16_t)(g_ms + 1); /* the interrupt finds the falls then */
                if (!ev_armed || (int16_t)(ev_tick - next) > 0) {
                    ev_tick = next;
                    ev_open = ev_close = 0;
                    ev_armed = 1;
                }
            } else if (!ev_armed || (int16_t)(t0 - ev_tick) < 0) {
                ev_tick = t0; /* the interrupt finds the later edges once it applied this one */
                ev_open = up;
                ev_close = 0;
                ev_armed = 1;
            } else if (ev_tick == t0) {
                ev_open |= up;
            }
        }
    }
    if (due && tc < 1000) /* a compare the interrupt had not counted yet */
        ms++;
    cut_us = ms * 1000UL + (tc >> 1);
    synced_open = mask;
}

/* ---- boot bookkeeping */
static uint16_t boot_count_next(void)
{
    uint16_t count = 0;
    if (eeprom_read_word((uint16_t *)0) == EE_MAGIC)
        count = eeprom_read_word((uint16_t *)2);
    if (soft_magic == SOFT_MAGIC && soft_check == (uint16_t)~soft_boot_count &&
        soft_boot_count > count)
        count = soft_boot_count;
    count++;
    eeprom_update_word((uint16_t *)0, EE_MAGIC);
    eeprom_update_word((uint16_t *)2, count);
    soft_boot_count = count;
    soft_check = (uint16_t)~count;
    return count;
}

static uint8_t reset_cause(void)
{
    uint8_t cause = reset_flags & 0x0F; /* PORF 1, EXTRF 2, BORF 4, WDRF 8: the enum's values */
    uint8_t soft = soft_magic == SOFT_MAGIC && soft_reset_requested == 0xA5;
    soft_reset_requested = 0;
    if (soft || cause == 0)
        cause = soft ? (uint8_t)(RESET_CAUSE_SOFTWARE | (cause & ~RESET_CAUSE_WATCHDOG))
                     : RESET_CAUSE_SOFTWARE;
    eeprom_update_byte((uint8_t *)4, cause);
    return cause;
}

static uint32_t adc_noise(void)
{
    uint32_t x = 0;
    ADMUX = _BV(REFS0); /* AVcc reference, ADC0 (PF0, floating on the bench) */
    ADCSRA = _BV(ADEN) | _BV(ADPS2) | _BV(ADPS1) | _BV(ADPS0);
    for (uint8_t i = 0; i < 16; i++) {
        ADCSRA |= _BV(ADSC);
        for (uint16_t guard = 0; (ADCSRA & _BV(ADSC)) && guard < 2000; guard++)
            ;
        x = (x << 2) ^ (x >> 30) ^ ADC;
    }
    ADCSRA = 0;
    return x;
}

static void board_reset(void *ctx)
{
    (void)ctx;
    ATOMIC_BLOCK(ATOMIC_FORCEON)
    {
        sched = 0;
        to_open = 0;
        reopen = 0;
        ev_armed = 0;
        wd_armed = 0;
        valves_write(0);
        pins = 0;
    }
    soft_reset_requested = 0xA5; /* soft_failed/stuck/tank: mirrored by the main loop */
    uart_flush();
    cli();
    wdt_enable(WDTO_15MS);
    for (uint8_t i = 0; i < 60; i++)
        _delay_ms(1); /* a real ATmega2560 resets here */
    /* No watchdog model (qemu-system-avr): restart through the reset vector. */
    __asm__ __volatile__("jmp 0");
    for (;;)
        ;
}

int main(void)
{
    wdt_reset();
    uint8_t warm = soft_magic == SOFT_MAGIC;
    uint8_t cause = reset_cause();
    uint16_t boots = boot_count_next();
    soft_magic = SOFT_MAGIC;

    /* arm-enable input with pull-up */
    ARM_DDR_REG &= (uint8_t)~_BV(ARM_ENABLE_BIT);
    if (ARM_ENABLE_PULL_UP)
        ARM_PORT_REG |= _BV(ARM_ENABLE_BIT);

    /* Timer1: CTC, clk/8, 1 ms */
    TCCR1A = 0;
    TCCR1B = 0;
    TCNT1 = 0;
    OCR1A = (uint16_t)(F_CPU / 8UL / 1000UL - 1UL);
    TIFR1 = _BV(OCF1A);
    TIMSK1 = _BV(OCIE1A);
    TCCR1B = _BV(WGM12) | _BV(CS11);

    uart_init();
    uint32_t seed = adc_noise() ^ ((uint32_t)boots << 16) ^ TCNT1;

    unit_config_t cfg = {N_CHANNELS, UNIT_FW_VERSION, boots, cause, TEST_BUILD, 5, DICT_HASH,
                         seed, uart_send, board_reset, 0, valves_now, pulse_start, cut_time,
                         1};
    unit_init(&unit, &cfg);
    if (warm && !(cause & (RESET_CAUSE_POWER_ON | RESET_CAUSE_BROWN_OUT))) {
        unit.failed = soft_failed; /* hardware faults survive every reset but a power cycle */
        unit.stuck = soft_stuck;
        unit_set_tank_kpa(&unit, soft_tank, 0); /* before boot: the unit is not armed */
    }
    sei();
    /* A reset can cut a frame the UART was sending: the host holds its first half and no
     * delimiter, and would take BOOT for the rest of it (a CRC error: BOOT lost). One 0x00
     * ends that half first (a lone delimiter is nothing to a decoder), so BOOT arrives whole:
     * the simavr tier saw the BOOT after an external reset lost that way (issue 17). */
    static const uint8_t delimiter = 0;
    uart_send(0, &delimiter, 1);
    unit_boot(&unit, now_us());

    uint32_t last_ms = now_ms();
    uint8_t arm_raw = 1, arm_count = 0;
    uint8_t buf[64];
    for (;;) {
        wdt_reset();
        uint8_t tm_wait = unit_tm_waiting(&unit); /* the clock only then (see "QEMU") */
        uint32_t pass_t0 = tm_wait ? now_us() : 0;
        uint32_t ms = now_ms();
        uint8_t refresh = 0;
        if (ms != last_ms) { /* the tick first: it fell due before any byte waiting now */
            uint32_t t = now_us();
            /* This pass does the work of tick last_ms + 1, due at its first microsecond: how
             * late it runs is the main loop's overrun (0 to tens of us on the board; QEMU's
             * vCPU descheduled on a loaded machine makes it milliseconds). */
            uint32_t late_us = t - (last_ms + 1u) * 1000u;
            last_ms = ms;
            refresh = 1;
            uint8_t level = (ARM_PIN_REG >> ARM_ENABLE_BIT) & 1;
            uint8_t enabled = ARM_ENABLE_IGNORED || (ARM_ENABLE_ACTIVE_LOW ? !level : level);
            if (enabled != arm_raw) {
                if (++arm_count >= ARM_DEBOUNCE_MS) {
                    arm_raw = enabled;
                    arm_count = 0;
                    unit_set_arm_enable(&unit, enabled, t);
                }
            } else {
                arm_count = 0;
            }
            unit_tick(&unit, t, late_us);
        }
        uint32_t arrived = 0;
        uint8_t framed = 0;
        uint8_t n = uart_take(buf, PASS_BYTES, &arrived, &framed);
        unit.uart_hw_errors = uart_errors();
        if (n) { /* the clock (Timer1, an I/O register) only then: see "QEMU" above */
            unit_add_entropy(&unit, ((uint32_t)TCNT1 << 16) ^ g_ms);
            uint32_t now = now_us();
            unit_receive_at(&unit, buf, n, now, framed ? arrived : now);
        }
        uint32_t open_mask = unit_open_mask(&unit);
        uint32_t deadline = synced_dl;
        uint8_t wd_on = synced_wd;
        if (n || refresh) /* last_valid and the state move only when bytes or a tick came */
            wd_on = unit_watchdog_deadline(&unit, &deadline);
        /* A channel the unit no longer holds open (it ended: the tick interrupt closed it
         * already; or it was cut outside a valves callback): off the pins and the schedule;
         * stuck-open ones high. New pulses are scheduled by the valves callback, never here.
         * Otherwise the pins hold their level; they are rewritten every tick (writing them on
         * every pass would take QEMU's global lock on every pass, see "QEMU" above). */
        if (open_mask != synced_open || refresh) {
            uint32_t stuck = unit.stuck;
            ATOMIC_BLOCK(ATOMIC_FORCEON)
            {
                uint32_t q = pins_keep(open_mask, stuck);
                valves_write(q);
                pins = q;
            }
        }
        if (wd_on != synced_wd || (wd_on && deadline != synced_dl))
            wd_sync();
        synced_open = open_mask;
        /* One step of the TM queue (a report, a CRC, or a COBS and copy: 3,000-6,000
         * cycles), only in a pass that handled no frame, while none waits, and has run under
         * PASS_SPARE_US: a STOP_ALL waits for one step at most (see "Pass bound" above). */
        if (tm_wait && !framed && !rx_frame_waiting() && now_us() - pass_t0 < PASS_SPARE_US)
            unit_send_pending(&unit);
        soft_failed = unit.failed; /* for the next reset (a few stores per pass) */
        soft_stuck = unit.stuck;
        soft_tank = unit.tank_kpa;
    }
}
