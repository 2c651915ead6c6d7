#!/usr/bin/env python3
"""Proxyless gRPC client for Switchyard's xDS tests.

Resolves --target through xDS (grpcio reads the bootstrap named by GRPC_XDS_BOOTSTRAP, which
the Rust test writes) and makes unary calls to /switchyard.test.v1.Echo/Echo. Messages are
encoded by hand (two string fields), so no generated code is needed. Prints one JSON line per
call, flushed at once so the test can read results as they come:

    {"ok": true, "backend": "<EchoReply.backend>"}
    {"ok": false, "error": "<status code>: <details>"}

Always exits 0 once the calls are done; failures are reported in the lines, not the exit code.
"""

import argparse
import json
import os
import sys
import time

import grpc

METHOD = "/switchyard.test.v1.Echo/Echo"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_echo_request(message: str) -> bytes:
    """EchoRequest{message = 1}: field 1, wire type 2 (length-delimited)."""
    data = message.encode("utf-8")
    return b"\x0a" + _varint(len(data)) + data


def _read_varint(buf: bytes, pos: int):
    shift = 0
    value = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def decode_string_fields(buf: bytes) -> dict:
    """Returns {field_number: str} for the length-delimited fields; skips the rest."""
    fields = {}
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _read_varint(buf, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 2:
            length, pos = _read_varint(buf, pos)
            fields[number] = buf[pos : pos + length].decode("utf-8", errors="replace")
            pos += length
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
    return fields


def emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="xds:///echo.default.svc.cluster.local:9090")
    parser.add_argument("--count", type=int, default=1, help="number of calls")
    parser.add_argument("--interval-ms", type=int, default=100, help="pause between calls")
    parser.add_argument("--deadline-s", type=float, default=5.0, help="deadline of each call")
    parser.add_argument("--message", default="ping")
    args = parser.parse_args()

    if args.target.startswith("xds:") and not os.environ.get("GRPC_XDS_BOOTSTRAP"):
        emit({"ok": False, "error": "GRPC_XDS_BOOTSTRAP is not set"})
        return 0

    request = encode_echo_request(args.message)
    try:
        channel = grpc.insecure_channel(args.target)
        call = channel.unary_unary(
            METHOD, request_serializer=None, response_deserializer=None
        )
    except Exception as exc:  # a bad target or bootstrap fails here, before any call
        for _ in range(args.count):
            emit({"ok": False, "error": f"channel: {exc}"})
        return 0

    with channel:
        for i in range(args.count):
            if i:
                time.sleep(args.interval_ms / 1000.0)
            try:
                reply = call(request, timeout=args.deadline_s)
                fields = decode_string_fields(reply)
                emit({"ok": True, "backend": fields.get(2, ""), "message": fields.get(1, "")})
            except grpc.RpcError as exc:
                emit({"ok": False, "error": f"{exc.code().name}: {exc.details()}"})
            except Exception as exc:  # a malformed reply must not end the run
                emit({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
