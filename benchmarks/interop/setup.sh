#!/usr/bin/env bash
# Make the interoperability environment benchmarks/interop/.venv: torch 2.13.0 (CPU build),
# the newest nir, the libraries whose NIR import/export we check spikeconv's files against
# (Norse, snnTorch, SpikingJelly, sinabs) and tonic, whose N-MNIST reader must read the
# event files spikeconv writes (tests/test_nmnist.py runs that check here). They are never dependencies of
# spikeconv; those that declare torchvision/torchaudio or a hardware SDK are installed with
# --no-deps plus the small packages they import, so torch stays 2.13.0.
#
#   bash benchmarks/interop/setup.sh     # then: benchmarks/interop/.venv/bin/python benchmarks/interop/nir_clients.py
#                                        #  and: benchmarks/interop/.venv/bin/python -m pytest tests/test_nmnist.py tests/test_sweep.py
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$here/.venv"
python3 -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install --quiet torch==2.13.0
$pip install --quiet "nir>=1.0.6" h5py numpy scipy tqdm packaging matplotlib requests loguru pandas pbr setuptools_scm
$pip install --quiet --no-deps nirtorch
$pip install --quiet --no-deps --no-build-isolation norse       # declares torchvision (datasets only)
$pip install --quiet --no-deps snntorch==1.0.0
$pip install --quiet --no-deps spikingjelly==2.0.0              # declares torchvision, torchaudio, tensorboard
$pip install --quiet --no-deps "sinabs>=3,<4"                   # declares samna (the Speck SDK)
$pip install --quiet tonic pytest hypothesis                     # tonic: the event-dataset library (N-MNIST reader)
$pip install --quiet ray                                          # sweeps on Ray (tests/test_sweep.py runs them here)
$pip install --quiet -e "$root"
$venv/bin/python - <<'PY'
import torch, nir
from importlib.metadata import version
print("torch", torch.__version__, "| nir", version("nir"), "| nirtorch", version("nirtorch"),
      *[f"| {p} {version(p)}" for p in ("norse", "snntorch", "spikingjelly", "sinabs", "tonic", "ray")])
assert torch.__version__.startswith("2.13.0"), torch.__version__
PY
