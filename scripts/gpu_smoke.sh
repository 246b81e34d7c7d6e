#!/usr/bin/env bash
# GPU smoke test: under 10 minutes on a machine with one or more CUDA GPUs.
#
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" make install
#   .venv/bin/pip install -e ".[gpu]"        # optional: flash-attn (SDPA is used without it)
#   bash scripts/gpu_smoke.sh                # CUDA_VISIBLE_DEVICES=0 bash scripts/gpu_smoke.sh: one GPU only
#
# Stages, each under its own time limit (a table at the end; exit status 1 if any failed):
#   1. gpu tests   pytest -m gpu: SDPA / flash-attn / auto attention and FlexAttention block masks
#                  equal a dense boolean mask (a skipped GPU test counts as a failure here)
#   2. bf16 train  model=small (GPT-2 small size, ~85M parameters) for 50 steps in bf16-mixed on one
#                  GPU with flash-attn when it is installed and SDPA otherwise; prints tokens/s
#   3. fsdp        the same on every visible GPU with trainer=fsdp (FULL_SHARD), when there are >= 2
# Runs go to $SMOKE_DIR (default runs/gpu_smoke, emptied first). Offline: the data is the embedded
# pydoc corpus with the character tokenizer.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
BIN=$(dirname "$PY")
OUT=${SMOKE_DIR:-runs/gpu_smoke}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline
rm -rf "$OUT" && mkdir -p "$OUT"

NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)") || NGPU=0
if [ "$NGPU" -lt 1 ]; then
  echo "gpu_smoke: no CUDA device visible to $PY (torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null));" \
       "install a CUDA torch: TORCH_SPEC=\"torch==2.13.0 --index-url <CUDA wheel index>\" make install" >&2
  exit 1
fi
if "$PY" -c "import flash_attn" 2>/dev/null; then ATTN=flash; else ATTN=sdpa; fi
"$PY" - <<'EOF'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, "
      f"bf16 supported: {torch.cuda.is_bf16_supported()}")
EOF
echo "attention backend for training: $ATTN"

declare -a NAMES RESULTS
record() { NAMES+=("$1"); RESULTS+=("$2"); echo "== $1: $2"; }

# -- 1. GPU-marked tests ----------------------------------------------------------------------------
echo "== gpu tests (pytest -m gpu)"
timeout -k 10 180 "$PY" -m pytest tests/unit -m gpu -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/pytest_gpu.log"
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ]; then
  record "gpu tests" "FAIL (exit $status; $OUT/pytest_gpu.log)"
elif grep -q "SKIPPED" "$OUT/pytest_gpu.log"; then
  record "gpu tests" "FAIL (a GPU test was skipped on a GPU machine; $OUT/pytest_gpu.log)"
else
  record "gpu tests" "PASS ($(grep -Eo '[0-9]+ passed' "$OUT/pytest_gpu.log" | tail -1))"
fi

# -- 2./3. bf16 training of the small preset -----------------------------------------------------------
TRAIN=(model=small "model.attn_backend=$ATTN" data=pydoc tokenizer=char data.seq_len=512 batch_size=32
       trainer.precision=bf16-mixed trainer.max_steps=50 trainer.val_check_interval=50 trainer.limit_val_batches=4
       trainer.log_every_n_steps=10 trainer.enable_progress_bar=false optim.warmup_steps=10)

# summary.json is written by global rank 0 only (every rank prints its own JSON line on stdout)
summarise() {
  "$PY" - "$1/summary.json" <<'EOF'
import json, math, sys
s = json.load(open(sys.argv[1]))
assert s["step"] == 50, f"stopped at step {s['step']}, not 50"
assert math.isfinite(s["train/loss"]) and math.isfinite(s["val/nll"]), s
print(f"step {s['step']}, train/loss {s['train/loss']:.3f}, val/nll {s['val/nll']:.3f}, "
      f"tokens/s {s['train/tokens_per_s']:,.0f}")
EOF
}

train_stage() {  # name, seconds, run dir, overrides...
  local name=$1 limit=$2 dir=$3; shift 3
  echo "== $name: dlm-train ${TRAIN[*]} $*"
  local start=$SECONDS
  timeout -k 20 "$limit" "$BIN/dlm-train" "${TRAIN[@]}" "run_dir=$dir" "$@" >"$dir.log" 2>&1
  local status=$?
  if [ "$status" -ne 0 ]; then
    tail -n 25 "$dir.log"
    record "$name" "FAIL (exit $status$([ "$status" -eq 124 ] && echo ": over ${limit}s"); $dir.log)"
  elif line=$(summarise "$dir" 2>&1); then
    record "$name" "PASS ($line; $((SECONDS - start)) s wall)"
  else
    record "$name" "FAIL (${line##*$'\n'})"  # the assertion's last line
  fi
}

train_stage "bf16 train, 1 GPU, $ATTN" 240 "$OUT/single" trainer=gpu trainer.devices=1
if [ "$NGPU" -ge 2 ]; then
  train_stage "fsdp, $NGPU GPUs, $ATTN" 240 "$OUT/fsdp" trainer=fsdp "trainer.devices=$NGPU"
else
  record "fsdp" "SKIP (one GPU visible)"
fi

echo
echo "gpu smoke summary ($SECONDS s):"
failed=0
for i in "${!NAMES[@]}"; do
  printf '  %-28s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}"
  case "${RESULTS[$i]}" in FAIL*) failed=1 ;; esac
done
exit $failed
