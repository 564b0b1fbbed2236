#!/usr/bin/env bash
# Issue 18's prepared GPU check (one GPU, under 8 minutes); run from the repository root on a GPU machine.
# Records, into $OUT (default ./gpu_check_out):
#   gpu_inference.json   full-width (width 1.0) coarse-to-fine region inference, fp32 and bf16 autocast,
#                        and sliding-window inference (bf16) on 160^3 phantoms: seconds and peak GPU memory
#                        (benchmarks/inference.py --device cuda);
#   gpu_step_cost.json   200 training steps of supervised and the Dual-UNet at full width, 48^3 patches,
#                        2 labelled + 2 unlabelled, bf16 autocast: seconds per step, steps per second and
#                        peak GPU memory (benchmarks/step_cost.py --device cuda);
#   gpu_locate.jsonl     issue 11: `semisupseg locate` with the shipped segmentation locator on 3 phantoms
#                        of 128^3 on the GPU (its `seconds` against the 0.3 s target; 1.5-2.9 s on one CPU thread);
#   gpu_check.log        the GPU's name and memory, versions, and both scripts' tables.
#   gpu_nccl/            with two GPUs or more: a 2-process NCCL Dual-UNet training (`train --nproc 2`,
#                        width 0.5, STEPS steps on 8+4 phantoms of 96^3), its progress lines and model.json
#                        (world_size 2, global batch), against the same run on one GPU (gpu_nccl/one).
# MONAI and SimpleITK come from wheels in .whl/ where the machine lacks them (see gpu_runs.sh).
set -u
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/SemiSupSeg"
if [ -d .whl ] && ! python3 -c "import monai, SimpleITK" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl ||
    exit 1
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-160}
WIDTH=${WIDTH:-1.0}
STEPS=${STEPS:-200}
PATCH=${PATCH:-48}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  python3 -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__)"
} >>"$LOG" 2>&1
timeout 300 python3 benchmarks/inference.py --width "$WIDTH" --size "$SIZE" --cases 3 --sw-cases 1 \
  --variants fp32,bf16 --sw-variants bf16 --device "$DEVICE" --out "$OUT/gpu_inference.json" >>"$LOG" 2>&1
echo "inference exit $?" >>"$LOG"
timeout 180 python3 benchmarks/step_cost.py --width "$WIDTH" --patch "$PATCH" --steps "$STEPS" \
  --methods supervised,dual-unet --device "$DEVICE" --precision bf16 --out "$OUT/gpu_step_cost.json" >>"$LOG" 2>&1
echo "step cost exit $?" >>"$LOG"
L="$OUT/gpu_locate"
python3 -m SemiSupSegLib.cli phantom "$L" --cases 0 --test 3 --size 128 --seed 101 --kind catheter >>"$LOG" 2>&1
for image in "$L"/images/*; do
  timeout 60 python3 -m SemiSupSegLib.cli locate --locator phantom-locator --input "$image" --device "$DEVICE" \
    --json >>"$OUT/gpu_locate.jsonl" 2>>"$LOG"
done
echo "locate exit $? $(grep -o '"seconds": [0-9.]*' "$OUT/gpu_locate.jsonl" | tr '\n' ' ')" >>"$LOG"
if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then
  N="$OUT/gpu_nccl"
  python3 -m SemiSupSegLib.cli phantom "$N/data" --cases 8 --unlabeled 4 --size 96 --seed 5 --workers 8 \
    >>"$LOG" 2>&1
  for run in one:1 two:2; do
    timeout 150 python3 -m SemiSupSegLib.cli train --data "$N/data/dataset.json" --out "$N/${run%%:*}" \
      --method dual-unet --steps "$STEPS" --width 0.5 --batch 2 --val-cases 0 --device cuda --precision bf16 \
      --nproc "${run##*:}" --progress json >"$N/${run%%:*}.jsonl" 2>>"$LOG"
    echo "nccl ${run%%:*} exit $? $(grep -o '"seconds_per_step": [0-9.]*' "$N/${run%%:*}/model.json")" >>"$LOG"
  done
fi
tail -n 40 "$LOG"
