#!/usr/bin/env bash
# Yang et al. 2020 on CIFAR-10 (JPEG): train the Table 2 net on random 24x24 crops (with
# flips), then run the Sec. 4 experiments on centre-cropped test images. Run by hand:
#   bash benchmarks/cifar_yang.sh [DATA_ROOT]
# Training resumes from benchmarks/runs/yang-cifar10.pt; each experiment writes JSON,
# markdown and PNG to docs/results/yang-cifar10/ and resumes if stopped. Every step takes
# /tmp/spikeconv-cpu.lock so timed benchmarks never run beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/datasets}
OUT=docs/results/yang-cifar10
MODEL=benchmarks/runs/yang-cifar10.pt
lock() { flock /tmp/spikeconv-cpu.lock "$@"; }
lock spikeconv train --model yang-cifar10 --data-root "$DATA" --epochs 40 --batch-size 64 --lr 1e-3 \
    --crop 24 --flip --out "$MODEL" --threads 2 --quiet
run() { lock spikeconv experiment "$@" --model "$MODEL" --data-root "$DATA" --out-dir "$OUT" --threads 2 --quiet; }
run stats --calibration-size 50000
# Test subsets sized so that the five experiments take about an hour on two cores (the
# padded net costs about 19M multiply-adds per image and step).
run sweep-n --calibration-size 50000 --test-size 1000 -T 400 --coding poisson
run fixed-point --calibration-size 50000 --test-size 1000 -T 300 --coding poisson
run spikes --calibration-size 50000 --test-size 1000 -T 400 --coding poisson
run noise --calibration-size 50000 --test-size 500 -T 200 --coding poisson --repeats 5
