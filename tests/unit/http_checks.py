#!/usr/bin/env python3
"""What the HTTP API's tests ask of Python packages, each exiting 77 when its package is
missing (the caller then tries another python, or skips):

    http_checks.py metrics FILE
        parses FILE with Prometheus' own text parser (prometheus_client.parser) and prints
        every sample as  NAME{LABEL="VALUE",...} VALUE  (labels sorted), then the families
        as  # FAMILY NAME TYPE
    http_checks.py sdk BASE_URL MODEL PROMPT MAX_TOKENS
        talks to BASE_URL with the official openai package: a chat completion, the same
        streamed, a completion, the model list, a request for an unknown model, and the
        sampler's settings with log-probabilities (chat whole and streamed, completions) as
        the package's own types read them; prints one JSON object of what came back
"""
import json
import sys


def metrics(path):
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        sys.exit(77)
    text = open(path).read()
    families = list(text_string_to_metric_families(text))
    for fam in families:
        for s in fam.samples:
            labels = ','.join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
            print('%s{%s} %r' % (s.name, labels, s.value))
    for fam in families:
        print('# FAMILY %s %s' % (fam.name, fam.type))


def sdk(base_url, model, prompt, max_tokens):
    try:
        import openai
    except ImportError:
        sys.exit(77)
    client = openai.OpenAI(base_url=base_url, api_key='unused', max_retries=0)
    messages = [{'role': 'user', 'content': prompt}]
    out = {'version': openai.__version__}
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                       temperature=0)
    out['chat'] = r.choices[0].message.content
    out['finish'] = r.choices[0].finish_reason
    out['usage'] = [r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens]
    parts = []
    usage = None
    for chunk in client.chat.completions.create(model=model, messages=messages,
                                                max_tokens=max_tokens, temperature=0,
                                                stream=True,
                                                stream_options={'include_usage': True}):
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = [chunk.usage.prompt_tokens, chunk.usage.completion_tokens,
                     chunk.usage.total_tokens]
    out['stream'] = ''.join(parts)
    out['stream_usage'] = usage
    c = client.completions.create(model=model, prompt=prompt, max_tokens=4, temperature=0)
    out['completion_tokens'] = c.usage.completion_tokens
    out['models'] = [m.id for m in client.models.list()]
    try:
        client.chat.completions.create(model='no-such-model', messages=messages)
        out['unknown_model'] = 'accepted'
    except openai.NotFoundError as e:
        out['unknown_model'] = e.status_code
    # the penalties (vLLM's repetition_penalty and min_p through extra_body) and logprobs
    settings = dict(model=model, messages=messages, max_tokens=max_tokens, temperature=0,
                    logprobs=True, top_logprobs=3, presence_penalty=0.5,
                    frequency_penalty=0.5, extra_body={'repetition_penalty': 1.2, 'min_p': 0.1})
    r = client.chat.completions.create(**settings)
    out['logprobs'] = [{'token': t.token, 'logprob': t.logprob, 'bytes': t.bytes,
                        'top': [[u.token, u.logprob] for u in t.top_logprobs]}
                       for t in r.choices[0].logprobs.content]
    out['logprobs_tokens'] = r.usage.completion_tokens
    streamed = []
    for chunk in client.chat.completions.create(stream=True, **settings):
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
            streamed += [[t.token, t.logprob] for t in chunk.choices[0].logprobs.content]
    out['logprobs_stream'] = streamed
    c = client.completions.create(model=model, prompt=prompt, max_tokens=4, temperature=0,
                                  logprobs=2)
    lp = c.choices[0].logprobs
    out['completion_logprobs'] = {'tokens': lp.tokens, 'token_logprobs': lp.token_logprobs,
                                  'top_logprobs': lp.top_logprobs,
                                  'text_offset': lp.text_offset, 'text': c.choices[0].text}
    print(json.dumps(out))


def main():
    if sys.argv[1] == 'metrics':
        metrics(sys.argv[2])
    elif sys.argv[1] == 'sdk':
        sdk(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        sys.exit(2)


if __name__ == '__main__':
    main()
