#!/usr/bin/env python3
"""Writes a parity reference for any HF model directory and prompt, in the format of
tests/fixtures/hf/*/reference.safetensors, so qwen-parity can climb the ladder on any
checkpoint:

  {case}.input_ids                 int64 [T]
  {case}.fp32.logits               [T, V]   weights upcast to fp32, fp32 math, TF32 off
  {case}.fp32.hidden.{i}           [T, H]   i=0 embeddings, i=k output of layer k-1, the last
                                            after the final norm (as HF records them)
  {case}.fp32.greedy_tokens        int64 [N] greedy continuation with the KV cache
  {case}.fp32.greedy_step_logits   [N, V]   the logits each of those steps chose from
  {case}.bf16.logits, {case}.bf16.greedy_tokens   the same model run in bf16

Usage (text prompts; images come with the vision path):
  make_reference.py --model DIR --out REF.safetensors --case NAME
                    (--ids 1,2,3 | --ids-from REF.safetensors | --text "..." [--tokenizer DIR])
                    [--greedy N] [--device cuda|cpu] [--compare OTHER.safetensors]
An existing --out file keeps its other cases.  --compare prints, for every key both files
hold, the largest absolute difference (to check this script against a known reference).
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
import transformers


def load_model(d, dtype, device):
    cfg = json.load(open(os.path.join(d, 'config.json')))
    vision = cfg['model_type'] in ('qwen3_vl', 'qwen3_vl_moe')
    auto = (transformers.AutoModelForImageTextToText if vision
            else transformers.AutoModelForCausalLM)
    return auto.from_pretrained(d, dtype=dtype).to(device).eval()


def run(model, ids, greedy, device, hidden):
    out = {}
    x = torch.tensor([ids], device=device)
    with torch.no_grad():
        fwd = model(input_ids=x, output_hidden_states=hidden)
        out['logits'] = fwd.logits[0].float().cpu()
        if hidden:
            for i, h in enumerate(fwd.hidden_states):
                out['hidden.%d' % i] = h[0].float().cpu()
        if greedy:
            gen = model.generate(input_ids=x, attention_mask=torch.ones_like(x),
                                 max_new_tokens=greedy, min_new_tokens=greedy, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True,
                                 pad_token_id=0)
            out['greedy_tokens'] = gen.sequences[0, len(ids):].cpu().to(torch.int64)
            out['greedy_step_logits'] = torch.stack([l[0].float().cpu() for l in gen.logits])
    return out


def prompt_ids(args):
    if args.ids:
        return [int(v) for v in args.ids.split(',')]
    if args.ids_from:
        return load_file(args.ids_from)['%s.input_ids' % args.case].tolist()
    tok = transformers.AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    return tok(args.text, add_special_tokens=False)['input_ids']


def compare(a_path, b_path):
    a, b = load_file(a_path), load_file(b_path)
    worst = 0.0
    for k in sorted(set(a) & set(b)):
        if a[k].shape != b[k].shape:
            print('%-40s shape %s vs %s' % (k, tuple(a[k].shape), tuple(b[k].shape)))
            worst = float('inf')
            continue
        d = (a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0
        worst = max(worst, d)
        print('%-40s max-abs %.3g' % (k, d))
    print('largest difference: %.3g over %d common keys' % (worst, len(set(a) & set(b))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--model', required=True)
    ap.add_argument('--out', required=True)
    ap.add_argument('--case', required=True)
    ap.add_argument('--ids')
    ap.add_argument('--ids-from')
    ap.add_argument('--text')
    ap.add_argument('--tokenizer')
    ap.add_argument('--greedy', type=int, default=16)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--compare')
    args = ap.parse_args()
    if not (args.ids or args.ids_from or args.text):
        ap.error('give the prompt as --ids, --ids-from or --text')
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    ids = prompt_ids(args)
    tensors = load_file(args.out) if os.path.exists(args.out) else {}
    tensors = {k: v for k, v in tensors.items() if not k.startswith(args.case + '.')}
    tensors['%s.input_ids' % args.case] = torch.tensor(ids, dtype=torch.int64)
    for dtype, tag in ((torch.float32, 'fp32'), (torch.bfloat16, 'bf16')):
        model = load_model(args.model, dtype, args.device)
        res = run(model, ids, args.greedy, args.device, hidden=tag == 'fp32')
        for k, v in res.items():
            if tag == 'bf16' and k not in ('logits', 'greedy_tokens'):
                continue
            tensors['%s.%s.%s' % (args.case, tag, k)] = v.contiguous()
        del model
    save_file(tensors, args.out)
    print('wrote %s: case %s, %d tokens, %d keys' % (args.out, args.case, len(ids), len(tensors)))
    if args.compare:
        compare(args.out, args.compare)
    return 0


if __name__ == '__main__':
    sys.exit(main())
