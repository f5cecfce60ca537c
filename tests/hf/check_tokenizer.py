#!/usr/bin/env python3
"""Token parity beyond the fixed cases, and the HF side of the tokenizer benchmark.
Needs the `tokenizers` package (the GPU box has it).

  check_tokenizer.py cases TOKENIZER_DIR OUT.json [--random N] [--corpus FILE] [--seed S]
      writes a cases file ({text, ids, decoded} as HF tokenizers encodes with
      add_special_tokens=False) of N random texts over many scripts, whitespace kinds,
      combining marks (NFC), emoji and added tokens, plus the corpus cut into 4 KB pieces;
      check it with: qwen-parity tokens --tokenizer DIR --cases OUT.json
  check_tokenizer.py bench TOKENIZER_DIR FILE [--repeat N]
      HF tokenizers' single-threaded encode rate on FILE, as qwen-tok bench prints it
"""
import argparse
import json
import os
import random
import time

os.environ.setdefault('RAYON_NUM_THREADS', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
from tokenizers import Tokenizer  # noqa: E402

PIECES = [
    'the', 'The', 'QUICK', 'brown', "'s", "'S", "'ll", "'LL", "'re", "'ve", "'m", "'d", "n't",
    'fox', 'jumps', 'über', 'naïve', 'café', 'cafe\u0301', 'e\u0301', '\u1100\u1161\u11a8',
    '한국어', '日本語', 'のテキスト', '你好', '世界', '，', '。', '！', 'Привет', 'مرحبا', 'नमस्ते',
    'ΑΒΓ', 'x**2', '->', '==', '{', '}', '();', '#include', '0x1F', '3.14159', '1e-6',
    '12345678901234567890', '😀', '👍🏽', '👨\u200d👩\u200d👧', '🇺🇳', '\u200b', '\ufeff',
    '<|im_start|>', '<|im_end|>', '<think>', '</think>', '<|image_pad|>', '<|im_sta', '<|',
    '|>', '<tool_call>', '\\n', '"', "'", '`', '~', '\u00e9', '\u212b', '\u2126', 'ﬁ', '①',
]
SPACES = [' ', ' ', ' ', '  ', '   ', '\t', '\n', '\n\n', '\r\n', '\r', '\u00a0', '\u3000',
          '\u2028', '\u0085', '\u2009', ' \n ', '\n    ', '\t\t', '']


def random_text(rng):
    parts = []
    for _ in range(rng.randint(1, 40)):
        parts.append(rng.choice(PIECES))
        parts.append(rng.choice(SPACES))
    if rng.random() < 0.2:
        parts.append(' ' * rng.randint(1, 300))
    if rng.random() < 0.1:
        parts.append(''.join(chr(rng.randint(0x20, 0x2fff)) for _ in range(rng.randint(1, 50))))
    return ''.join(parts)


def cases(args):
    tok = Tokenizer.from_file(os.path.join(args.tokenizer, 'tokenizer.json'))
    rng = random.Random(args.seed)
    texts = [random_text(rng) for _ in range(args.random)]
    if args.corpus:
        data = open(args.corpus, 'rb').read()
        i = 0
        while i < len(data):
            j = min(i + 4096, len(data))
            while j < len(data) and (data[j] & 0xc0) == 0x80:
                j += 1
            texts.append(data[i:j].decode('utf-8'))
            i = j
    out = []
    for t in texts:
        ids = tok.encode(t, add_special_tokens=False).ids
        out.append({'text': t, 'ids': ids, 'decoded': tok.decode(ids, skip_special_tokens=False)})
    json.dump(out, open(args.out, 'w'), ensure_ascii=False)
    print('wrote %s: %d cases' % (args.out, len(out)))


def bench(args):
    tok = Tokenizer.from_file(os.path.join(args.tokenizer, 'tokenizer.json'))
    text = open(args.file, encoding='utf-8').read()
    size = len(text.encode())
    times, n = [], 0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        n = len(tok.encode(text, add_special_tokens=False).ids)
        times.append(time.perf_counter() - t0)
    print('# HF tokenizers, encode, RAYON_NUM_THREADS=%s: %.2f MB -> %d tokens' % (
        os.environ['RAYON_NUM_THREADS'], size / 1e6, n))
    print('cold  %8.2f MB/s  %10.0f tokens/s' % (size / 1e6 / times[0], n / times[0]))
    print('warm  %8.2f MB/s  %10.0f tokens/s  (best of %d)' % (
        size / 1e6 / min(times), n / min(times), args.repeat))
    # the same text as 4 KB pieces, one encode call each (how a server sees requests)
    data, pieces, i = text.encode(), [], 0
    while i < len(data):
        j = min(i + 4096, len(data))
        while j < len(data) and (data[j] & 0xc0) == 0x80:
            j += 1
        pieces.append(data[i:j].decode())
        i = j
    best = 1e30
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        for p in pieces:
            tok.encode(p, add_special_tokens=False)
        best = min(best, time.perf_counter() - t0)
    print('4 KB pieces, warm  %8.2f MB/s  (best of %d, %d calls)' % (
        size / 1e6 / best, args.repeat, len(pieces)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest='cmd', required=True)
    c = sub.add_parser('cases')
    c.add_argument('tokenizer')
    c.add_argument('out')
    c.add_argument('--random', type=int, default=2000)
    c.add_argument('--corpus')
    c.add_argument('--seed', type=int, default=1234)
    b = sub.add_parser('bench')
    b.add_argument('tokenizer')
    b.add_argument('file')
    b.add_argument('--repeat', type=int, default=5)
    args = ap.parse_args()
    (cases if args.cmd == 'cases' else bench)(args)


if __name__ == '__main__':
    main()
