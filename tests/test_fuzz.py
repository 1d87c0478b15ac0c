"""Fuzzing the public API's arguments and data content: whatever a user passes, spikeconv
either works or raises one of its documented errors (README, "Errors and warnings") from
its own code with a message, never an IndexError, KeyError, AssertionError, struct.error or
a raw torch error from deep inside."""

from __future__ import annotations

import math
import os
import traceback
import warnings
from pathlib import Path

import pytest
import torch
from conftest import small_cnn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spikeconv

PACKAGE = str(Path(spikeconv.__file__).parent)
DOCUMENTED = (ValueError, TypeError)  # ConversionError and UnsupportedModelError are ValueErrors
FUZZ = settings(
    max_examples=int(os.environ.get("SPIKECONV_FUZZ_EXAMPLES", "120")),
    deadline=None,
    derandomize=os.environ.get("SPIKECONV_FUZZ_RANDOM") is None,  # the same examples in every CI run; raise SPIKECONV_FUZZ_EXAMPLES to search further
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_MODEL = small_cnn(dtype=torch.float32)  # 1x8x8 inputs, 5 classes
_CALIBRATION = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(0))
_SNN = spikeconv.convert(_MODEL, _CALIBRATION, rule="maxnorm")
_SNNS = {readout: spikeconv.convert(_MODEL, _CALIBRATION, rule="maxnorm", readout=readout) for readout in ("spikes", "membrane", "softmax")}
_SNNS["threshold"] = spikeconv.convert(_MODEL, _CALIBRATION, rule="threshold", reset="zero")

special = st.sampled_from([0.0, 1.0, -1.0, 0.5, 255.0, math.nan, math.inf, -math.inf, 1e30, -1e-30])
shapes = st.sampled_from([(3, 8, 8), (1, 28, 28), (8, 8), (1, 8), (64,), (1, 1, 8, 8), (2, 1, 8)])
dtypes = st.sampled_from([torch.float64, torch.uint8, torch.int64, torch.bool, torch.float16])
anything = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 10**4), st.floats(allow_nan=True), st.text(max_size=6),
    st.sampled_from([[], (), {}, object()]),
)  # fmt: skip


def mostly(valid, invalid):
    """``valid`` in four draws of five: each example then breaks one or two arguments and
    gets past the others, deep into conversion and simulation."""
    return st.integers(0, 4).flatmap(lambda k: invalid if k == 0 else valid)


@st.composite
def images(draw):
    """Image tensors: mostly the model's shape and float32 in [0, 1]; otherwise any size,
    shape or dtype, scaled, shifted, or with a special value planted."""
    n = draw(mostly(st.integers(1, 6), st.just(0)))
    shape = draw(mostly(st.just((1, 8, 8)), shapes))
    seed = draw(st.integers(0, 2**16))
    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x * draw(mostly(st.just(1.0), st.sampled_from([255.0, -1.0, 1e-3]))) + draw(mostly(st.just(0.0), st.just(-0.5)))
    if n and draw(mostly(st.just(False), st.just(True))):
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = draw(special)
    return x.to(draw(mostly(st.just(torch.float32), dtypes)))


@st.composite
def labels(draw, n):
    kind = draw(mostly(st.just("ok"), st.sampled_from(["range", "negative", "one-hot", "float", "length", "2d", "none"])))
    y = torch.arange(n) % 5
    return {
        "ok": y,
        "range": y + 5,
        "negative": y - 1,
        "one-hot": torch.nn.functional.one_hot(y, 5),
        "float": y.float(),
        "length": torch.arange(n + 1) % 5,
        "2d": y.view(-1, 1),
        "none": None,
    }[kind]


