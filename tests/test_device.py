"""Devices: `device="auto"` puts every parameter, buffer and output of each model on the machine's
GPU when CUDA has one, else on the CPU; a device that does not exist is a `ValueError` naming it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mvimpute as mvi
from mvimpute.batch import MultiViewBatch
from mvimpute.models import MODEL_REGISTRY
from mvimpute.training import resolve_device

SMALL = {
    "tae": {"latent_dim": 3, "hidden": 16, "prior_latent_dim": 2, "prior_hidden": 8},
    "jpvae": {"latent_dim": 3, "hidden": [16]},
    "mvae": {"latent_dim": 3, "hidden": 16},
    "miwae": {"latent_dim": 3, "hidden": 16, "K": 4, "impute_samples": 8},
    "mean": {},
    "knn": {"k": 3},
    "mice": {"n_iter": 2, "sweeps": 2},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def views(n: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(n, 2))
    a = t @ rng.normal(size=(2, 4)) + 0.1 * rng.normal(size=(n, 4))
    b = t @ rng.normal(size=(2, 3)) + 0.1 * rng.normal(size=(n, 3))
    a[rng.random(a.shape) < 0.2] = np.nan
    b[:5] = np.nan
    return {"a": a, "b": b}


def on(t: torch.Tensor, expected: torch.device) -> bool:
    return t.device.type == expected.type and (expected.index is None or t.device.index == expected.index)


def test_every_model_has_a_small_config_here():
    assert set(SMALL) == set(MODEL_REGISTRY)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_auto_device_holds_every_parameter_buffer_and_output(name):
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("auto").type == expected.type
    data = views()
    # one epoch of one batch, no validation split: a single optimiser step
    imp = mvi.MultiViewImputer(
        name, device="auto", epochs=1, batch_size=64, val_frac=0.0, calibrate=False, seed=0, **SMALL[name]
    )
    imp.fit(data)
    model = imp.model_
    if not model.one_pass:  # a classic imputer runs no epochs and has no loss
        assert len(imp.history_) == 1 and np.isfinite(imp.history_[0]["train_loss"])
    misplaced = [k for k, t in [*model.named_parameters(), *model.named_buffers()] if not on(t, expected)]
    assert not misplaced, misplaced
    batch = MultiViewBatch.from_arrays(data).to(expected)
    if not model.one_pass:
        assert on(model.loss(batch).loss, expected)
    for kind, result in (("impute", model.impute(batch, 3)), ("impute_mean", model.impute_mean(batch))):
        for v, t in result.items():
            assert on(t, expected), (kind, v, t.device)
    filled = imp.transform(data)
    assert not any(np.isnan(x).any() for x in filled.values())


@pytest.mark.parametrize("device", ["bogus", "gpu", "cuda:x"])
def test_an_unknown_device_is_a_value_error_naming_it(device):
    with pytest.raises(ValueError, match=f"device '{device}'"):
        resolve_device(device)
    with pytest.raises(ValueError, match=f"device '{device}'"):
        mvi.MultiViewImputer("mvae", device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_a_gpu_the_machine_lacks_is_a_value_error_before_training():
    imp = mvi.MultiViewImputer("mvae", device="cuda", epochs=1, **SMALL["mvae"])
    with pytest.raises(ValueError, match="device 'cuda'.*0 CUDA GPU"):
        imp.fit(views())
    assert imp.model_ is None


def test_loading_onto_an_unknown_device_is_a_value_error(tmp_path):
    imp = mvi.MultiViewImputer("mvae", device="cpu", epochs=1, val_frac=0.0, calibrate=False, **SMALL["mvae"])
    imp.fit(views())
    imp.save(tmp_path / "m.pt")
    assert mvi.MultiViewImputer.load(tmp_path / "m.pt", device="auto").model_ is not None
    with pytest.raises(ValueError, match="device 'bogus'"):
        mvi.MultiViewImputer.load(tmp_path / "m.pt", device="bogus")
