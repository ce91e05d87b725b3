#!/usr/bin/env bash
# One prepared GPU check (about 8 minutes on one H200; `--quick` runs the same steps on a CPU in
# a few minutes with the small 224 px backbone of bench/scale.py):
#   1. the method grid (every registered method; wsp training noise) on ViT-B-16 (random
#      weights) on a synthetic Caltech101-layout set and digits;
#   2. the frozen-feature cache on vs off (zeroshot + coop on the synthetic set);
#   3. the scale probe at 400 classes (bench/scale.py);
#   4. bf16-vs-fp32 image-feature agreement;
#   5. fused vs unfused cells (bench/fusion.py): ANPrompt and two ablations x 5 training noises
#      on the synthetic set, both wall times, their ratio and equal results;
#   6. a table of all of it and a projection of the paper's full base-to-new grid.
#
#   bash bench/gpu_check.sh [--quick] [--wheels DIR] [--out DIR] [--only STEPS] [--epochs N]
#                          [--classes N] [--test-images N]
#
# `--only grid,fusion` runs only those steps (grid, cache, scale, agreement, fusion; the summary
# always runs) and `--epochs N` trains every method of the grid for N epochs: per-step times do
# not depend on the epoch count, so a short device lease can still measure them;
# `--classes N --test-images N` size the synthetic set (default 100 classes, 2,000 test images).
#
# On a machine with PyTorch but no other anbench dependency and no internet, `--wheels DIR`
# installs them from a folder of wheels prepared beforehand (README, "GPU check"), into a venv
# that keeps the machine's own torch (--system-site-packages).
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
WHEELS=""
ONLY="grid,cache,scale,agreement,fusion"
EPOCHS=""
SET_CLASSES=""
SET_TEST=""
OUT="${TMPDIR:-/tmp}/anbench-gpu-check"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --wheels) WHEELS="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --only) ONLY="$2"; shift ;;
        --epochs) EPOCHS="$2"; shift ;;
        --classes) SET_CLASSES="$2"; shift ;;
        --test-images) SET_TEST="$2"; shift ;;
        *) echo "error: unknown option $1 (use --quick, --wheels DIR, --out DIR, --only STEPS," \
                "--epochs N)" >&2; exit 2 ;;
    esac
    shift
done

for step in ${ONLY//,/ }; do
    case "$step" in
        grid|cache|scale|agreement|fusion) ;;
        *) echo "error: --only: unknown step '$step' (grid, cache, scale, agreement, fusion)" >&2
           exit 2 ;;
    esac
