"""The training grid is Flux's resolution-shifted schedule, built exactly as stock ModelSamplingFlux builds it."""

from __future__ import annotations

import pytest
import torch

from leapalign.sigmas import flux_sigmas

pytestmark = pytest.mark.comfy


def test_resolution_mu_matches_the_released_setting(pack_import):
    shift = pack_import("nodes.flux_shift")
    assert shift.resolution_mu(720, 720) == pytest.approx(0.7995, abs=1e-4)   # ~0.80 at 720x720
    assert shift.resolution_mu(1024, 1024) == pytest.approx(1.15)
    assert shift.resolution_mu(256, 256) == pytest.approx(0.5)


def test_auto_shift_equals_stock_model_sampling_flux(pack_import, tiny_flux):
    from comfy_extras.nodes_model_advanced import ModelSamplingFlux

    shift = pack_import("nodes.flux_shift")
    adapters = pack_import("nodes.adapters")
    default = adapters.model_sigmas(tiny_flux, "simple", 25)
    auto = shift.training_model(tiny_flux, "auto", 720, 720)
    assert auto is not tiny_flux and shift.has_sampling_patch(auto) and not shift.has_sampling_patch(tiny_flux)
    sigmas = adapters.model_sigmas(auto, "simple", 25)
    (stock,) = ModelSamplingFlux().patch(tiny_flux, 1.15, 0.5, 720, 720)
    assert torch.allclose(sigmas, adapters.model_sigmas(stock, "simple", 25), atol=1e-7)
    assert torch.allclose(sigmas, flux_sigmas(25, 720, 720), atol=1e-4)   # the core's formula agrees
    assert (sigmas[1:-1] < default[1:-1] - 1e-3).all()   # mu 0.80 < the unshifted model's 1.15
    # an upstream ModelSamplingFlux is respected by "auto", overridden by "resolution", kept by "model"
    (other,) = ModelSamplingFlux().patch(tiny_flux, 1.15, 0.5, 256, 256)
    assert shift.training_model(other, "auto", 720, 720) is other
    assert torch.allclose(adapters.model_sigmas(shift.training_model(other, "resolution", 720, 720), "simple", 25),
                          sigmas, atol=1e-7)
    assert shift.training_model(tiny_flux, "model", 720, 720) is tiny_flux
    assert shift.schedule_mu(auto) == pytest.approx(0.7995, abs=1e-4)
    with pytest.raises(ValueError, match="sigma_shift"):
        shift.training_model(tiny_flux, "sideways", 720, 720)
