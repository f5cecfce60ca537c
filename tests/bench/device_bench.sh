#!/usr/bin/env bash
# Runs on the GPU box, from the repository root, over a pack made by tests/gpu/pack.sh
# (carried as .devpack.tar.xz): the ceilings (copy bandwidth, dense bf16 GEMM), the dense
# projections' benchmark (matmul), the attention kernels', the MoE layer's (bf16, FP8 against
# bf16, and the FP8 decode tile's build variants), and qwend on the CUDA backend serving a
# synthetic model of CONFIG (random weights made on the GPU, no checkpoint) loaded by
# `qwenctl bench` at several concurrencies and prompt lengths.  Reports go to $OUT (or
# .devpack/out).
#   tests/bench/device_bench.sh [CONFIG] [ceilings] [matmul] [attention] [moe] [serve] [prefix] [nographs] [hf]
#                                          (default: the 30B-A3B config; ceilings attention serve)
set -uo pipefail
export NCCL_NVLS_ENABLE=0
root=$(pwd)
out=${OUT:-$root/.devpack/out}
mkdir -p "$out"
config=$root/tests/fixtures/configs/Qwen3-VL-30B-A3B-Instruct.json
if [[ ${1:-} == *.json ]]; then config=$(realpath "$1"); shift; fi
what=${*:-ceilings attention serve}
[[ -d .devpack/build ]] || { mkdir -p .devpack && tar xJf .devpack.tar.xz -C .devpack; } || exit 1
cd .devpack
bin=build/bin
if [[ " $what " == *" ceilings "* ]]; then
	python3 "$root/tests/bench/gpu_ceilings.py" | tee "$out/ceilings.json"
fi
if [[ " $what " == *" matmul "* ]]; then   # against the ceilings when measured (both or none)
	peaks=$(python3 -c "import json; c = json.load(open('$out/ceilings.json')); print('--copy', c['copy_GBps'], '--bf16-tflops', c['bf16_gemm_TFLOPs'])" 2>/dev/null)
	build/tests/bench/bench_cuda_matmul ${peaks:-} 2>&1 | tee "$out/matmul.txt"
fi
if [[ " $what " == *" attention "* ]]; then
	peak=$(python3 -c "import json; print(json.load(open('$out/ceilings.json'))['copy_GBps'])" 2>/dev/null)
	build/tests/bench/bench_cuda_attention ${peak:-} 2>&1 | tee "$out/attention.txt"
fi
if [[ " $what " == *" moe "* ]]; then
	peak=$(python3 -c "import json; print(json.load(open('$out/ceilings.json'))['copy_GBps'])" 2>/dev/null)
	build/tests/bench/bench_cuda_moe ${peak:-} 2>&1 | tee "$out/moe.txt"
	for b in build/tests/bench/bench_cuda_moe build/tests/bench/bench_cuda_moe_fp8_*; do
		echo "== $(basename "$b") --fp8" | tee -a "$out/moe-fp8.txt"
		"$b" --fp8 ${peak:-} 2>&1 | tee -a "$out/moe-fp8.txt"
	done
fi
# serve LABEL [qwend flags...]: the daemon up, the bench runs of $runs, the daemon down
serve() {
	local label=$1 sock=ipc://$out/qwend.sock
	shift
	$bin/qwend --model "synthetic:$config" --device cuda --gpus 0 --socket "$sock" \
		--temperature 0 "$@" >"$out/qwend-$label.log" 2>&1 &
	local pid=$!
	for _ in $(seq 600); do
		$bin/qwenctl -s "$sock" status --json 2>/dev/null |
			python3 -c "import json,sys; sys.exit(json.load(sys.stdin)['state'] != 'ready')" 2>/dev/null &&
			break
		kill -0 $pid 2>/dev/null || break
		sleep 0.5
	done
	$bin/qwenctl -s "$sock" status | tee -a "$out/serve-$label.txt"
	local r
	for r in $runs; do   # concurrency,requests,prompt-tokens,max-tokens[,more bench flags]
		IFS=, read -r c n p t more <<<"$r"
		echo "== concurrency $c, $n requests, prompt $p, max-tokens $t ${more:-}" | tee -a "$out/serve-$label.txt"
		# shellcheck disable=SC2086
		$bin/qwenctl -s "$sock" -t 60 bench -c "$c" -N "$n" -p "$p" -n "$t" ${more:-} 2>&1 |
			tee -a "$out/serve-$label.txt"
	done
	$bin/qwenctl -s "$sock" status | tee -a "$out/serve-$label.txt"
	$bin/qwenctl -s "$sock" shutdown
	wait $pid
	echo "qwend exit $?" | tee -a "$out/serve-$label.txt"
}
if [[ " $what " == *" serve "* ]]; then
	runs="1,4,128,128 8,16,128,128 64,128,128,128 256,512,128,128 1,4,512,1 1,2,8192,1 16,64,512,1"
	serve graphs
fi
if [[ " $what " == *" nographs "* ]]; then   # the same decode without CUDA graphs
	runs="1,4,128,128 8,16,128,128 64,128,128,128 256,512,128,128"
	serve nographs --cuda-graphs no
fi
if [[ " $what " == *" prefix "* ]]; then   # the prefix cache on and off (issue 21's benchmark)
	runs="1,6,64,1,--shared-prefix 4096 2,8,256,32,--turns 4 --seed 1"
	serve prefix-on --prefix-cache yes
	runs="1,3,64,1,--shared-prefix 4096 2,8,256,32,--turns 4 --seed 1"
	serve prefix-off --prefix-cache no
fi
if [[ " $what " == *" hf "* ]]; then
	python3 "$root/tests/bench/hf_bench.py" "$config" 2>&1 | tee "$out/hf.txt"
fi
