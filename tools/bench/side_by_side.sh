#!/usr/bin/env bash
# Side-by-side benchmark, diffusers 0.42.1 HeliosPyramidPipeline vs bevy_helios' Rust runtime (ORT CUDA), in
# ONE device command (<= 600 s). See tools/bench/README.md for the device recipe and what each step writes.
#
#   1. reference.py  random weights, real Helios-Distilled dims, LAYERS blocks; timed per chunk after a warm-up;
#                    saves the checkpoint, the prompt bank and the recorded draws/outputs (untimed replay)
#   2. export.py     that checkpoint on the CPU: bf16 denoisers with fused attention, helper graphs, manifest
#                    (--fused: the fused export, --fused-kernels: denoisers of com.helios operators + fused VAE
#                    decoder; with direct weights the reference writes the denoisers' weights file itself and
#                    the export only builds the graphs around it)
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
# (PROVIDER, cuda; cpu with --tiny), --bench PATH (GPU_BENCH: the helios-tools binary, run as
# `PATH gpu-bench`; default .device/helios-tools, else .devbin/helios-tools, else target/release/helios-tools; with --tiny and none of them: tools/bench/ort_loop.py, the Python
# twin), --work DIR (WORK, /tmp/sbs), --budget S (BUDGET_S, 570 s for everything; tiny 1500), --jobs N (JOBS,
# export processes, 8; tiny 2), SIGMA_DTYPE (f64 if src/core/manifest.rs knows F64, else f32),
# --fused (FUSED=1): export with --fused-kernels (fused denoisers + fused VAE decoder; gpu_bench required, the
# Python twin cannot run com.helios operators),
# --direct-weights / --no-direct-weights (DIRECT_WEIGHTS=1/0; default: on with --fused when LAYERS >= 10): the
# transformer's weights go to disk once: reference.py --save-fused-weights writes them in the fused layout and a
# checkpoint without them, export.py --fused-weights moves that file into the model (at 40 layers a 28.6 GB
# diffusers checkpoint plus our own 28.6 GB copy would not fit the device's 64 GB disk). Needs --fused.
# Full 14B model measured directly (no extrapolation): --fused --layers 40 (direct weights, no profiled run
# unless the budget allows; take the profile from a 4-layer run).
#
# Exit status: 0 when reference, export, the timed gpu_bench run and the summary succeeded; 1 when any of them
# failed or was skipped (the summary is still written with what there is); 2 for bad options.
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
FUSED=${FUSED:-0}
DIRECT_WEIGHTS=${DIRECT_WEIGHTS:-auto}
while [ $# -gt 0 ]; do
	case $1 in
	-h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
	--tiny) TINY=1 ;;
	--fused) FUSED=1 ;;
	--direct-weights) DIRECT_WEIGHTS=1 ;;
	--no-direct-weights) DIRECT_WEIGHTS=0 ;;
	--layers) LAYERS=$2; shift ;;
	--chunks) CHUNKS=$2; shift ;;
	--provider) PROVIDER=$2; shift ;;
	--bench) GPU_BENCH=$2; shift ;;
	--work) WORK=$2; shift ;;
	--budget) BUDGET_S=$2; shift ;;
	--jobs) JOBS=$2; shift ;;
	*) echo "side_by_side: unknown option $1 (--help lists them)" >&2; exit 2 ;;
	esac
	shift
done
OUT=${OUT:-$WORK/out}
if [ "$TINY" = 1 ]; then
	LAYERS=${LAYERS:-2} JOBS=${JOBS:-2} BUDGET_S=${BUDGET_S:-1500}
else
	LAYERS=${LAYERS:-4} JOBS=${JOBS:-8} BUDGET_S=${BUDGET_S:-570}
fi
case $LAYERS in '' | *[!0-9]*) echo "side_by_side: --layers wants a number, not '$LAYERS'" >&2; exit 2 ;; esac
if [ "$DIRECT_WEIGHTS" = auto ]; then
	# From 10 layers on (7 GB of weights per copy) writing them once matters; at 40 it is the only way to fit.
	if [ "$FUSED" = 1 ] && [ "$LAYERS" -ge 10 ]; then DIRECT_WEIGHTS=1; else DIRECT_WEIGHTS=0; fi
