#!/usr/bin/env bash
# The prepared GPU session for issues 12, 13 and 19 (run from the repository root on a GPU machine).
#
# Four branches run side by side, each bounded so that the script ends within BUDGET seconds
# (default 530) and whatever finished comes back under $OUT (at most 8 files):
#   A. issue 12: render 32 catheter + 32 guide-wire phantoms of profile "random" (128^3), retrain the
#      shipped model on them (supervised Compact-UNet width 0.25, batch 4, 3000 steps, bf16, patches cut
#      by 6 loader workers), then measure it on every named profile (benchmarks/region_vs_window.py,
#      region from the true centre and sliding window) -> model/, train.jsonl, cross_new.json;
#      a stopped training leaves its checkpoint in model/ to resume elsewhere.
#   B. issue 13: the new-scanner SSL benchmark (benchmarks/ssl_domain_shift.py: default -> cluttered,
#      B labels 2 and 0, 3 seeds, 9 runs at a time) -> ssl_domain_shift.json.
#   C. issue 12: the old shipped model on the same profiles -> cross_old.json.
#   D. issue 19: "suggest the next case" vs random picks (benchmarks/active_learning.py: random-profile
#      catheters of 96^3, 2 start labels, pool of 12, k = 2, arms init/start-only/random/suggested/
#      least-doubted, 300 steps, 3 seeds, 7 runs at a time) -> active_learning.json (the 8th file back).
# A machine without MONAI/SimpleITK gets them from wheels in .whl/ (see the device README).
# Smaller settings for a dry run on a CPU: SIZE=48 CASES=2 STEPS=3 DS_STEPS=2 AL_SIZE=48 AL_STEPS=2 ...
# (the variables below).
set -u
OUT=${OUT:-$PWD/gpu_out}
W=${W:-/tmp/semisupseg_gpu}
BUDGET=${BUDGET:-530}
SIZE=${SIZE:-128}
CASES=${CASES:-32}
STEPS=${STEPS:-3000}
LOADERS=${LOADERS:-6}
VAL=${VAL:-8}
DS_STEPS=${DS_STEPS:-500}
DS_SEEDS=${DS_SEEDS:-0,1,2}
DS_JOBS=${DS_JOBS:-9}
# issue 13's rows; the crln and voxel-adversarial rows (issue 16) need a second call with DS_ARGS="--rows ..."
DS_ARGS=${DS_ARGS:---rows source-only,supervised-B,supervised-A+B,mean-teacher,ua-mt,dual-unet}
XP_CASES=${XP_CASES:-3}
AL_SIZE=${AL_SIZE:-96}
AL_STEPS=${AL_STEPS:-300}
AL_SEEDS=${AL_SEEDS:-0,1,2}
AL_JOBS=${AL_JOBS:-7}
AL_ARGS=${AL_ARGS:-}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT" "$W"
start=$(date +%s)
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 PYTHONPATH="$PWD/SemiSupSeg"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl ||
    exit 1
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
left() { echo $((BUDGET - ($(date +%s) - start))); }
log() { echo "[$(($(date +%s) - start)) s] $*" | tee -a "$W/log.txt"; }
S() { python3 -m SemiSupSegLib.cli "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$W/log.txt"
python3 -c "import torch, monai, SimpleITK as s; print('torch', torch.__version__, 'monai', monai.__version__,
'sitk', s.Version_VersionString(), 'cuda', torch.cuda.is_available(), 'cpus', __import__('os').cpu_count())" \
  >>"$W/log.txt" 2>&1 || { tail -n 5 "$W/log.txt"; exit 1; }
tail -n 1 "$W/log.txt"
XP=(python3 benchmarks/region_vs_window.py --profiles default fine coarse cluttered --sizes "$SIZE"
  --kinds catheter guidewire --cases "$XP_CASES" --layouts shipped window --device "$DEVICE" --threads 1)

branch_a() {
  S phantom "$W/cat" --cases "$CASES" --seed 303 --kind catheter --size "$SIZE" --profile random --workers 4 &
  S phantom "$W/gw" --cases "$CASES" --seed 304 --kind guidewire --size "$SIZE" --profile random --workers 4 &
  wait
  python3 tools/merge_datasets.py "$W/instruments.json" "$W/cat/dataset.json" "$W/gw/dataset.json" || return
  log "A: data ready"
  timeout $(($(left) - 200)) python3 -m SemiSupSegLib.cli train --data "$W/instruments.json" \
    --method supervised --out "$W/model" --name phantom-catheter \
    --description "Demo model: supervised Compact-UNet (width 0.25) on $((2 * CASES)) phantom catheters and guide-wires of random scanner profiles" \
    --width 0.25 --dropout 0.2 --batch 4 --lr 1e-3 --steps "$STEPS" --val-cases "$VAL" --val-every 1000 \
    --checkpoint-every 250 --seed 0 --precision bf16 --device "$DEVICE" --loader-workers "$LOADERS" \
    --progress json >"$W/train.jsonl" 2>"$W/train.err"
  log "A: training exit $?"
  cp -r "$W/model" "$OUT/model" 2>/dev/null
  [ -f "$W/model/weights.pt" ] || return
  timeout $(($(left) - 10)) "${XP[@]}" --model "$W/model" --out "$OUT/cross_new.json" >"$W/cross_new.log" 2>&1
  log "A: cross-profile (new model) exit $?"
}

branch_b() {
  # shellcheck disable=SC2086
  timeout $(($(left) - 15)) python3 benchmarks/ssl_domain_shift.py --out "$W/ds" \
    --json "$OUT/ssl_domain_shift.json" --size "$SIZE" --steps "$DS_STEPS" --seeds "$DS_SEEDS" \
    --jobs "$DS_JOBS" --workers 4 --device "$DEVICE" --precision bf16 $DS_ARGS >"$W/ds.log" 2>&1
  log "B: domain shift exit $?"
}

branch_c() {
  timeout $(($(left) - 10)) "${XP[@]}" --model SemiSupSeg/SemiSupSegLib/pretrained/phantom-catheter \
    --out "$OUT/cross_old.json" >"$W/cross_old.log" 2>&1
  log "C: cross-profile (old model) exit $?"
}

branch_d() {
  # shellcheck disable=SC2086
  timeout $(($(left) - 15)) python3 benchmarks/active_learning.py --out "$W/al" \
    --json "$OUT/active_learning.json" --size "$AL_SIZE" --steps "$AL_STEPS" --seeds "$AL_SEEDS" \
    --jobs "$AL_JOBS" --workers 4 --device "$DEVICE" --precision bf16 $AL_ARGS >"$W/al.log" 2>&1
  log "D: active learning exit $?"
}

branch_a &
branch_b &
branch_c &
branch_d &
wait
log "all branches done"
tail -n 5 "$W/train.jsonl" >>"$W/log.txt" 2>/dev/null
for f in train.err ds.log al.log cross_old.log cross_new.log; do
  { echo "== $f"; tail -n 40 "$W/$f"; } >>"$W/log.txt" 2>/dev/null
done
cp "$W/train.jsonl" "$OUT/" 2>/dev/null
cp "$W/log.txt" "$OUT/log.txt"
tail -n 60 "$W/log.txt"
