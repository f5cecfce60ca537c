#!/usr/bin/env python3
"""Checks that HuggingFace transformers loads model directories written by
`qwen-ckpt export-reduced` exactly: no missing, unexpected or mismatched keys, every
parameter equal to the tensor in the safetensors files, and a forward pass with finite
logits.  Needs torch, transformers and safetensors (the GPU box has them).

    python3 tests/hf/check_transformers_load.py DIR [DIR ...]
"""
import json
import re
import sys

import torch
from safetensors import safe_open
import transformers


def stored_tensors(d):
    try:
        index = json.load(open(d + '/model.safetensors.index.json'))
        files = sorted(set(index['weight_map'].values()))
    except FileNotFoundError:
        files = ['model.safetensors']
    out = {}
    for f in files:
        with safe_open(d + '/' + f, 'pt') as st:
            for k in st.keys():
                out[k] = st.get_tensor(k)
    return out


V5 = int(transformers.__version__.split('.')[0]) >= 5


def params_of(model):
    return {k: v.detach().cpu() for k, v in model.named_parameters()}


def expected_params(stored):
    """The parameters the stored tensors must become.  transformers v5 keeps experts
    output-major: hub-fused [E, H, 2I] / [E, I, H] are transposed to [E, 2I, H] /
    [E, H, I], and per-expert gate/up/down modules are stacked (gate rows first)."""
    out = {}
    per_expert = {}
    for name, t in stored.items():
        m = re.match(r'(.*\.mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight$', name)
        if m:
            per_expert.setdefault(m.group(1), {})[(int(m.group(2)), m.group(3))] = t
        elif name.endswith(('.mlp.experts.gate_up_proj', '.mlp.experts.down_proj')) and \
                V5:
            out[name] = t.transpose(1, 2)
        else:
            out[name] = t
    for prefix, parts in per_expert.items():
        n = 1 + max(e for e, _ in parts)
        out[prefix + '.gate_up_proj'] = torch.stack(
            [torch.cat([parts[(e, 'gate')], parts[(e, 'up')]], 0) for e in range(n)])
        out[prefix + '.down_proj'] = torch.stack([parts[(e, 'down')] for e in range(n)])
    return out


def check(d):
    cfg = json.load(open(d + '/config.json'))
    vision = cfg['model_type'] in ('qwen3_vl', 'qwen3_vl_moe')
    auto = (transformers.AutoModelForImageTextToText if vision
            else transformers.AutoModelForCausalLM)
    model, info = auto.from_pretrained(d, dtype=torch.bfloat16, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        return 'loading info: %s' % problems
    stored = stored_tensors(d)
    expected = expected_params(stored)
    params = params_of(model)
    for name, t in expected.items():
        p = params.get(name)
        if p is None:
            return 'stored tensor for %s has no parameter of that name' % name
        if p.shape != t.shape or not torch.equal(p, t):
            raw = stored.get(name)
            same_raw = raw is not None and raw.shape == p.shape and torch.equal(p, raw)
            return 'parameter %s differs from the stored tensor%s' % (
                name, ' (it equals the stored tensor untransposed)' if same_raw else '')
    compared = len(expected)
    vocab = (cfg.get('text_config') or cfg)['vocab_size']
    ids = torch.arange(1, 17).unsqueeze(0) % vocab
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    if not torch.isfinite(logits).all():
        return 'non-finite logits'
    print('ok   %s: %s, %d tensors -> %d parameters equal bit for bit, logits %s, |logits| max %.3f' % (
        d, type(model).__name__, len(stored), compared, tuple(logits.shape),
        logits.abs().max().item()))
    return None


def main():
    print('transformers %s, torch %s' % (transformers.__version__, torch.__version__))
    failed = 0
    for d in sys.argv[1:]:
        try:
            why = check(d)
        except Exception as exc:   # report every directory, not just the first failure
            why = '%s: %s' % (type(exc).__name__, exc)
        if why:
            failed += 1
            print('FAIL %s: %s' % (d, why))
    print('%d passed, %d failed' % (len(sys.argv) - 1 - failed, failed))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
