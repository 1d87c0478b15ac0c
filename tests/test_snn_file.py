"""The converted-network file (spikeconv.save / spikeconv.load): plain data that
torch.load(weights_only=True) reads, identical spikes after a round trip, every part of
the network and its conversion record kept, foreign / newer / damaged files refused."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import exact, grid_images, small_cnn
from torch import fx, nn

import spikeconv
from spikeconv.conversion.calibration import calibrate_snn
from spikeconv.io import save_torch
from spikeconv.io.snn_file import SNN_VERSION, SNNFileError
from spikeconv.models import ZOO


def _same_network(a: spikeconv.SpikingNetwork, b: spikeconv.SpikingNetwork, images: torch.Tensor, T: int) -> None:
    """Equal settings, conversion record and parameters, and identical spikes in every layer."""
    assert (a.input_shape, a.readout, a.softmax_rate, a.softmax_seed) == (b.input_shape, b.readout, b.softmax_rate, b.softmax_seed)
    assert a.describe() == b.describe()  # thresholds, resets, V_min, initial potentials, mapping, calibration
    for sa, sb in zip(a.spiking_stages, b.spiking_stages, strict=True):
        assert (sa.name, sa.is_output, sa.sources, sa.gate) == (sb.name, sb.is_output, sb.sources, sb.gate)
        assert isinstance(sb.synapse, fx.GraphModule) == isinstance(sa.synapse, fx.GraphModule)
        pa, pb = dict(sa.synapse.named_parameters()), dict(sb.synapse.named_parameters())
        assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) and pa[k].dtype == pb[k].dtype for k in pa)
    ra = spikeconv.simulate(a, images, T=T, record_counts=True)
    rb = spikeconv.simulate(b, images, T=T, record_counts=True)
    assert torch.equal(ra.output_counts, rb.output_counts)
    assert ra.spike_counts is not None and rb.spike_counts is not None
    assert all(torch.equal(ra.spike_counts[k], rb.spike_counts[k]) for k in ra.spike_counts)


def _round_trip(snn: spikeconv.SpikingNetwork, tmp_path, **save_options):
    path = tmp_path / "net.snn.pt"
    spikeconv.save(snn, path, **save_options)
    plain = torch.load(path, weights_only=True)  # no pickled code: plain torch reads it safely
    assert plain["format"] == "spikeconv-snn" and plain["version"] == SNN_VERSION
    return spikeconv.load(path), path


def test_chain_network_round_trips_with_identical_spikes(tmp_path):
    images = grid_images(20)
    snn = exact(spikeconv.convert(small_cnn(), images, rule="nscaling", n=0.5))
    loaded, _ = _round_trip(snn, tmp_path)
    assert loaded.info is not None and snn.info is not None
    assert loaded.info.mapping == snn.info.mapping
    for la, lb in zip(loaded.info.stats.layers, snn.info.stats.layers, strict=True):
        assert torch.equal(la.histogram, lb.histogram) and la.max == lb.max and la.count == lb.count
    _same_network(snn, loaded, images, T=30)


def test_residual_batchnorm_net_with_per_channel_thresholds_and_calibration_round_trips(tmp_path):
    """ResNet-20: graph synapses (additions, shortcuts, scales), folded BatchNorm; the
    channelwise rule's per-channel thresholds; advanced calibration's per-neuron initial
    potentials and its record."""
    torch.manual_seed(0)
    model = ZOO["resnet20"].build().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    images = torch.rand(12, 3, 32, 32)
    snn = spikeconv.convert(model, images, rule="threshold", base="channelwise", p=99.0)
    snn = calibrate_snn(snn, images[:6], T=4, mode="advanced")
    assert any(isinstance(s.synapse, fx.GraphModule) for s in snn.spiking_stages)
    assert any(isinstance(s.neuron.threshold, torch.Tensor) for s in snn.spiking_stages)
    loaded, _ = _round_trip(snn, tmp_path)
    assert loaded.info is not None and loaded.info.calibration == snn.info.calibration  # type: ignore[union-attr]
    _same_network(snn, loaded, images[:4], T=6)


@pytest.mark.parametrize("readout", ["membrane", "softmax"])
def test_maxpool_gates_and_readouts_round_trip(tmp_path, readout):
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 5)
    ).double().eval()
    images = grid_images(10)
    snn = exact(spikeconv.convert(model, images, rule="maxnorm", readout=readout, maxpool_rate="ewma", maxpool_decay=0.8))
    snn.softmax_seed = 7
    assert any(s.gate is not None for s in snn.spiking_stages)
    loaded, _ = _round_trip(snn, tmp_path)
    _same_network(snn, loaded, images, T=20)


def test_ann_record_travels_with_the_network(tmp_path):
    images = grid_images(8)
    model = small_cnn()
    ann = {"arch": "custom", "input_shape": [1, 8, 8], "state_dict": model.state_dict(), "options": {"lr": 0.01}}
    path = tmp_path / "n.pt"
    spikeconv.save(spikeconv.convert(model, images, rule="maxnorm"), path, ann=ann)
    _, record = spikeconv.load(path, with_ann=True)
    assert record["arch"] == "custom" and torch.equal(record["state_dict"]["0.weight"], model[0].weight)


def test_foreign_newer_pickled_and_truncated_files_are_refused(tmp_path):
    snn = spikeconv.convert(small_cnn(), grid_images(8), rule="maxnorm")
    good = tmp_path / "good.pt"
    spikeconv.save(snn, good)
    state = torch.load(good, weights_only=True)

    foreign = tmp_path / "foreign.pt"
    save_torch(foreign, {"weights": torch.zeros(3)})
    with pytest.raises(SNNFileError, match="is not a spikeconv converted network"):
        spikeconv.load(foreign)

    newer = tmp_path / "newer.pt"
    save_torch(newer, state | {"version": SNN_VERSION + 1})
    with pytest.raises(SNNFileError, match="newer spikeconv.*upgrade"):
        spikeconv.load(newer)

    pickled = tmp_path / "pickled.pt"  # what spikeconv 0.1 wrote: the module itself
    torch.save({"format": "spikeconv-snn/1", "snn": snn}, pickled)
    with pytest.raises(ValueError, match="holds pickled Python objects.*weights_only=True"):
        spikeconv.load(pickled)

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated"):
        spikeconv.load(truncated)

    damaged = tmp_path / "damaged.pt"
    save_torch(damaged, state | {"network": {"stages": []}})
    with pytest.raises(SNNFileError, match="damaged"):
        spikeconv.load(damaged)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        spikeconv.load(tmp_path / "missing.pt")


def test_a_layer_the_file_cannot_describe_is_refused_by_name(tmp_path):
    snn = spikeconv.convert(small_cnn(), grid_images(8), rule="maxnorm")
    stage = snn.spiking_stages[0]
    stage.synapse.append(nn.Tanh())
    with pytest.raises(TypeError, match=f"stage {stage.name!r}: cannot save a Tanh layer"):
        spikeconv.save(snn, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(TypeError, match="SpikingNetwork"):
        spikeconv.save(small_cnn(), tmp_path / "x.pt")  # type: ignore[arg-type]


def test_neuron_settings_survive_exactly(tmp_path):
    snn = spikeconv.convert(small_cnn(), grid_images(8), rule="maxnorm", reset="zero", v_min=-2.0)
    first = snn.spiking_stages[0]
    first.neuron = dataclasses.replace(first.neuron, v_init=torch.full((4, 1, 1), 0.25, dtype=torch.float64))
    loaded, _ = _round_trip(snn, tmp_path)
    for a, b in zip(snn.spiking_stages, loaded.spiking_stages, strict=True):
        assert a.neuron.reset == b.neuron.reset == "zero"
        for field in ("threshold", "v_min", "v_init"):
            x, y = getattr(a.neuron, field), getattr(b.neuron, field)
            assert torch.equal(torch.as_tensor(x), torch.as_tensor(y)) and type(x) is type(y)
