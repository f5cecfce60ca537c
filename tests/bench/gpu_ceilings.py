#!/usr/bin/env python3
"""The ceilings benchmarks are measured against, on this machine's GPU 0: device-to-device
copy bandwidth (bytes read + written), the dense bf16 GEMM rate and the dense FP8 (e4m3,
per-tensor scales, torch._scaled_mm) GEMM rate (8192^3, random data; the FP8 one where the
GPU has FP8 tensor cores).  Needs torch.  Prints one JSON object.

    python3 tests/bench/gpu_ceilings.py
"""
import json
import torch


def timed(fn, reps):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000.0 / reps


def main():
    n = 4 << 30
    src = torch.empty(n, dtype=torch.uint8, device='cuda')
    dst = torch.empty_like(src)
    copy_s = timed(lambda: dst.copy_(src), 10)
    del src, dst
    m = 8192
    a = torch.randn(m, m, dtype=torch.bfloat16, device='cuda')
    b = torch.randn(m, m, dtype=torch.bfloat16, device='cuda')
    gemm_s = timed(lambda: a @ b, 20)
    out = {
        'gpu': torch.cuda.get_device_name(0),
        'copy_GBps': round(2 * n / copy_s / 1e9, 1),
        'bf16_gemm_TFLOPs': round(2 * m ** 3 / gemm_s / 1e12, 1),
    }
    if torch.cuda.get_device_capability(0) >= (8, 9):
        a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t().contiguous().t()
        one = torch.ones((), dtype=torch.float32, device='cuda')
        fp8_s = timed(lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one,
                                               out_dtype=torch.bfloat16), 20)
        out['fp8_gemm_TFLOPs'] = round(2 * m ** 3 / fp8_s / 1e12, 1)
    print(json.dumps(out))


if __name__ == '__main__':
    main()
