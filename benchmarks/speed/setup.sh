#!/usr/bin/env bash
# Make the benchmark environment benchmarks/speed/.venv: torch 2.13.0 (CPU build), the
# peer simulators and spikeconv itself (editable). The peers are never dependencies of
# spikeconv. Those that would pull torchvision/torchaudio or a hardware SDK are installed
# with --no-deps plus the small packages they really import, so torch stays 2.13.0.
#
#   bash benchmarks/speed/setup.sh            # then: benchmarks/speed/.venv/bin/python benchmarks/speed/bench.py
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$here/.venv"
python3 -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install --quiet torch==2.13.0
# spikingjelly 2.0: declares torchvision, torchaudio, tensorboard, ...; ann2snn needs none of them.
$pip install --quiet --no-deps spikingjelly==2.0.0
$pip install --quiet numpy scipy tqdm loguru packaging matplotlib requests
# sinabs 3.x: declares samna (the DYNAP-CNN chip SDK), not needed to simulate on a CPU.
$pip install --quiet --no-deps "sinabs>=3,<4"
$pip install --quiet pbr "nir<=1.0.4" nirtorch
# snntorch 1.0
$pip install --quiet --no-deps snntorch==1.0.0
$pip install --quiet pandas
$pip install --quiet -e "$root"
$venv/bin/python - <<'PY'
import torch, spikingjelly, sinabs, snntorch, spikeconv
from importlib.metadata import version
from spikingjelly.activation_based import ann2snn  # imports requests
print("torch", torch.__version__, "| spikingjelly", version("spikingjelly"), "| sinabs", version("sinabs"),
      "| snntorch", version("snntorch"), "| spikeconv", version("spikeconv"))
assert torch.__version__.startswith("2.13.0"), torch.__version__
PY
