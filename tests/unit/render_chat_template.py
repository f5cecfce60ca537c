#!/usr/bin/env python3
"""Renders a conversation with a real chat template, the way transformers'
apply_chat_template does (a sandboxed Jinja environment with trim_blocks and lstrip_blocks,
tojson and raise_exception), so the tests can hold qwen-vl's C renderer to it.

    render_chat_template.py TOKENIZER_CONFIG.json MESSAGES.json [--no-generation-prompt]
"""
import json
import sys

from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise RuntimeError(message)


def main():
    template = json.load(open(sys.argv[1]))['chat_template']
    messages = json.load(open(sys.argv[2]))
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters['tojson'] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    env.globals['raise_exception'] = raise_exception
    text = env.from_string(template).render(
        messages=messages, add_generation_prompt='--no-generation-prompt' not in sys.argv)
    sys.stdout.write(text)


if __name__ == '__main__':
    main()
