"""Does a max-pool without memory (``maxpool_rate="spikes"``: each step's max-pool of the
spikes, as SpikingJelly's converter and Bu et al.'s QCFS code treat a max-pool) convert
the quarter-width VGG-16 of benchmarks/low_latency.py better at low T than the rate gate
(``count``, Rueckauer Sec. 3.6)? Its threshold-ReLU net (max-norm) and its ReLU net
(clip-floor MSE thresholds for T = 32, V(0) = theta/2), 1,000 seeded CIFAR-10 test images,
analog input, accuracy at T = 4 ... 64. Then where the rate error enters (count gates):
per stage, ||rate(T = 32) - clip(ideal rate, 0, 1)|| / ||clip(ideal rate, 0, 1)|| on 100
test images, ideal = the ANN's activation over the threshold, for the ReLU net with MSE
thresholds and after advanced calibration (G: a max-pool gate); for a clip-activation net
(``--variants qcfs4``), ideal = each stage's clipped rate if every stage before it fired
exactly its own, at T = 8 and 32. Needs the trained nets (benchmarks/runs/
low_latency_trained/, else the training checkpoints; about 5 min per variant).

    python benchmarks/maxpool_rate_check.py   # from the project root, CIFAR-10 in ../shared/datasets
    python benchmarks/maxpool_rate_check.py --variants qcfs4
    python benchmarks/maxpool_rate_check.py --net resnet20-cifar --variants relu   # no gates: errors only

2026-11-29 (1 thread): no. The gate without memory is ahead by at most 5.3 pt at T <= 16 and
behind from T = 32 (64.10 against 66.70 %; 39.90 against 48.20 % on the ReLU net):

    threshold maxnorm count   ANN 80.30 T=4:9.00 T=8:9.00 T=16:40.30 T=32:66.70 T=64:76.50
    threshold maxnorm spikes  ANN 80.30 T=4:9.00 T=8:9.20 T=16:45.60 T=32:64.10 T=64:70.00
    relu mse count            ANN 80.00 T=4:18.50 T=8:26.90 T=16:36.70 T=32:48.20 T=64:63.40
    relu mse spikes           ANN 80.00 T=4:20.10 T=8:27.10 T=16:33.80 T=32:39.90 T=64:44.80

The first gate almost triples the error of the layer before it (0.09 -> 0.26 after
calibration); it stays at 0.2-0.4 from there and grows at the classifier:

    mse      0:0.06 3:0.10 6G:0.27 7:0.25 10:0.29 13G:0.33 14:0.34 ... 43G:0.35 45:0.39 48:0.43 51:0.56
    advanced 0:0.06 3:0.09 6G:0.26 7:0.22 10:0.24 13G:0.28 14:0.27 ... 43G:0.31 45:0.31 48:0.36 51:0.45

2026-12-08 (--variants qcfs4, 1 thread): QCFS L = 4 (V(0) = theta/2) is behind its ANN by
11.3 pt at T = 8 and 3.9 pt at T = 32 on these 1,000 images; the gate without memory is
worse at every T (54.10 against 60.90 % at T = 8). The first gate doubles the error at
T = 8 and quadruples it at T = 32; the error then grows with depth:

    qcfs4 maxnorm count   ANN 72.20 T=4:57.10 T=8:60.90 T=16:65.70 T=32:68.30 T=64:72.40
    qcfs4 maxnorm spikes  ANN 72.20 T=4:54.00 T=8:54.10 T=16:53.40 T=32:51.40 T=64:51.00
    T=8  0:0.07 3:0.11 6G:0.22 7:0.22 10:0.23 13G:0.28 ... 33G:0.40 34:0.42 37:0.48 40:0.59 43G:0.53 ... 51:0.52
    T=32 0:0.02 3:0.03 6G:0.13 7:0.12 10:0.12 13G:0.15 ... 33G:0.22 34:0.23 37:0.27 40:0.35 43G:0.31 ... 51:0.33

2026-12-08 (--net resnet20-cifar --variants relu --no-advanced, 1 thread, beside a training):
ResNet-20 has no gates, yet with clip-floor MSE thresholds its error at T = 32 grows with
depth as VGG-16/4's does with them, stepping up at the two downsampling blocks (layers.3,
layers.6; relu_8 / relu_14 are their outputs after the shortcut's addition) to 0.46 in the
last block and 0.62 at the classifier:

    mse conv1:0.07 layers.0.conv1:0.12 layers.0.conv2:0.12 layers.1.conv1:0.18 ... layers.3.conv1:0.21
        relu_8:0.22 layers.4.conv1:0.29 ... layers.6.conv1:0.35 relu_14:0.38 layers.7.conv1:0.44
        layers.7.conv2:0.41 layers.8.conv1:0.50 layers.8.conv2:0.46 linear:0.62
"""

