from __future__ import annotations

import pytest
import torch

from spikeconv.noise import awgn, measured_snr_db, salt_and_pepper


@pytest.mark.parametrize("snr_db", [30, 25, 20, 15, 10, 5])
def test_awgn_has_the_requested_snr_per_image_and_leaves_the_input_alone(snr_db):
    images = torch.rand(6, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    before = images.clone()
    noisy = awgn(images, snr_db, generator=torch.Generator().manual_seed(1))
    assert torch.equal(images, before)
    torch.testing.assert_close(measured_snr_db(images, noisy), torch.full((6,), float(snr_db), dtype=torch.float64))
    again = awgn(images, snr_db, generator=torch.Generator().manual_seed(1))
    assert torch.equal(noisy, again)


def test_salt_and_pepper_density_and_values():
    images = torch.full((20, 3, 32, 32), 0.5)
    noisy = salt_and_pepper(images, 0.09, generator=torch.Generator().manual_seed(0))
    changed = noisy[:, 0] != 0.5
    assert abs(float(changed.double().mean()) - 0.09) < 0.01
    assert set(noisy[noisy != 0.5].unique().tolist()) == {0.0, 1.0}
    assert torch.equal(noisy[:, 0] != 0.5, noisy[:, 2] != 0.5)  # whole pixels, all channels
    assert float(images.max()) == 0.5
    with pytest.raises(ValueError, match="density must be in"):
        salt_and_pepper(images, 1.5)
