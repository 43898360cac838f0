#!/usr/bin/env bash
# The command behind results/feng2024_speed/report.md: Feng et al. (2024)'s speed claim
# (docs/papers.md §5), min_gru on the parallel scan against gru, T = 64 … 4096. Run it on an
# idle machine; on a GPU backend it also checks the paper's magnitudes.
set -euo pipefail
cd "$(dirname "$0")/.."
python benchmarks/feng_speed.py --lengths 64,128,256,512,1024,2048,4096 --batch 64 --rounds 3 \
  --out results/feng2024_speed/report.md
