#!/usr/bin/env bash
# Runs on the GPU box, from the repository root, over a pack made by tests/gpu/pack.sh
# (carried as .devpack.tar.xz): the GPU probe, the GPU suite (the NCCL test needs 2 GPUs and is
# left out on one), the parity ladder on the CUDA backend for both tiny models, and the
# daemon's tests on the CUDA backend.  Logs go to $OUT (or .devpack/out).
#   tests/gpu/device_run.sh [suite] [parity] [daemon]     (default: all three)
set -uo pipefail
export NCCL_NVLS_ENABLE=0
root=$(pwd)
out=${OUT:-$root/.devpack/out}
mkdir -p "$out"
[[ -d .devpack/build ]] || { mkdir -p .devpack && tar xJf .devpack.tar.xz -C .devpack; } || exit 1
cd .devpack
bin=build/bin
fix=$root/tests/fixtures
what=${*:-suite parity daemon}
$bin/qwen-gpuinfo | tee "$out/gpuinfo.txt"
if [[ " $what " == *" suite "* ]]; then
	tests=$(ls build/tests/gpu/test_* | grep -v test_nccl_transport)
	python3 "$root/tests/run_tests.py" --bin $bin --fixtures "$fix" $tests 2>&1 | tee "$out/suite.txt"
fi
if [[ " $what " == *" parity "* ]]; then
	for m in tiny-moe tiny-dense; do
		for c in short long image; do
			for s in 1 3; do
				$bin/qwen-parity --backend cuda --stages $s --model "$fix/hf/$m/model" \
					--reference "$fix/hf/$m/reference.safetensors" --case $c 2>&1 |
					tee -a "$out/parity.txt"
			done
		done
	done
fi
if [[ " $what " == *" daemon "* ]]; then
	QWEND_TEST_DEVICE=cuda python3 "$root/tests/run_tests.py" --bin $bin --fixtures "$fix" \
		build/tests/unit/test_qwend build/tests/unit/test_qwend_faults \
		build/tests/unit/test_qwend_prefix 2>&1 | tee "$out/daemon.txt"
fi
