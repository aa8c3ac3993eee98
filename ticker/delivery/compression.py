"""gzip for a fan-out: every frame compressed once per audience, not once per viewer.

The table's frames are highly repetitive HTML, and a compressor that remembers the frames
before compresses each one ten times or more (one compressed on its own: about 3x). Keeping a
compressor per viewer would cost CPU per viewer per frame and hundreds of KB each. Instead
each audience (the viewers who get the same frames) has one :class:`SharedDeflate`, whose
output every joined viewer gets byte for byte, so a viewer's decoder always holds exactly the
history the compressor refers to.

A new viewer cannot start in the middle of that history. Time is cut into *epochs*: the last
frame of an epoch ends with a full flush, after which the compressor refers to nothing before
it. A viewer gets a gzip header and bytes that refer to nothing earlier (its snapshot and the
frames of the current epoch, each compressed on its own, also once per audience) until the
epoch ends; from the next frame on it gets the shared bytes. The same holds for a viewer who
fell behind and is caught up from its mailbox.

The gzip trailer needs the CRC-32 of everything a viewer decoded. Per viewer per frame that
would be a CRC over every frame for every viewer; instead the audience keeps one running CRC
of its frames and a viewer combines the stretch it was joined for (:func:`crc_combine`, the
same algebra as zlib's ``crc32_combine``) only when it joins, leaves or ends.
"""

from __future__ import annotations

import functools
import struct
import zlib

# Measured on the table's stream (python3 bench/compression.py; docs/performance.md,
# "Compression"): level 6 with the full 32 KB window and epochs of 50 frames compress it
# 13.9x for 21 us per frame (once per audience); one endless epoch would give 16.4x, level
# 9 15.3x for twice the CPU, a 8 KB window 7.4x. An epoch of 50 frames (5 s at FRAME_MS=100)
# costs a new viewer at most that long at the standalone ratio (3.4x).
LEVEL = 6
WBITS = 15  # the shared compressor's window: 32 KB
MEM_LEVEL = 8
EPOCH_FRAMES = 50
# An audience of a few viewers (a custom watchlist) gets a small compressor: 32 KB of zlib
# state instead of 256 KB, for 7x instead of 14x. Ten thousand different watchlists then
# cost 320 MB, not 2.5 GB. It grows (or shrinks) at an epoch's end, where nothing refers
# back and a fresh compressor may take over.
SMALL_WBITS, SMALL_MEM_LEVEL = 12, 5
BIG_AUDIENCE = 8
# Standalone pieces (a snapshot, a catch-up, one frame on its own) only need a small window.
ALONE_LEVEL = 6
ALONE_WBITS = 12

# A gzip member header: deflate, no name, no time, unknown OS (RFC 1952).
HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
# A final, empty deflate block (fixed Huffman codes, end of block), byte-aligned: what
# ends a stream that was cut with flushes.
FINAL_BLOCK = b"\x03\x00"


def standalone(data: bytes) -> bytes:
    """``data`` as deflate blocks that refer to nothing before them, ending byte-aligned
    with a full flush: they can follow any flushed deflate stream."""
    comp = zlib.compressobj(ALONE_LEVEL, zlib.DEFLATED, -ALONE_WBITS, 5)
    return comp.compress(data) + comp.flush(zlib.Z_FULL_FLUSH)


def trailer(crc: int, size: int) -> bytes:
    """The end of a gzip member: the final block, the CRC-32 and the length mod 2**32."""
    return FINAL_BLOCK + struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)


class SharedDeflate:
    """One audience's compressor: each frame in, the bytes every joined viewer gets out."""

    __slots__ = ("_comp", "big", "crc", "frames", "size", "viewers")

    def __init__(self, viewers: int = 1) -> None:
        self.viewers = viewers  # gzip viewers of the audience, kept up by the broker
        self.big = viewers >= BIG_AUDIENCE
        self._comp = _compressor(self.big)
        self.frames = 0  # frames in the current epoch
        # CRC-32 and length of every frame so far (of the uncompressed bytes).
        self.crc = 0
        self.size = 0

    def encode(self, data: bytes) -> tuple[bytes, bool]:
        """The compressed bytes of the next frame, and whether it ends an epoch (after it,
        nothing refers back, so viewers waiting to join may join)."""
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        self.frames += 1
        epoch_end = self.frames >= EPOCH_FRAMES
        if epoch_end:
            self.frames = 0
        flush = zlib.Z_FULL_FLUSH if epoch_end else zlib.Z_SYNC_FLUSH
        out = self._comp.compress(data) + self._comp.flush(flush)
        if epoch_end and self.big != (self.viewers >= BIG_AUDIENCE):
            self.big = not self.big
            self._comp = _compressor(self.big)
        return out, epoch_end


def _compressor(big: bool) -> zlib._Compress:
    """A raw deflate compressor: the full window for a big audience, a small one else."""
    if big:
        return zlib.compressobj(LEVEL, zlib.DEFLATED, -WBITS, MEM_LEVEL)
    return zlib.compressobj(LEVEL, zlib.DEFLATED, -SMALL_WBITS, SMALL_MEM_LEVEL)


# --- CRC-32 algebra: the CRC of a concatenation from the CRCs of its parts ---------------
# CRC-32 is a remainder of polynomials over GF(2) (bit-reflected, polynomial 0xEDB88320).
# Appending n zero bytes multiplies the remainder by x^(8n) mod P, so
# crc(A + B) = crc(A) * x^(8 len(B)) + crc(B). ``_times`` multiplies two remainders.

_POLY = 0xEDB88320
_ONE = 1 << 31  # x^0, bit-reflected


def _times(a: int, b: int) -> int:
    """a * b mod P, both bit-reflected remainders."""
    product = 0
    bit = _ONE
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return product


def _square_table() -> tuple[int, ...]:
    """x^(2^k) mod P for k = 0..63 (the powers that ``_x_to_8n`` multiplies together)."""
    table, power = [], _ONE >> 1  # x^1
    for _ in range(64):
        table.append(power)
        power = _times(power, power)
    return tuple(table)


_X_2_K = _square_table()


@functools.lru_cache(maxsize=4096)
def _x_to_8n(n: int) -> int:
    """x^(8n) mod P: appending ``n`` bytes of zeros to a CRC."""
    power, k = _ONE, 3  # x^(8n) = x^(n * 2^3)
    while n:
        if n & 1:
            power = _times(_X_2_K[k], power)
        n >>= 1
        k += 1
    return power


def crc_combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """The CRC-32 of A + B, from the CRC-32 of A, that of B and B's length."""
    return _times(_x_to_8n(len_b), crc_a) ^ crc_b


def crc_between(crc_before: int, crc_after: int, length: int) -> int:
    """The CRC-32 of the ``length`` bytes that took a running CRC from ``crc_before`` to
    ``crc_after``: crc_after = combine(crc_before, x, length), solved for x."""
    return crc_after ^ _times(_x_to_8n(length), crc_before)
