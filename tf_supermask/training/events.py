"""TensorBoard scalar event files without TensorFlow (for the JAX backend on a GPU machine).

An event file is a sequence of TFRecords, each an ``Event`` protocol buffer. The
few fields scalars need are encoded here by hand:

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3;
              Summary summary = 5; }
    Summary { repeated Value value = 1; }
    Value   { string tag = 1; float simple_value = 2; }

and each record is framed as ``uint64 length, uint32 masked CRC-32C of the length,
data, uint32 masked CRC-32C of the data`` (little-endian), which is what
TensorBoard and ``tf.compat.v1.train.summary_iterator`` read.
"""

import os
import socket
import struct
import time

import keras

_CRC_TABLE = []
for _byte in range(256):
    _crc = _byte
    for _ in range(8):
        _crc = (_crc >> 1) ^ 0x82F63B78 if _crc & 1 else _crc >> 1
    _CRC_TABLE.append(_crc)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # int64 as protobuf encodes it (negative: ten bytes)
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + payload


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _field(number, 2, _varint(len(payload)) + payload)


def encode_event(step: int, wall_time: float, scalars=None, file_version=None) -> bytes:
    """One serialized ``Event`` holding `scalars` ({tag: value}) or a file version."""
    data = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(int(step)))
    if file_version is not None:
        data += _length_delimited(3, file_version.encode())
    if scalars:
        values = b"".join(
            _length_delimited(1, _length_delimited(1, tag.encode())
                              + _field(2, 5, struct.pack("<f", float(value))))
            for tag, value in scalars.items())
        data += _length_delimited(5, values)
    return data


def frame_record(data: bytes) -> bytes:
    """`data` as one TFRecord."""
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", _masked_crc(length)) + data
            + struct.pack("<I", _masked_crc(data)))


class ScalarWriter:
    """Appends scalar summaries to a new event file in `log_dir`."""

    def __init__(self, log_dir):
        os.makedirs(log_dir, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
                f"{os.getpid()}.{id(self)}.v2")
        self.path = os.path.join(log_dir, name)
        self._stream = open(self.path, "ab")
        self._stream.write(frame_record(encode_event(0, time.time(),
                                                     file_version="brain.Event:2")))
        self._stream.flush()

    def scalars(self, values, step):
        """Writes {tag: float} at `step`."""
        if values:
            self._stream.write(frame_record(encode_event(step, time.time(), values)))

    def flush(self):
        self._stream.flush()

    def close(self):
        if not self._stream.closed:
            self._stream.close()


class EpochScalars(keras.callbacks.Callback):
    """Each epoch's logs as TensorBoard scalars, laid out as Keras's TensorBoard callback
    does (``train/`` and ``validation/``, tags ``epoch_<metric>``), for backends without
    TensorFlow."""

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = log_dir
        self._writers = {}

    def _writer(self, split):
        if split not in self._writers:
            self._writers[split] = ScalarWriter(os.path.join(self.log_dir, split))
        return self._writers[split]

    def on_epoch_end(self, epoch, logs=None):
        split_logs = {"train": {}, "validation": {}}
        for key, value in (logs or {}).items():
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            if key.startswith("val_"):
                split_logs["validation"]["epoch_" + key[4:]] = value
            else:
                split_logs["train"]["epoch_" + key] = value
        for split, values in split_logs.items():
            if values:
                writer = self._writer(split)
                writer.scalars(values, epoch)
                writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
