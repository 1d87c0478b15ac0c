"""Models from outside the zoo: a Python factory with a state dict, a torch.export program,
per-channel normalization folded into the first synapse, image folders as data, and the
CLI that takes them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import spikeconv
from spikeconv.cli import main
from spikeconv.conversion.graph import UnsupportedModelError
from spikeconv.io.user_models import load_user_model, with_normalization


class _ResidualNet(nn.Module):
    """Conv, BatchNorm, functional ReLU and max-pool, a residual addition, average pool,
    a global mean, a view-flatten and dropout: what a user's export holds."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.max_pool2d(F.relu(self.bn(self.conv1(x))), 2)
        y = torch.relu(self.conv2(y)) + y
        y = F.avg_pool2d(y, 2).mean(dim=(2, 3))
        return self.fc(self.drop(y.view(y.size(0), -1)))


def _residual_net() -> nn.Module:
    torch.manual_seed(0)
    model = _ResidualNet().eval()
    model.bn.running_mean.uniform_(-0.3, 0.3)
    model.bn.running_var.uniform_(0.5, 2.0)
    return model


def _export(model: nn.Module, path, shape=(3, 16, 16)):
    program = torch.export.export(model, (torch.rand(1, *shape),))
    torch.export.save(program, str(path))
    return path


def test_exported_program_is_rebuilt_from_standard_layers_and_converts(tmp_path):
    model = _residual_net()
    imported = load_user_model(_export(model, tmp_path / "net.pt2"))
    assert imported.meta["input_shape"] == (3, 16, 16)
    assert {type(m) for m in imported.children()} == {nn.Conv2d, nn.BatchNorm2d, nn.Linear}
    assert {name for name, _ in imported.named_children()} == {"conv1", "bn", "conv2", "fc"}  # the user's names
    x = torch.rand(7, 3, 16, 16)  # another batch size than the export's
    # the same float operations in the same order; 1e-6 allows another kernel choice
    torch.testing.assert_close(imported(x), model(x), atol=1e-6, rtol=1e-5)
    snn = spikeconv.convert(imported, x)
    assert snn.spiking_stages[0].name == "conv1"
    rates = snn.analog_forward(x)[-1]
    ann = model(x)
    assert torch.equal(rates.argmax(1), ann.argmax(1))  # the conversion keeps the ANN's decisions


def test_exported_program_with_an_unsupported_op_names_it(tmp_path):
    class Sigmoid(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.sigmoid(x.flatten(1)))

    path = tmp_path / "s.pt2"
    torch.export.save(torch.export.export(Sigmoid().eval(), (torch.rand(1, 1, 2, 2),)), str(path))
    with pytest.raises(UnsupportedModelError, match=r"node 'sigmoid' of .*s\.pt2.*calls aten\.sigmoid"):
        load_user_model(path)
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="cannot be read as a torch.export program"):
        load_user_model(bad)
    with pytest.raises(ValueError, match="--weights applies to a Python factory"):
        load_user_model(path, tmp_path / "w.pt")


FACTORY = """
from torch import nn

def make_model():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))

def not_a_model():
    return 3
"""


def test_python_factory_with_a_state_dict(tmp_path):
    source = tmp_path / "mynet.py"
    source.write_text(FACTORY)
    torch.manual_seed(3)
    reference = load_user_model(f"{source}:make_model")
    weights = tmp_path / "w.pt"
    torch.save(reference.state_dict(), weights)
    loaded = load_user_model(f"{source}:make_model", weights)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), reference.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match=r"has no function or class 'build'; it defines \['make_model', 'not_a_model'"):
        load_user_model(f"{source}:build")
    with pytest.raises(TypeError, match="returned a int, not a torch.nn.Module"):
        load_user_model(f"{source}:not_a_model")
    with pytest.raises(ValueError, match="name the function"):
        load_user_model(str(source))
    wrong = tmp_path / "wrong.pt"
    torch.save({"0.weight": torch.zeros(4, 1, 3, 3)}, wrong)
    with pytest.raises(ValueError, match=r"does not fit the model: missing \['0.bias'"):
        load_user_model(f"{source}:make_model", wrong)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_user_model(f"{tmp_path / 'nope.py'}:make_model")


