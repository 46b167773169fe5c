"""The model interface, checked for every model in the registry."""

import numpy as np
import pytest
import torch

import mvimpute as mvi
from mvimpute.batch import MultiViewBatch
from mvimpute.models import MODEL_REGISTRY, ViewInfo, build_model

SMALL = {
    "jpvae": {"hidden": (16, 16), "latent_dim": 3},
    "tae": {"hidden": 16, "prior_hidden": 8, "latent_dim": 3, "prior_latent_dim": 2},
    "mvae": {"hidden": 16, "latent_dim": 3},
    "miwae": {"hidden": 16, "latent_dim": 3, "K": 4},
    "knn": {"k": 3},
    "mice": {"n_iter": 2, "sweeps": 3},
}
VIEWS = [ViewInfo("rna", 5, "gaussian"), ViewInfo("pixels", 4, "bernoulli"), ViewInfo("counts", 3, "negative_binomial")]


def _batch(n=12, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "rna": rng.normal(size=(n, 5)),
        "pixels": rng.random(size=(n, 4)),
        "counts": rng.poisson(3.0, size=(n, 3)).astype(float),
    }
    for a in arrays.values():
        a[rng.random(a.shape) < 0.2] = np.nan
    arrays["rna"][:3] = np.nan  # whole missing views
    arrays["counts"][3:5] = np.nan
    return MultiViewBatch.from_arrays(arrays)


def _fitted(model, batch):
    """A one-pass model (a classic imputer) is fitted by `after_fit` over training batches."""
    if model.one_pass:
        model.after_fit(lambda: iter([batch]))
    return model


def _model(name):
    return _fitted(build_model(name, VIEWS, **SMALL.get(name, {})), _batch(n=40, seed=5))


@pytest.fixture(params=sorted(MODEL_REGISTRY))
def name(request):
    return request.param


def test_loss_is_finite_and_gradients_flow(name):
    model = _model(name)
    if model.one_pass:  # fitted in one pass: nothing to train, and no loss to pretend with
        assert not list(model.parameters())
        with pytest.raises(TypeError, match="one pass"):
            model.loss(_batch(), progress=0.5)
        return
    out = model.loss(_batch(), progress=0.5)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert all(np.isfinite(v) for v in out.detached().values())
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for n, g in grads.items() if g is None]
    assert not missing, f"no gradient reaches {missing}"
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0


def test_forward_is_loss(name):
    model = _model(name)
    if model.one_pass:
        with pytest.raises(TypeError, match="one pass"):
            model(_batch(), 0.3)
        return
    torch.manual_seed(3)
    a = model(_batch(), 0.3).loss
    torch.manual_seed(3)
    b = model.loss(_batch(), 0.3).loss
    assert torch.equal(a, b)


def test_impute_keeps_observed_entries_bit_identical(name):
    model = _model(name).eval()
    batch = _batch()
    draws = model.impute(batch, n_samples=5)
    point = model.impute_mean(batch)
    for v in batch.views:
        m = batch.masks[v].bool()
        assert draws[v].shape == (5, *batch.values[v].shape)
        assert point[v].shape == batch.values[v].shape
        assert torch.equal(draws[v][:, m], batch.values[v][m].expand(5, -1))
        assert torch.equal(point[v][m], batch.values[v][m])
        assert torch.isfinite(draws[v]).all() and torch.isfinite(point[v]).all()
    # draws differ from each other on missing entries: multiple imputation, not one guess
    miss = ~batch.masks["rna"].bool()
    assert draws["rna"][:, miss].std(0).mean() > 0


def test_imputer_sample_shapes_and_save_load(name, tmp_path):
    data = mvi.load_dataset("synthetic-omics", n_samples=60, dims=(6, 5, 4), seed=1)
    corrupted = mvi.masking.corrupt(data, mcar_rate=0.2, view_rate=0.2, seed=0).data
    imp = mvi.MultiViewImputer(name, epochs=2, batch_size=16, progress=False, **SMALL.get(name, {}))
    imp.fit(corrupted)
    filled = imp.transform(corrupted.views)
    draws = imp.sample(corrupted.views, n_samples=4)
    for v, a in corrupted.views.items():
        obs = ~np.isnan(a)
        assert filled[v].shape == a.shape and not np.isnan(filled[v]).any()
        np.testing.assert_array_equal(filled[v][obs], a[obs])
        assert draws[v].shape == (4, *a.shape)
        np.testing.assert_array_equal(draws[v][:, obs], np.broadcast_to(a[obs], (4, obs.sum())))
    imp.save(tmp_path / "m.pt")
    again = mvi.MultiViewImputer.load(tmp_path / "m.pt")
    for v, a in again.transform(corrupted.views).items():
        np.testing.assert_array_equal(a, filled[v])


def test_unknown_model_and_parameter_are_named():
    with pytest.raises(ValueError, match="nonesuch"):
        mvi.MultiViewImputer("nonesuch")
    with pytest.raises(ValueError, match="alhpa"):
        mvi.MultiViewImputer("jpvae", alhpa=0.9)
    with pytest.raises(ValueError, match="prior"):
        mvi.MultiViewImputer("jpvae", prior="diagonal")


def test_transform_before_fit_is_a_clear_error():
    with pytest.raises(RuntimeError, match="not fitted"):
        mvi.MultiViewImputer("jpvae").transform({"a": np.zeros((2, 2))})


def test_latent_draws_of_a_bounded_view_are_the_censored_draws_before_the_clamp(name):
    """`impute(censored=False)` leaves a `bounded` view's draws unclamped (what calibration scores),
    from the same random stream: clamped to [0, 1] they are the censored draws, bit for bit; other
    views do not change. Calibrated draws and intervals are censored again, fitted or not."""
    views = [ViewInfo("rna", 5, "gaussian"), ViewInfo("grey", 4, "bounded")]
    model = build_model(name, views, **SMALL.get(name, {})).eval()
    rng = np.random.default_rng(0)
    grey = np.clip(rng.normal(0.2, 0.4, size=(12, 4)), 0, 1)
    grey[:4] = np.nan
    rna = rng.normal(size=(12, 5))
    rna[rng.random(rna.shape) < 0.3] = np.nan
    batch = MultiViewBatch.from_arrays({"rna": rna, "grey": grey})
    _fitted(model, batch)
    torch.manual_seed(7)
    censored = model.impute(batch, n_samples=50)
    torch.manual_seed(7)
    latent = model.impute(batch, n_samples=50, censored=False)
    assert torch.equal(latent["rna"], censored["rna"])
    assert torch.equal(latent["grey"].clamp(0, 1), censored["grey"])
    assert bool(((latent["grey"] < 0) | (latent["grey"] > 1)).any())  # not clamped already
    for calibrated in (True, False):
        draws = model.sample_draws(batch, 50, calibrated)["grey"]
        lo, hi = model.intervals(batch, 0.9, 50, calibrated)["grey"]
        for x in (draws, lo, hi):
            assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
