"""Common equivalents of the supported operations (a mean as global average pooling, a
clamp as a ReLU, every dropout, a final log-softmax), where unsupported layers of an
nn.Sequential are reported, and the message for inputs of the wrong shape."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import random_images
from torch import nn

import spikeconv
from spikeconv import ConversionError, UnsupportedModelError


class Net(nn.Module):
    """conv -> act -> conv -> act -> pool -> linear on 1x8x8 inputs, with the activation
    and the pooling (which must give [B, 6]) written as the test likes."""

    def __init__(self, act, pool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6, 5)
        self.act, self.pool = act, pool

    def forward(self, x):
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.fc(self.pool(x))


def converts_exactly(model: nn.Module, final=None) -> spikeconv.SpikingNetwork:
    """Convert ``model`` and check the analog network reproduces it up to the output scale
    (and the dropped ``final`` operation)."""
    model = model.double().eval()
    images = random_images(20)
    snn = spikeconv.convert(model, images, rule="maxnorm", reset="subtract")
    scores = snn.analog_forward(images)[-1] * snn.info.mapping.layers[-1].scale
    torch.testing.assert_close(scores if final is None else final(scores), model(images))
    return snn


def synapse_kinds(snn) -> list[list[str]]:
    return [[type(m).__name__ for m in s.synapse.modules() if not list(m.children())] for s in snn.spiking_stages]


# ----------------------------------------------------------------------------- mean = global average pooling

GLOBAL_MEANS = {
    "method dim=": lambda x: x.mean(dim=(2, 3)),
    "method tuple": lambda x: x.mean((2, 3)),
    "method list": lambda x: x.mean([2, 3]),
    "torch.mean": lambda x: torch.mean(x, dim=(2, 3)),
    "negative dims": lambda x: x.mean((-2, -1)),
    "negative dims reversed": lambda x: x.mean(dim=(-1, -2)),
    "mixed dims": lambda x: torch.mean(x, (2, -1)),
}


@pytest.mark.parametrize("pool", GLOBAL_MEANS.values(), ids=GLOBAL_MEANS.keys())
def test_mean_over_height_and_width_is_global_average_pooling(pool):
    snn = converts_exactly(Net(F.relu, pool))
    assert [s.name for s in snn.spiking_stages] == ["conv1", "conv2", "fc"]
    assert synapse_kinds(snn)[-1] == ["AdaptiveAvgPool2d", "Flatten", "Linear"]
    assert snn.spiking_stages[-1].synapse[0].output_size == 1


@pytest.mark.parametrize(
    "pool",
    [lambda x: x.mean((2, 3), keepdim=True).flatten(1), lambda x: torch.mean(x, [-1, -2], True).view(x.size(0), -1)],
    ids=["keepdim kwarg", "keepdim positional"],
)
def test_mean_with_keepdim_adds_no_flatten_of_its_own(pool):
    snn = converts_exactly(Net(F.relu, pool))
    assert synapse_kinds(snn)[-1] == ["AdaptiveAvgPool2d", "Flatten", "Linear"]


def test_mean_pooling_a_residual_sum_converts():
    """The pool and the flatten of a mean keep the scale of a residual sum they read."""

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            a = F.relu(self.conv1(x))
            b = F.relu(self.conv2(a) + a)
            return self.fc(b.mean(dim=(2, 3)))

    converts_exactly(Residual())


class ChannelMean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(64, 5)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).mean(dim=1).flatten(1))


class SequenceMean(nn.Module):
    """Over [B, L, F] inputs (3-D)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)).mean(-2))


def test_mean_over_other_dims_is_refused_saying_what_is_supported():
    with pytest.raises(UnsupportedModelError, match=r"takes the mean over dim 1; only the mean over H and W of a 4-D"):
        spikeconv.trace(ChannelMean().eval(), (1, 8, 8))
    with pytest.raises(UnsupportedModelError, match=r"takes the mean of a 3-D tensor over dim -2; only the mean"):
        spikeconv.trace(SequenceMean().eval(), (4, 8))
    with pytest.raises(UnsupportedModelError, match=r"x\.mean\(dim=\(2, 3\)\)"):
        spikeconv.trace(Net(F.relu, lambda x: x.mean(3).mean(2)).eval(), (1, 8, 8))


# ----------------------------------------------------------------------------- clamp(min=0) = ReLU

RELU_CLAMPS = {
    "method min=": lambda x: x.clamp(min=0),
    "torch.clamp min=": lambda x: torch.clamp(x, min=0),
    "method positional": lambda x: x.clamp(0),
    "torch.clamp positional": lambda x: torch.clamp(x, 0),
    "float zero": lambda x: x.clamp(min=0.0),
    "clamp_min": lambda x: x.clamp_min(0),
    "torch.clamp_min": lambda x: torch.clamp_min(x, 0),
    "torch.clamp_min float": lambda x: torch.clamp_min(x, 0.0),
    "clamp_ in place": lambda x: x.clamp_(min=0),
    "clamp_min_ in place": lambda x: x.clamp_min_(0),
    "clamp_min_ float": lambda x: x.clamp_min_(0.0),
}


