"""Latency is defined so that it means something for the test set's size."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import random_images, small_cnn

import spikeconv
from spikeconv.metrics import latency, latency_margin


def test_latency_margin_is_a_95_percent_confidence_bound_but_at_least_one_image_and_a_tenth_of_a_point():
    # the demo's 359 test images at 98.05 %: the bound is 1.43 pp (5 images)
    assert latency_margin(98.05, 359) == pytest.approx(1.96 * 100 * math.sqrt(0.9805 * 0.0195 / 359))
    assert latency_margin(98.05, 359) > 100 / 359
    assert latency_margin(100.0, 359) == pytest.approx(100 / 359)  # no error at 100 %: one image
    assert latency_margin(99.99, 1_000_000) == 0.1  # a large test set: the 0.1 pp floor
    with pytest.raises(ValueError, match="images must be positive"):
        latency_margin(90.0, 0)
    with pytest.raises(ValueError, match="percentage"):
        latency_margin(190.0, 10)


def test_latency_ignores_flips_of_single_images_on_a_small_test_set():
    images = 359
    one = 100 / images
    curve = torch.tensor([60.0, 90.0, 95.0] + [98.0, 98.0 + one, 98.0 - one] * 30 + [98.0])
    assert latency(curve, 0.1) == len(curve)  # a 0.1 pp margin: the step after the last flipping image
    assert latency(curve, images=images) == 4  # the default margin: settled from step 4
    with pytest.raises(ValueError, match="needs margin= or the number of test images"):
        latency(curve)


def test_simulation_result_reports_latency_with_its_margin():
    snn = spikeconv.convert(small_cnn(), random_images(40), rule="maxnorm", reset="subtract")
    images = random_images(50, seed=3)
    labels = small_cnn()(images).argmax(1)
    result = spikeconv.simulate(snn, (images, labels), T=60)
    assert result.latency_margin == latency_margin(result.final_accuracy, 50)
    assert result.latency() == latency(result.accuracy_curve(), images=50)
    summary = result.to_dict()
    assert summary["latency"] == result.latency() and summary["latency_margin_pp"] == result.latency_margin
    assert result.latency(0.0) >= result.latency()
