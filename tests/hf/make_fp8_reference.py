#!/usr/bin/env python3
"""Writes the HF reference of an FP8 block-scaled tiny Qwen3-VL MoE: what transformers'
fine-grained FP8 integration computes for a checkpoint `qwen-ckpt export-reduced --quantize fp8`
writes, for qwen-parity --thresholds fp8 (docs/parity.md, "FP8 checkpoints").  Needs a GPU of
compute capability 8.9 or more, torch, transformers 5.x and the FP8 kernels transformers loads
(the `kernels` package and its hub kernels, kernels-community/finegrained-fp8 and deep-gemm,
which a box without network must already hold in its Hugging Face cache).

On the GPU box, from the repository root (the build's qwen-ckpt in .devpack):

    python3 tests/hf/make_fp8_reference.py --qwen-ckpt .devpack/build/bin/qwen-ckpt \\
        --out tests/fixtures/fp8/tiny-moe-fp8

It exports the model (by default tiny-moe's config, seed 3, experts 256 wide: see --export-args),
loads it with transformers as the published FP8 checkpoints load (float8_e4m3fn weights and fp32
block scales kept; activations quantized per token per 128 columns; bf16 otherwise), refuses to
go on unless every text-layer linear weight and every experts module is transformers' FP8 module
holding exactly the checkpoint's codes and scales (a model transformers dequantized to bf16, or
loaded in another layout, fails here, loudly), and writes into --out:

  reference.safetensors   the keys of the bf16 fixtures (tests/fixtures/hf/README.md) for cases
                          `short` and `long` (prompts from tests/fixtures/hf/tiny-moe): the FP8
                          run, in bf16 compute, under {case}.fp32.* (what qwen-parity reads:
                          logits, hidden.{i}, greedy_tokens, greedy_step_logits) and again as
                          {case}.bf16.logits / greedy_tokens; and cases `short_dequant` and
                          `long_dequant`: the same model's weights dequantized here (codes x
                          scales in fp32) and run by transformers in fp32, the reference an fp32
                          backend that dequantizes the same weights must meet at fp32 thresholds
  manifest.json           versions, GPU, the export (config and arguments, the files' sha256),
                          the modules found, each case's compute and min_top1_margin, how far
                          the FP8 run lies from the dequantized one, every reference key
"""
import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_reference  # noqa: E402  (its run() and load_model(), shared)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')
FP8 = torch.float8_e4m3fn


def fail(msg):
    sys.exit('make_fp8_reference: ' + msg)


