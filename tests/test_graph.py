from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import exact, grid_images, random_images, small_cnn
from torch import nn

import spikeconv
from spikeconv import ConversionError, UnsupportedModelError


class Functional(nn.Module):
    """The same network written with functional calls inside forward()."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(36, 3)

    def forward(self, x):
        x = self.pool(F.relu(self.conv(x)))
        x = x.view(x.size(0), -1)
        return self.fc(x)


def test_functional_relu_and_view_are_converted():
    torch.manual_seed(0)
    model = Functional().double().eval()
    images = random_images(20)
    snn = spikeconv.convert(model, images, rule="maxnorm", reset="subtract")
    assert [s.name for s in snn.spiking_stages] == ["conv", "fc"]
    # the converted analog network reproduces the model up to the output scale
    scale = snn.info.mapping.layers[-1].scale
    torch.testing.assert_close(snn.analog_forward(images)[-1] * scale, model(images))


def test_dropout_is_dropped_and_pool_is_folded_into_the_next_synapse():
    snn = spikeconv.convert(small_cnn(), random_images(10))
    kinds = [[type(m).__name__ for m in s.synapse] for s in snn.spiking_stages]
    assert kinds == [["Conv2d"], ["AvgPool2d", "Conv2d"], ["AvgPool2d", "Flatten", "Linear"], ["Linear"]]


def test_spiking_pool_gives_pools_their_own_neurons_with_scale_one():
    snn = exact(spikeconv.convert(small_cnn(), random_images(10), rule="nscaling", reset="zero", spiking_pool=True))
    layers = snn.info.mapping.layers
    assert [l.name for l in layers] == ["0", "2", "3", "5", "7", "10"]
    assert layers[1].factor == 1.0 and layers[3].factor == 1.0
    images = grid_images(5)  # exact sums: the same spikes on any CPU
    fast = spikeconv.simulate(snn, images, T=20, record_trains=True)
    ref = spikeconv.simulate(snn, images, T=20, record_trains=True, method="reference")
    assert all(torch.equal(fast.spike_trains[k], ref.spike_trains[k]) for k in fast.spike_trains)
    assert all(v > 0 for v in fast.spikes_per_layer.values())  # the pools' neurons spike too


def test_the_users_model_is_not_modified():
    model = small_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spikeconv.convert(model, random_images(10), rule="nscaling")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "layer, type_name",
    [(nn.Sigmoid(), "Sigmoid"), (nn.Tanh(), "Tanh"), (nn.LeakyReLU(), "LeakyReLU")],
)
def test_unsupported_module_names_its_path_type_and_the_supported_types(layer, type_name):
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(nn.Conv2d(1, 4, 3), layer, nn.ReLU()))
    model.add_module("head", nn.Sequential(nn.Flatten(), nn.LazyLinear(3)))
    model(torch.rand(1, 1, 8, 8))
    model.eval()
    with pytest.raises(UnsupportedModelError) as error:
        spikeconv.convert(model, torch.rand(4, 1, 8, 8))
    message = str(error.value)
    assert "'features.1'" in message and type_name in message
    assert "Supported: Conv2d, Linear, ReLU, AvgPool2d" in message


def test_unsupported_function_names_the_node():
    class Sig(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 3)

        def forward(self, x):
            return self.fc(torch.sigmoid(x.flatten(1)))

    with pytest.raises(UnsupportedModelError, match="'sigmoid' calls sigmoid"):
        spikeconv.convert(Sig().eval(), torch.rand(4, 1, 8, 8))


def test_untraceable_model_says_why_and_how_to_fix():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 3)

        def forward(self, x):
            if x.sum() > 0:
                x = x * 2
            return self.fc(x.flatten(1))

    with pytest.raises(UnsupportedModelError, match="torch.fx could not trace Branchy.*control flow"):
        spikeconv.convert(Branchy().eval(), torch.rand(4, 1, 8, 8))


def test_nan_or_inf_weights_are_refused_naming_the_layer():
    model = small_cnn()
    with torch.no_grad():
        model[3].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ConversionError, match="layer '3' has NaN or infinite values in its weight"):
        spikeconv.convert(model, random_images(10))
    model = small_cnn()
    with torch.no_grad():
        model[7].bias[0] = float("inf")
    with pytest.raises(ConversionError, match="layer '7' .* bias"):
        spikeconv.convert(model, random_images(10))


def test_input_shape_that_does_not_fit_the_model():
    model = small_cnn()
    with pytest.raises(ConversionError, match=r"does not accept inputs of shape \(1, 28, 28\)"):
        spikeconv.convert(model, torch.rand(4, 1, 28, 28, dtype=torch.float64))
    snn = spikeconv.convert(model, random_images(10))
    with pytest.raises(ValueError, match=r"\[batch, 1, 8, 8\]"):
        spikeconv.simulate(snn, torch.rand(3, 1, 28, 28), T=5)
    with pytest.raises(ValueError, match=r"expected \[T, batch, 1, 8, 8\]"):
        snn(torch.rand(3, 1, 8, 8))


@pytest.mark.parametrize("T", [0, -5, 2.5])
def test_non_positive_T_is_refused(T):
    snn = spikeconv.convert(small_cnn(), random_images(10))
    with pytest.raises(ValueError, match="T .* must be a positive integer"):
        spikeconv.simulate(snn, random_images(2), T=T)


def test_model_in_training_mode_and_empty_calibration_are_refused():
    model = small_cnn().train()
    with pytest.raises(ConversionError, match="training mode"):
        spikeconv.convert(model, random_images(4))
    with pytest.raises(ConversionError, match="calibration data is empty"):
        spikeconv.convert(small_cnn(), [])


def test_dead_layer_is_reported_instead_of_dividing_by_zero():
    model = small_cnn()
    with torch.no_grad():
        model[0].weight.fill_(-1.0)
        model[0].bias.fill_(-1.0)
    with pytest.raises(ConversionError, match="layer '0' produced no positive activation"):
        spikeconv.convert(model, random_images(10))


def test_two_weighted_layers_without_relu_between_form_one_linear_synapse():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Linear(10, 3)).double().eval()
    images = torch.rand(20, 1, 8, 8, dtype=torch.float64)
    snn = spikeconv.convert(model, images, rule="maxnorm", reset="subtract")
    assert len(snn.spiking_stages) == 1
    scale = snn.info.mapping.layers[-1].scale
    torch.testing.assert_close(snn.analog_forward(images)[-1] * scale, model(images))
