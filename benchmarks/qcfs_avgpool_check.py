"""Is the QCFS miss at T = 8 on Ding's CNN due to the spiking max-pool gates? The same net
with 2x2 average pools instead, QCFS L = 4, trained as benchmarks/low_latency.py trains (8
epochs, Adam 1e-3 cosine, batch 64, seed 0), converted (max-norm, V(0) = theta/2), 10,000
test images, analog input. Prints the ANN and the SNN at T = 1 ... 32 (about 6 min).

    python benchmarks/qcfs_avgpool_check.py   # run from the project root, MNIST in ../shared/datasets

2026-11-29: ANN 98.49 %, SNN 37.93 / 89.21 / 97.48 / 98.18 / 97.84 / 98.44 % at
T = 1 / 2 / 4 / 8 / 16 / 32 (max-pool net: ANN 98.72, T = 8: 97.90 %).
"""

import time

import torch
from torch import nn

import spikeconv
from spikeconv.conversion.activations import QCFS, replace_relus
from spikeconv.io.data import load_dataset
from spikeconv.models import ding_cnn
from spikeconv.training import evaluate_ann

torch.set_num_threads(2)
torch.manual_seed(0)
model = ding_cnn()
for i, m in enumerate(model):
    if isinstance(m, nn.MaxPool2d):
        model[i] = nn.AvgPool2d(2)
model = replace_relus(model, lambda: QCFS(4, 8.0))
tr = load_dataset("mnist", "train", "../shared/datasets")
te = load_dataset("mnist", "test", "../shared/datasets")
epochs, steps = 8, -(-len(tr) // 64)
opt = torch.optim.Adam(model.parameters(), 1e-3)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps)
g = torch.Generator().manual_seed(0)
t0 = time.time()
for e in range(epochs):
    model.train()
    for x, y in tr.batches(64, shuffle=True, generator=g):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
    print(e + 1, evaluate_ann(model, te), f"{time.time() - t0:.0f}s", flush=True)
model.eval()
ann = evaluate_ann(model, te)
snn = spikeconv.convert(model, tr.subset(5000, seed=1).tensors()[0], rule="maxnorm")
r = spikeconv.simulate(snn, te, T=32, batch_size=200)
print("ANN", ann, "SNN", {t: r.accuracy_at(t) for t in (1, 2, 4, 8, 16, 32)}, f"{time.time() - t0:.0f}s")
