#!/usr/bin/env bash
# Runs on the GPU box, from the repository root, over a pack made by tests/gpu/pack.sh
# (carried as .devpack.tar.xz): the GPU probe, the GPU suite (the NCCL test needs 2 GPUs and is
# left out on one), the parity ladder on the CUDA backend for both tiny models (and for the FP8
# export against transformers' FP8 reference, where tests/fixtures/fp8/tiny-moe-fp8 holds it),
# and the daemon's tests on the CUDA backend.  Logs go to $OUT (or .devpack/out).
#   tests/gpu/device_run.sh [suite] [parity] [daemon]     (default: all three)
#   tests/gpu/device_run.sh hf-fp8    (needs torch + transformers: writes transformers' FP8
#       reference with tests/hf/make_fp8_reference.py into $OUT/tiny-moe-fp8, then climbs the
#       ladder against it on the CPU and CUDA backends; copy that folder to
#       tests/fixtures/fp8/tiny-moe-fp8 to keep it)
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
# The FP8 export a reference in $1 (reference.safetensors, manifest.json) was made from, again
# (its manifest's config and arguments), then the ladder against it on backend $2 (cpu: fp8
# and fp32 thresholds; cuda: fp8 and bf16) at 1 and 3 stages.
fp8_parity() {
	local ref=$1 backend=$2 model=$out/tiny-moe-fp8-model exact=fp32 args
	args=$(python3 -c 'import json, sys; e = json.load(open(sys.argv[1]))["export"]
print(e["config"], " ".join(e["args"]))' "$ref/manifest.json") || return 1
	[[ $backend == cuda ]] && exact=bf16
	rm -rf "$model"
	$bin/qwen-ckpt export-reduced --config "$fix/${args%% *}" --out "$model" ${args#* } >/dev/null ||
		return 1
	for c in short:fp8 long:fp8 short_dequant:$exact long_dequant:$exact; do
		for s in 1 3; do
			$bin/qwen-parity --backend $backend --stages $s --model "$model" \
				--reference "$ref/reference.safetensors" --case ${c%%:*} \
				--thresholds ${c#*:} 2>&1 | tee -a "$out/parity_fp8.txt"
		done
	done
}

$bin/qwen-gpuinfo | tee "$out/gpuinfo.txt"
if [[ " $what " == *" suite "* ]]; then
	tests=$(ls build/tests/gpu/test_* | grep -v test_nccl_transport)
	# a test program that hangs is cut off (QW_GPU_TEST_TIMEOUT seconds, 240 unless set) so
	# the rest of the suite still runs within one call on the box
	python3 "$root/tests/run_tests.py" --bin $bin --fixtures "$fix" \
		--timeout "${QW_GPU_TEST_TIMEOUT:-240}" $tests 2>&1 | tee "$out/suite.txt"
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
	if [[ -f $fix/fp8/tiny-moe-fp8/reference.safetensors ]]; then
		fp8_parity "$fix/fp8/tiny-moe-fp8" cuda
	else
		echo "tests/fixtures/fp8/tiny-moe-fp8 is not there yet: no FP8 parity (device_run.sh" \
			"hf-fp8 makes it)" | tee -a "$out/parity_fp8.txt"
	fi
fi
if [[ " $what " == *" hf-fp8 "* ]]; then
	python3 "$root/tests/hf/make_fp8_reference.py" --qwen-ckpt "$(pwd)/$bin/qwen-ckpt" \
		--out "$out/tiny-moe-fp8" 2>&1 | tee "$out/hf_fp8.txt" &&
		fp8_parity "$out/tiny-moe-fp8" cpu && fp8_parity "$out/tiny-moe-fp8" cuda
fi
if [[ " $what " == *" daemon "* ]]; then
	QWEND_TEST_DEVICE=cuda python3 "$root/tests/run_tests.py" --bin $bin --fixtures "$fix" \
		build/tests/unit/test_qwend build/tests/unit/test_qwend_faults \
		build/tests/unit/test_qwend_prefix build/tests/unit/test_qwend_sampling \
		build/tests/unit/test_qwend_restart build/tests/unit/test_qwend_vision_cache 2>&1 |
		tee "$out/daemon.txt"
fi
