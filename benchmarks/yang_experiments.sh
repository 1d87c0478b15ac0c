#!/usr/bin/env bash
# Yang et al. 2020 Sec. 4 experiments on MNIST with the benchmark's trained net
# (benchmarks/runs/yang-mnist.pt, from benchmarks/mnist_yang.py). Run by hand:
#   bash benchmarks/yang_experiments.sh [DATA_ROOT]
# Each writes JSON, markdown and PNG to docs/results/yang-mnist/ and resumes if stopped.
# Each step takes /tmp/spikeconv-cpu.lock so timed benchmarks never run beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/datasets}
OUT=docs/results/yang-mnist
MODEL=benchmarks/runs/yang-mnist.pt
run() { flock /tmp/spikeconv-cpu.lock spikeconv experiment "$@" --model "$MODEL" --data-root "$DATA" --out-dir "$OUT" --threads 2 --quiet; }
run stats --calibration-size 60000
run sweep-n --calibration-size 60000 --test-size 2000 -T 200 --coding poisson
run fixed-point --calibration-size 60000 --test-size 2000 -T 100 --coding poisson
run spikes --calibration-size 60000 --test-size 2000 -T 200 --coding poisson
run noise --calibration-size 60000 --test-size 1000 -T 100 --coding poisson --repeats 5
