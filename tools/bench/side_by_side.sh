#!/usr/bin/env bash
# Side-by-side benchmark, diffusers 0.42.1 HeliosPyramidPipeline vs bevy_helios' Rust runtime (ORT CUDA), in
# ONE device command (<= 600 s). See tools/bench/README.md for the device recipe and what each step writes.
#
#   1. reference.py  random weights, real Helios-Distilled dims, LAYERS blocks; timed per chunk after a warm-up;
#                    saves the checkpoint, the prompt bank and the recorded draws/outputs (untimed replay)
#   2. export.py     that checkpoint on the CPU: bf16 denoisers with fused attention, helper graphs, manifest
#   3. gpu_bench     the recorded stream (--inject-noise, amplified first chunk) timed and compared
#                    (--compare), TTFF in both first-chunk modes; then a profiled (CUDA_LAUNCH_BLOCKING=1) run
#                    for the where-the-time-goes table
#   4. summarize.py  summary.json / summary.md / profile_table.md under $OUT
# nvidia-smi samples device memory all along (vram.csv); phases.txt marks each step.
#
# Usage (device, after the ORT CUDA libraries are staged):
#   .device/stage-and-run.sh .ortgpu -- bash tools/bench/side_by_side.sh
# Dry run here (tiny config, CPU, no GPU):
#   OUT=/tmp/sbs/out bash tools/bench/side_by_side.sh --tiny
# Options (or environment): --layers N (LAYERS, default 4; tiny 2), --chunks N (CHUNKS, 3), --tiny, --provider P
# (PROVIDER, cuda; cpu with --tiny), --bench PATH (GPU_BENCH, default .device/gpu_bench, else .devbin/gpu_bench,
# else target/release/examples/gpu_bench; with --tiny and none of them: tools/bench/ort_loop.py, the Python
# twin), --work DIR (WORK, /tmp/sbs), --budget S (BUDGET_S, 570 s for everything; tiny 1500), --jobs N (JOBS,
# export processes, 8; tiny 2), SIGMA_DTYPE (f64 if src/core/manifest.rs knows F64, else f32).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2

LAYERS=${LAYERS:-}
CHUNKS=${CHUNKS:-3}
TINY=${TINY:-0}
PROVIDER=${PROVIDER:-}
GPU_BENCH=${GPU_BENCH:-}
WORK=${WORK:-/tmp/sbs}
BUDGET_S=${BUDGET_S:-}
JOBS=${JOBS:-}
while [ $# -gt 0 ]; do
	case $1 in
	--tiny) TINY=1 ;;
	--layers) LAYERS=$2; shift ;;
	--chunks) CHUNKS=$2; shift ;;
	--provider) PROVIDER=$2; shift ;;
	--bench) GPU_BENCH=$2; shift ;;
	--work) WORK=$2; shift ;;
	--budget) BUDGET_S=$2; shift ;;
	--jobs) JOBS=$2; shift ;;
	*) echo "side_by_side: unknown option $1" >&2; exit 2 ;;
	esac
	shift
done
OUT=${OUT:-$WORK/out}
if [ "$TINY" = 1 ]; then
	LAYERS=${LAYERS:-2} JOBS=${JOBS:-2} BUDGET_S=${BUDGET_S:-1500}
else
	LAYERS=${LAYERS:-4} JOBS=${JOBS:-8} BUDGET_S=${BUDGET_S:-570}
fi
T0=$(date +%s)
rm -rf "$WORK"
mkdir -p "$WORK/model" "$WORK/prof" "$OUT"
LOG=$OUT/log.txt
PHASES=$WORK/phases.txt
: >"$LOG"
: >"$PHASES"
export PYTHONUNBUFFERED=1
NOTES=()

