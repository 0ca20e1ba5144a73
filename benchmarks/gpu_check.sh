#!/usr/bin/env bash
# The prepared GPU check: environment, both benchmarks, the GPU tests and a study smoke run, each step under its own
# wall-clock limit, then one JSON of everything.
#
#   bash benchmarks/gpu_check.sh [--device cuda] [--tiny] [--out DIR]
#
#   --device DEV  torch device (default cuda); on CUDA bench_denoiser runs in fp32, then in bf16
#   --tiny        the dry mode (CI, with --device cpu: well under a minute): the benchmarks' smallest settings, one
#                 repetition, a miniature study
#   --out DIR     where everything goes (default runs/gpu_check in the repository); a folder an earlier check made
#                 is reused, its outputs removed first; any other non-empty folder is refused
#
# Installs nothing: the README's set-up is assumed done (the venv active, or $PYTHON / `python` on PATH the right
# interpreter). Full mode has a budget of 7m45s (README: the GPU check): every step's limit is
# cut to what is left of that budget, so a step that hangs or overruns is killed, recorded as failed (rc 124), and
# the check goes on. Steps, each logged to DIR/<step>.log as well as to the terminal:
#
#   env                      torch, CUDA, the device's name, nvidia-smi if present        -> DIR/env.json
#   bench_denoiser_fp32      benchmarks/bench_denoiser.py (CUDA: --peak-tflops from a table by device name)
#                                                                                          -> DIR/bench_denoiser.json
#   bench_denoiser_bf16      the same in bf16 autocast (CUDA only)                    -> DIR/bench_denoiser_bf16.json
#   bench_features           benchmarks/bench_features.py                              -> DIR/bench_features.json
#   pytest_gpu               pytest -m gpu tests/test_gpu.py (all skip without CUDA)   -> DIR/pytest_gpu.xml
#   study                    diffprobe study, cut to a smoke run (full: the small preset; tiny: the tiny preset on a
#                            48-clip world)                                           -> DIR/study/
#
# Finally benchmarks/gpu_check_summary.py writes DIR/gpu_check.json (atomically) and prints a summary table; the
# script exits non-zero if any step failed.
set -euo pipefail