fi
if [ "$DIRECT_WEIGHTS" = 1 ] && [ "$FUSED" != 1 ]; then
	echo "side_by_side: --direct-weights needs --fused (the traced export reads the weights from the checkpoint)" >&2
	exit 2
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

FAILED=()
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
	for b in .device/helios-tools .devbin/helios-tools target/release/helios-tools target/core/release/helios-tools; do
		[ -x "$b" ] && GPU_BENCH=$b && break
	done
fi
if [ -z "${SIGMA_DTYPE:-}" ]; then
	if grep -qE '^\s*F64,' src/core/manifest.rs 2>/dev/null; then SIGMA_DTYPE=f64; else SIGMA_DTYPE=f32; fi
fi
say "layers=$LAYERS chunks=$CHUNKS tiny=$TINY fused=$FUSED direct_weights=$DIRECT_WEIGHTS provider=$PROVIDER bench=${GPU_BENCH:-none} sigma=$SIGMA_DTYPE python=$PY budget=${BUDGET_S}s"
if [ "$LAYERS" -ge 10 ] && [ "$FUSED" != 1 ]; then
	say "WARNING: $LAYERS layers without --fused: the traced export needs the checkpoint's weights plus one ONNX copy per stage (at 40 layers neither the disk nor the time allows it)"
	NOTES+=("$LAYERS layers without --fused: the traced export path (weights written twice or more)")
fi
df -h "$WORK" 2>/dev/null | tee -a "$LOG"
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

# --- step limits (seconds): NEED = least budget left to start the step, MAX = its timeout -----------------
# Default (4 layers, H100, last run tools/bench/results/sbs_h100/log.txt): reference 53 s, export 123 s,
# gpu_bench 31 s + 23 s profiled.
REF_NEED=60 REF_MAX=200 EXP_NEED=90 EXP_MAX=330 RUST_NEED=40 RUST_MAX=150 PROF_NEED=30 PROF_MAX=90
if [ "$LAYERS" -ge 10 ] && [ "$TINY" != 1 ]; then
	# 40 layers (README "The full model"): reference ~80 s (the H200 40-layer run's chunk times, results/
	# reference_L40.log: warm-up, timed, TTFF and recorded calls ~55 s, + start-up ~25 s) + the 28.7 GB weights
	# write (0.35-1.5 GB/s: 20-80 s) -> 100-215 s; export: the fused denoisers build in seconds (2.6 s for
	# all three at 40 layers on 2 CPU cores), the VAE decoder in its own process dominates (70 s at 4 layers) ->
	# ~90 s; gpu_bench: reading 28.7 GB back and uploading it + session creation (25-45 s), then 2 warm-up, 3 timed
	# chunks and 4 TTFF requests (~60 s) -> ~100 s. The profiled run (session creation again, slower chunks) only
	# if 150 s are left: the 4-layer run gives the profile.
	REF_NEED=120 REF_MAX=330 EXP_NEED=60 EXP_MAX=200 RUST_NEED=90 RUST_MAX=240 PROF_NEED=150 PROF_MAX=150
fi

# --- 1. reference ---------------------------------------------------------------------------------------
REF_ARGS=(--layers "$LAYERS" --chunks "$CHUNKS" --ttff-reps 2 --save-checkpoint "$WORK/ckpt"
	--embeddings "$WORK/model/embeddings.safetensors" --record "$WORK/record.safetensors" --out "$OUT/reference.json")
