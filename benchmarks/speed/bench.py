"""Simulation speed of spikeconv against SpikingJelly, sinabs, snnTorch and a plain PyTorch
step loop, on the same converted networks and inputs, in one process (issue 6).

Run in the benchmark environment made by ``setup.sh``, holding the CPU lock:

    flock /tmp/spikeconv-cpu.lock benchmarks/speed/.venv/bin/python benchmarks/speed/bench.py

Writes ``benchmarks/speed/results.json``, ``docs/speed.md`` and ``docs/speed_*.png``. With
``--device cuda`` every contender runs on the GPU (spikeconv then takes its tensor loop: its
C kernels and event-driven synapses are CPU-only), the clock stops after
``torch.cuda.synchronize()``, peak memory is ``torch.cuda.max_memory_allocated``, and the
files are ``results_cuda.json``, ``docs/speed_cuda.md`` and ``docs/speed_cuda_*.png``. (Not
yet run: no GPU has been lent to this project's sessions.)

Networks: the trained Yang MNIST net (MNIST test images); the zoo's small VGG-style net
``vgg-small`` with seeded random weights on random images (``vgg-small-random``: it fires
at 7-31 %, a stress case for the event-driven synapses); and, when CIFAR-10 (JPEG) is in the
data root, on CIFAR-10 test images: ``vgg-small`` trained on CIFAR-10 (checkpoint committed,
made by ``flock /tmp/spikeconv-cpu.lock spikeconv train --model vgg-small --data-root
../shared/datasets --epochs 15 --batch-size 64 --lr 1e-3 --seed 0 --flip --pad 4 --crop 32
--threads 2 --out benchmarks/runs/vgg-small-cifar10.pt``, about 8 minutes); Rueckauer's
CIFAR-10 net (trained by ``spikeconv train --model rueckauer-cifar10 --data-root
../shared/datasets --epochs 8 --batch-size 64 --lr 1e-3 --seed 0 --flip --pad 4 --threads 2
--out benchmarks/runs/rueckauer-cifar10-speed.pt``, about 20 minutes; the checkpoint, 26 MB with its optimizer state, is not committed;
seeded random weights without it; BatchNorm folded) with average instead of max pooling, as
the peers have no rate-gated spiking max-pool; and full-width VGG-16 and ResNet-18 in their
usual CIFAR-10 layouts (``spikeconv.models.vgg16`` with average pools, ``resnet18``), with
seeded He-initialized weights whose BatchNorm statistics are measured on 1,000 CIFAR-10
images and folded (training them would take days here).

What every contender simulates (max-norm with percentile 100, reset by subtraction,
threshold 1, analog input = the image as a constant current every step, IF neurons after
every ReLU and on the output layer, at most one spike per step):

* The ANN is converted once with spikeconv's max-norm (``rule="maxnorm"``: the largest
  activation of each layer on the calibration images). The *normalized* ANN (spikeconv's
  scaled synapses with a ReLU after each) is what the peers' converters get, so all tools
  map the same weights and the same thresholds. (SpikingJelly's own max-norm keeps the
  weights and scales the membrane around each neuron instead; that is the same maths with
  other float rounding. sinabs has no normalization in ``from_model``; snnTorch has no
  converter at all.) For ResNet-18 it is a module that wires the same synapses as
  spikeconv's stages, with one ``nn.ReLU`` per hidden stage.
* ``--weights float`` (default, the headline rows): the networks' own float weights and
  images. Everyone then sums in their own order: spikeconv's event-driven synapses add the
  weights of the inputs that fired, the peers convolve densely in other batch shapes, so an
  image's output counts can differ where a membrane lands within float rounding of the
  threshold; the tables count those images.
* ``--weights grid``: weights rounded to multiples of 2^-8 and the images to multiples of
  2^-8, so that every sum the networks form is exact in float32 whatever its order
  (products lie on a 2^-16 grid and the positive membrane stays far below 2^8). Tools that
  add in another order (snnTorch subtracts the reset one step late: (V + z) - s*tau
  instead of (V - s*tau) + z) or convolve in other batch shapes then give identical
  spikes, and the check demands it. "spikeconv dense" is spikeconv with
  ``event_driven=False``.
* Conventions matched explicitly: snnTorch fires when U > U_thr (spikeconv, SpikingJelly and
  sinabs: >=), so its neurons get a >= step function; sinabs' default ``MultiSpike`` emits
  several spikes per step and clamps the membrane at -1, so it gets ``SingleSpike`` and
  ``min_v_mem=None``; SpikingJelly's converter puts a voltage scaler before and after each
  neuron, set to 1 here (the scales are already in the weights). Average pooling: every
  tool keeps it as a linear op on the spikes before the next synapse (no neuron after it).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import torch
from torch import Tensor, nn

import spikeconv
from spikeconv.io import write_json, write_text
from spikeconv.io.data import load_dataset, load_mnist
from spikeconv.models import build_model
from spikeconv.training import load_model

ROOT = Path(__file__).resolve().parents[2]
THREADS = 2
CPU = torch.device("cpu")
Runner = Callable[[Tensor, int], Tensor]  # (images [B, ...], T) -> output spike counts [B, classes]


# ----------------------------------------------------------------------------- networks
def _grid(x: Tensor, bits: int | None) -> Tensor:
    return x if bits is None else torch.round(x * 2**bits) / 2**bits


NETWORKS = ("yang-mnist", "vgg-small", "vgg-small-random", "rueckauer-cifar10", "vgg16", "resnet18")
NEEDS_CIFAR10 = ("vgg-small", "rueckauer-cifar10", "vgg16", "resnet18")
WEIGHTS = ("float", "grid")  # the trained float weights, or every weight and image on a 2^-8 grid
DEEP = ("vgg16", "resnet18")  # untrained: He-initialized weights, BatchNorm statistics from CIFAR-10 images


def load_network(
    name: str, data_root: Path, checkpoint: Path, weights: str = "float"
) -> tuple[nn.Module, Tensor, Tensor] | None:
    """(ANN, calibration images, test images) of one network, the images on a 2^-8 grid for
    ``weights="grid"``; None for the CIFAR-10 nets when the dataset is absent. Only the
    named network's data is read."""
    bits = 8 if weights == "grid" else None
    to_float = lambda images: _grid(images.float() / 255, bits)  # noqa: E731
    runs = checkpoint.parent
    if name == "yang-mnist":
        model, _ = load_model(checkpoint)
        train, test = load_mnist(data_root, "train"), load_mnist(data_root, "test")
        return model, to_float(train.images[:5000]), to_float(test.images[:1000])
    if name == "vgg-small-random":  # no data needed; fires 7-31 %, far more than a trained net
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(1)
        images = _grid(torch.rand(2000, 3, 32, 32, generator=generator), bits)
        return build_model("vgg-small").eval(), images[:1000], images[1000:]
    if name in NEEDS_CIFAR10:
        if not (data_root / "cifar10-jpeg").is_dir():
            return None
        # a speed benchmark: calibrate on 1,000 test images, simulate 1,000 others (no
        # accuracy is reported, and loading the 50,000 training JPEGs would take minutes)
        images = to_float(load_dataset("cifar10", "test", data_root).subset(2000, seed=0).images)
        if name == "vgg-small":  # trained by the command in the module docstring (checkpoint committed)
            model, _ = load_model(runs / "vgg-small-cifar10.pt")
        elif name in DEEP:
            model = deep_network(name, images[:1000])
        else:
            model = rueckauer_avgpool(runs / "rueckauer-cifar10-speed.pt")
        return model, images[:1000], images[1000:]
    raise ValueError(f"unknown network {name!r}; choose from {NETWORKS}")