import argparse
from pathlib import Path

import torch

import spikeconv
from spikeconv.conversion.calibration import calibrate_snn
from spikeconv.io.data import load_dataset
from spikeconv.training import evaluate_ann, load_model

HERE = Path(__file__).resolve().parent
# each variant's conversion: the ReLU net gets clip-floor MSE thresholds, the others their own clip
CONVERSION = {"relu": ("mse", {"T": 32, "initial_potential": 0.5})}

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument(
    "--net", default="vgg-cifar", choices=("vgg-cifar", "vgg-avg-cifar", "resnet20-cifar"),
    help="which low_latency.py net; one without max-pools gets the per-stage error tables only",
)  # fmt: skip
parser.add_argument("--variants", default="threshold,relu", help="low_latency.py variants of --net (trained)")
parser.add_argument(
    "--advanced", action=argparse.BooleanOptionalAction, default=True,
    help="also the ReLU net's errors after advanced calibration (minutes on ResNet-20)",
)  # fmt: skip
parser.add_argument("--threads", type=int, default=1)
args = parser.parse_args()
torch.set_num_threads(args.threads)
test = load_dataset("cifar10", "test", "../shared/datasets").subset(1000, seed=0)
calibration = load_dataset("cifar10", "train", "../shared/datasets").subset(1000, seed=1).tensors()[0]
images = test.subset(100, seed=0).tensors()[0]


def trained(variant: str) -> torch.nn.Module:
    """The committed trained ANN, else the (uncommitted) training checkpoint."""
    path = HERE / "runs" / "low_latency_trained" / f"{args.net}-{variant}.pt"
    if not path.exists():
        path = HERE / "runs" / "low_latency" / f"{args.net}-{variant}.pt"
    return load_model(path)[0].eval()


def stage_errors(net: spikeconv.SpikingNetwork, T: int, ideals: list[torch.Tensor]) -> str:
    """Per stage: ||rate(T) - clip(ideal, 0, 1)|| / ||clip(ideal, 0, 1)|| on ``images``."""
    counts = spikeconv.simulate(net, images, T=T, record_counts=True, progress=False).spike_counts
    errors = []
    for stage, ideal in zip(net.spiking_stages, ideals, strict=True):
        ideal = ideal.double().clamp(0, 1)
        error = float((counts[stage.name].double() / T - ideal).norm() / ideal.norm())
        errors.append(f"{stage.name}{'G' if stage.gate is not None else ''}:{error:.2f}")
    return " ".join(errors)


for variant in args.variants.split(","):
    model = trained(variant)
    rule, options = CONVERSION.get(variant, ("maxnorm", {}))
    ann = evaluate_ann(model, test)
    snn = spikeconv.convert(model, calibration, rule=rule, **options)  # count gates
    for rate in ("count", "spikes") if any(stage.gate is not None for stage in snn.spiking_stages) else ():
        net = snn if rate == "count" else spikeconv.convert(model, calibration, rule=rule, maxpool_rate=rate, **options)
        result = spikeconv.simulate(net, test, T=64, batch_size=200, progress=False)
        steps = " ".join(f"T={t}:{result.accuracy_at(t):.2f}" for t in (4, 8, 16, 32, 64))
        print(f"{variant} {rule} {rate:7s} ANN {ann:.2f} {steps}", flush=True)
    if variant == "relu":
        print("mse     ", stage_errors(snn, 32, snn.analog_forward(images)), flush=True)
        if args.advanced:
            net = calibrate_snn(snn, calibration, T=32, mode="advanced")
            print("advanced", stage_errors(net, 32, net.analog_forward(images)), flush=True)
    else:
        ideals = snn.analog_forward(images, clip=True)  # each stage's clipped rate if those before fired theirs
        for T in (8, 32):
            print(f"{variant} T={T}", stage_errors(snn, T, ideals), flush=True)
