/* proto.h: the wire protocol (docs/protocol.md sections 1-2) as a pure C99 module.
 *
 * No AVR headers, no I/O, no globals: the same file is compiled for the ATmega2560 (firmware),
 * for the host (tests/test_firmware_host.py's host_vectors harness) and under libFuzzer.
 *
 * Receive: feed bytes one at a time to proto_feed(). It buffers the COBS bytes of the frame in
 * progress, and on the 0x00 delimiter decodes COBS in place and validates the packet in the
 * order of docs/protocol.md section 2 (LENGTH, CRC, HEADER, UNKNOWN_ID, HEADER for the APID /
 * direction, LENGTH for the payload), exactly like firmware_bridge/codec.py. Every byte gets a
 * status; only OK fills *msg. TOO_LONG is returned once, at the byte that overflows the 64-byte
 * budget; the rest of that frame is dropped up to the next delimiter. A lone 0x00 is ignored
 * (INCOMPLETE).
 *
 * Transmit: proto_build_packet() writes the headers, payload and CRC; proto_cobs_encode() frames
 * a packet (COBS + delimiter). The unit encodes its TM with them.
 */
#ifndef THRUSTER_PROTO_H
#define THRUSTER_PROTO_H

#include <stdint.h>

#include "dictionary.h"

#define PROTO_MAX_FRAME (MAX_WIRE_BYTES - 1) /* COBS bytes without the delimiter */
#define PROTO_MAX_PACKET (PACKET_OVERHEAD + MAX_PAYLOAD_LEN)
#define PROTO_SEQ_MODULO 16384u
#define PROTO_MSG_VERSION 1

typedef enum {
    PROTO_INCOMPLETE = 0, /* byte consumed, no frame completed (or an empty frame) */
    PROTO_OK,
    PROTO_BAD_COBS,
    PROTO_BAD_CRC,
    PROTO_BAD_LEN,
    PROTO_BAD_HEADER,
    PROTO_UNKNOWN_ID,
    PROTO_TOO_LONG
} proto_status_t;

typedef struct {
    uint8_t msg_id;
    uint8_t flags;    /* low 4 bits of the secondary header */
    uint8_t is_tc;
    uint16_t apid;
    uint16_t seq;
    uint8_t payload_len;
    const uint8_t *payload; /* points into the parser's buffer: valid until the next feed */
} proto_msg_t;

typedef struct {
    uint8_t buf[PROTO_MAX_FRAME]; /* the frame's bytes, COBS-decoded as they come */
    uint8_t n;                    /* COBS bytes of the frame so far */
    uint8_t w;                    /* decoded bytes in buf */
    uint8_t code, left;           /* the current COBS block's code, its data bytes to come */
    uint16_t crc;                 /* CRC-16 of buf[0 .. w - 3] */
    uint8_t overflow;             /* dropping bytes up to the next delimiter */
} proto_parser_t;

void proto_init(proto_parser_t *p);
proto_status_t proto_feed(proto_parser_t *p, uint8_t byte, proto_msg_t *msg);

/* Decode one whole frame (COBS bytes without the 0x00 delimiter): the codec's decode_frame.
 * Uses scratch (PROTO_MAX_FRAME bytes) for the decoded packet; msg->payload points into it. */
proto_status_t proto_decode_frame(const uint8_t *frame, uint16_t len, uint8_t *scratch,
                                  proto_msg_t *msg);

/* Validate one packet (COBS removed): the codec's decode_packet. */
proto_status_t proto_check_packet(const uint8_t *pkt, uint8_t len, proto_msg_t *msg);

/* CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF): proto_crc16("123456789") == 0x29B1. */
uint16_t proto_crc16(const uint8_t *data, uint8_t len);

/* Payload length of a message id, or -1 if the id is not in the dictionary. */
int proto_payload_len(uint8_t msg_id, uint16_t *apid, uint8_t *is_tc);

/* Write a packet of msg_id (APID and direction from the dictionary) into out (at least
 * PACKET_OVERHEAD + payload_len bytes). Returns its length, 0 for an unknown id or a payload
 * of the wrong length. */
uint8_t proto_build_packet(uint8_t *out, uint8_t msg_id, uint16_t seq, uint8_t flags,
                           const uint8_t *payload, uint8_t payload_len);

/* proto_build_packet without the CRC (its last two bytes left unwritten): proto_seal_packet
 * completes it. The board defers the CRC of its TM to a later main-loop pass (unit.h). */
uint8_t proto_build_unsealed(uint8_t *out, uint8_t msg_id, uint16_t seq, uint8_t flags,
                             const uint8_t *payload, uint8_t payload_len);

/* Recompute the CRC of a packet in place (after editing its flags). */
void proto_seal_packet(uint8_t *pkt, uint8_t len);

/* COBS-encode len bytes (len <= 253) into out and append the 0x00 delimiter. out needs
 * len + 2 bytes. Returns the frame length. */
uint8_t proto_cobs_encode(const uint8_t *in, uint8_t len, uint8_t *out);

/* Big-endian helpers. */
static inline uint16_t proto_get16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t proto_get32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void proto_put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void proto_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

#endif /* THRUSTER_PROTO_H */
