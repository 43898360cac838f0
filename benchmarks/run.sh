#!/usr/bin/env bash
# The command behind results/benchmarks.md: every configuration (small, medium, long), the
# PyTorch anchors included (pip install -e ".[bench]"). It takes minutes on 2 CPU cores; run it
# on an idle machine, since the ratios are only fair when nothing else competes for the cores.
set -euo pipefail
cd "$(dirname "$0")/.."
python benchmarks/campaign.py --configs small,medium,long --rounds 7 --seeds 1,2,4,8,16 \
  --lengths 64,256,1024,4096 --regimes copy,adding --before 74b820d --out results/benchmarks.md
