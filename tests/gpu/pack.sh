#!/usr/bin/env bash
# Packs what the GPU box needs to run the GPU suite, the daemon's tests on CUDA and the
# benchmarks (and the soak, for its recovery figures), from a build made here (`scons && scons
# tests`): stripped programs in .devpack/build/{bin,lib,tests/gpu,tests/unit,tests/bench,
# tests/soak}, laid out as build/ is, so tests find
# cmocka through their rpath and tests/run_tests.py runs them from the repository root,
# and the same compressed as .devpack.tar.xz, which device_run.sh unpacks where it is carried:
#   cd .devpack && python3 ../tests/run_tests.py --bin build/bin --fixtures ../tests/fixtures build/tests/gpu/test_*
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .devpack
mkdir -p .devpack/build/bin .devpack/build/lib .devpack/build/tests/gpu .devpack/build/tests/unit \
	.devpack/build/tests/bench .devpack/build/tests/soak
for p in qwend qwenctl qwen-parity qwen-ckpt qwen-gpuinfo qwen-transport-check qwen-tok qwen-http; do
	strip -o .devpack/build/bin/$p build/bin/$p
done
cp -L build/lib/libcmocka.so.0 .devpack/build/lib/
for t in build/tests/gpu/test_*; do
	case "$t" in *.o) continue ;; esac
	strip -o .devpack/build/tests/gpu/$(basename "$t") "$t"
done
for t in build/tests/bench/bench_*; do
	case "$t" in *.o) continue ;; esac
	strip -o .devpack/build/tests/bench/$(basename "$t") "$t"
done
for t in test_qwend test_qwend_faults test_qwend_prefix test_qwend_sampling test_qwend_restart \
	test_qwend_vision_cache; do
	strip -o .devpack/build/tests/unit/$t build/tests/unit/$t
done
strip -o .devpack/build/tests/soak/soak build/tests/soak/soak
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for e in /.devpack/ /.devpack.tar.xz; do
	grep -qx "$e" "$exclude" 2>/dev/null || echo "$e" >>"$exclude"
done
# Compressed for the trip: the working tree that travels to the GPU box is size-limited.  Every
# test and benchmark links the same CUDA kernels (~15 MB each); xz's largest dictionary (64 MiB,
# one thread) finds them again across files: 8 MB instead of 31 at the default level.
tar cf - -C .devpack build | xz -9 -T1 >.devpack.tar.xz
du -sh .devpack .devpack.tar.xz