DEVICE=cuda
MODE=full
OUT=""
while (($#)); do
  case "$1" in
    --device) DEVICE=${2:?--device needs a value}; shift 2 ;;
    --device=*) DEVICE=${1#*=}; shift ;;
    --tiny) MODE=tiny; shift ;;
    --out) OUT=${2:?--out needs a value}; shift 2 ;;
    --out=*) OUT=${1#*=}; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python}
OUT=${OUT:-$ROOT/runs/gpu_check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [[ -n "$(ls -A "$OUT")" && ! -e "$OUT/.gpu_check" ]]; then
  echo "gpu_check.sh: $OUT is not empty and was not made by gpu_check.sh; give another --out" >&2
  exit 2
fi
# A fresh check: an earlier check's outputs go (its study would otherwise resume, and measure nothing).
rm -rf "$OUT/study" "$OUT"/*.log "$OUT"/*.json "$OUT"/*.xml "$OUT/steps.tsv"
touch "$OUT/.gpu_check"
cd "$ROOT"

if [[ $MODE == tiny ]]; then
  BUDGET=240  # seconds for the whole check (the CI test waits 300)
  LIMIT_ENV=60 LIMIT_DENOISER=90 LIMIT_FEATURES=90 LIMIT_PYTEST=90 LIMIT_STUDY=150
else
  BUDGET=465  # 7m45s: under 8 minutes whatever hangs
  LIMIT_ENV=60 LIMIT_DENOISER=120 LIMIT_FEATURES=150 LIMIT_PYTEST=180 LIMIT_STUDY=300
fi
RESERVE=30  # seconds kept for the summary
STARTED=$(date +%s.%N)
STEPS="$OUT/steps.tsv"
FAILED=0

quote() {  # the arguments as one shell-quoted line (what the JSON records as a step's command)
  local line="" arg
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
      line+="$arg "
    else
      line+="'${arg//\'/\'\\\'\'}' "
    fi
  done
  printf '%s' "${line% }"
}

run_step() {  # NAME LIMIT_S COMMAND...: COMMAND under `timeout`, its output to the terminal and to DIR/NAME.log
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - RESERVE - SECONDS)) cmd start end rc
  if ((limit > left)); then
    limit=$((left > 0 ? left : 0))
  fi
  cmd=$(quote "$@")
  start=$(date +%s.%N)
  echo "== [$name] $cmd  (limit ${limit} s)"
  if ((limit < 5)); then  # what is left of the budget is too little to start a step
    echo "not run: the check's time budget of $BUDGET s is spent" | tee "$OUT/$name.log"
    rc=124
  else
    set +e
    timeout --kill-after=10 "$limit" "$@" </dev/null 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
  fi
  end=$(date +%s.%N)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$start" "$end" "$limit" "$cmd" >>"$STEPS"
  if ((rc == 124 || rc == 137)); then
    FAILED=1
    echo "== [$name] FAILED (rc $rc: timed out after $limit s)"
  elif ((rc != 0)); then
    FAILED=1
    echo "== [$name] FAILED (rc $rc)"
  fi
}

# 1. environment
run_step env "$LIMIT_ENV" "$PYTHON" benchmarks/gpu_check_summary.py env --device "$DEVICE" --out "$OUT/env.json"

# 2. training step of WALT vs Latte vs CogVideoX: fp32, and on CUDA bf16 too
DTYPES=(fp32)
if [[ ${DEVICE%%:*} == cuda ]]; then
  DTYPES=(fp32 bf16)
fi
for dtype in "${DTYPES[@]}"; do
  json=bench_denoiser.json
  if [[ $dtype != fp32 ]]; then
    json=bench_denoiser_$dtype.json
  fi
  args=(--device "$DEVICE" --dtype "$dtype" --out "$OUT/$json")
  if [[ $MODE == tiny ]]; then
    args+=(--settings "tiny clip (80 tokens)" --repeats 1)
  else
    args+=(--repeats 5)
  fi
  if [[ ${DEVICE%%:*} == cuda ]]; then  # the device's dense peak from the table; unknown device: measured
    peak=$("$PYTHON" benchmarks/gpu_check_summary.py peak --env "$OUT/env.json" --dtype "$dtype" || true)
    if [[ -n $peak ]]; then
      args+=(--peak-tflops "$peak")
    fi
  fi
  run_step "bench_denoiser_$dtype" "$LIMIT_DENOISER" "$PYTHON" benchmarks/bench_denoiser.py "${args[@]}"
done

# 3. extraction throughput, cached vs recomputed probe steps, probe banks
args=(--device "$DEVICE" --out "$OUT/bench_features.json")
if [[ $MODE == tiny ]]; then
  args+=(--tiny --repeats 1)
fi
run_step bench_features "$LIMIT_FEATURES" "$PYTHON" benchmarks/bench_features.py "${args[@]}"

# 4. the GPU tests (each skips, saying why, without CUDA)
run_step pytest_gpu "$LIMIT_PYTEST" "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py \
  --junitxml "$OUT/pytest_gpu.xml"

# 5. a study smoke run: every stage, on little data and few steps
if [[ $MODE == tiny ]]; then
  PRESET=tiny
  STUDY_SET=(  # a 48-clip tiny world and a few steps of everything (tests/test_study.py's MINI, one probe seed)
    "dataset=probeworld:tiny@train_size=48,val_size=16,test_size=16,num_tracks=16"
    tokenizer.train.steps=3 tokenizer.stats_clips=16
    twin.train.steps=4 twin.train.ckpt_every=2 "twin.train.keep_steps=[2]" "budget_steps=[2]" twin.model.depth=2
    block=2 "block_sweep=[1,2]" "noise_sweep=[0,200]" "sizes={}"
    feature_net.train.steps=2 feature_net.calibration_clips=16
    probe.steps=3 probe.eval_batch_size=16 'probe_clips={"train": 32, "val": 16, "test": 16}' "probe_seeds=[0]"
    'sweep_tasks=["action"]' generation_samples=8 sampling_steps=2 pca_clips=1
  )
else
  PRESET=small
  STUDY_SET=(  # the small world (64x64, 17 frames) cut to 768 clips; walt-S twins of 400 steps (a checkpoint at 200
    # for the training-budget analysis); 100-step probes on 256 training clips; one probe seed; sweeps on action
    "dataset=probeworld:small@train_size=512,val_size=128,test_size=128,num_tracks=32"
    tokenizer.train.steps=200 tokenizer.train.warmup_steps=20 tokenizer.train.ckpt_every=200
    tokenizer.stats_clips=128
    twin.train.steps=400 twin.train.warmup_steps=40 twin.train.ema_decay=0.99 twin.train.ema_start=40
    twin.train.ckpt_every=200 "twin.train.keep_steps=[200]" twin.train.keep_every=0 "budget_steps=[200]" "sizes={}"
    feature_net.train.steps=100 feature_net.train.warmup_steps=10 feature_net.train.ckpt_every=100
    feature_net.calibration_clips=128
    probe.steps=100 probe.warmup_steps=10 probe.eval_every=50
    'probe_clips={"train": 256, "val": 64, "test": 128}' "probe_seeds=[0]"
    'sweep_tasks=["action"]' "noise_sweep=[0,200]" "block_sweep=[4,8]"
    generation_samples=32 sampling_steps=10 pca_clips=1
  )
fi
args=(--preset "$PRESET" --out "$OUT/study" --no-report --set "device=$DEVICE")
for assignment in "${STUDY_SET[@]}"; do
  args+=(--set "$assignment")
done
run_step study "$LIMIT_STUDY" "$PYTHON" -m diffprobe.cli study "${args[@]}"

# 6. one JSON of everything, and the summary table
set +e
timeout --kill-after=5 "$RESERVE" "$PYTHON" benchmarks/gpu_check_summary.py summary --out "$OUT" --mode "$MODE" \
  --device "$DEVICE" --started "$STARTED" </dev/null
rc=$?
set -e
if ((rc != 0 && FAILED == 0)); then
  echo "gpu_check.sh: the summary failed (rc $rc); $OUT/gpu_check.json may be missing" >&2
  FAILED=1
fi
exit "$FAILED"
