#!/usr/bin/env bash
# Runs the libFuzzer targets built by `scons fuzz`, each for SECONDS (default 10) from its
# seeds (build/fuzz/seeds/TARGET, and tests/fuzz/corpus/TARGET where kept) under ASan + UBSan, and prints one line a target: the
# inputs run and whether anything was found.  A finding is kept under build/fuzz/findings/
# with the target's output, and the exit status is 1.
#   tests/fuzz/run.sh [SECONDS] [TARGET...]     (targets: loader request tokenizer image prepare)
set -uo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(loader request tokenizer image prepare)
mkdir -p build/fuzz/findings
status=0
for t in "${targets[@]}"; do
	corpus=$(mktemp -d)
	log=build/fuzz/findings/$t.log
	if [ ! -x "build/fuzz/fuzz_$t" ]; then
		echo "fuzz_$t: not built (scons fuzz)"
		status=1
		continue
	fi
	seeds=("build/fuzz/seeds/$t")
	[ -d "tests/fuzz/corpus/$t" ] && seeds+=("tests/fuzz/corpus/$t")   # kept inputs
	"build/fuzz/fuzz_$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
		-print_final_stats=1 -artifact_prefix="build/fuzz/findings/$t-" \
		"$corpus" "${seeds[@]}" > "$log" 2>&1
	rc=$?
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
	if [ $rc -eq 0 ]; then
		echo "fuzz_$t: ${runs:-?} inputs in ${secs} s, nothing found"
	else
		echo "fuzz_$t: FOUND something (exit $rc) after ${runs:-?} inputs; $log:"
		tail -n 40 "$log"
		status=1
	fi
	rm -rf "$corpus"
done
exit $status
