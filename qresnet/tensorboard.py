"""A minimal TensorBoard scalar writer with no TensorFlow (the GPU image has none).

Writes the standard `events.out.tfevents.*` format: TFRecord framing (length,
masked CRC-32C, payload, masked CRC-32C) around hand-encoded `Event` protos
with scalar `Summary` values, which TensorBoard reads as usual.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_event(
    wall_time: float, step: int = 0, scalars: Mapping[str, float] | None = None, file_version: str | None = None
) -> bytes:
    """An `Event` proto: wall_time (1), step (2), file_version (3), summary (5)."""
    out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if file_version is not None:
        out += _field_bytes(3, file_version.encode())
    if scalars:
        values = b"".join(
            _field_bytes(1, _field_bytes(1, tag.encode()) + b"\x15" + struct.pack("<f", float(v)))
            for tag, v in scalars.items()
        )
        out += _field_bytes(5, values)
    return out


def frame(record: bytes) -> bytes:
    """TFRecord framing of one record."""
    length = struct.pack("<Q", len(record))
    return length + struct.pack("<I", masked_crc(length)) + record + struct.pack("<I", masked_crc(record))


class SummaryWriter:
    """Appends scalar summaries to a new events file in `logdir`."""

    def __init__(self, logdir: str | Path):
        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        self.path = logdir / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        with open(self.path, "ab") as f:
            f.write(frame(encode_event(time.time(), 0, file_version="brain.Event:2")))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        with open(self.path, "ab") as f:
            f.write(frame(encode_event(time.time(), step, values)))


def read_records(path: str | Path) -> list[bytes]:
    """The records of an events file, checking both CRCs (for tests and debugging)."""
    data, out, i = Path(path).read_bytes(), [], 0
    while i < len(data):
        (length,) = struct.unpack("<Q", data[i : i + 8])
        if struct.unpack("<I", data[i + 8 : i + 12])[0] != masked_crc(data[i : i + 8]):
            raise ValueError(f"{path}: bad length CRC at byte {i}")
        record = data[i + 12 : i + 12 + length]
        if struct.unpack("<I", data[i + 12 + length : i + 16 + length])[0] != masked_crc(record):
            raise ValueError(f"{path}: bad data CRC at byte {i}")
        out.append(record)
        i += 16 + length
    return out
