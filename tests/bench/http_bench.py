#!/usr/bin/env python3
"""The HTTP API under load, as `qwenctl bench` loads qwend itself, so the two can be set side by
side on the same daemon: N streamed /v1/completions requests of P random token ids (greedy,
EOS ignored, T tokens each), at most C at once, over plain sockets (asyncio, one thread).

    http_bench.py --port 8000 [--concurrency 4] [--requests 32] [--prompt-tokens 128]
                  [--max-tokens 128] [--vocab 1024] [--seed 0]

Prints request and token throughput and the percentiles of time to first token, latency and
inter-token gaps (as the client sees tokens arrive), in the layout of qwenctl bench.
"""
import argparse
import asyncio
import json
import random
import time


async def one(port, body, stats):
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection('127.0.0.1', port)
    req = ('POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n'
           'Content-Type: application/json\r\nContent-Length: %d\r\n\r\n' % len(body))
    writer.write(req.encode() + body)
    await writer.drain()
    buf = b''
    times = []
    tokens = 0
    status = None
    while True:
        data = await reader.read(65536)
        if not data:
            break
        now = time.perf_counter()
        buf += data
        if status is None and b'\r\n' in buf:
            status = int(buf.split(b' ', 2)[1])
        while True:
            start = buf.find(b'data: ')
            end = buf.find(b'\n\n', start) if start >= 0 else -1
            if end < 0:
                break
            event = buf[start + 6:end]
            buf = buf[end + 2:]
            if event == b'[DONE]':
                continue
            j = json.loads(event)
            n = len(j['choices'][0].get('token_ids') or []) if j.get('choices') else 0
            if n:
                times.append((now, n))
                tokens += n
    writer.close()
    stats.append((status, t0, times, tokens, time.perf_counter()))


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p / 100 * len(v)))] if v else 0


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--port', type=int, default=8000)
    ap.add_argument('--concurrency', type=int, default=4)
    ap.add_argument('--requests', type=int, default=32)
    ap.add_argument('--prompt-tokens', type=int, default=128)
    ap.add_argument('--max-tokens', type=int, default=128)
    ap.add_argument('--vocab', type=int, default=1024)
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    bodies = [json.dumps({'prompt': [rnd.randrange(100, min(a.vocab, 150000))
                                     for _ in range(a.prompt_tokens)],
                          'max_tokens': a.max_tokens, 'temperature': 0, 'ignore_eos': True,
                          'stream': True, 'return_token_ids': True}).encode()
              for _ in range(a.requests)]
    stats = []
    sem = asyncio.Semaphore(a.concurrency)

    async def run(body):
        async with sem:
            await one(a.port, body, stats)

    t0 = time.perf_counter()
    await asyncio.gather(*(run(b) for b in bodies))
    wall = time.perf_counter() - t0
    ok = [s for s in stats if s[0] == 200 and s[3] == a.max_tokens]
    ttft = [(s[2][0][0] - s[1]) * 1e3 for s in ok if s[2]]
    lat = [(s[4] - s[1]) * 1e3 for s in ok]
    gaps = []
    for s in ok:
        for (prev, _), (cur, n) in zip(s[2], s[2][1:]):
            gaps += [(cur - prev) * 1e3 / n] * n
    toks = sum(s[3] for s in ok)
    print('# http bench: %d requests, concurrency %d, prompt %d tokens, %d tokens generated '
          '(greedy, EOS ignored), seed %d' % (a.requests, a.concurrency, a.prompt_tokens,
                                              a.max_tokens, a.seed))
    print('requests             %d done, %d failed, in %.3f s' % (len(ok), len(stats) - len(ok),
                                                                   wall))
    print('request throughput   %.2f requests/s' % (len(ok) / wall))
    print('output tokens/s      %.1f' % (toks / wall))
    print('TTFT ms              p50 %.2f  p90 %.2f  p99 %.2f  mean %.2f' % (
        pct(ttft, 50), pct(ttft, 90), pct(ttft, 99), sum(ttft) / max(1, len(ttft))))
    print('latency ms           p50 %.2f  p90 %.2f  p99 %.2f  mean %.2f' % (
        pct(lat, 50), pct(lat, 90), pct(lat, 99), sum(lat) / max(1, len(lat))))
    print('inter-token ms       p50 %.2f  p99 %.2f  mean %.2f' % (
        pct(gaps, 50), pct(gaps, 99), sum(gaps) / max(1, len(gaps))))


if __name__ == '__main__':
    asyncio.run(main())
