"""What users pass as data and arguments: every wrong content is an error (or a documented
warning) naming the argument, the value and the fix, never a silent wrong result."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import random_images, small_cnn

import spikeconv
from spikeconv import InputRangeWarning


def _snn(**kwargs):
    return spikeconv.convert(small_cnn(), random_images(40), rule="maxnorm", **kwargs)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_calibration_images_are_refused_naming_the_image(bad):
    images = random_images(30)
    images[17, 0, 3, 4] = bad
    kind = "NaN" if math.isnan(bad) else "infinite"
    with pytest.raises(ValueError, match=f"calibration_data: image 17 holds {kind} values.*nan_to_num"):
        spikeconv.convert(small_cnn(), images, rule="maxnorm")
    batches = [random_images(10), images[10:20], images[20:]]  # the index counts across batches
    with pytest.raises(ValueError, match="image 17 holds"):
        spikeconv.convert(small_cnn(), batches, rule="maxnorm")


def test_non_finite_simulated_images_are_refused_instead_of_predicted_as_class_0():
    snn = _snn()
    images = random_images(12, seed=3)
    images[5] = math.nan
    with pytest.raises(ValueError, match="simulate data: image 5 holds NaN"):
        spikeconv.simulate(snn, (images, torch.zeros(12, dtype=torch.long)), T=5)


@pytest.mark.parametrize("coding", ["poisson", "deterministic"])
@pytest.mark.parametrize("scale, shift", [(255.0, 0.0), (1.0, -0.5)])
def test_spike_codings_refuse_values_outside_0_1(coding, scale, shift):
    snn = _snn()
    images = random_images(8, seed=2) * scale + shift
    with pytest.raises(ValueError, match=rf"coding '{coding}'.*needs values in \[0, 1\].*coding='constant'"):
        spikeconv.simulate(snn, images, T=5, coding=coding)


def test_calibration_outside_0_1_warns_and_analog_input_far_outside_the_calibration_range_warns():
    with pytest.warns(InputRangeWarning, match=r"calibration_data span \[0\.0\d+, 254\.9\], outside \[0, 1\].*Divide 0\.\.255 images by 255"):
        spikeconv.convert(small_cnn(), random_images(40) * 255, rule="maxnorm")
    snn = _snn()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # images like the calibration images: no warning
        spikeconv.simulate(snn, random_images(8, seed=4), T=5)
    with pytest.warns(InputRangeWarning, match="far outside the calibration images' .*preprocess both alike"):
        spikeconv.simulate(snn, random_images(8, seed=4) * 255, T=5)
    # mean/std-normalized images are legal analog input when calibrated alike
    normalized = (random_images(40) - 0.5) / 0.25
    with pytest.warns(InputRangeWarning, match="coding='constant'"):
        snn = spikeconv.convert(small_cnn(), normalized, rule="maxnorm")
    assert snn.info.stats.input_range == pytest.approx((float(normalized.min()), float(normalized.max())))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = spikeconv.simulate(snn, (random_images(8, seed=6) - 0.5) / 0.25, T=20)
    assert result.spikes_per_image.sum() > 0


def test_labels_must_be_class_indices_of_the_network():
    snn = _snn()  # 5 classes
    images = random_images(12, seed=3)
    with pytest.raises(ValueError, match=r"label 7 of image \d+ is not a class of this network, which has 5 outputs"):
        spikeconv.simulate(snn, (images, torch.arange(12) % 8), T=5)
    with pytest.raises(ValueError, match="label -1"):
        spikeconv.simulate(snn, (images, torch.full((12,), -1)), T=5)
    one_hot = torch.nn.functional.one_hot(torch.arange(12) % 5, 5)
    with pytest.raises(ValueError, match=r"look one-hot.*labels.argmax\(1\)"):
        spikeconv.simulate(snn, (images, one_hot), T=5)
    with pytest.raises(TypeError, match=r"integer class indices, got dtype torch.float32: pass labels.long\(\)"):
        spikeconv.simulate(snn, (images, (torch.arange(12) % 5).float()), T=5)
    with pytest.raises(ValueError, match="12 images but labels of shape"):
        spikeconv.simulate(snn, (images, torch.arange(5)), T=5)


def test_convert_names_what_is_not_a_model_and_bad_arguments():
    with pytest.raises(TypeError, match=r"torch.nn.Module, got OrderedDict.*load_state_dict"):
        spikeconv.convert(small_cnn().state_dict(), random_images(10))
    with pytest.raises(ValueError, match="calibration_size must be a positive number"):
        spikeconv.convert(small_cnn(), random_images(10), calibration_size=0)
    with pytest.raises(ValueError, match="v_min must be 'auto', None or a finite number <= 0, got nan"):
        spikeconv.convert(small_cnn(), random_images(10), v_min=math.nan)
    with pytest.raises(TypeError, match="images must be floating point.*x.float\\(\\) / 255"):
        spikeconv.convert(small_cnn(), (random_images(10) * 255).to(torch.uint8))
    with pytest.raises(TypeError, match="calibration_data must be a tensor of images.*not str"):
        spikeconv.convert(small_cnn(), "images.pt")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 2.5}, "batch_size must be an integer >= 1, got 2.5"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"seed": 2**70}, "seed must be below 2\\*\\*62"),
        ({"memory_bytes": 0}, "memory_bytes must be an integer >= 1"),
        ({"fixed_point_bits": 8.0}, "fixed_point_bits must be a non-negative integer"),
    ],
)
def test_simulate_refuses_bad_numbers_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        spikeconv.simulate(_snn(), random_images(4), T=3, **kwargs)