def test_normalization_becomes_part_of_the_network():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    wrapped = with_normalization(model, mean, std)
    x = torch.rand(6, 3, 8, 8)
    expected = model((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    torch.testing.assert_close(wrapped(x), expected, atol=1e-5, rtol=1e-5)
    snn = spikeconv.convert(wrapped, x)  # the network takes images in [0, 1]
    assert torch.equal(snn.analog_forward(x)[-1].argmax(1), expected.argmax(1))
    with pytest.raises(ValueError, match="positive"):
        with_normalization(model, mean, [0.2, 0.0, 0.3])


def _write_folder(root, images: torch.Tensor, labels: torch.Tensor, size: int) -> None:
    for k, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / f"class_{int(label)}"
        folder.mkdir(parents=True, exist_ok=True)
        array = (image[0].numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array, mode="L").resize((size, size), Image.Resampling.NEAREST).save(folder / f"{k}.png")


def test_cli_converts_and_evaluates_a_factory_model_on_an_image_folder(tmp_path, digits, digits_model, capsys):
    """The digits net as a user's own code and state dict, its data as PNG folders at 16x16
    (resized to the model's 8x8 by --input-size)."""
    train_set, test_set = digits
    _, _, checkpoint = digits_model
    source = tmp_path / "digits_factory.py"
    source.write_text("from spikeconv.models import digits_net\n\ndef build():\n    return digits_net()\n")
    weights = tmp_path / "weights.pt"
    torch.save(torch.load(checkpoint, weights_only=True)["state_dict"], weights)
    train_x, train_y = train_set.subset(300, seed=0).tensors()
    test_x, test_y = test_set.subset(200, seed=0).tensors()
    _write_folder(tmp_path / "data" / "train", train_x, train_y, 16)
    _write_folder(tmp_path / "data" / "test", test_x, test_y, 16)
    out = tmp_path / "user.snn.pt"
    convert = ["convert", "--model", f"{source}:build", "--data-root", str(tmp_path / "data"), "--rule", "maxnorm",
               "--calibration-size", "200", "--out", str(out), "--quiet"]  # fmt: skip
    assert main([*convert, "--weights", str(weights), "--input-size", "1,8,8"]) == 0
    snn, record = spikeconv.load(out, with_ann=True)
    assert snn.input_shape == (1, 8, 8)
    assert record["format"] == "spikeconv-user-model" and record["dataset"] == "folder"
    assert main(["evaluate", "--snn", str(out), "--data-root", str(tmp_path / "data"), "-T", "60", "--quiet",
                 "--out", str(tmp_path / "r.json")]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "its ANN accuracy is not computed" in printed
    accuracy = float(printed.split("T=60: ")[1].split(" %")[0])
    assert accuracy > 80  # the digits net on its own images, resized 8 -> 16 -> 8
    for extra, message in (
        (["--input-size", "1,8,8"], "pass --weights STATE_DICT"),
        (["--weights", str(weights)], "pass --input-size C,H,W"),
        (["--weights", str(weights), "--input-size", "1,8,8", "--mean", "0.5"], "pass both --mean and --std"),
        (["--weights", str(weights), "--input-size", "1,8,8", "--mean", "0.5,0.5", "--std", "1,1"], "need 1 values"),
    ):
        assert main([*convert, *extra]) == 2
        assert message in capsys.readouterr().err
    assert main(["convert", "--model", str(checkpoint), "--weights", str(weights), "--out", str(out), "--quiet"]) == 2
    assert "apply to your own model" in capsys.readouterr().err


def test_cli_converts_an_exported_program_with_normalization(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 3))
    path = _export(model.eval(), tmp_path / "m.pt2", shape=(3, 8, 8))
    for label in range(3):
        folder = tmp_path / "imgs" / f"c{label}"
        folder.mkdir(parents=True)
        for k in range(4):
            array = np.random.default_rng(10 * label + k).integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(array, mode="RGB").save(folder / f"{k}.png")
    out = tmp_path / "m.snn.pt"
    assert main(["convert", "--model", str(path), "--data-root", str(tmp_path / "imgs"), "--mean", "0.5,0.5,0.5",
                 "--std", "0.25,0.25,0.25", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    snn = spikeconv.load(out)
    assert snn.input_shape == (3, 8, 8)  # read from the program
    x = torch.rand(5, 3, 8, 8)
    expected = model((x - 0.5) / 0.25)
    assert torch.equal(snn.analog_forward(x)[-1].argmax(1), expected.argmax(1))


onnx = pytest.importorskip("onnx")


def _torch_onnx(model: nn.Module, path, shape=(3, 16, 16)):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: no onnxscript needed
        torch.onnx.export(model, (torch.rand(1, *shape),), str(path), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    return path


def test_onnx_file_from_torch_is_rebuilt_and_converts(tmp_path):
    model = _residual_net()
    imported = load_user_model(_torch_onnx(model, tmp_path / "net.onnx"))
    assert imported.meta["input_shape"] == (3, 16, 16)
    x = torch.rand(6, 3, 16, 16)
    torch.testing.assert_close(imported(x), model(x), atol=1e-5, rtol=1e-5)  # BatchNorm folded by the exporter
    snn = spikeconv.convert(imported, x)
    assert torch.equal(snn.analog_forward(x)[-1].argmax(1), model(x).argmax(1))


def _onnx_graph(tmp_path, nodes, initializers, out_shape, name="g.onnx", in_shape=(1, 1, 2, 2)):
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *in_shape[1:]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", *out_shape])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in initializers.items()],
    )  # fmt: skip
    path = tmp_path / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_onnx_matmul_plus_bias_and_scalar_mul_as_other_exporters_write_them(tmp_path):
    from onnx import helper

    rng = np.random.default_rng(0)
    w1, b1, w2 = rng.normal(size=(4, 3)), rng.normal(size=3), rng.normal(size=(3, 2))
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "w1"], ["m"]),
        helper.make_node("Add", ["m", "b1"], ["a"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Constant", [], ["half"], value=onnx.numpy_helper.from_array(np.array(0.5, np.float32))),
        helper.make_node("Mul", ["r", "half"], ["h"]),
        helper.make_node("Gemm", ["h", "w2"], ["y"], transB=0, alpha=2.0),
    ]
    model = load_user_model(_onnx_graph(tmp_path, nodes, {"w1": w1, "b1": b1, "w2": w2}, [2]))
    x = torch.rand(5, 1, 2, 2)
    flat = x.flatten(1).double().numpy()
    expected = 2.0 * (0.5 * np.maximum(flat @ w1 + b1, 0)) @ w2
    torch.testing.assert_close(model(x).double(), torch.from_numpy(expected), atol=1e-5, rtol=1e-5)
    assert {type(m) for m in model.children()} == {nn.Linear}  # the bias Add went into the first Linear


def test_onnx_op_without_a_spiking_equivalent_is_refused_by_name(tmp_path):
    from onnx import helper

    nodes = [helper.make_node("Sigmoid", ["x"], ["s"], name="squash"), helper.make_node("Flatten", ["s"], ["y"])]
    with pytest.raises(UnsupportedModelError, match=r"node 'squash' \(Sigmoid\) of .*g\.onnx cannot be converted"):
        load_user_model(_onnx_graph(tmp_path, nodes, {}, [4]))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not onnx")
    with pytest.raises(ValueError, match="cannot be read as an ONNX model"):
        load_user_model(bad)
