#!/usr/bin/env python3
"""HF transformers on a model shape, for comparison with qwend: the model built from its
config with random bf16 weights on GPU 0 (no checkpoint needed), text prompts of random
token ids.  Reports prefill tokens/s for each prompt length and single-stream greedy decode
tokens/s (the first token's time left out).  Needs torch and transformers.

    python3 tests/bench/hf_bench.py CONFIG.json [--prefill 512,8192] [--decode 64]
"""
import argparse
import json
import time

import torch
import transformers


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('config')
    ap.add_argument('--prefill', default='512,8192')
    ap.add_argument('--decode', type=int, default=64)
    args = ap.parse_args()
    cfg = transformers.AutoConfig.from_pretrained(args.config)
    torch.manual_seed(0)
    t0 = time.time()
    with torch.device('cuda'):
        model = transformers.AutoModelForImageTextToText.from_config(cfg, dtype=torch.bfloat16)
    model.eval()
    built = time.time() - t0
    vocab = cfg.text_config.vocab_size
    out = {'transformers': transformers.__version__, 'torch': torch.__version__,
           'gpu': torch.cuda.get_device_name(0), 'build_s': round(built, 1), 'prefill': {}}
    with torch.no_grad():
        for p in (int(x) for x in args.prefill.split(',')):
            ids = torch.randint(100, min(vocab, 150000), (1, p), device='cuda')
            model(input_ids=ids)                       # warm-up
            torch.cuda.synchronize()
            t = time.time()
            model(input_ids=ids)
            torch.cuda.synchronize()
            out['prefill'][p] = round(p / (time.time() - t), 1)
        ids = torch.randint(100, min(vocab, 150000), (1, 32), device='cuda')
        model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)   # warm-up
        times = []
        for n in (1, args.decode + 1):
            torch.cuda.synchronize()
            t = time.time()
            model.generate(input_ids=ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            torch.cuda.synchronize()
            times.append(time.time() - t)
        out['decode_tokens_per_s'] = round(args.decode / (times[1] - times[0]), 2)
    print(json.dumps(out))


if __name__ == '__main__':
    main()
