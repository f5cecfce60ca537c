#!/usr/bin/env python3
"""The quick-start job: qwend serving the built-in demo model, answering qwenctl and, through
qwen-http, curl.

Starts qwend (a 2-stage pipeline on the CPU backend, also on a machine with GPUs; the demo
model generated on first use under ~/.cache/qwen-vl), shows its status, submits a prompt
with a picture and prints the streamed answer, starts qwen-http in front of it (on a free
port) and asks the OpenAI API with curl, then stops both and shows qwend's log.  The demo model has random weights: its answer is fluent
nonsense in the real Qwen3 vocabulary, made by the whole serving path.

    python3 cli/demo.py [--bin build/bin]
"""
import argparse
import json
import os
import shlex
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
    qwend, qwenctl, qwen_http = (os.path.join(args.bin, p)
                                 for p in ('qwend', 'qwenctl', 'qwen-http'))
    tmp = tempfile.mkdtemp(prefix='qwen-demo-')
    sock = 'ipc://%s/qwend.sock' % tmp
    ctl = [qwenctl, '--socket', sock]

    def say(cmd, shell_tail=''):
        """Shows cmd as a shell would take it (quoted, so it can be copied), then shell_tail
        (redirections, &) as it is."""
        print('\n$ ' + shlex.join(cmd) + shell_tail, flush=True)

    daemon_cmd = [qwend, '--model', 'demo', '--device', 'cpu', '--stages', '2', '--socket', sock]
    say(daemon_cmd, ' >qwend.log &')
    # the daemon's log goes to a file, shown at the end, so it does not cut into the answers
    daemon_log = os.path.join(tmp, 'qwend.log')
    with open(daemon_log, 'wb') as out:
        daemon = subprocess.Popen(daemon_cmd, stdout=out, stderr=subprocess.STDOUT)
    http = None
    try:
        deadline = time.time() + 120
        while subprocess.run(ctl + ['status', '--json'], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL).stdout.find(b'"state":"ready"') < 0:
            if daemon.poll() is not None or time.time() > deadline:
                print('qwend did not become ready:\n' + open(daemon_log).read(), file=sys.stderr)
                return 1
            time.sleep(0.2)
        for cmd in (ctl + ['status'],
                    ctl + ['submit', 'Describe this picture.', '--image', args.image,
                           '--max-tokens', '48', '--seed', '1']):
            say(cmd)
            subprocess.run(cmd, check=True)
        # the OpenAI-compatible API in front of the same daemon
        http_cmd = [qwen_http, '--socket', sock, '--port', '0']
        say(http_cmd, ' &')
        log = os.path.join(tmp, 'qwen-http.log')
        with open(log, 'w') as out:
            http = subprocess.Popen(http_cmd, stdout=out, stderr=subprocess.STDOUT)
        url = wait_for_url(log, http)
        if not url:
            print('qwen-http did not start:\n' + open(log).read(), file=sys.stderr)
            return 1
        body = json.dumps({'model': 'demo-v1', 'max_tokens': 24,
                           'messages': [{'role': 'user', 'content': 'Hello!'}]})
        curl = ['curl', '-sS', url + '/v1/chat/completions', '-H',
                'Content-Type: application/json', '-d', body]
        say(curl)
        subprocess.run(curl, check=True)
        print()
        http.terminate()
        http.wait(timeout=30)
        say(ctl + ['shutdown'])
        subprocess.run(ctl + ['shutdown'], check=True)
        rc = daemon.wait(timeout=60)
        say(['cat', 'qwend.log'])
        sys.stdout.write(open(daemon_log).read())
        return rc
    finally:
        if http and http.poll() is None:
            http.terminate()
            http.wait()
        if daemon.poll() is None:
            daemon.terminate()
            daemon.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def wait_for_url(log, proc):
    """The http://HOST:PORT qwen-http logs once it listens (None if it exits first)."""
    deadline = time.time() + 10
    while time.time() < deadline and proc.poll() is None:
        text = open(log).read()
        at = text.find('listening on http://')
        if at >= 0:
            return text[at + len('listening on '):].split(',')[0].split()[0]
        time.sleep(0.05)
    return None


if __name__ == '__main__':
    sys.exit(main())
