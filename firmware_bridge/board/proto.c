/* proto.c: COBS framing, CCSDS packet checks, CRC-16 and the TM encoder. See proto.h. */
#include "proto.h"
#ifdef __AVR__
#include <util/crc16.h>
#endif

#include <string.h>

typedef struct {
    uint8_t id;
    uint8_t is_tc;
    uint16_t apid;
    uint8_t len;
} msg_entry_t;

#define PROTO_ENTRY(name, id, apid, is_tc, len) {id, is_tc, apid, len},
static const msg_entry_t MESSAGES[MSG_COUNT] = {DICT_MESSAGES(PROTO_ENTRY)};
#undef PROTO_ENTRY

/* The decoder's state at the start of a frame. */
static void frame_start(proto_parser_t *p)
{
    p->n = 0;
    p->w = 0;
    p->left = 0;
    p->code = 0xFF; /* no 0x00 before the first block */
    p->crc = 0xFFFF;
}

void proto_init(proto_parser_t *p)
{
    frame_start(p);
    p->overflow = 0;
}

static uint16_t crc_update(uint16_t crc, uint8_t byte)
{
#ifdef __AVR__
    /* avr-libc's assembly of the same CRC (poly 0x1021, MSB first, no table): several
     * times faster than the bit loop the host builds (vectors, fuzzer) keep */
    return _crc_xmodem_update(crc, byte);
#else
    crc ^= (uint16_t)byte << 8;
    for (uint8_t b = 0; b < 8; b++)
        crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    return crc;
#endif
}

uint16_t proto_crc16(const uint8_t *data, uint8_t len)
{
    uint16_t crc = 0xFFFF;
    for (uint8_t i = 0; i < len; i++)
        crc = crc_update(crc, data[i]);
    return crc;
}

int proto_payload_len(uint8_t msg_id, uint16_t *apid, uint8_t *is_tc)
{
    for (uint8_t i = 0; i < MSG_COUNT; i++) {
        if (MESSAGES[i].id == msg_id) {
            if (apid)
                *apid = MESSAGES[i].apid;
            if (is_tc)
                *is_tc = MESSAGES[i].is_tc;
            return MESSAGES[i].len;
        }
    }
    return -1;
}

/* proto_check_packet with the CRC of pkt[0 .. len - 3] given (NULL: computed here). */
static proto_status_t check_packet(const uint8_t *pkt, uint8_t len, const uint16_t *crc,
                                   proto_msg_t *msg)
{
    if (len < PACKET_OVERHEAD)
        return PROTO_BAD_LEN;
    uint16_t word0 = proto_get16(pkt);
    uint16_t word1 = proto_get16(pkt + 2);
    uint16_t data_len = proto_get16(pkt + 4);
    if ((uint32_t)data_len + 7u != len)
        return PROTO_BAD_LEN;
    if ((crc ? *crc : proto_crc16(pkt, (uint8_t)(len - 2))) != proto_get16(pkt + len - 2))
        return PROTO_BAD_CRC;
    if ((word0 >> 13) != 0 || !((word0 >> 11) & 1) || (word1 >> 14) != 3)
        return PROTO_BAD_HEADER;
    if ((pkt[7] >> 4) != PROTO_MSG_VERSION)
        return PROTO_BAD_HEADER;
    uint16_t apid;
    uint8_t is_tc;
    int plen = proto_payload_len(pkt[6], &apid, &is_tc);
    if (plen < 0)
        return PROTO_UNKNOWN_ID;
    if ((word0 & 0x7FF) != apid || ((word0 >> 12) & 1) != is_tc)
        return PROTO_BAD_HEADER;
    if (len - PACKET_OVERHEAD != plen)
        return PROTO_BAD_LEN;
    if (msg) {
        msg->msg_id = pkt[6];
        msg->flags = pkt[7] & 0x0F;
        msg->is_tc = is_tc;
        msg->apid = apid;
        msg->seq = word1 & 0x3FFF;
        msg->payload_len = (uint8_t)plen;
        msg->payload = pkt + 8;
    }
    return PROTO_OK;
}

proto_status_t proto_check_packet(const uint8_t *pkt, uint8_t len, proto_msg_t *msg)
{
    return check_packet(pkt, len, NULL, msg);
}

/* Decode COBS in place; returns the packet length or -1. The output never overtakes the input
 * (each code byte is replaced by at most one 0x00), so in place is safe. */
static int cobs_decode_in_place(uint8_t *buf, uint8_t n)
{
    uint8_t r = 0, w = 0;
    while (r < n) {
        uint8_t code = buf[r++];
        if (code == 0)
            return -1;
        if ((uint8_t)(code - 1) > (uint8_t)(n - r))
            return -1; /* the block claims more bytes than the frame has */
        for (uint8_t i = 1; i < code; i++)
            buf[w++] = buf[r++];
        if (code != 0xFF && r < n)
            buf[w++] = 0;
    }
    return w;
}

