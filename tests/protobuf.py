"""Protobuf wire-format writers for building pprof payloads in tests (the product only reads them)."""

from __future__ import annotations


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64s are ten-byte varints on the wire
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def f_len(field: int, payload: bytes) -> bytes:
    """A length-delimited field (a string, bytes or an embedded message)."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def f_var(field: int, value: int) -> bytes:
    """A varint field."""
    return varint(field << 3) + varint(value)
