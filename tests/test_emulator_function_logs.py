"""The emulator's function records: awslambdaric's log frames and stdout lines split as Lambda
splits them (tools/emulator/function_logs.py), on partial reads."""

from __future__ import annotations

import json
import struct

from tools.emulator.function_logs import FunctionLogs


def frame(ftype: int, message: str, micros: int = 1_795_847_575_001_000) -> bytes:
    data = message.encode()
    return struct.pack(">IIQ", ftype, len(data), micros) + data


def test_frames_split_across_reads_stay_one_record_each() -> None:
    traceback = "[ERROR]\t2026-11-28T06:32:55.001Z\trid\tboom\nTraceback (most recent call last):\n  x\n"
    stream = frame(0xA55A0017, traceback) + frame(0xA55A0016, json.dumps({"message": "j", "level": "ERROR"}))
    pending = bytearray()
    out = []
    for i in range(0, len(stream), 7):  # 7-byte reads: headers and messages cut anywhere
        pending += stream[i:i + 7]
        out += FunctionLogs._frames_of(pending, False)
    assert [raw for _, raw in out] == [(0xA55A0017, traceback.encode()),
                                       (0xA55A0016, json.dumps({"message": "j", "level": "ERROR"}).encode())]
    assert out[0][0] == 1_795_847_575.001 and not pending


def test_a_broken_frame_stream_is_dropped_not_parsed_forever() -> None:
    pending = bytearray(b"not a frame header at all")
    assert FunctionLogs._frames_of(pending, False) == [] and not pending


def test_stdout_lines_and_a_last_line_without_newline_at_eof() -> None:
    pending = bytearray(b"one\ntwo\npart")
    assert [raw for _, raw in FunctionLogs._lines_of(pending, False)] == [b"one\n", b"two\n"]
    assert pending == b"part"
    assert [raw for _, raw in FunctionLogs._lines_of(pending, True)] == [b"part"] and not pending