def deep_network(name: str, images: Tensor) -> nn.Module:
    """VGG-16 or ResNet-18 at full width for CIFAR-10 (``spikeconv.models``), max-pools as
    average pools (the peers have no spiking max-pool), with seeded He-initialized weights:
    training them takes days on two cores. Their BatchNorm statistics are measured on
    ``images`` (then folded by every converter), so each channel's activations have the
    scale real data gives them; the firing rates that follow are reported beside the times."""
    torch.manual_seed(0)
    model = build_model(name)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the batches below
    if isinstance(model, nn.Sequential):
        model = nn.Sequential(*[nn.AvgPool2d(m.kernel_size, m.stride) if isinstance(m, nn.MaxPool2d) else m for m in model])
    model.train()
    with torch.no_grad():
        for batch in images.split(100):
            model(batch)
    return model.eval()


def rueckauer_avgpool(checkpoint: Path) -> nn.Module:
    """Rueckauer's CIFAR-10 net (trained 8 epochs by the command in the module docstring
    when its checkpoint exists, else seeded random weights) with BatchNorm, and with its
    max-pools replaced by average pools and its softmax dropped: the peers have no
    rate-gated spiking max-pool (Rueckauer Sec. 3.6) to compare against, so all tools get
    the same linear pooling."""
    if checkpoint.is_file():
        model, record = load_model(checkpoint)
        if record.get("epoch", 0) < record.get("options", {}).get("epochs", 0):
            raise SystemExit(f"{checkpoint} is still training (epoch {record['epoch']}): finish it first (module docstring)")
    else:
        torch.manual_seed(0)
        model = build_model("rueckauer-cifar10").eval()
    layers = [nn.AvgPool2d(m.kernel_size, m.stride) if isinstance(m, nn.MaxPool2d) else m for m in model]
    return nn.Sequential(*[m for m in layers if not isinstance(m, nn.Softmax)]).eval()


def convert_spikeconv(ann: nn.Module, calibration: Tensor, weights: str = "float") -> spikeconv.SpikingNetwork:
    snn = spikeconv.convert(ann, calibration, rule="maxnorm", reset="subtract", calibration_size=None)
    if weights == "grid":
        with torch.no_grad():
            for p in snn.parameters():
                p.copy_(_grid(p, 8))
    return snn