[ "$TINY" = 1 ] && REF_ARGS+=(--tiny --ttff-reps 1)
FUSED_WEIGHTS=$WORK/denoiser_weights.safetensors
# Direct weights: the checkpoint gets no transformer weights; they are written once, in the fused layout, after
# the timed calls (reference.py --save-fused-weights), and export.py moves that file into the model.
[ "$DIRECT_WEIGHTS" = 1 ] && REF_ARGS+=(--save-fused-weights "$FUSED_WEIGHTS")
step reference "$REF_NEED" "$REF_MAX" "$PY" tools/bench/reference.py "${REF_ARGS[@]}"
REF_RC=$?
[ $REF_RC -ne 0 ] && FAILED+=(reference)
du -sh "$WORK/ckpt" 2>/dev/null | tee -a "$LOG"
[ "$DIRECT_WEIGHTS" = 1 ] && ls -l "$FUSED_WEIGHTS" 2>&1 | tee -a "$LOG"

# --- 2. export --------------------------------------------------------------------------------------------
EXP_ARGS=(graphs --checkpoint "$WORK/ckpt" --out "$WORK/model" --sigma-dtype "$SIGMA_DTYPE"
	--skip vae_encoder_image,vae_encoder_clip --no-optimize-vae --jobs "$JOBS")
if [ "$FUSED" = 1 ]; then
	# Denoisers written by fused_graph.py (com.helios operators, one shared weights file) + the fused VAE decoder.
	EXP_ARGS+=(--fused-kernels)
	[ "$DIRECT_WEIGHTS" = 1 ] && EXP_ARGS+=(--fused-weights "$FUSED_WEIGHTS")
else
	EXP_ARGS+=(--fused-attention mha)
fi
if [ "$TINY" = 1 ]; then
	# fp32 on both sides (onnxruntime's CPU provider has no bf16 MatMul/Conv); probe Cholesky = what
	# reference.py falls back to where this CPU cannot factor the covariance.
	EXP_ARGS+=(--dtype fp32 --height 64 --width 64 --text-seq-len 16 --cholesky-source probe --verify full)
else
	# The reference draws its block noise with the CUDA factor; verification = checker + contract I/O (the
	# graphs are run for real by gpu_bench and compared with diffusers' outputs).
	EXP_ARGS+=(--dtype bf16 --cholesky-device cuda --cholesky-source native --verify io)
	[ "$FUSED" != 1 ] && EXP_ARGS+=(--no-share-weights)
fi
EXP_RC=99
if [ $REF_RC -eq 0 ]; then
	step export "$EXP_NEED" "$EXP_MAX" "$PY" tools/export/export.py "${EXP_ARGS[@]}"
	EXP_RC=$?
else
	NOTES+=("export skipped: the reference step failed")
fi
[ $EXP_RC -ne 0 ] && FAILED+=(export)
# The model as gpu_bench reads it (summarize.py reports the same from $WORK/model).
if [ -d "$WORK/model" ]; then
	say "model on disk: $(du -sb "$WORK/model" | cut -f1) bytes in $(find "$WORK/model" -type f | wc -l) files" \
		"($(du -sh "$WORK/model" | cut -f1)); largest: $(ls -S "$WORK/model" | head -n 3 | tr '\n' ' ')"
	ls -l "$WORK/model" >>"$LOG" 2>&1
fi
df -h "$WORK" 2>/dev/null | tee -a "$LOG"

# --- 3. Rust bench ----------------------------------------------------------------------------------------
stub() {
	echo "{\"stub\": true, \"reason\": \"$1\"}" >"$2"
}
BENCH_COMMON=(--model "$WORK/model" --provider "$PROVIDER" --loop device --inject-noise "$WORK/record.safetensors")
BENCH=()
if [ -n "$GPU_BENCH" ]; then
	BENCH=("$GPU_BENCH" gpu-bench)
elif [ "$FUSED" = 1 ]; then
	say "no gpu_bench binary: the fused export (com.helios operators) runs only in the Rust runtime"
	NOTES+=("--fused without a gpu_bench binary: tools/bench/ort_loop.py cannot run com.helios operators")
elif [ "$TINY" = 1 ]; then
	# Dry run without the Rust build: the Python twin runs the same graph chain with the same CLI and JSON.
	BENCH=("$PY" tools/bench/ort_loop.py)
	say "STUB: no gpu_bench binary; the 'Rust' column is tools/bench/ort_loop.py (onnxruntime Python, same graphs)"
	NOTES+=("dry run: no gpu_bench binary, the bevy_helios column is tools/bench/ort_loop.py (same graph chain in onnxruntime's Python API)")
