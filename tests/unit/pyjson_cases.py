#!/usr/bin/env python3
"""Writes JSON values as cases for qwen-http's Python-style serializer (http/pyjson.h): one
a line, the value as compact JSON, a tab, then json.dumps(value, ensure_ascii=False) as
transformers' tojson filter writes it (escaped as JSON so it stays on one line).

    pyjson_cases.py [N]       N random values (default 400) after the fixed ones
"""
import json
import random
import struct
import sys

FIXED = [
    0.1, 1.0, -0.0, 0.0, 1e16, 1e15, 123456789012345678.0, 1e-4, 1e-5, 0.00012, 5e-324,
    1.7976931348623157e308, 2.5e-07, -1.5e+22, 100.0, 0.5, 7.5, 1e22, 9007199254740993.0,
    12345.678, 3.141592653589793, 1/3, 2/3, 0.30000000000000004,
    "plain", "quote \" backslash \\ slash /", "\b\f\n\r\t", "\x00\x01\x1f\x7f", "ünï ✓ 日本",
    "\u2028\u2029", "😀", 0, -1, 2**62, -2**63, True, False, None, [], {}, [[]], {"a": {}},
    {"type": "function", "function": {"name": "f", "parameters": {"type": "object",
     "properties": {"x": {"type": "number", "minimum": 0.5, "enum": [1, 2.25, "z"]}}}}},
    {"z": 1, "a": 2, "m": [1, {"y": None, "b": True}]},
]


def rand_float(r):
    kind = r.randrange(4)
    if kind == 0:
        return struct.unpack('<d', struct.pack('<Q', r.getrandbits(64) & ~(0x7ff << 52)
                                               | (r.randrange(1, 2046) << 52)))[0]
    if kind == 1:
        return r.uniform(-1000, 1000)
    if kind == 2:
        return round(r.uniform(-100, 100), r.randrange(6))
    return r.randrange(-10**6, 10**6) * 10.0 ** r.randrange(-25, 25)


def rand_str(r):
    pool = "abc xyz\"\\/\b\f\n\r\t\x00\x05\x1f\x7fé✓日😀\u2028"
    return ''.join(r.choice(pool) for _ in range(r.randrange(12)))


def rand_value(r, depth=0):
    kind = r.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rand_float(r)
    if kind == 1:
        return r.randrange(-2**63, 2**63)
    if kind == 2:
        return rand_str(r)
    if kind == 3:
        return r.choice([True, False, None])
    if kind == 4:
        return r.randrange(-1000, 1000)
    if kind in (5, 6):
        # (jansson takes no NUL in an object key)
        return {rand_str(r).replace('\x00', '0'): rand_value(r, depth + 1)
                for _ in range(r.randrange(4))}
    return [rand_value(r, depth + 1) for _ in range(r.randrange(4))]


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    r = random.Random(20261207)
    for v in FIXED + [rand_value(r) for _ in range(n)]:
        want = json.dumps(v, ensure_ascii=False)
        print(json.dumps(v, separators=(',', ':')) + '\t' + json.dumps(want))


if __name__ == '__main__':
    main()