class StageGraph(nn.Module):
    """A residual network's scaled synapses wired as spikeconv's stages, each hidden stage
    followed by its own ``nn.ReLU`` (which the peers' converters turn into IF neurons)."""

    def __init__(self, snn: spikeconv.SpikingNetwork) -> None:
        super().__init__()
        stages = snn.spiking_stages
        self.synapses = nn.ModuleList([stage.synapse for stage in stages])
        self.relus = nn.ModuleList([nn.ReLU() for _ in stages[:-1]])
        self.sources = [stage.source_indices(j) for j, stage in enumerate(stages)]

    def with_neurons(self, make: Callable[[], nn.Module]) -> StageGraph:
        """The same synapses with a new module from ``make`` in place of each ReLU (``self``
        is left as it is)."""
        other = copy.deepcopy(self)
        other.synapses = self.synapses
        other.relus = nn.ModuleList([make() for _ in self.relus])
        return other

    def forward(self, x: Tensor) -> Tensor:
        outputs: list[Tensor] = []
        for j, synapse in enumerate(self.synapses):
            z = synapse(*[x if s < 0 else outputs[s] for s in self.sources[j]])
            outputs.append(self.relus[j](z) if j < len(self.relus) else z)
        return outputs[-1]


def normalized_ann(snn: spikeconv.SpikingNetwork) -> nn.Module:
    """The ANN whose ReLUs the peers turn into IF neurons: spikeconv's scaled synapses, as a
    Sequential for a chain, a :class:`StageGraph` for a residual network."""
    stages = snn.spiking_stages
    if any(stage.sources is not None and stage.source_indices(j) != (j - 1,) for j, stage in enumerate(stages)):
        return StageGraph(snn).eval()
    layers: list[nn.Module] = []
    for stage in stages:
        layers.extend(stage.synapse)
        if not stage.is_output:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def firing_rates(snn: spikeconv.SpikingNetwork, x: Tensor, T: int = 100) -> dict[str, float]:
    """Spikes per neuron per step of each layer, and over all neurons (``"all"``), on ``x``."""
    result = spikeconv.simulate(snn, x, T=T, batch_size=len(x))
    rates = result.firing_rates
    neurons = sum(result.neurons_per_layer.values())
    rates["all"] = sum(result.spikes_per_layer.values()) / (neurons * result.num_images * T)
    return rates


# ----------------------------------------------------------------------------- contenders
def run_spikeconv(snn: spikeconv.SpikingNetwork, event_driven: bool = True) -> Runner:
    def run(x: Tensor, T: int) -> Tensor:
        result = spikeconv.simulate(snn, x, T=T, coding="constant", batch_size=len(x), event_driven=event_driven)
        return result.output_counts

    return run


def run_plain_loop(ann: nn.Module) -> Runner:
    """The 'write it yourself' baseline: step by step, IF neurons after every ReLU and at
    the output, reset by subtraction, threshold 1."""
    if isinstance(ann, StageGraph):
        synapses, sources = list(ann.synapses), ann.sources
    else:
        cuts = [i for i, m in enumerate(ann) if isinstance(m, nn.ReLU)]
        bounds = [0, *[c + 1 for c in cuts], len(ann)]
        synapses = [nn.Sequential(*[m for m in ann[a:b] if not isinstance(m, nn.ReLU)]) for a, b in zip(bounds, bounds[1:])]
        sources = [(i - 1,) for i in range(len(synapses))]

    @torch.inference_mode()
    def run(x: Tensor, T: int) -> Tensor:
        v: list[Tensor | None] = [None] * len(synapses)
        counts = torch.zeros(0)
        for t in range(T):
            spikes: list[Tensor] = []
            for i, synapse in enumerate(synapses):
                z = synapse(*[x if k < 0 else spikes[k] for k in sources[i]])
                v_i = z if v[i] is None else v[i] + z  # type: ignore[operator]
                s = (v_i >= 1.0).to(z.dtype)
                v[i] = v_i - s
                spikes.append(s)
            counts = spikes[-1] if t == 0 else counts + spikes[-1]
        return counts

    return run


def _count_over_steps(snn: nn.Module, x: Tensor, T: int) -> Tensor:
    """Output spike counts of a stateful step-by-step SNN fed ``x`` for ``T`` steps."""
    counts = snn(x)
    for _ in range(T - 1):
        counts = counts + snn(x)
    return counts


def run_spikingjelly(ann: nn.Sequential, calibration: Tensor) -> Runner:
    from spikingjelly.activation_based import functional, neuron
    from spikingjelly.activation_based.ann2snn import Converter
    from spikingjelly.activation_based.ann2snn.recipes.rate_coding import (
        RateCodingRecipe,
    )

    recipe = RateCodingRecipe(
        dataloader=[calibration[:200]], mode="Max",
        neuron_factory=lambda scale: neuron.IFNode(v_threshold=1.0, v_reset=None),
    )  # fmt: skip
    converted = Converter(recipe).convert(ann)
    scalers = 0
    for module in converted.modules():
        if type(module).__name__ == "VoltageScaler":
            module.scale.fill_(1.0)  # the scales are already in the weights (see the module docstring)
            scalers += 1
    device = next(ann.parameters()).device
    snn = nn.Sequential(converted, neuron.IFNode(v_threshold=1.0, v_reset=None)).eval().to(device)
    neurons = sum(isinstance(m, neuron.IFNode) for m in snn.modules())

    @torch.inference_mode()
    def run(x: Tensor, T: int) -> Tensor:
        functional.reset_net(snn)
        counts = _count_over_steps(snn, x, T)
        functional.reset_net(snn)
        return counts

    run.note = f"ann2snn.Converter(RateCodingRecipe(mode='Max')), {neurons} IFNode layers (soft reset), {scalers} voltage scalers set to 1"  # type: ignore[attr-defined]
    return run


