"""A seeded mutational fuzzer of the Python wire decoder (thruster_hil.firmware_bridge.codec).

Why not hypothesis for depth: hypothesis shrinks beautifully but spends ~1.5 ms per example
deciding what to draw, so 10^5 examples took 146 s; the decoder itself takes ~1.5 us a frame.
The properties with shrinking stay in tests/test_codec.py (a few hundred examples each); this
runs the same oracle millions of times, reproducibly from a seed.

Inputs are drawn from a corpus: the golden vectors (firmware_bridge/golden_vectors.json, both the
good and the bad frames) plus every file in ``--corpus`` directories (raw frames, delimiter
optional). Most executions take one corpus packet (COBS removed), apply one to three
mutations (bit flip, byte set to an interesting value, insert, delete, truncate, splice, repeat a
chunk), usually make its length field and CRC true again so the checks behind them are reached,
and COBS-encode it; one in five mutates a frame's COBS bytes instead, one in ten is random bytes.

The oracle, per input:

- ``decode_frame`` returns a ``Message`` or raises the codec's own ``ProtocolError``; anything
  else (IndexError, struct.error, ...) is a finding;
- a decoded ``Message`` re-encodes to exactly the packet it came from (the decoder accepts only
  what the encoder would write);
- the streaming ``Decoder`` fed the same bytes plus a delimiter yields only ``Message`` or
  ``ProtocolError`` items, and agrees with ``decode_frame``.

Usage::

    python tools/fuzz_decoder.py [--runs N] [--seed S] [--corpus DIR ...] [--artifacts DIR]

Exit status 0 when every execution held, 1 with the first finding's input written to
``--artifacts`` (hex on stderr) otherwise. docs/reliability.md records the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import NamedTuple

from cobs import cobs
from thruster_hil.firmware_bridge.codec import (
    Decoder,
    Message,
    ProtocolError,
    crc16,
    decode_frame,
    encode_packet,
)

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "firmware_bridge" / "golden_vectors.json"
INTERESTING = (0x00, 0x01, 0x02, 0x7F, 0x80, 0xFE, 0xFF)


def seed_corpus(dirs: list[Path] = ()) -> list[bytes]:
    """The golden frames (delimiter stripped) and every file under ``dirs``."""
    golden = json.loads(GOLDEN.read_text())
    frames = [bytes.fromhex(v["wire"]).rstrip(b"\x00") for v in golden["good"]]
    frames += [bytes.fromhex(v["wire"]).rstrip(b"\x00") for v in golden.get("bad", [])]
    for d in dirs:
        for path in sorted(Path(d).iterdir()):
            if path.is_file():
                frames.append(path.read_bytes().rstrip(b"\x00"))
    return [f for f in frames if f] or [b"\x01"]


def _bytes_mutation(rng: random.Random, data: bytearray, corpus: list[bytes]) -> None:
    op = rng.randrange(7)
    n = len(data)
    if op == 0 and n:  # flip one bit
        data[rng.randrange(n)] ^= 1 << rng.randrange(8)
    elif op == 1 and n:  # an interesting byte
        data[rng.randrange(n)] = rng.choice(INTERESTING)
    elif op == 2:  # insert random bytes
        pos = rng.randint(0, n)
        data[pos:pos] = rng.randbytes(rng.randint(1, 4))
    elif op == 3 and n:  # delete a run
        pos = rng.randrange(n)
        del data[pos : pos + rng.randint(1, 4)]
    elif op == 4 and n:  # truncate
        del data[rng.randrange(n) :]
    elif op == 5:  # splice with another input
        other = rng.choice(corpus)
        cut = rng.randint(0, len(other))
        data[rng.randint(0, n) :] = other[cut:]
    elif op == 6 and n:  # repeat a chunk
        pos = rng.randrange(n)
        data[pos:pos] = data[pos : pos + rng.randint(1, 8)]


def _fix_length_and_crc(packet: bytearray) -> None:
    """Make the header's data length and the CRC true again, so the mutation reaches the checks
    behind them (header flags, APID, message id, payload length, field values)."""
    if len(packet) < 9:
        return
    packet[4:6] = (len(packet) - 7).to_bytes(2, "big")
    packet[-2:] = crc16(bytes(packet[:-2])).to_bytes(2, "big")


def mutate(rng: random.Random, packets: list[bytes], frames: list[bytes]) -> bytes:
    """One input frame (COBS, no delimiter). Mostly a mutated packet, often with its length and
    CRC made true again, then COBS-encoded; sometimes a mutated frame; sometimes random."""
    r = rng.random()
    if r < 0.1:
        return rng.randbytes(rng.randint(0, 70))
    if r < 0.3:
        data = bytearray(rng.choice(frames))
        for _ in range(rng.randint(1, 4)):
            _bytes_mutation(rng, data, frames)
        return bytes(data)
    packet = bytearray(rng.choice(packets))
    for _ in range(rng.randint(1, 3)):
        _bytes_mutation(rng, packet, packets)
    if rng.random() < 0.7:
        _fix_length_and_crc(packet)
    return cobs.encode(bytes(packet))


class Finding(Exception):
    """An input that broke the oracle; ``data`` is the frame (without the delimiter)."""

    def __init__(self, what: str, data: bytes):
        super().__init__(f"{what}: input {data.hex()}")
        self.data = data


def check(frame: bytes) -> bool:
    """The oracle on one frame (any bytes but the delimiter); True when it decoded to a message."""
    try:
        msg = decode_frame(frame)
    except ProtocolError:
        msg = None
    except Exception as err:  # the finding: the decoder raised something not its own
        raise Finding(f"decode_frame raised {type(err).__name__}: {err}", frame) from err
    if msg is not None:
        if not isinstance(msg, Message):
            raise Finding(f"decode_frame returned {type(msg).__name__}", frame)
        try:
            again = encode_packet(msg.name, msg.seq, msg.flags, **msg.fields)
        except Exception as err:
            raise Finding(f"a decoded message does not re-encode ({err})", frame) from err
        if again != cobs.decode(frame):
            raise Finding("a decoded message re-encodes to other bytes", frame)
    try:
        items = Decoder().feed(frame + b"\x00")
    except Exception as err:
        raise Finding(f"Decoder.feed raised {type(err).__name__}: {err}", frame) from err
    if not frame:
        return False
    if len(items) != 1 or not isinstance(items[0], Message | ProtocolError):
        raise Finding(f"Decoder.feed gave {items!r} for one frame", frame)
    if isinstance(items[0], Message) != (msg is not None):
        raise Finding("Decoder.feed and decode_frame disagree", frame)
    return msg is not None


class Result(NamedTuple):
    runs: int
    decoded: int
    seconds: float


def fuzz(runs: int, seed: int = 1, corpus_dirs: list[Path] = ()) -> Result:
    """``runs`` executions from ``seed``; raises ``Finding`` at the first broken oracle."""
    rng = random.Random(seed)
    frames = seed_corpus(corpus_dirs)
    packets = []
    for f in frames:
        try:
            packets.append(cobs.decode(f))
        except cobs.DecodeError:
            pass
    decoded = 0
    t0 = time.perf_counter()
    for _ in range(runs):
        frame = mutate(rng, packets, frames).replace(b"\x00", b"")
        decoded += check(frame)
    return Result(runs, decoded, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--corpus", type=Path, action="append", default=[])
    ap.add_argument("--artifacts", type=Path, default=Path("."))
    args = ap.parse_args(argv)
    for d in args.corpus:
        if not d.is_dir():
            ap.error(f"--corpus {d}: not a directory")
    try:
        res = fuzz(args.runs, args.seed, args.corpus)
    except Finding as f:
        out = args.artifacts / f"decoder-finding-{f.data.hex()[:16] or 'empty'}.bin"
        out.write_bytes(f.data)
        print(f"fuzz_decoder: {f} (written to {out})", file=sys.stderr)
        return 1
    rate = res.runs / res.seconds if res.seconds else float("inf")
    print(
        f"fuzz_decoder: {res.runs} executions clean in {res.seconds:.1f} s "
        f"({rate:,.0f}/s), {res.decoded} decoded to a message, seed {args.seed}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