done
if [ -n "$EPOCHS" ] && ! [[ "$EPOCHS" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: --epochs must be a positive integer, got '$EPOCHS'" >&2; exit 2
fi
for value in "$SET_CLASSES" "$SET_TEST"; do
    if [ -n "$value" ] && ! [[ "$value" =~ ^[1-9][0-9]*$ ]]; then
        echo "error: --classes / --test-images must be positive integers, got '$value'" >&2
        exit 2
    fi
done
wants() { [[ ",$ONLY," == *",$1,"* ]]; }

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import anbench.cli, open_clip, transformers, pandas" 2>/dev/null; then
    if [ -z "$WHEELS" ]; then
        echo "error: anbench's dependencies are missing; pass --wheels DIR (see README)" >&2
        exit 2
    fi
    GPU_VENV="${GPU_VENV:-${TMPDIR:-/tmp}/anbench-gpu-venv}"  # outside the checkout
    "$PY" -m venv --system-site-packages "$GPU_VENV"
    PY="$GPU_VENV/bin/python"
    # --no-deps: the folder holds the full closure except torch, which the machine has.
    "$PY" -m pip install --quiet --no-index --no-deps "$WHEELS"/*.whl
    "$PY" -m pip install --quiet --no-index --no-deps --no-build-isolation -e .
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
rm -rf "$OUT"
mkdir -p "$OUT"
export ANBENCH_CACHE="$OUT/cache"
ANBENCH=("$PY" -m anbench.cli)
SCALE_PLUGIN=(--plugin bench/scale.py)

if [ "$QUICK" = 1 ]; then
    DEVICE=cpu; BACKBONE=scale-vit-224; CLASSES=10; TEST=200; SHOTS=2
    METHODS=zeroshot,coop,dapt,anprompt
    FAST=(--set methods.coop.epochs=1 --set methods.dapt.epochs=1
          --set methods.anprompt.epochs=1 --set methods.anprompt.noise_samples=2
          --set run.noise_draws=2)
    SCALE=(--quick --methods zeroshot,coop --epochs 1)
    FUSION=(--set run.noise_draws=2)
    for m in anprompt anprompt-wo-nrvpp anprompt-wo-noise; do
        FUSION+=(--set "methods.$m.epochs=1" --set "methods.$m.noise_samples=2")
    done
else
    DEVICE=cuda; BACKBONE=vit-b-16; CLASSES=100; TEST=2000; SHOTS=16
    METHODS=all
    FAST=(--set backbones.vit-b-16.pretrained=null --set run.noise_draws=2)
    SCALE=(--classes 400 --test-images 4000 --shots 16 --backbone vit-b-16
           --methods zeroshot,coop,anprompt --epochs 2)
    FUSION=(--set backbones.vit-b-16.pretrained=null --set run.noise_draws=2)
    for m in anprompt anprompt-wo-nrvpp anprompt-wo-noise; do
        FUSION+=(--set "methods.$m.epochs=1")  # 200 steps of batch 4 per cell
    done
fi
CLASSES="${SET_CLASSES:-$CLASSES}"
TEST="${SET_TEST:-$TEST}"

"$PY" - "$OUT/data" "$CLASSES" "$SHOTS" "$TEST" <<'EOF'
import sys
sys.path.insert(0, "bench")
from scale import write_dataset
root, classes, shots, test = sys.argv[1], *map(int, sys.argv[2:])
from pathlib import Path
write_dataset(Path(root), classes, shots, test, 224)
EOF
COMMON=(--backbone "$BACKBONE" --device "$DEVICE" --data-root "$OUT/data" --shots "$SHOTS"
        --out "$OUT/runs" --quiet "${SCALE_PLUGIN[@]}" "${FAST[@]}")
started=$(date +%s)

GRID_EPOCHS=()
if [ -n "$EPOCHS" ]; then
    for m in $("$PY" -c "from anbench.registry import METHODS; print(' '.join(METHODS.names()))"); do
        [ "$m" = zeroshot ] || GRID_EPOCHS+=(--set "methods.$m.epochs=$EPOCHS")
    done
fi
if wants grid; then
echo "== 1. method grid"
"${ANBENCH[@]}" run "${COMMON[@]}" --suite grid --methods "$METHODS" --noise wsp \
    --datasets caltech101,digits "${GRID_EPOCHS[@]}"
fi

cache_json="$OUT/cache.json"
if wants cache; then
echo "== 2. frozen-feature cache off vs on (zeroshot + coop)"
t0=$(date +%s.%N)
"${ANBENCH[@]}" run "${COMMON[@]}" --suite cache-off --methods zeroshot,coop --noise drop \
    --datasets caltech101 --set run.feature_cache=false
t1=$(date +%s.%N)
"${ANBENCH[@]}" run "${COMMON[@]}" --suite cache-on --methods zeroshot,coop --noise drop \
    --datasets caltech101
t2=$(date +%s.%N)
"$PY" -c "import json,sys; a,b,c=map(float,sys.argv[1:]); print(json.dumps({'off_s': round(b-a,1), 'on_s': round(c-b,1)}))" \
    "$t0" "$t1" "$t2" | tee "$cache_json"
fi

if wants scale; then
echo "== 3. scale probe"
"$PY" bench/scale.py "${SCALE[@]}" --device "$DEVICE" --json "$OUT/scale.json" | tail -8
fi

if wants agreement; then
echo "== 4. bf16 vs fp32 features"
"$PY" bench/gpu_check.py agreement --backbone "$BACKBONE" --device "$DEVICE" \
    --json "$OUT/agreement.json"
fi

if wants fusion; then
echo "== 5. fused vs unfused cells (ANPrompt + 2 ablations x 5 training noises)"
"$PY" bench/fusion.py --backbone "$BACKBONE" --device "$DEVICE" --data-root "$OUT/data" \
    --shots "$SHOTS" --plugin bench/scale.py --datasets caltech101 \
    --methods anprompt,anprompt-wo-nrvpp,anprompt-wo-noise \
    --noise drop,mask,shuffle,wsp,paraphrase --json "$OUT/fusion.json" -- "${FUSION[@]}" \
    || echo "fusion: results differ or a run failed (see above); the summary says which"
fi

echo "== 6. summary ($(( $(date +%s) - started )) s so far)"
"$PY" bench/gpu_check.py summary --suite-dir "$OUT/runs/grid" --backbone "$BACKBONE" \
    --agreement "$OUT/agreement.json" --scale "$OUT/scale.json" --cache "$cache_json" \
    --fusion "$OUT/fusion.json" | tee "$OUT/summary.md"
echo "total $(( $(date +%s) - started )) s; files in $OUT"