SINABS_BYTES = 4 * 2**30  # what one call's activations may take (ResNet-18 at 100 steps x batch 100: 23 GB, killed)


def run_sinabs(ann: nn.Module, input_shape: tuple[int, ...], chunk: int = 100, neurons: int = 0) -> Runner:
    """sinabs fed ``chunk`` steps per call as one time-flattened batch, fewer where the
    call's activations (about 16 bytes per neuron, image and step) would exceed
    :data:`SINABS_BYTES`; ``neurons``: spiking neurons per image."""
    import sinabs
    from sinabs.activation import MembraneSubtract, SingleSpike

    graph = isinstance(ann, StageGraph)  # from_model adds an output layer to a Sequential only
    model = nn.Sequential(ann, nn.ReLU()) if graph else ann

    @torch.inference_mode()
    def run(x: Tensor, T: int) -> Tensor:
        batch = len(x)
        net = sinabs.from_model(
            model, input_shape=input_shape, spike_threshold=torch.tensor(1.0), spike_fn=SingleSpike,
            reset_fn=MembraneSubtract(), min_v_mem=None, batch_size=batch, add_spiking_output=not graph,
        )  # fmt: skip
        # from_model runs one forward pass on zeros to size the layers, which leaves one
        # step of bias current in every membrane: start from rest like everyone else.
        net.reset_states()
        net = net.spiking_model
        counts = None
        per_call = max(1, min(chunk, SINABS_BYTES // max(1, 16 * neurons * batch)))
        for start in range(0, T, per_call):  # the layers keep their state between calls
            steps = min(per_call, T - start)
            out = net(x.unsqueeze(1).expand(batch, steps, *x.shape[1:]).reshape(batch * steps, *x.shape[1:]))
            part = out.reshape(batch, steps, -1).sum(1)
            counts = part if counts is None else counts + part
        return counts  # type: ignore[return-value]

    output = "an nn.ReLU appended to the graph as its output layer" if graph else "add_spiking_output=True"
    at_100 = max(1, min(chunk, SINABS_BYTES // max(1, 16 * neurons * 100)))
    run.note = f"from_model(spike_fn=SingleSpike, reset_fn=MembraneSubtract(), min_v_mem=None, {output}), fed {at_100} steps per call at batch 100"  # type: ignore[attr-defined]
    return run


def _step_ge(x: Tensor) -> Tensor:
    return (x >= 0).to(x.dtype)


def run_snntorch(ann: nn.Module) -> Runner:
    import snntorch
    from snntorch import utils

    def leaky() -> nn.Module:
        return snntorch.Leaky(beta=1.0, threshold=1.0, reset_mechanism="subtract", init_hidden=True, spike_grad=_step_ge)

    if isinstance(ann, StageGraph):
        graph = ann.with_neurons(leaky)
        snn = nn.Sequential(graph, leaky())
    else:
        snn = nn.Sequential(*[leaky() if isinstance(m, nn.ReLU) else m for m in ann], leaky())
    snn = snn.eval().to(next(ann.parameters()).device)

    @torch.inference_mode()
    def run(x: Tensor, T: int) -> Tensor:
        utils.reset(snn)
        return _count_over_steps(snn, x, T)

    run.note = "snntorch.Leaky(beta=1, reset_mechanism='subtract', spike_grad=x>=0) in place of each ReLU and at the output (snnTorch has no converter)"  # type: ignore[attr-defined]
    return run


def run_ann_limit(ann: nn.Module, max_images: int = 10_000) -> Runner:
    """The limit: T ANN forward passes as batched calls on T*B images (at most
    ``max_images`` per call, so that memory stays bounded at T*B = 10^6)."""

    @torch.inference_mode()
    def run(x: Tensor, T: int) -> Tensor:
        per_call = max(1, max_images // len(x)) if len(x) <= max_images else 1
        out = None
        for start in range(0, T, per_call):
            steps = min(per_call, T - start)
            out = ann(x.unsqueeze(0).expand(steps, *x.shape).reshape(steps * len(x), *x.shape[1:]))
        return out  # type: ignore[return-value]

    return run


# ----------------------------------------------------------------------------- measurement
class PeakRSS:
    """Peak resident memory of this process while a ``with`` block runs, above its level
    at entry, sampled every millisecond by a thread (this sandbox refuses
    ``/proc/self/clear_refs``, so the kernel's VmHWM cannot be reset between runs)."""

    def __init__(self, interval: float = 1e-3) -> None:
        self.interval = interval
        self.peak_mib = 0.0
        self._stop = threading.Event()

    @staticmethod
    def rss_kib() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._high = max(self._high, self.rss_kib())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._base = self._high = self.rss_kib()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._high = max(self._high, self.rss_kib())
        self.peak_mib = (self._high - self._base) / 1024


def _synchronize(x: Tensor) -> None:
    """Wait for the GPU's queued work, so that the clock measures it (no-op on the CPU)."""
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)


def measure(run: Runner, x: Tensor, T: int) -> tuple[float, Tensor]:
    """Wall time (s) and output counts (on the CPU)."""
    gc.collect()
    _synchronize(x)
    started = time.perf_counter()
    out = run(x, T)
    _synchronize(x)
    return time.perf_counter() - started, out.cpu()


def peak_cuda_memory(run: Runner, x: Tensor, T: int) -> float:
    """Peak GPU memory (MiB) allocated by one run above what was allocated before it."""
    gc.collect()
    _synchronize(x)
    torch.cuda.reset_peak_memory_stats(x.device)
    base = torch.cuda.memory_allocated(x.device)
    run(x, T)
    _synchronize(x)
    return (torch.cuda.max_memory_allocated(x.device) - base) / 2**20


def peak_memory(run: Runner, x: Tensor, T: int) -> float:
    """Peak resident memory (MiB) above the start of one run (meaningful only in a process
    run by :func:`memory_in_fresh_process`)."""
    gc.collect()
    with PeakRSS() as memory:
        run(x, T)
    return memory.peak_mib


CONTENDERS = ("spikeconv", "spikeconv dense", "plain loop", "SpikingJelly", "sinabs", "snnTorch", "ANN limit")
ALWAYS_RUN = ("spikeconv", "spikeconv dense", "ANN limit")  # at every size; the peers within the budget


def build_contenders(
    ann: nn.Module,
    calibration: Tensor,
    input_shape: tuple[int, ...],
    keys: tuple[str, ...] = CONTENDERS,
    device: torch.device = CPU,
    weights: str = "float",
) -> dict[str, Runner]:
    """Every contender (or those in ``keys``), converted from the same spikeconv max-norm,
    with its modules on ``device`` (``ann`` and ``calibration`` stay where they are)."""
    snn = convert_spikeconv(ann, calibration, weights).to(device)
    norm = normalized_ann(snn)  # shares snn's synapse modules, so it is on the device too
    makers: dict[str, Callable[[], Runner]] = {
        "spikeconv": lambda: run_spikeconv(snn),
        "spikeconv dense": lambda: run_spikeconv(snn, event_driven=False),
        "plain loop": lambda: run_plain_loop(norm),
        "SpikingJelly": lambda: run_spikingjelly(norm, calibration.to(device)),
        "sinabs": lambda: run_sinabs(norm, input_shape, neurons=sum(a[0].numel() for a in snn.analog_forward(calibration[:1].to(device)))),
        "snnTorch": lambda: run_snntorch(norm),
        "ANN limit": lambda: run_ann_limit(copy.deepcopy(ann).to(device)),
    }
    return {key: makers[key]() for key in keys}


def memory_in_fresh_process(networks_file: Path, name: str, key: str, T: int, batch: int) -> float:
    """Peak memory (MiB) of one run of one contender, in a new Python process whose glibc
    maps every allocation above 128 KiB fresh and unmaps it when freed, so that resident
    memory tracks the live tensors. In the timing process, memory freed by earlier runs
    (and by loading and converting) is reused unseen and peaks read about 0 MiB; fresh
    mappings cannot be used there either, as their page faults halve spikeconv's speed."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    command = [sys.executable, __file__, "--memory-of", str(networks_file), name, key, str(T), str(batch)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory run of {key} on {name} (T={T}, batch={batch}) failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.split()[-1])


def cuda_memory_of(network: tuple[nn.Module, Tensor, Tensor, str], key: str, T: int, batch: int, device: torch.device) -> float:
    """Peak GPU memory (MiB) of one run of one contender, in this process: the CUDA
    allocator's statistics see every allocation, so no fresh process is needed."""
    ann, calibration, images, weights = network
    run = build_contenders(ann, calibration, tuple(images.shape[1:]), keys=(key,), device=device, weights=weights)[key]
    x = images[:batch].to(device)
    run(x, 2)  # warm-up, as in memory_child
    return peak_cuda_memory(run, x, T)


def memory_child(networks_file: Path, name: str, key: str, T: int, batch: int) -> None:
    torch.set_num_threads(THREADS)
    ann, calibration, images, weights = torch.load(networks_file, weights_only=False)[name]
    run = build_contenders(ann, calibration, tuple(images.shape[1:]), keys=(key,), weights=weights)[key]
    run(images[:batch], 2)  # warm-up: one-time costs (library loads, oneDNN primitives) are no run's
    print(peak_memory(run, images[:batch], T))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "benchmarks" / "runs" / "yang-mnist.pt",
                        help="the Yang MNIST net; the CIFAR-10 nets' checkpoints are read from the same folder")
    parser.add_argument("--repeats", type=int, default=2, help="runs per contender and size; the best is kept")
    parser.add_argument("--peer-budget", type=float, default=3e4,
                        help="largest T x batch run with the step-by-step contenders (they are slow)")
    parser.add_argument("--device", default="cpu",
                        help="torch device for every contender, e.g. cuda (then the default files are "
                             "results_cuda.json, docs/speed_cuda.md and docs/speed_cuda_*.png)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (default: benchmarks/speed/results.json, or results_<device>.json)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script")
    parser.add_argument("--networks", default=None, help="comma-separated subset of the networks (default: all)")
    parser.add_argument("--weights", choices=WEIGHTS, default="float",
                        help="float: the networks' own float weights (spikeconv's event-driven synapses then sum "
                             "in another order, so some images may differ from the peers'); grid: weights and "
                             "images rounded to 2^-8, where every tool's sums are exact and must agree")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated TxB sizes to run instead of each network's own, e.g. 100x100")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory runs (about half the time; the tables then say 'not run')")
    parser.add_argument("--memory-of", nargs=5, metavar=("NETWORKS_FILE", "NAME", "CONTENDER", "T", "BATCH"),
                        help="internal: print the peak memory of one run (see memory_in_fresh_process)")
    args = parser.parse_args()
    if args.memory_of:
        file, name, key, T, batch = args.memory_of
        return memory_child(Path(file), name, key, int(T), int(batch))
    names = args.networks.split(",") if args.networks else list(NETWORKS)
    if unknown := set(names) - set(NETWORKS):
        parser.error(f"--networks: unknown {sorted(unknown)}; choose from {list(NETWORKS)}")
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"--device {args.device!r}: {error}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch ({torch.__version__}) sees no CUDA GPU")
    tag = "" if device.type == "cpu" else f"_{device.type}"
    if args.out is None:
        args.out = ROOT / "benchmarks" / "speed" / f"results{tag}.json"
    torch.set_num_threads(THREADS)
    suffix = "" if args.weights == "float" else ", grid"  # result keys: "yang-mnist", "yang-mnist, grid"
    loaded = {name + suffix: load_network(name, args.data_root, args.checkpoint, args.weights) for name in names}
    networks = {key: (*net, args.weights) for key, net in loaded.items() if net is not None}
    for key in set(loaded) - set(networks):
        print(f"skipping {key}: no cifar10-jpeg/ under --data-root {args.data_root}", file=sys.stderr)
    sizes = {  # (T, batch)
        "yang-mnist": [(100, 100), (300, 100), (1000, 100), (100, 300), (100, 1000), (1000, 1000)],
        "vgg-small": [(100, 100), (1000, 100), (100, 1000)],
        "vgg-small-random": [(100, 100), (1000, 100)],
        "rueckauer-cifar10": [(100, 100), (300, 100), (100, 300)],
        "vgg16": [(100, 100)],
        "resnet18": [(100, 100)],
    }
    peer_budget = {name: args.peer_budget / (1 if name == "yang-mnist" else 3) for name in NETWORKS}
    if args.quick:
        sizes = {name: [(10, 20), (20, 20)] for name in sizes}
    if args.sizes:
        try:
            chosen = [tuple(int(v) for v in size.lower().split("x")) for size in args.sizes.split(",")]
        except ValueError:
            parser.error(f"--sizes {args.sizes!r}: give TxB pairs such as 100x100,1000x100")
        sizes = {name: chosen for name in sizes}
    command = (
        "flock /tmp/spikeconv-cpu.lock benchmarks/speed/.venv/bin/python benchmarks/speed/bench.py"
        + (" --quick" if args.quick else "")
        + (f" --peer-budget {args.peer_budget:g}" if args.peer_budget != 3e4 else "")
        + (f" --networks {args.networks}" if args.networks else "")
        + (f" --weights {args.weights}" if args.weights != "float" else "")
        + (f" --sizes {args.sizes}" if args.sizes else "")
        + (" --no-memory" if args.no_memory else "")
        + (f" --device {args.device}" if device.type != "cpu" else "")
    )
    # A run replaces the networks it measured and keeps the others (each says its command and date)
    previous = json.loads(args.out.read_text()).get("networks", {}) if args.out.is_file() and not args.quick else {}
    results: dict[str, object] = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "versions": {p: version(p) for p in ("torch", "spikeconv", "spikingjelly", "sinabs", "snntorch")},
        "kernel": spikeconv.sim.kernels.available(),  # noqa: SLF001
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "repeats": args.repeats,
        "peer_budget": args.peer_budget,  # all but yang-mnist: a third of it
        "networks": {k: v for k, v in previous.items() if k not in networks},
    }
    for key, (ann, calibration, images, weights) in networks.items():
        name = key.removesuffix(suffix)
        input_shape = tuple(images.shape[1:])
        contenders = build_contenders(ann, calibration, input_shape, device=device, weights=weights)
        notes = {k: getattr(r, "note", "") for k, r in contenders.items()}
        net_result: dict[str, object] = {
            "input_shape": list(input_shape), "notes": notes, "sizes": [], "weights": weights,
            "trained": name not in (*DEEP, "vgg-small-random") and (
                name != "rueckauer-cifar10" or (args.checkpoint.parent / "rueckauer-cifar10-speed.pt").is_file()
            ),
            "command": command,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "firing_rates": firing_rates(convert_spikeconv(ann, calibration, weights), images[:100].to(device)),
        }  # fmt: skip
        results["networks"][key] = net_result  # type: ignore[index]
        for T, batch in sizes[name]:
            x = images[:batch].to(device)
            active = [k for k in contenders if k in ALWAYS_RUN or T * batch <= peer_budget[name]]
            times: dict[str, list[float]] = {k: [] for k in active}
            outputs: dict[str, Tensor] = {}
            repeats = args.repeats if T * batch <= 2e5 else max(2, args.repeats - 1)
            for _ in range(repeats):  # interleaved: every contender once per round
                for who in active:
                    elapsed, out = measure(contenders[who], x, T)
                    times[who].append(elapsed)
                    outputs[who] = out
                    print(f"{key} T={T} B={batch} {who}: {elapsed:.2f} s", flush=True)
            reference = outputs["spikeconv"]
            rows = {}
            for who in active:
                best = min(times[who])
                row = {
                    "best_s": best, "times_s": times[who], "median_s": statistics.median(times[who]),
                    "image_steps_per_s": T * batch / best,
                }  # fmt: skip
                if who != "ANN limit":
                    differ = (outputs[who].reshape(batch, -1) != reference).any(1)
                    row["images_with_different_counts"] = int(differ.sum())
                    row["identical"] = bool(not differ.any())
                rows[who] = row
            ours = rows["spikeconv"]["best_s"]
            for row in rows.values():
                row["spikeconv_speedup"] = row["best_s"] / ours
            rows["spikeconv"]["over_limit"] = ours / rows["ANN limit"]["best_s"]
            net_result["sizes"].append({"T": T, "batch": batch, "skipped": [k for k in contenders if k not in active],
                                        "load_average": os.getloadavg()[0], "results": rows})  # fmt: skip
            write_json(args.out, results)
    if not args.no_memory:
        measure_memory(results, networks, args.out, device)
    write_docs(results, args.docs, args.out)


def measure_memory(results: dict, networks: dict, out: Path, device: torch.device = CPU) -> None:
    """Peak memory: one more run of each contender and size, each in a fresh process (see
    memory_in_fresh_process for why not in this one); added to ``results`` and saved. On a
    GPU, the allocator's own peak in this process (``peak_cuda_mib``, see cuda_memory_of)."""
    on_gpu = device.type == "cuda"
    field = "peak_cuda_mib" if on_gpu else "peak_rss_mib"
    with tempfile.TemporaryDirectory() as scratch:
        networks_file = Path(scratch) / "networks.pt"
        if not on_gpu:
            torch.save(networks, networks_file)
        for name, net_result in results["networks"].items():
            if name not in networks:  # kept from an earlier run
                continue
            for size in net_result["sizes"]:
                for key, row in size["results"].items():
                    T, batch = size["T"], size["batch"]
                    row[field] = (
                        cuda_memory_of(networks[name], key, T, batch, device) if on_gpu
                        else memory_in_fresh_process(networks_file, name, key, T, batch)
                    )  # fmt: skip
                    print(f"{name} T={T} B={batch} {key}: peak {row[field]:.0f} MiB" + (" on the GPU" if on_gpu else ""), flush=True)
                write_json(out, results)


# ----------------------------------------------------------------------------- report
def write_docs(results: dict, docs: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs.mkdir(parents=True, exist_ok=True)
    device = results.get("device", "cpu")  # results before the --device option ran on the CPU
    on_gpu = device.startswith("cuda")
    tag = "" if device == "cpu" else "_" + device.split(":")[0]
    memory = "peak_cuda_mib" if on_gpu else "peak_rss_mib"
    lines = [
        "# Simulation speed: spikeconv against SpikingJelly, sinabs, snnTorch and a plain loop"
        + (f" on {results.get('gpu') or device}" if on_gpu else ""),
        "",
        f"Last run {results['date']} with `{results['command']}` (results: `{out.name}`; each network below names "
        f"the run that measured it), {results['torch_threads']} torch threads on {results['cpu_count']} cores, "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items())
        + f"; fused IF kernel: {'on' if results['kernel'] else 'off'}. Best of {results['repeats']} interleaved runs "
        "(2 at T x batch > 2e5); the step-by-step peers only where T x batch <= the peer budget (they take minutes beyond it on this shared 2-core machine). Throughput in image-steps per second; 'x' columns: how many times "
        "longer the contender took than spikeconv; 'limit': spikeconv's time over T ANN forward "
        "passes done as batched calls (at most 10,000 images per call). "
        + ("Every contender ran on the GPU; each timing ends after torch.cuda.synchronize(). Peak memory: "
           "torch.cuda.max_memory_allocated during one more, untimed run after all timings, above what was "
           "allocated before it. " if on_gpu else "Peak memory: the largest rise of "
        "the resident set (sampled every millisecond) during one more, untimed run after all timings, each in a fresh "
        "process whose glibc maps every allocation above 128 KiB fresh, so that memory freed earlier cannot hide it. ")
        + "**Float weights** (the headline sections): each network's own trained float weights and images "
        "(VGG-16 and ResNet-18: untrained, see their sections). spikeconv's event-driven synapses then add the "
        "weights of the inputs that fired in another order than a dense convolution, so a spike can move where a "
        "membrane lies within float rounding of the threshold; 'same' gives how many images' output spike counts "
        "differ from spikeconv's (docs/results/float_events.md measures this against spikeconv's own step "
        "reference on every test image). **Grid weights** (sections marked 'grid'): weights and images rounded "
        "to multiples of 2^-8, where every sum is exact in any order, so every tool must give identical counts. "
        "'spikeconv dense': spikeconv with `event_driven=False` (on float weights also what `exact=True` runs).",
        "",
    ]
    def order(key: str) -> tuple[bool, int]:  # float weights first, then the grid rows, each in NETWORKS order
        base = key.split(",")[0]
        return results["networks"][key].get("weights", "grid") != "float", NETWORKS.index(base) if base in NETWORKS else 99

    for name in sorted(results["networks"], key=order):
        net = results["networks"][name]
        weights = net.get("weights", "grid")  # runs before the float rows used the grid only
        what = "trained float weights" if weights == "float" and net.get("trained", True) else (
            "untrained float weights" if weights == "float" else "weights and images on a 2^-8 grid")
        lines += [f"## {name} (input {'x'.join(map(str, net['input_shape']))}; {what})", ""]
        if "command" in net:
            lines += [f"Measured {net['date']} with `{net['command']}`.", ""]
        if net.get("firing_rates"):
            rates = net["firing_rates"]
            layers = ", ".join(f"{k} {v:.1%}" for k, v in rates.items() if k != "all")
            lines += [f"Firing rates (spikes per neuron per step, 100 images, T = 100): {rates['all']:.1%} over all "
                      f"neurons; per layer {layers}.", ""]
        peers = [k for k in ("spikeconv dense", "plain loop", "SpikingJelly", "sinabs", "snnTorch")]
        header = "| T | batch | spikeconv img·steps/s | limit |"
        header += "".join(f" {p} img·steps/s | x | same |" for p in peers)
        lines += [header, "|" + "---|" * (header.count("|") - 1)]
        for size in net["sizes"]:
            r = size["results"]
            ours = r["spikeconv"]
            row = f"| {size['T']} | {size['batch']} | {ours['image_steps_per_s']:,.0f} | {ours['over_limit']:.2f} |"
            for p in peers:
                if p in r:
                    same = "yes" if r[p]["identical"] else f"{r[p]['images_with_different_counts']} of {size['batch']} differ"
                    row += f" {r[p]['image_steps_per_s']:,.0f} | {r[p]['spikeconv_speedup']:.1f} | {same} |"
                else:
                    row += " not run | | |"
            lines.append(row)
        contenders = ("spikeconv", *peers, "ANN limit")
        lines += ["", "Peak memory (MiB above " + ("what was allocated on the GPU before the run" if on_gpu else "the process's resting level") + "):", ""]
        lines += ["| T | batch | " + " | ".join(contenders) + " |", "|" + "---|" * (len(contenders) + 2)]
        for size in net["sizes"]:
            r = size["results"]
            cells = [f"{r[k][memory]:.0f}" if k in r and memory in r[k] else "not run" for k in contenders]
            lines.append(f"| {size['T']} | {size['batch']} | " + " | ".join(cells) + " |")
        lines += ["", "How each peer was configured:", ""]
        lines += [f"- {k}: {v}" for k, v in net["notes"].items() if v]
        lines.append("")
        for axis, fixed_key, fixed in (("T", "batch", 100), ("batch", "T", 100)):
            points = [s for s in net["sizes"] if s[fixed_key] == fixed]
            if len(points) < 2:
                continue
            fig, ax = plt.subplots(figsize=(5.5, 3.8))
            for key in CONTENDERS:
                xs = [s[axis] for s in points if key in s["results"]]
                ys = [s["results"][key]["image_steps_per_s"] for s in points if key in s["results"]]
                if xs:
                    ax.plot(xs, ys, marker="o", label=key, linestyle="--" if key == "ANN limit" else "-")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(axis)
            ax.set_ylabel("image·steps / s")
            ax.set_title(f"{name}, {fixed_key} = {fixed}, " + (device if on_gpu else f"{results['torch_threads']} threads"))
            ax.legend(fontsize=8)
            fig.tight_layout()
            png = docs / f"speed{tag}_{name.replace(', ', '_')}_vs_{axis}.png"
            fig.savefig(png, dpi=110)
            plt.close(fig)
            lines += [f"![{name}: throughput against {axis}]({png.name})", ""]
    notes = Path(__file__).with_name(f"notes{tag}.md")  # what a human read into this run, kept across reruns
    if notes.is_file():
        lines += ["", notes.read_text().rstrip()]
    write_text(docs / f"speed{tag}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