@pytest.mark.parametrize("act", RELU_CLAMPS.values(), ids=RELU_CLAMPS.keys())
def test_clamp_at_zero_is_a_relu(act):
    snn = converts_exactly(Net(act, lambda x: x.mean((2, 3))))
    assert [s.name for s in snn.spiking_stages] == ["conv1", "conv2", "fc"]
    assert synapse_kinds(snn) == [["Conv2d"], ["Conv2d"], ["AdaptiveAvgPool2d", "Flatten", "Linear"]]


CLIPPING = {
    "upper bound": lambda x: x.clamp(0, 6),
    "min and max": lambda x: torch.clamp(x, min=0, max=1),
    "max only": lambda x: x.clamp(max=1),
    "negative min": lambda x: x.clamp(min=-1),
    "clamp_min not zero": lambda x: x.clamp_min(0.1),
    "in place with max": lambda x: x.clamp_(0.0, 6.0),
}


@pytest.mark.parametrize("act", CLIPPING.values(), ids=CLIPPING.keys())
def test_clamp_that_is_not_a_relu_is_refused(act):
    with pytest.raises(UnsupportedModelError, match=r"is a clipping activation \(min=.*, max=.*\) that is not a ReLU"):
        spikeconv.trace(Net(act, lambda x: x.mean((2, 3))).eval(), (1, 8, 8))


# ----------------------------------------------------------------------------- dropout in every form


def dropout_model(dropout_4d: nn.Module, dropout_2d: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), dropout_4d, nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), dropout_2d, nn.Linear(16, 5),
    )  # fmt: skip


@pytest.mark.parametrize(
    "dropout_4d, dropout_2d",
    [
        (nn.Dropout2d(0.3), nn.Dropout1d(0.3)),
        (nn.Dropout3d(0.3), nn.AlphaDropout(0.3)),
        (nn.FeatureAlphaDropout(0.3), nn.Dropout(0.3)),
    ],
    ids=["Dropout2d, Dropout1d", "Dropout3d, AlphaDropout", "FeatureAlphaDropout, Dropout"],
)
def test_dropout_modules_are_dropped(dropout_4d, dropout_2d):
    snn = converts_exactly(dropout_model(dropout_4d, dropout_2d))
    assert synapse_kinds(snn) == [["Conv2d"], ["AvgPool2d", "Flatten", "Linear"], ["Linear"]]


class FunctionalDropout(nn.Module):
    def __init__(self, dropout_4d, dropout_2d) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc1 = nn.Linear(64, 16)
        self.fc2 = nn.Linear(16, 5)
        self.dropout_4d, self.dropout_2d = dropout_4d, dropout_2d

    def forward(self, x):
        x = self.dropout_4d(F.relu(self.conv(x)), 0.3, training=self.training)
        x = F.relu(self.fc1(F.avg_pool2d(x, 2).flatten(1)))
        return self.fc2(self.dropout_2d(x, p=0.3, training=self.training))


@pytest.mark.parametrize(
    "dropout_4d, dropout_2d",
    [(F.dropout2d, F.dropout1d), (F.dropout3d, F.alpha_dropout), (F.feature_alpha_dropout, F.dropout)],
    ids=["dropout2d, dropout1d", "dropout3d, alpha_dropout", "feature_alpha_dropout, dropout"],
)
def test_functional_dropouts_are_dropped(dropout_4d, dropout_2d):
    snn = converts_exactly(FunctionalDropout(dropout_4d, dropout_2d))
    assert synapse_kinds(snn) == [["Conv2d"], ["AvgPool2d", "Flatten", "Linear"], ["Linear"]]


def test_functional_dropout_left_in_training_mode_is_refused():
    class Always(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 5)

        def forward(self, x):
            return self.fc(F.dropout1d(x.flatten(1)))  # training=True by default: random in eval mode too

    with pytest.raises(UnsupportedModelError, match=r"dropout1d with training=True .* Pass training=self\.training"):
        spikeconv.trace(Always().eval(), (1, 8, 8))


# ----------------------------------------------------------------------------- a final log-softmax


class Classifier(nn.Module):
    def __init__(self, final) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(64, 5)
        self.final = final

    def forward(self, x):
        return self.final(self.fc(F.avg_pool2d(F.relu(self.conv(x)), 2).flatten(1)))


LOG_SOFTMAXES = {
    "nn.LogSoftmax": nn.LogSoftmax(dim=1),
    "F.log_softmax": lambda x: F.log_softmax(x, dim=1),
    "torch.log_softmax": lambda x: torch.log_softmax(x, 1),
    "method": lambda x: x.log_softmax(-1),
}


