#!/usr/bin/env python3
"""The ceilings benchmarks are measured against, on this machine's GPU 0: device-to-device
copy bandwidth (bytes read + written) and the dense bf16 GEMM rate (8192^3, random data).
Needs torch.  Prints one JSON object.

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
    print(json.dumps({
        'gpu': torch.cuda.get_device_name(0),
        'copy_GBps': round(2 * n / copy_s / 1e9, 1),
        'bf16_gemm_TFLOPs': round(2 * m ** 3 / gemm_s / 1e12, 1),
    }))


if __name__ == '__main__':
    main()
