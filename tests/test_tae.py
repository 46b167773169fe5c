"""TAE, MVAE, MIWAE and the evaluation ELBO: the maths of MODELS.md §1, checked piece by piece."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mvimpute.batch import MultiViewBatch
from mvimpute.models import eval_elbo, tae, vae
from mvimpute.models.base import ViewInfo, build_model, gaussian_entropy
from mvimpute.models.posterior import kl_gaussians, kl_standard_normal

VIEWS = [ViewInfo("a", 6), ViewInfo("b", 4)]
SMALL = {"latent_dim": 4, "hidden": 32}
SMALL_TAE = {**SMALL, "prior_latent_dim": 2, "prior_hidden": 16}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_batch(n: int = 128, missing: float = 0.3, seed: int = 0) -> tuple[MultiViewBatch, MultiViewBatch]:
    """(truth, corrupted): a 2-d manifold in two views, MCAR entries, a few whole views gone."""
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(n, 2))
    a = np.tanh(t @ rng.normal(size=(2, 6))) + 0.1 * rng.normal(size=(n, 6))
    b = np.sin(t @ rng.normal(size=(2, 4))) + 0.1 * rng.normal(size=(n, 4))
    truth = {"a": a, "b": b}
    corrupted = {}
    for v, x in truth.items():
        x = x.copy()
        x[rng.random(x.shape) < missing] = np.nan
        corrupted[v] = x
    corrupted["b"][:10] = np.nan  # whole view missing
    corrupted["a"][10:15] = np.nan
    return MultiViewBatch.from_arrays(truth), MultiViewBatch.from_arrays(corrupted)


def make(name: str, **kw):
    torch.manual_seed(0)
    base = SMALL_TAE if name == "tae" else SMALL
    return build_model(name, VIEWS, **{**base, **kw})


# ----------------------------------------------------------------------------- pieces


def test_gaussian_entropy_matches_torch():
    torch.manual_seed(0)
    mu, logvar = torch.randn(7, 5), torch.randn(7, 5) * 2
    expected = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).entropy().sum(-1)
    torch.testing.assert_close(gaussian_entropy(logvar), expected)


def test_kl_helpers_match_torch():
    torch.manual_seed(1)
    mq, lq, mp, lp = (torch.randn(6, 3) for _ in range(4))
    N = torch.distributions.Normal
    q, p = N(mq, torch.exp(0.5 * lq)), N(mp, torch.exp(0.5 * lp))
    torch.testing.assert_close(kl_gaussians(mq, lq, mp, lp), torch.distributions.kl_divergence(q, p).sum(-1))
    std = N(torch.zeros(6, 3), torch.ones(6, 3))
    torch.testing.assert_close(kl_standard_normal(mq, lq), torch.distributions.kl_divergence(q, std).sum(-1))


def _penalty_at(mean_value: float, C: float = 10.0, lam: float = 2.0):
    value = torch.tensor(mean_value, requires_grad=True)
    offsets = torch.tensor([-1.5, 0.5, 1.0])  # zero mean: the batch mean of log r − log q is `value`
    log_q = torch.tensor([3.0, -2.0, 0.7])
    log_r = log_q + value + offsets
    penalty, cond = tae.reduced_entropy_penalty(log_r, log_q, C, lam)
    penalty.backward()
    return float(penalty.detach()), float(cond.detach()), float(value.grad)


def test_reduced_entropy_penalty_zero_at_C_and_gradient_signs():
    penalty, cond, _ = _penalty_at(10.0)
    assert cond == pytest.approx(10.0)
    assert penalty == pytest.approx(0.0, abs=1e-6)
    # below C: minimising the penalty raises the condition (dP/dvalue = −λ); above C: lowers it
    penalty, cond, grad = _penalty_at(7.0)
    assert penalty == pytest.approx(2.0 * 3.0, rel=1e-5) and grad == pytest.approx(-2.0)
    penalty, cond, grad = _penalty_at(12.5)
    assert penalty == pytest.approx(2.0 * 2.5, rel=1e-5) and grad == pytest.approx(2.0)
    # the penalty acts on the batch mean, not per sample: zero although samples differ from C
    log_q = torch.zeros(4)
    assert float(tae.reduced_entropy_penalty(log_q + torch.tensor([0.0, 20.0, 5.0, 15.0]), log_q, 10.0, 2.0)[0]) == 0.0


def test_gamma_schedule_boundaries():
    g = lambda p: tae.gamma_schedule(p, gamma0=0.01, start=0.1, end=0.2)  # noqa: E731
    assert g(0.0) == 0.01
    assert g(0.1) == 0.01
    assert g(0.15) == pytest.approx((0.01 + 1.0) / 2)
    assert g(0.2) == 1.0
    assert g(1.0) == 1.0
    assert g(0.12) < g(0.18)


def test_config_from_kwargs_and_validation():
    m = build_model("tae", VIEWS, C=5.0, lam=3.0, **SMALL_TAE)
    assert isinstance(m, tae.TAE) and m.config.C == 5.0 and m.config.lam == 3.0
    with pytest.raises(ValueError, match="bogus"):
        build_model("tae", VIEWS, bogus=1)
    with pytest.raises(ValueError, match="noise"):
        build_model("tae", VIEWS, noise="sometimes")
    with pytest.raises(ValueError, match="warmup"):
        build_model("tae", VIEWS, warmup_start=0.5, warmup_end=0.2)
    assert build_model("miwae", VIEWS, K=5, **SMALL).config.K == 5


# ----------------------------------------------------------------------------- TAE objective


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"noise": "inferred", "warmup_start": 0.1, "warmup_end": 0.2},
        {"noise": "fixed"},
        {"noise": "learned", "posterior_conditions_on_y": True},
        {"latent_logvar_cap": None},
    ],
)
def test_tae_loss_components_and_gradients(kw):
    _, batch = make_batch()
    model = make("tae", **kw)
    out = model.loss(batch, progress=0.15)
    expected = {
        "log_lik",
        "prior_elbo",
        "entropy_z",
        "entropy_x",
        "condition_value",
        "C",
        "penalty",
        "gamma",
        "beta",
        "log_r",
        "log_q",
        "objective",
    }
    assert expected <= set(out.components)
    comps = out.detached()
    assert all(math.isfinite(v) for v in comps.values())
    c = model.config
    assert comps["gamma"] == pytest.approx(tae.gamma_schedule(0.15, c.gamma0, c.warmup_start, c.warmup_end))
    assert comps["penalty"] == pytest.approx(2.0 * abs(comps["condition_value"] - 10.0), rel=1e-5)
    assert comps["condition_value"] == pytest.approx(comps["log_r"] - comps["log_q"], abs=1e-3)
    g = comps["gamma"]
    recomposed = (
        comps["log_lik"] + g * (comps["prior_elbo"] + comps["entropy_x"]) + comps["entropy_z"] - comps["penalty"]
    )
    assert comps["loss"] == pytest.approx(-recomposed, rel=1e-4, abs=1e-3)
    if kw.get("noise") == "fixed":
        assert comps["beta"] == pytest.approx(0.1, rel=1e-6)
    out.loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    for part in (
        "posterior.encoder",
        "posterior.decoder",
        "auxiliary_posterior",
        "prior_encoder",
        "prior_decoder",
    ):
        assert any(n.startswith(part) for n in grads), part
    if model.config.noise == "inferred":
        assert any(n.startswith("noise_net") for n in grads)


def test_latent_logvar_cap_bounds_q_z():
    _, batch = make_batch()
    model = make("tae", latent_logvar_cap=0.0)
    with torch.no_grad():
        model.posterior.encoder[-1].bias[SMALL_TAE["latent_dim"] :] = 5.0  # push log σ²_z up
        _, lv = model.posterior_z(batch)
    assert float(lv.max()) <= 0.0
    uncapped = make("tae", latent_logvar_cap=None)
    with torch.no_grad():
        uncapped.posterior.encoder[-1].bias[SMALL_TAE["latent_dim"] :] = 5.0
        assert float(uncapped.posterior_z(batch)[1].max()) > 1.0


def train(model, batch: MultiViewBatch, steps: int, lr: float = 3e-3):
    """A few full-batch Adam steps with gradient clipping; returns the model in eval mode."""
    torch.manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for i in range(steps):
        out = model.loss(batch, i / steps)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained_tae():
    _, batch = make_batch(n=256)
    model = make("tae", C=8.0, noise="inferred", warmup_start=0.1, warmup_end=0.2)  # the paper's settings
    with torch.no_grad():
        first = float(model.loss(batch, 0.0).components["condition_value"])
    return train(model, batch, 350), first


def test_tae_short_training_moves_condition_towards_C(trained_tae):
    model, first = trained_tae
    _, batch = make_batch(n=256)
    with torch.no_grad():
        outs = [model.loss(batch, 1.0).detached() for _ in range(5)]
    last = np.mean([o["condition_value"] for o in outs])
    assert all(math.isfinite(v) for o in outs for v in o.values())
    assert abs(last - 8.0) < abs(first - 8.0) - 3.0, (first, last)


# ----------------------------------------------------------------------------- MVAE / MIWAE bounds


def test_miwae_k1_equals_mvae_bound_on_same_draw():
    _, batch = make_batch()
    model = make("miwae")
    eps = torch.randn(len(batch), SMALL["latent_dim"])
    with torch.no_grad():
        iw = vae.miwae_bound(model, batch, 1, eps[None])
        elbo, _, _ = vae.mvae_bound(model, batch, eps, analytic_kl=False)
        torch.testing.assert_close(iw, elbo)
        # the analytic-KL ELBO is the same bound in expectation over the draw
        draws = torch.stack([vae.miwae_bound(model, batch, 1).mean() for _ in range(200)])
        analytic = vae.mvae_bound(model, batch, analytic_kl=True)[0].mean()
    assert float(draws.mean()) == pytest.approx(float(analytic), abs=4 * float(draws.std()) / math.sqrt(200) + 1e-3)


def test_miwae_bound_exceeds_mvae_bound_on_average():
    _, batch = make_batch(n=256)
    model = train(make("mvae"), batch, 200)
    with torch.no_grad():
        iw = torch.stack([vae.miwae_bound(model, batch, 20).mean() for _ in range(5)]).mean()
        elbo = torch.stack([vae.mvae_bound(model, batch)[0].mean() for _ in range(5)]).mean()
    assert float(iw) > float(elbo) + 0.2, (float(iw), float(elbo))


@pytest.mark.parametrize("name", ["mvae", "miwae"])
def test_vae_losses_are_minus_the_bound(name):
    _, batch = make_batch()
    model = make(name)
    out = model.loss(batch)
    key = "elbo" if name == "mvae" else "miwae_bound"
    assert float(out.loss.detach()) == pytest.approx(-float(out.components[key]))
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# ----------------------------------------------------------------------------- evaluation ELBO


def test_evaluation_elbo_rises_and_leaves_posterior_untouched(trained_tae):
    truth, corrupted = make_batch(n=256)
    model = trained_tae[0]
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    value, trace = eval_elbo.evaluation_elbo(model, truth, corrupted, steps=80, lr=1e-2, seed=0, return_trace=True)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters()) and model.training
    assert len(trace) == 80 and math.isfinite(value)
    assert np.mean(trace[-10:]) > np.mean(trace[:10]) + 1.0, (trace[:10], trace[-10:])
    # same seed, same answer
    again = eval_elbo.evaluation_elbo(model, truth, corrupted, steps=80, lr=1e-2, seed=0)
    assert again == pytest.approx(value, rel=1e-5)


def test_evaluation_elbo_works_for_vae_baselines():
    truth, corrupted = make_batch(n=64)
    for name in ("mvae", "miwae"):
        assert math.isfinite(eval_elbo.evaluation_elbo(make(name), truth, corrupted, steps=5, batch_size=32))


# ----------------------------------------------------------------------------- imputation


@pytest.mark.parametrize("name", ["tae", "mvae", "miwae"])
def test_impute_shapes_and_observed_entries(name):
    _, batch = make_batch(n=40)
    model = make(name)
    draws = model.impute(batch, n_samples=7)
    mean = model.impute_mean(batch)
    again = model.impute_mean(batch)  # point imputation is reproducible (seeded draws)
    assert all(torch.equal(mean[v], again[v]) for v in mean)
    assert set(draws) == set(mean) == {"a", "b"}
    for v, info in zip(("a", "b"), VIEWS, strict=True):
        assert draws[v].shape == (7, 40, info.dim)
        assert mean[v].shape == (40, info.dim)
        obs = batch.masks[v].bool()
        assert torch.equal(draws[v][:, obs], batch.values[v][obs].expand(7, -1))
        assert torch.equal(mean[v][obs], batch.values[v][obs])
        assert torch.isfinite(draws[v]).all()
        # missing entries vary between draws
        assert float(draws[v][:, ~obs].std(0).mean()) > 0


def test_miwae_imputes_in_row_chunks(monkeypatch):
    _, batch = make_batch(n=40)
    model = make("miwae", impute_samples=8)
    monkeypatch.setattr(vae, "ROW_CHUNK_ELEMENTS", 8 * 10 * 7)  # 7 rows per chunk
    assert len(model._chunks(batch)) == 6
    draws, mean = model.impute(batch, n_samples=3), model.impute_mean(batch)
    for v in ("a", "b"):
        obs = batch.masks[v].bool()
        assert draws[v].shape == (3, 40, batch.values[v].shape[1])
        assert torch.equal(mean[v][obs], batch.values[v][obs])


def test_tae_denoise_redraws_observed_entries():
    _, batch = make_batch(n=40)
    draws = make("tae", denoise=True).impute(batch, n_samples=3)
    obs = batch.masks["a"].bool()
    assert not torch.equal(draws["a"][:, obs], batch.values["a"][obs].expand(3, -1))


# ----------------------------------------------------------------------------- real training


@pytest.mark.slow
def test_tae_on_digits_beats_column_mean():
    """Noisy digits (σ = 0.1) with 50 % MCAR: TAE's point imputation beats the column mean."""
    import mvimpute as mvi
    from mvimpute.baselines import mean_imputer

    data = mvi.load_dataset("digits-halves")
    c = mvi.masking.corrupt(data, mcar_rate=0.5, noise_std=0.1, seed=0)
    imp = mvi.MultiViewImputer(
        model="tae",
        scalings={"top": "none", "bottom": "none"},  # keep [0, 1]: the noise is the same on every pixel
        epochs=60,
        batch_size=64,
        lr=3e-3,
        progress=False,
        seed=0,
        hidden=64,
        latent_dim=8,
        noise="fixed",
        noise_std=0.1,
        warmup_start=0.5,
        warmup_end=0.7,
    ).fit(c.data.views)
    tae_rmse = mvi.score(imp, c.truth, c.data, n_samples=0)["rmse"]
    mean_rmse = mvi.score(mean_imputer().fit(c.data.views), c.truth, c.data, n_samples=0)["rmse"]
    assert tae_rmse < 0.9 * mean_rmse, (tae_rmse, mean_rmse)
    filled = imp.transform(c.data.views)
    for v, a in c.data.views.items():
        obs = ~np.isnan(a)
        assert np.array_equal(filled[v][obs], a[obs]) and not np.isnan(filled[v]).any()


def test_score_reports_the_evaluation_elbo_for_posterior_models_only():
    import mvimpute as mvi

    data = mvi.load_dataset("synthetic-omics", n_samples=120, dims=(6, 5, 4), seed=2)
    c = mvi.masking.mcar(data, 0.3, seed=0)
    small = dict(epochs=2, progress=False, latent_dim=3)
    mvae = mvi.MultiViewImputer("mvae", hidden=16, **small).fit(c.data)
    s = mvi.score(mvae, c.truth, c.data, n_samples=5, eval_elbo_steps=50)
    assert np.isfinite(s["eval_elbo"])
    jp = mvi.MultiViewImputer("jpvae", hidden=(16, 16), **small).fit(c.data)
    assert "eval_elbo" not in mvi.score(jp, c.truth, c.data, n_samples=5)