say() { echo "[sbs $(($(date +%s) - T0))s] $*" | tee -a "$LOG"; }
left() { echo $((BUDGET_S - ($(date +%s) - T0))); }
mark() { echo "$(date +%s.%N) $1 $2" >>"$PHASES"; }
# step NAME MIN_SECONDS_NEEDED MAX_SECONDS CMD...: runs CMD with a timeout, logs it; skips it if too little budget.
step() {
	local name=$1 need=$2 max=$3
	shift 3
	local l
	l=$(left)
	if [ "$l" -lt "$need" ]; then
		say "SKIP $name: ${l}s of the budget left, needs ~${need}s"
		NOTES+=("$name skipped: ${l}s of the budget left, it needs ~${need}s")
		return 99
	fi
	[ "$max" -gt "$l" ] && max=$l
	say "START $name (timeout ${max}s): $*"
	mark "$name" start
	timeout --kill-after=10 "$max" "$@" >>"$LOG" 2>&1
	local rc=$?
	mark "$name" end
	say "END $name rc=$rc"
	[ $rc -ne 0 ] && NOTES+=("$name exited with status $rc (timeout = 124)")
	return $rc
}

# --- environment ---------------------------------------------------------------------------------------
if [ "$TINY" = 1 ]; then
	PROVIDER=${PROVIDER:-cpu}
	PY=${PYTHON:-$( [ -x tools/.venv/bin/python ] && echo tools/.venv/bin/python || echo python3)}
else
	PROVIDER=${PROVIDER:-cuda}
	PY=${PYTHON:-python3}
fi
if ! "$PY" -c "import diffusers" >/dev/null 2>&1; then
	say "installing the carried wheels (.whl/) into /tmp/site"
	"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >>"$LOG" 2>&1
	export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -z "$GPU_BENCH" ]; then
	for b in .device/gpu_bench .devbin/gpu_bench target/release/examples/gpu_bench target/core/release/examples/gpu_bench; do
		[ -x "$b" ] && GPU_BENCH=$b && break
	done
fi
if [ -z "${SIGMA_DTYPE:-}" ]; then
	if grep -qE '^\s*F64,' src/core/manifest.rs 2>/dev/null; then SIGMA_DTYPE=f64; else SIGMA_DTYPE=f32; fi
fi
say "layers=$LAYERS chunks=$CHUNKS tiny=$TINY provider=$PROVIDER bench=${GPU_BENCH:-none} sigma=$SIGMA_DTYPE python=$PY"
say "git $(git rev-parse --short HEAD 2>/dev/null) $(git status --porcelain 2>/dev/null | wc -l) files changed; $(nproc) cores"
SMI_PID=
if command -v nvidia-smi >/dev/null; then
	nvidia-smi -L | tee -a "$LOG"
	nvidia-smi --query-gpu=driver_version,memory.total,clocks.max.sm --format=csv | tee -a "$LOG"
	nvidia-smi --query-gpu=timestamp,memory.used,memory.total --format=csv,noheader,nounits -lms 200 >"$OUT/vram.csv" 2>/dev/null &
	SMI_PID=$!
else
	NOTES+=("no nvidia-smi: no VRAM samples")
fi
cleanup() { [ -n "$SMI_PID" ] && kill "$SMI_PID" 2>/dev/null; }
trap cleanup EXIT

# --- 1. reference ---------------------------------------------------------------------------------------
REF_ARGS=(--layers "$LAYERS" --chunks "$CHUNKS" --ttff-reps 2 --save-checkpoint "$WORK/ckpt"
	--embeddings "$WORK/model/embeddings.safetensors" --record "$WORK/record.safetensors" --out "$OUT/reference.json")
[ "$TINY" = 1 ] && REF_ARGS+=(--tiny --ttff-reps 1)
step reference 60 200 "$PY" tools/bench/reference.py "${REF_ARGS[@]}"
REF_RC=$?

# --- 2. export --------------------------------------------------------------------------------------------
EXP_ARGS=(graphs --checkpoint "$WORK/ckpt" --out "$WORK/model" --fused-attention mha --sigma-dtype "$SIGMA_DTYPE"
	--skip vae_encoder_image,vae_encoder_clip --no-optimize-vae --jobs "$JOBS")
if [ "$TINY" = 1 ]; then
	# fp32 on both sides (onnxruntime's CPU provider has no bf16 MatMul/Conv); probe Cholesky = what
	# reference.py falls back to where this CPU cannot factor the covariance.
	EXP_ARGS+=(--dtype fp32 --height 64 --width 64 --text-seq-len 16 --cholesky-source probe --verify full)
