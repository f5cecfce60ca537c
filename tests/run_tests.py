#!/usr/bin/env python3
"""Runs test programs and tallies their results.

Each program is a cmocka suite run with TAP output; every 'ok' / 'not ok' line counts as
one test, and a skipped test (cmocka's skip(): 'not ok N # SKIP name') is listed as SKIP
with the line its program printed just before it (why), counted apart.  A program that dies
without reporting (a crash, a sanitizer abort) counts as one failed test.  The last line is
'N passed, N failed' (and ', N skipped' when any was); the exit status is 0 iff nothing
failed.  Usable without scons, e.g. on a GPU box with only the built binaries:

    python3 tests/run_tests.py --bin build/bin --fixtures tests/fixtures build/tests/gpu/test_*
"""
import argparse
import os
import re
import subprocess
import sys
import time

TAP = re.compile(r'^(not ok|ok) \d+ - (.*)$')
SKIP = re.compile(r'^(?:not ok|ok) \d+ # SKIP (.*)$')


def run_one(path, env, timeout):
    name = os.path.basename(path)
    start = time.time()
    try:
        proc = subprocess.run([path], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout)
        output, code = proc.stdout.decode('utf-8', 'replace'), proc.returncode
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b'').decode('utf-8', 'replace')
        code = 'timeout after %ds' % timeout
    passed = failed = skipped = 0
    said = ''
    for line in output.splitlines():
        m, sk = TAP.match(line), SKIP.match(line)
        if sk:
            skipped += 1
            print('SKIP   %s: %s%s' % (name, sk.group(1), ' (%s)' % said if said else ''))
        elif not m and line.strip() and not line.startswith(('#', '1..')):
            said = line.strip()   # what a test printed since the last result: a skip's why
        if m or sk:
            said = ''
        if m:
            ok = m.group(1) == 'ok'
            passed += ok
            failed += not ok
            print('%-6s %s: %s' % ('PASS' if ok else 'FAIL', name, m.group(2)))
    if code != 0 and failed == 0:
        failed += 1
        print('FAIL   %s: exited with %s before reporting a failure' % (name, code))
    if failed:
        print('------ output of %s ------' % name)
        print(output.rstrip())
        print('------')
    sys.stdout.flush()
    return passed, failed, skipped, time.time() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--bin', required=True, help='directory of the built programs')
    ap.add_argument('--fixtures', required=True, help='tests/fixtures')
    ap.add_argument('--timeout', type=int, default=600, help='seconds per test program')
    ap.add_argument('tests', nargs='*')
    args = ap.parse_args()
    env = dict(os.environ, CMOCKA_MESSAGE_OUTPUT='TAP', QW_BIN=os.path.abspath(args.bin),
               QW_FIXTURES=os.path.abspath(args.fixtures))
    total_pass = total_fail = total_skip = 0
    for path in args.tests:
        if not (os.path.isfile(path) and os.access(path, os.X_OK)) or '.' in os.path.basename(path):
            continue   # object files and the like that a shell glob picked up
        p, f, k, secs = run_one(os.path.abspath(path), env, args.timeout)
        total_pass += p
        total_fail += f
        total_skip += k
    print('%d passed, %d failed%s' % (total_pass, total_fail,
                                      ', %d skipped' % total_skip if total_skip else ''))
    return 1 if total_fail else 0


if __name__ == '__main__':
    sys.exit(main())