@pytest.mark.parametrize("final", LOG_SOFTMAXES.values(), ids=LOG_SOFTMAXES.keys())
def test_final_log_softmax_is_dropped(final):
    model = Classifier(final)
    converts_exactly(model, final=lambda scores: torch.log_softmax(scores, -1))
    traced = spikeconv.trace(model, (1, 8, 8))
    assert traced.final == "log_softmax" and not traced.softmax
    assert [s.name for s in traced.stages] == ["conv", "fc"]


def test_final_softmax_is_still_reported_as_softmax():
    model = Classifier(nn.Softmax(dim=1))
    converts_exactly(model, final=lambda scores: torch.softmax(scores, -1))
    traced = spikeconv.trace(model.eval(), (1, 8, 8))
    assert traced.final == "softmax" and traced.softmax
    assert spikeconv.trace(Classifier(nn.Identity()).double().eval(), (1, 8, 8)).final is None


def test_log_softmax_in_the_middle_is_refused():
    class Middle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(64, 10)
            self.fc2 = nn.Linear(10, 5)

        def forward(self, x):
            return self.fc2(F.log_softmax(self.fc1(x.flatten(1)), dim=1))

    with pytest.raises(UnsupportedModelError, match="is a log-softmax that is not the model's last operation"):
        spikeconv.trace(Middle().eval(), (1, 8, 8))
    inside = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.LogSoftmax(1), nn.Linear(10, 5)).eval()
    with pytest.raises(UnsupportedModelError, match="is a log-softmax that is not the model's last operation"):
        spikeconv.trace(inside, (1, 8, 8))


# ----------------------------------------------------------------------------- where an unsupported layer is


def test_unsupported_layer_of_a_top_level_sequential_names_its_model_path():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)).eval()
    with pytest.raises(UnsupportedModelError) as error:
        spikeconv.convert(model, torch.rand(4, 1, 8, 8))
    message = str(error.value)
    assert "layer '1' is a Tanh" in message
    assert "at model path '1' (inside the top-level Sequential)" in message
    assert "unknown location" not in message


def test_unsupported_layer_of_a_nested_sequential_names_its_model_path():
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.ReLU()))
    model.add_module("head", nn.Sequential(nn.Flatten(), nn.Linear(144, 3)))
    with pytest.raises(UnsupportedModelError) as error:
        spikeconv.convert(model.eval(), torch.rand(4, 1, 8, 8))
    message = str(error.value)
    assert "at model path 'features.1' (inside nn.Sequential 'features')" in message
    assert "unknown location" not in message


def test_layer_of_a_sequential_called_in_the_users_forward_names_the_path_and_the_line():
    class Features(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.ReLU())
            self.fc = nn.Linear(144, 3)

        def forward(self, x):
            return self.fc(self.features(x).flatten(1))

    with pytest.raises(UnsupportedModelError) as error:
        spikeconv.convert(Features().eval(), torch.rand(4, 1, 8, 8))
    message = str(error.value)
    assert "at model path 'features.1' (inside nn.Sequential 'features'), called from " in message
    assert "test_graph_ops.py:" in message and "self.fc(self.features(x).flatten(1))" in message


def test_unsupported_function_still_names_the_users_line():
    model = Net(torch.tanh, lambda x: x.mean((2, 3))).eval()
    with pytest.raises(UnsupportedModelError, match=r"test_graph_ops\.py:\d+ in forward"):
        spikeconv.trace(model, (1, 8, 8))


# ----------------------------------------------------------------------------- inputs of the wrong shape


def test_images_with_the_wrong_number_of_channels_get_one_clear_line(capsys):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)).eval()
    with pytest.raises(ConversionError) as error:
        spikeconv.convert(model, torch.rand(4, 3, 8, 8))
    message = str(error.value)
    assert "\n" not in message
    assert "Sequential does not accept inputs of shape (3, 8, 8)" in message
    assert "to have 1 channels, but got 3 channels" in message  # torch's own first line
    assert "its first weighted layer '0' (Conv2d) expects 1 input channel, i.e. (C, H, W) = (1, H, W)" in message
    assert "While executing" not in message and "Traceback" not in message and "ShapeProp" not in message
    assert "Traceback" not in capsys.readouterr().err  # fx's own dump of the failure is not printed either


def test_wrong_input_shape_of_a_linear_model_names_the_expected_features():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    with pytest.raises(ConversionError) as error:
        spikeconv.trace(model, (1, 7, 7))
    message = str(error.value)
    assert "\n" not in message and "While executing" not in message
    assert "does not accept inputs of shape (1, 7, 7)" in message
    assert "its first weighted layer '1' (Linear) expects 64 input features." in message