fi
if [ ${#BENCH[@]} -eq 0 ]; then
	say "STUB: no gpu_bench binary (looked for .device/helios-tools, .devbin/helios-tools, target/release/helios-tools, target/core/release/helios-tools)"
	NOTES+=("Rust side not run: no gpu_bench binary")
	stub "no gpu_bench binary" "$OUT/rust.json"
	FAILED+=(rust)
elif [ $EXP_RC -ne 0 ]; then
	NOTES+=("Rust side not run: the export failed")
	stub "export failed" "$OUT/rust.json"
	FAILED+=(rust)
else
	# Timed stream = the recorded one (amplified first chunk), compared with diffusers; TTFF in both modes
	# (gpu_bench's cold requests: ttff_by_mode_ms).
	step rust "$RUST_NEED" "$RUST_MAX" "${BENCH[@]}" "${BENCH_COMMON[@]}" --chunks "$CHUNKS" --first-chunk amplify \
		--warmup 2 --ttff-reps 2 --compare "$WORK/record.safetensors" --json "$OUT/rust.json"
	RUST_RC=$?
	[ $RUST_RC -ne 0 ] && FAILED+=(rust)
	# shared_weight_bytes: the weights gpu_bench put in device memory once for the three stage sessions (null
	# without shared weights).
	[ -f "$OUT/rust.json" ] && say "gpu_bench: $("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(", ".join(f"{k}={d.get(k)}" for k in ("session_create_ms","shared_weight_bytes","steady_chunk_ms","generated_fps")))' "$OUT/rust.json" 2>&1)"
	# Profiled run: synchronous launches so onnxruntime's per-node host times are kernel times. Not fatal: the
	# summary only loses the where-the-time-goes table.
	step rust_profile "$PROF_NEED" "$PROF_MAX" env CUDA_LAUNCH_BLOCKING=1 "${BENCH[@]}" "${BENCH_COMMON[@]}" \
		--chunks 2 --first-chunk amplify --warmup 1 --ttff-reps 0 --profile "$WORK/prof/ort" \
		--json "$WORK/rust_profile.json" || true
	ls -la "$WORK/prof" >>"$LOG" 2>&1
fi

# --- 4. summary -------------------------------------------------------------------------------------------
cleanup
SMI_PID=
NOTE_ARGS=()
for n in "${NOTES[@]}"; do NOTE_ARGS+=(--note "$n"); done
FFN=13824
[ "$TINY" = 1 ] && FFN=32
# The device command's hard limit is 600 s: the summary gets what the 570 s budget left plus the 30 s margin
# (it takes ~5 s), at least 10 s, at most 60 s.
SUM_T=$((BUDGET_S + 25 - ($(date +%s) - T0)))
[ "$SUM_T" -gt 60 ] && SUM_T=60
[ "$SUM_T" -lt 10 ] && SUM_T=10
if ! timeout "$SUM_T" "$PY" tools/bench/summarize.py --work "$WORK" --out "$OUT" --ffn-dim $FFN "${NOTE_ARGS[@]}" >>"$LOG" 2>&1; then
	say "summarize.py failed (timeout ${SUM_T}s)"
	FAILED+=(summary)
fi
say "done in $(($(date +%s) - T0))s; \$OUT holds: $(ls "$OUT" | tr '\n' ' ')"
[ ${#FAILED[@]} -gt 0 ] && say "FAILED: ${FAILED[*]}"
# At most 8 files come back, 16 MiB each: keep the log's tail if it grew.
if [ "$(stat -c %s "$LOG")" -gt 15000000 ]; then tail -c 15000000 "$LOG" >"$LOG.t" && mv "$LOG.t" "$LOG"; fi
[ -f "$OUT/summary.md" ] && cat "$OUT/summary.md"
[ ${#FAILED[@]} -eq 0 ]