else
	# The reference draws its block noise with the CUDA factor; verification = checker + contract I/O (the
	# graphs are run for real by gpu_bench and compared with diffusers' outputs).
	EXP_ARGS+=(--dtype bf16 --cholesky-device cuda --cholesky-source native --verify io --no-share-weights)
fi
EXP_RC=99
if [ $REF_RC -eq 0 ]; then
	step export 90 330 "$PY" tools/export/export.py "${EXP_ARGS[@]}"
	EXP_RC=$?
else
	NOTES+=("export skipped: the reference step failed")
fi
du -sh "$WORK/model" 2>/dev/null | tee -a "$LOG"

# --- 3. Rust bench ----------------------------------------------------------------------------------------
stub() {
	echo "{\"stub\": true, \"reason\": \"$1\"}" >"$2"
}
BENCH_COMMON=(--model "$WORK/model" --provider "$PROVIDER" --loop device --inject-noise "$WORK/record.safetensors")
BENCH=()
if [ -n "$GPU_BENCH" ]; then
	BENCH=("$GPU_BENCH")
elif [ "$TINY" = 1 ]; then
	# Dry run without the Rust build: the Python twin runs the same graph chain with the same CLI and JSON.
	BENCH=("$PY" tools/bench/ort_loop.py)
	say "STUB: no gpu_bench binary; the 'Rust' column is tools/bench/ort_loop.py (onnxruntime Python, same graphs)"
	NOTES+=("dry run: no gpu_bench binary, the bevy_helios column is tools/bench/ort_loop.py (same graph chain in onnxruntime's Python API)")
fi
if [ ${#BENCH[@]} -eq 0 ]; then
	say "STUB: no gpu_bench binary (looked for .device/gpu_bench, .devbin/gpu_bench, target/release/examples/gpu_bench)"
	NOTES+=("Rust side not run: no gpu_bench binary")
	stub "no gpu_bench binary" "$OUT/rust.json"
elif [ $EXP_RC -ne 0 ]; then
	NOTES+=("Rust side not run: the export failed")
	stub "export failed" "$OUT/rust.json"
else
	# Timed stream = the recorded one (amplified first chunk), compared with diffusers; TTFF in both modes
	# (gpu_bench's cold requests: ttff_by_mode_ms).
	step rust 40 150 "${BENCH[@]}" "${BENCH_COMMON[@]}" --chunks "$CHUNKS" --first-chunk amplify --warmup 2 \
		--ttff-reps 2 --compare "$WORK/record.safetensors" --json "$OUT/rust.json" || true
	# Profiled run: synchronous launches so onnxruntime's per-node host times are kernel times.
	step rust_profile 30 90 env CUDA_LAUNCH_BLOCKING=1 "${BENCH[@]}" "${BENCH_COMMON[@]}" --chunks 2 \
		--first-chunk amplify --warmup 1 --ttff-reps 0 --profile "$WORK/prof/ort" --json "$WORK/rust_profile.json" || true
	ls -la "$WORK/prof" >>"$LOG" 2>&1
fi

# --- 4. summary -------------------------------------------------------------------------------------------
cleanup
SMI_PID=
NOTE_ARGS=()
for n in "${NOTES[@]}"; do NOTE_ARGS+=(--note "$n"); done
FFN=13824
[ "$TINY" = 1 ] && FFN=32
timeout 60 "$PY" tools/bench/summarize.py --work "$WORK" --out "$OUT" --ffn-dim $FFN "${NOTE_ARGS[@]}" >>"$LOG" 2>&1 ||
	say "summarize.py failed"
say "done in $(($(date +%s) - T0))s; \$OUT holds: $(ls "$OUT" | tr '\n' ' ')"
# At most 8 files come back, 16 MiB each: keep the log's tail if it grew.
if [ "$(stat -c %s "$LOG")" -gt 15000000 ]; then tail -c 15000000 "$LOG" >"$LOG.t" && mv "$LOG.t" "$LOG"; fi
[ -f "$OUT/summary.md" ] && cat "$OUT/summary.md"
exit 0
