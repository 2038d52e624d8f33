#!/usr/bin/env bash
# Runs each fuzz loop of tests/fuzz_input.rs for a wall-clock budget (release build) and prints, per target:
# executions, distinct outcomes, crashes (panics caught per case), aborts (the test process died, e.g. an
# allocation over the 1 GiB cap) and the largest single allocation. Logs go to out/fuzz/<target>.log.
#
#   tools/fuzz/run.sh                            # 60 s per target, a fresh seed
#   HELIOS_FUZZ_SECONDS=600 HELIOS_FUZZ_SEED=42 tools/fuzz/run.sh manifest cutscene
#
# Exit status 1 if any target crashed or aborted.
set -uo pipefail

cd "$(dirname "$0")/../.."
seconds=${HELIOS_FUZZ_SECONDS:-60}
seed=${HELIOS_FUZZ_SEED:-$(date +%s)}
out=out/fuzz
mkdir -p "$out"

declare -A tests=(
    [manifest]=manifest_mutations_give_ok_or_a_typed_error
    [saved_state]=saved_state_mutations_give_ok_or_a_typed_error
    [cutscene]=cutscene::cutscene_mutations_give_ok_or_a_typed_error
)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(manifest saved_state cutscene)

echo "building tests/fuzz_input.rs (release)..."
cargo test --release --test fuzz_input --no-run --quiet || exit 1

# `key=value` from a `fuzz report:` line
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

printf '\n%-12s %8s %11s %9s %8s %7s %18s\n' target seconds executions outcomes crashes aborts largest_allocation
bad=0
for target in "${targets[@]}"; do
    name=${tests[$target]:-}
    if [ -z "$name" ]; then
        echo "unknown target $target (manifest, saved_state, cutscene)" >&2
        exit 2
    fi
    log="$out/$target.log"
    HELIOS_FUZZ_SECONDS=$seconds HELIOS_FUZZ_SEED=$seed RUST_BACKTRACE=0 \
        cargo test --release --quiet --test fuzz_input -- --exact "$name" --nocapture >"$log" 2>&1
    rc=$?
    report=$(grep '^fuzz report:' "$log" | tail -1)
    if [ -n "$report" ]; then
        aborts=0
        largest=$(field largest_allocation "$report")
        printf '%-12s %8s %11s %9s %8s %7s %18s\n' "$target" "$(field seconds "$report")" \
            "$(field executions "$report")" "$(field distinct_outcomes "$report")" \
            "$(field panics "$report")" "$aborts" "$largest"
        [ "$(field failures "$report")" != 0 ] && bad=1
    else
        # no report: the process died mid-loop; the allocator's failure names the size
        largest=$(sed -n 's/^memory allocation of \([0-9]*\) bytes failed.*/\1/p' "$log" | tail -1)
        printf '%-12s %8s %11s %9s %8s %7s %18s\n' "$target" - - - - 1 "${largest:-?}"
        bad=1
    fi
    [ $rc -ne 0 ] && [ -n "$report" ] && [ "$(field failures "$report")" = 0 ] && {
        echo "  $target: exit status $rc with no failure counted; see $log" >&2
        bad=1
    }
done
echo
echo "seed $seed, $seconds s per target; logs in $out/"
exit $bad
