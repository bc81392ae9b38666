"""The TensorFlow-free TensorBoard writer produces valid TFRecord-framed events."""

import struct

from qresnet import tensorboard


def test_crc32c_known_value():
    assert tensorboard.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


def test_events_file_round_trip(tmp_path):
    w = tensorboard.SummaryWriter(tmp_path)
    w.scalars(7, {"eval_top1": 0.5})
    records = tensorboard.read_records(w.path)
    assert len(records) == 2
    assert b"brain.Event:2" in records[0]
    assert b"eval_top1" in records[1] and struct.pack("<f", 0.5) in records[1]
    assert records[1][9:11] == b"\x10\x07"  # step field, varint 7
