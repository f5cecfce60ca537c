#!/usr/bin/env python3
"""Builds the tokenizer benchmark corpus: about 4 MB of mixed English prose, Chinese prose and
source code, interleaved in 4 KB pieces, from files Debian 12 ships:
  English  the English man pages (/usr/share/man/man1, groff requests stripped)
  Chinese  the Chinese man pages (package manpages-zh, /usr/share/man/zh_CN/man1)
  code     C headers (/usr/include) and the Python standard library sources
Deterministic for a given set of installed packages (files are read in sorted order).

    python3 tests/bench/make_tok_corpus.py OUT.txt [MEGABYTES]
"""
import glob
import re
import gzip
import os
import sys


def man_text(paths, budget):
    out, size = [], 0
    for p in sorted(paths):
        try:
            raw = gzip.open(p, 'rb').read().decode('utf-8')
        except (OSError, UnicodeDecodeError):
            continue
        for line in raw.splitlines():
            if line.startswith(('.', "'", '\\"')) or not line.strip():
                continue
            line = re.sub(r'\\(&|e|\||s[-+]?\d|f\(..|f.|\(..|\*.)', '', line.replace('\\-', '-'))
            out.append(line + '\n')
            size += len(line.encode()) + 1
        if size >= budget:
            break
    return ''.join(out)


def code_text(budget):
    files = sorted(glob.glob('/usr/include/*.h')) + sorted(
        glob.glob(os.path.join(os.path.dirname(os.__file__), '*.py')))
    out, size = [], 0
    for p in files:
        try:
            t = open(p, encoding='utf-8').read()
        except (OSError, UnicodeDecodeError):
            continue
        out.append(t)
        size += len(t.encode())
        if size >= budget:
            break
    return ''.join(out)


def pieces(text, size=4096):
    b = text.encode()
    out, i = [], 0
    while i < len(b):
        j = min(i + size, len(b))
        while j < len(b) and (b[j] & 0xc0) == 0x80:   # end on a character boundary
            j += 1
        out.append(b[i:j])
        i = j
    return out


def main():
    out = sys.argv[1]
    mb = float(sys.argv[2]) if len(sys.argv) > 2 else 4.0
    third = int(mb * 1e6 / 3)
    sources = [pieces(man_text(glob.glob('/usr/share/man/man1/*.gz'), third)),
               pieces(man_text(glob.glob('/usr/share/man/zh_CN/man1/*.gz'), third)),
               pieces(code_text(third))]
    if not all(sources):
        sys.exit('missing sources: install manpages-zh and man pages')
    mixed = []
    for k in range(max(len(s) for s in sources)):
        for s in sources:
            if k < len(s):
                mixed.append(s[k])
    data = b''.join(mixed)
    open(out, 'wb').write(data)
    cjk = sum(1 for ch in data.decode() if '\u4e00' <= ch <= '\u9fff')
    print('wrote %s: %.2f MB, %d CJK characters' % (out, len(data) / 1e6, cjk))


if __name__ == '__main__':
    main()