def sha256(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def environment():
    if not torch.cuda.is_available():
        fail('no CUDA GPU: transformers runs FP8 checkpoints on a GPU only (on a CPU it '
             'dequantizes them to bf16, which is not the reference this script makes)')
    cap = torch.cuda.get_device_capability()
    if cap < (8, 9):
        fail('GPU %s has compute capability %d.%d; transformers runs FP8 from 8.9 (Ada, Hopper) '
             'and dequantizes below' % (torch.cuda.get_device_name(), cap[0], cap[1]))
    env = {'transformers': transformers.__version__, 'torch': torch.__version__,
           'cuda': torch.version.cuda, 'device': torch.cuda.get_device_name(),
           'capability': '%d.%d' % cap}
    for pkg in ('kernels', 'triton', 'deep_gemm'):
        try:
            env[pkg] = __import__(pkg).__version__
        except Exception:  # noqa: BLE001 (absent or without a version: recorded as such)
            env[pkg] = None
    return env


def probe_kernels():
    """Loads transformers' FP8 kernel bundle now, so a missing `kernels` package or a hub kernel
    this box cannot download fails before anything else, with what to do."""
    try:
        from transformers.integrations import finegrained_fp8 as fg
    except ImportError as e:
        return 'transformers.integrations.finegrained_fp8 not importable here (%s)' % e
    loaders = [getattr(fg, n, None) for n in ('load_finegrained_fp8_kernel',
                                             '_load_finegrained_fp8_kernel',
                                             'load_finegrained_kernel')]
    loaders = [f for f in loaders if callable(f)]
    if not loaders:
        return 'no kernel loader in this transformers (its FP8 code is self-contained)'
    try:
        loaders[0]()
    except Exception as e:  # noqa: BLE001
        fail('transformers could not load its FP8 kernels: %s\n  HINT: pip install the `kernels` '
             'version transformers names, and on a machine with network fetch the hub kernel '
             "(python3 -c 'from kernels import get_kernel; get_kernel(\"kernels-community/"
             "finegrained-fp8\")') into the Hugging Face cache you carry to this box (HF_HOME)"
             % e)
    return 'loaded by %s' % loaders[0].__name__


def export(qwen_ckpt, config, args, out):
    cmd = [qwen_ckpt, 'export-reduced', '--config', config, '--out', out, '--quantize', 'fp8']
    cmd += args
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        fail('%s failed:\n%s' % (' '.join(cmd), r.stdout))
    return {f: sha256(os.path.join(out, f)) for f in sorted(os.listdir(out))}


def block_of(cfg):
    return list(cfg['quantization_config'].get('weight_block_size', [128, 128]))


def dequant(q, s, block):
    """q (..., R, C) e4m3 codes times their block's scale, in fp32 (partial blocks at the
    edges); a scale grid with more rows or columns than the blocks (transformers pads fused
    gate_up grids) is read for the blocks there are."""
    R, C = q.shape[-2:]
    br, bc = block
    s = s[..., :-(-R // br), :-(-C // bc)].float()
    full = s.repeat_interleave(br, dim=-2)[..., :R, :].repeat_interleave(bc, dim=-1)[..., :C]
    return q.float() * full


def scale_key(name):
    return name[:-len('.weight')] + '.weight_scale_inv' if name.endswith('.weight') \
        else name + '_scale_inv'


def is_fp8_module(m):
    return any('FP8' in c.__name__ or 'FineGrained' in c.__name__ for c in type(m).__mro__)


def param(m, *names):
    for n in names:
        p = getattr(m, n, None)
        if p is not None:
            return p
    return None


def check_fp8_model(model, stored, cfg):
    """Every quantized tensor of the checkpoint must sit in one of transformers' FP8 modules
    as float8_e4m3fn codes whose dequantized values are the checkpoint's; the tensors kept in
    bf16 must not.  Returns the count of modules by class."""
    q = getattr(model, 'hf_quantizer', None)
    qc = getattr(q, 'quantization_config', None) or getattr(model.config, 'quantization_config',
                                                            None)
    if qc is None:
        fail('the loaded model has no quantization config: transformers did not take the '
             'checkpoint as FP8')
    if getattr(qc, 'dequantize', False):
        fail('transformers set dequantize on this checkpoint (it runs it as bf16, not FP8)')
    block = block_of(cfg)
    classes, checked = {}, 0
    modules = dict(model.named_modules())
    for name, t in stored.items():
        if t.dtype != FP8:
            continue
        module_name, attr = name.rsplit('.', 1)
        m = modules.get(module_name)
        if m is None:
            fail('%s: no module %s in the loaded model' % (name, module_name))
        if not is_fp8_module(m):
            fail('%s is a %s, not one of transformers\' FP8 modules: the checkpoint was not run as '
                 'FP8' % (module_name, type(m).__name__))
        classes[type(m).__name__] = classes.get(type(m).__name__, 0) + 1
        w = param(m, attr)
        s = param(m, attr + '_scale_inv', attr + '_scales_inv')
        if w is None or s is None or w.dtype != FP8:
            fail('%s.%s: %s, scales %s: not float8_e4m3fn codes with their scales (dequantized?)'
                 % (module_name, attr, None if w is None else w.dtype,
                    None if s is None else tuple(s.shape)))
        mblock = list(getattr(m, 'block_size', None) or block)
        want = dequant(t, stored[scale_key(name)], block)
        if want.dim() == 3:   # experts: transformers keeps them output-major
            want = want.transpose(1, 2)
        got = dequant(w.detach().cpu(), s.detach().cpu(), mblock)
        if got.shape != want.shape or not torch.equal(got, want):
            bad = 'shape %s, the checkpoint\'s %s' % (tuple(got.shape), tuple(want.shape)) \
                if got.shape != want.shape else 'max-abs %g' % (got - want).abs().max().item()
            fail('%s.%s holds other values than the checkpoint (%s)' % (module_name, attr, bad))
        checked += 1
    for name, m in modules.items():
        if name.endswith(('lm_head', 'embed_tokens', 'mlp.gate')) and is_fp8_module(m):
            fail('%s should stay bf16 (modules_to_not_convert) but is a %s' %
                 (name, type(m).__name__))
    if checked == 0:
        fail('the checkpoint holds no FP8 tensor')
    return classes, checked


class CallCounter:
    """Counts the forwards of the FP8 modules and the input dtypes they saw."""

    def __init__(self, model):
        self.calls, self.dtypes, self.hooks = 0, set(), []
        for _, m in model.named_modules():
            if is_fp8_module(m):
                self.hooks.append(m.register_forward_hook(self.hook))

    def hook(self, m, args, out):
        self.calls += 1
        if args and torch.is_tensor(args[0]):
            self.dtypes.add(str(args[0].dtype))


def load_fp8(model_dir, experts_impl):
    kw = {'dtype': torch.bfloat16, 'device_map': 'cuda', 'output_loading_info': True}
    if experts_impl:
        kw['experts_implementation'] = experts_impl
    model, info = transformers.AutoModelForImageTextToText.from_pretrained(model_dir, **kw)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        fail('transformers loaded the FP8 checkpoint with problems: %s' % problems)
    return model.eval()


def write_dequantized(model_dir, stored, cfg, out):
    """model_dir's model with every FP8 weight dequantized (codes x scales, fp32) and no
    quantization_config: the same values, for transformers' fp32 path."""
    block = block_of(cfg)
    tensors = {}
    for k, t in stored.items():
        if k.endswith('_scale_inv'):
            continue
        tensors[k] = dequant(t, stored[scale_key(k)], block) if t.dtype == FP8 else t.float()
    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(out, 'model.safetensors'))
    plain = dict(cfg)
    plain.pop('quantization_config')
    with open(os.path.join(out, 'config.json'), 'w') as f:
        json.dump(plain, f, indent=2)


def margin(res):
    """How close the top two logits come anywhere in a run (prompt and greedy steps)."""
    out = float('inf')
    for k in ('logits', 'greedy_step_logits'):
        if k in res:
            top = res[k].float().topk(2, dim=-1).values
            out = min(out, (top[..., 0] - top[..., 1]).min().item())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_ckpt = os.path.join(ROOT, '.devpack', 'build', 'bin', 'qwen-ckpt')
    if not os.path.exists(default_ckpt):
        default_ckpt = os.path.join(ROOT, 'build', 'bin', 'qwen-ckpt')
    ap.add_argument('--qwen-ckpt', default=default_ckpt, help='the build\'s qwen-ckpt '
                    '(default: .devpack/build/bin/qwen-ckpt, else build/bin/qwen-ckpt)')
    ap.add_argument('--out', default=os.path.join(FIXTURES, 'fp8', 'tiny-moe-fp8'),
                    help='where reference.safetensors and manifest.json go (default: '
                    'tests/fixtures/fp8/tiny-moe-fp8)')
    ap.add_argument('--config', default='hf/tiny-moe/model/config.json',
                    help='the config to export, under tests/fixtures (default: '
                    'hf/tiny-moe/model/config.json)')
    ap.add_argument('--export-args', default='--seed 3 --override-moe-intermediate 256',
                    help='more export-reduced arguments (default: "--seed 3 '
                    '--override-moe-intermediate 256": every matrix\'s input width a multiple '
                    'of the 128 block and fused gate_up two blocks tall or more, which '
                    'transformers\' FP8 kernels and experts need; tiny-moe\'s own 48-wide '
                    'experts give neither)')
    ap.add_argument('--model-dir', help='where the export goes (default: a temporary '
                    'directory, removed after)')
    ap.add_argument('--ids-from', default=os.path.join(FIXTURES, 'hf', 'tiny-moe',
                                                       'reference.safetensors'),
                    help='the prompts: {case}.input_ids of this reference (default: tiny-moe\'s)')
    ap.add_argument('--cases', default='short,long')
    ap.add_argument('--greedy', type=int, default=16)
    ap.add_argument('--experts-implementation', help='transformers\' experts_implementation '
                    '(default: its own choice, recorded in the manifest)')
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    env = environment()
    env['fp8_kernels'] = probe_kernels()
    print('environment: %s' % json.dumps(env))
    tmp = tempfile.TemporaryDirectory()
    model_dir = args.model_dir or os.path.join(tmp.name, 'fp8')
    os.makedirs(model_dir, exist_ok=True)
    export_args = shlex.split(args.export_args)
    files = export(args.qwen_ckpt, os.path.join(FIXTURES, args.config), export_args, model_dir)
    cfg = json.load(open(os.path.join(model_dir, 'config.json')))
    stored = load_file(os.path.join(model_dir, 'model.safetensors'))
    print('exported %s: %d tensors, %d of them FP8' %
          (model_dir, len(stored), sum(t.dtype == FP8 for t in stored.values())))

    model = load_fp8(model_dir, args.experts_implementation)
    classes, checked = check_fp8_model(model, stored, cfg)
    print('transformers holds the %d FP8 tensors in its FP8 modules, as stored: %s' %
          (checked, classes))
    counter = CallCounter(model)
    prompts = load_file(args.ids_from)
    cases = args.cases.split(',')
    tensors, info = {}, {}
    fp8_runs = {}
    for case in cases:
        ids = prompts['%s.input_ids' % case].tolist()
        before = counter.calls
        res = make_reference.run(model, ids, args.greedy, 'cuda', hidden=True)
        if counter.calls == before:
            fail('case %s ran without calling an FP8 module' % case)
        tensors['%s.input_ids' % case] = torch.tensor(ids, dtype=torch.int64)
        for k, v in res.items():
            tensors['%s.fp32.%s' % (case, k)] = v.contiguous()
        # copies: safetensors refuses two keys over one storage
        tensors['%s.bf16.logits' % case] = res['logits'].clone()
        if 'greedy_tokens' in res:
            tensors['%s.bf16.greedy_tokens' % case] = res['greedy_tokens'].clone()
        fp8_runs[case] = res
        info[case] = {'compute': 'transformers FP8: float8_e4m3fn weights, fp32 128x128 block '
                      'scales, activations quantized per token per 128 columns, bf16 otherwise',
                      'tokens': len(ids),
                      'greedy': res.get('greedy_tokens', torch.zeros(0)).tolist(),
                      'min_top1_margin': margin(res)}
    experts_impl = getattr(model.config.get_text_config(), '_experts_implementation', None)
    fp8_calls, fp8_dtypes = counter.calls, sorted(counter.dtypes)
    del model
    torch.cuda.empty_cache()

    deq_dir = os.path.join(tmp.name, 'dequantized')
    os.makedirs(deq_dir)
    write_dequantized(model_dir, stored, cfg, deq_dir)
    model = make_reference.load_model(deq_dir, torch.float32, 'cuda')
    gap = {}
    for case in cases:
        ids = tensors['%s.input_ids' % case].tolist()
        res = make_reference.run(model, ids, args.greedy, 'cuda', hidden=True)
        name = case + '_dequant'
        tensors['%s.input_ids' % name] = torch.tensor(ids, dtype=torch.int64)
        for k, v in res.items():
            tensors['%s.fp32.%s' % (name, k)] = v.contiguous()
        info[name] = {'compute': 'transformers fp32 on the FP8 weights dequantized (codes x '
                      'scales in fp32), TF32 off', 'tokens': len(ids),
                      'greedy': res.get('greedy_tokens', torch.zeros(0)).tolist(),
                      'min_top1_margin': margin(res)}
        d = fp8_runs[case]['logits'] - res['logits']
        gap[case] = {'logits_max_abs': d.abs().max().item(), 'logits_mse': (d * d).mean().item(),
                     'first_logit_max_abs': d[0].abs().max().item(),
                     'greedy_equal': info[case]['greedy'] == info[name]['greedy']}
    del model

    os.makedirs(args.out, exist_ok=True)
    ref = os.path.join(args.out, 'reference.safetensors')
    save_file(tensors, ref)
    manifest = {
        'name': 'tiny-moe-fp8',
        'made_by': 'tests/hf/make_fp8_reference.py',
        'environment': env,
        'export': {'config': args.config, 'args': ['--quantize', 'fp8'] + export_args,
                   'files': files},
        'fp8_modules': classes, 'fp8_tensors_checked': checked,
        'experts_implementation': experts_impl,
        'fp8_module_calls': fp8_calls, 'fp8_module_input_dtypes': fp8_dtypes,
        'cases': info,
        'fp8_vs_dequantized': gap,
        'reference_keys': {k: [str(v.dtype), list(v.shape)] for k, v in tensors.items()},
    }
    with open(os.path.join(args.out, 'manifest.json'), 'w') as f:
        json.dump(manifest, f, indent=1)
    print('wrote %s (%d keys) and manifest.json; FP8 against dequantized fp32: %s' %
          (ref, len(tensors), json.dumps(gap)))
    tmp.cleanup()
    return 0


if __name__ == '__main__':
    sys.exit(main())
