#!/usr/bin/env python3
"""The quick-start job: qwend serving the built-in demo model, answering qwenctl.

Starts qwend (a 2-stage pipeline on the CPU backend, the demo model generated on first use
under ~/.cache/qwen-vl), shows its status, submits a prompt with a picture and prints the
streamed answer, then shuts the daemon down.  The demo model has random weights: its answer
is fluent nonsense in the real Qwen3 vocabulary, made by the whole serving path.

    python3 cli/demo.py [--bin build/bin]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--bin', default=os.path.join(HERE, '..', 'build', 'bin'))
    ap.add_argument('--image', default=os.path.join(HERE, '..', 'tests', 'fixtures', 'images',
                                                    'house.png'))
    args = ap.parse_args()
    qwend, qwenctl = (os.path.join(args.bin, p) for p in ('qwend', 'qwenctl'))
    tmp = tempfile.mkdtemp(prefix='qwen-demo-')
    sock = 'ipc://%s/qwend.sock' % tmp
    ctl = [qwenctl, '--socket', sock]

    def say(what):
        print('\n$ ' + ' '.join(what), flush=True)

    daemon_cmd = [qwend, '--model', 'demo', '--stages', '2', '--socket', sock]
    say(daemon_cmd + ['&'])
    daemon = subprocess.Popen(daemon_cmd)
    try:
        deadline = time.time() + 120
        while subprocess.run(ctl + ['status', '--json'], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL).stdout.find(b'"state":"ready"') < 0:
            if daemon.poll() is not None or time.time() > deadline:
                print('qwend did not become ready', file=sys.stderr)
                return 1
            time.sleep(0.2)
        for cmd in (ctl + ['status'],
                    ctl + ['submit', 'Describe this picture.', '--image', args.image,
                           '--max-tokens', '48', '--seed', '1'],
                    ctl + ['shutdown']):
            say(cmd)
            subprocess.run(cmd, check=True)
        return daemon.wait(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.terminate()
            daemon.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