def _expect_documented(call) -> None:
    """Run ``call``; an exception must be documented and raised in spikeconv's own code."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # warnings are documented behaviour, not failures
        try:
            call()
        except DOCUMENTED as error:
            frames = traceback.extract_tb(error.__traceback__)
            assert frames[-1].filename.startswith(PACKAGE), (
                f"{type(error).__name__} raised outside spikeconv ({frames[-1].filename}:{frames[-1].lineno}): {error}"
            )
            assert str(error), "an error without a message"


@FUZZ
@given(
    data=mostly(images(), st.one_of(images().map(lambda x: [x, x]), images().map(lambda x: (x, x)), anything)),
    rule=mostly(st.sampled_from(list(spikeconv.RULES)), st.text(max_size=5)),
    reset=mostly(st.sampled_from(["subtract", "zero"]), anything),
    v_min=mostly(st.sampled_from(["auto", None, -1.0, 0.0]), st.one_of(st.sampled_from([1.0, math.nan]), anything)),
    readout=mostly(st.sampled_from(["spikes", "membrane", "softmax"]), anything),
    calibration_size=mostly(st.sampled_from([None, 3, 5000]), st.one_of(st.integers(-2, 0), anything)),
    initial_potential=mostly(st.sampled_from(["auto", 0.0, 0.5]), st.one_of(st.floats(-2, 2), anything)),
    options=st.dictionaries(
        st.sampled_from(["n", "p", "base", "ceil_first", "bogus"]),
        st.one_of(st.floats(-1, 101), st.sampled_from(["auto", "maxnorm", "x", None, math.nan, True])),
        max_size=2,
    ),
    then_simulate=st.booleans(),
)
def test_convert_raises_only_documented_errors(
    data, rule, reset, v_min, readout, calibration_size, initial_potential, options, then_simulate
):
    def run() -> None:
        snn = spikeconv.convert(
            _MODEL, data, rule=rule, reset=reset, v_min=v_min, readout=readout, calibration_size=calibration_size,
            initial_potential=initial_potential, **options,
        )
        if then_simulate:
            spikeconv.simulate(snn, torch.rand(3, 1, 8, 8), T=7, coding="poisson")

    _expect_documented(run)


@FUZZ
@given(model=st.one_of(st.just(_MODEL), st.just(_MODEL.state_dict()), anything), data=images())
def test_convert_of_any_object_raises_only_documented_errors(model, data):
    _expect_documented(lambda: spikeconv.convert(model, data, rule="maxnorm"))


@FUZZ
@given(
    x=images(),
    y=st.integers(0, 6).flatmap(labels),
    T=mostly(st.integers(1, 12), st.one_of(st.integers(-1, 0), anything)),
    coding=mostly(st.sampled_from(["constant", "poisson", "deterministic"]), anything),
    seed=mostly(st.integers(0, 2**32), st.one_of(st.integers(-2, 2**64), anything)),
    batch_size=mostly(st.integers(1, 7), st.one_of(st.integers(-1, 0), anything)),
    method=mostly(st.sampled_from(["fast", "reference"]), st.text(max_size=4)),
    fixed=mostly(st.sampled_from([None, 16]), st.sampled_from([1, 4, 2.5, -3])),
    snn=st.sampled_from(["spikes", "membrane", "softmax", "threshold"]),
)
def test_simulate_raises_only_documented_errors(x, y, T, coding, seed, batch_size, method, fixed, snn):
    data = x if y is None or not len(x) else (x, y[: len(x)] if len(y) > len(x) + 1 else y)
    network = _SNNS[snn]
    _expect_documented(
        lambda: spikeconv.simulate(
            network, data, T=T, coding=coding, seed=seed, batch_size=batch_size, method=method, fixed_point_bits=fixed
        )
    )


_TRACED = spikeconv.trace(_MODEL, (1, 8, 8))
_STATS = spikeconv.calibrate(_TRACED, _CALIBRATION)


@FUZZ
@given(
    model=mostly(st.just(_MODEL), anything),
    shape=mostly(st.just((1, 8, 8)), st.one_of(shapes, st.lists(st.integers(-1, 9), max_size=4), anything)),
    data=images(),
    max_images=mostly(st.sampled_from([None, 2, 100]), st.one_of(st.integers(-2, 0), anything)),
    stats=mostly(st.just(_STATS), anything),
    rule=mostly(st.sampled_from(list(spikeconv.RULES)), st.one_of(st.text(max_size=5), anything)),
    options=st.dictionaries(
        st.sampled_from(["n", "p", "base", "ceil_first", "maxpool_rate", "maxpool_decay", "softmax_rate"]),
        st.one_of(st.floats(-1, 101), st.sampled_from(["auto", "maxnorm", "ewma", None, math.nan, True]), anything),
        max_size=2,
    ),
)
def test_the_phases_raise_only_documented_errors(model, shape, data, max_images, stats, rule, options):
    """trace, calibrate and build_snn, each with its own bad arguments."""
    _expect_documented(lambda: spikeconv.trace(model, shape))
    _expect_documented(lambda: spikeconv.calibrate(_TRACED, data, max_images=max_images))
    _expect_documented(lambda: spikeconv.build_snn(_TRACED, stats, rule, **options))


def test_the_fuzz_check_itself_catches_undocumented_errors():
    """The helper fails on a documented type raised outside spikeconv (torch's own
    ValueError) and lets any other type through to fail the test."""
    with pytest.raises(AssertionError, match="raised outside spikeconv"):
        _expect_documented(lambda: torch.Generator().manual_seed(2**70))
    with pytest.raises(RuntimeError):
        _expect_documented(lambda: torch.histc(torch.tensor([math.inf, 1.0]), bins=4))
    _expect_documented(lambda: spikeconv.simulate(_SNN, torch.rand(2, 1, 8, 8), T=0))  # spikeconv's own: passes
