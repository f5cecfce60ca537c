#!/usr/bin/env python3
"""Renders a conversation with a real chat template, the way transformers'
apply_chat_template does (a sandboxed Jinja environment with trim_blocks and lstrip_blocks,
tojson and raise_exception), so the tests can hold qwen-vl's C renderer to it.

    render_chat_template.py TOKENIZER_CONFIG.json MESSAGES.json [--no-generation-prompt]
                            [--tools TOOLS.json] [--no-thinking] [--tool-lines OUT]

--tools passes a JSON array of tools as apply_chat_template(tools=...) does; --tool-lines
also writes each tool as the template's tojson shows it, one a line, to OUT; --no-thinking
renders with enable_thinking=False.
"""
import json
import sys

from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise RuntimeError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' own tojson filter
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def option(name):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else None


def main():
    template = json.load(open(sys.argv[1]))['chat_template']
    messages = json.load(open(sys.argv[2]))
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters['tojson'] = tojson
    env.globals['raise_exception'] = raise_exception
    kwargs = {}
    tools = json.load(open(option('--tools'))) if option('--tools') else None
    if '--no-thinking' in sys.argv:
        kwargs['enable_thinking'] = False
    text = env.from_string(template).render(
        messages=messages, tools=tools,
        add_generation_prompt='--no-generation-prompt' not in sys.argv, **kwargs)
    if option('--tool-lines'):
        with open(option('--tool-lines'), 'w') as f:
            for tool in tools or []:
                f.write(tojson(tool) + '\n')
    sys.stdout.write(text)


if __name__ == '__main__':
    main()
