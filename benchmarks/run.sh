#!/usr/bin/env bash
# The command behind results/benchmarks.md: every configuration of issue 8, PyTorch anchors
# included (pip install -e ".[bench]"). About half an hour on 2 CPU cores; run it on an idle
# machine, since the ratios are only fair when nothing else competes for the cores.
set -euo pipefail
cd "$(dirname "$0")/.."
gru-research bench --configs small,medium,long --rounds 7 --seeds 1,2,4,8,16 \
  --lengths 64,256,1024,4096 --out results/benchmarks.md