proto_status_t proto_decode_frame(const uint8_t *frame, uint16_t len, uint8_t *scratch,
                                  proto_msg_t *msg)
{
    if (len + 1u > MAX_WIRE_BYTES)
        return PROTO_TOO_LONG;
    for (uint16_t i = 0; i < len; i++) {
        if (frame[i] == 0)
            return PROTO_BAD_COBS;
        scratch[i] = frame[i];
    }
    int n = cobs_decode_in_place(scratch, (uint8_t)len);
    if (n < 0)
        return PROTO_BAD_COBS;
    return proto_check_packet(scratch, (uint8_t)n, msg);
}

/* COBS is decoded and the CRC summed as the bytes come (a few dozen AVR cycles a byte), so the
 * delimiter's byte only checks the header: the board's main loop acts on a frame about 3,000
 * cycles sooner than when it decoded the whole frame then (issue 17, STOP_ALL latency). The
 * result is cobs_decode_in_place's, byte for byte and error for error. */
proto_status_t proto_feed(proto_parser_t *p, uint8_t byte, proto_msg_t *msg)
{
    if (byte != 0) {
        if (p->overflow)
            return PROTO_INCOMPLETE;
        if (p->n >= PROTO_MAX_FRAME) { /* this byte would make the frame > 64 B with its 0x00 */
            p->overflow = 1;
            frame_start(p);
            return PROTO_TOO_LONG;
        }
        p->n++;
        uint8_t out;
        if (p->left) { /* a data byte of the block */
            p->left--;
            out = byte;
        } else { /* a code byte: the block before it ends in 0x00 unless it was a full one */
            uint8_t ends_zero = p->code != 0xFF;
            p->code = byte;
            p->left = (uint8_t)(byte - 1);
            if (!ends_zero)
                return PROTO_INCOMPLETE;
            out = 0;
        }
        if (p->w >= 2) /* the CRC trails by two bytes: it never covers the CRC field */
            p->crc = crc_update(p->crc, p->buf[p->w - 2]);
        p->buf[p->w++] = out;
        return PROTO_INCOMPLETE;
    }
    if (p->overflow) {
        p->overflow = 0;
        frame_start(p);
        return PROTO_INCOMPLETE;
    }
    uint8_t n = p->n, w = p->w, left = p->left;
    uint16_t crc = p->crc;
    frame_start(p);
    if (n == 0)
        return PROTO_INCOMPLETE; /* a lone delimiter */
    if (left)
        return PROTO_BAD_COBS; /* the last block claims more bytes than the frame has */
    return check_packet(p->buf, w, &crc, msg);
}

uint8_t proto_build_packet(uint8_t *out, uint8_t msg_id, uint16_t seq, uint8_t flags,
                           const uint8_t *payload, uint8_t payload_len)
{
    uint8_t len = proto_build_unsealed(out, msg_id, seq, flags, payload, payload_len);
    if (len)
        proto_seal_packet(out, len);
    return len;
}

uint8_t proto_build_unsealed(uint8_t *out, uint8_t msg_id, uint16_t seq, uint8_t flags,
                             const uint8_t *payload, uint8_t payload_len)
{
    uint16_t apid;
    uint8_t is_tc;
    int plen = proto_payload_len(msg_id, &apid, &is_tc);
    if (plen < 0 || plen != payload_len)
        return 0;
    proto_put16(out, (uint16_t)((is_tc ? 1u << 12 : 0u) | (1u << 11) | apid));
    proto_put16(out + 2, (uint16_t)(0xC000u | (seq & 0x3FFFu)));
    proto_put16(out + 4, (uint16_t)(2 + payload_len + 2 - 1));
    out[6] = msg_id;
    out[7] = (uint8_t)((PROTO_MSG_VERSION << 4) | (flags & 0x0F));
    if (payload_len)
        memcpy(out + 8, payload, payload_len);
    return (uint8_t)(PACKET_OVERHEAD + payload_len);
}

void proto_seal_packet(uint8_t *pkt, uint8_t len)
{
    proto_put16(pkt + len - 2, proto_crc16(pkt, (uint8_t)(len - 2)));
}

uint8_t proto_cobs_encode(const uint8_t *in, uint8_t len, uint8_t *out)
{
    uint8_t code_at = 0, w = 1, code = 1;
    for (uint8_t i = 0; i < len; i++) {
        if (in[i] == 0) {
            out[code_at] = code;
            code_at = w++;
            code = 1;
        } else {
            out[w++] = in[i];
            if (++code == 0xFF) {
                out[code_at] = code;
                code_at = w++;
                code = 1;
            }
        }
    }
    out[code_at] = code;
    out[w++] = 0;
    return w;
}
