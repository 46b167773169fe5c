"""Predictive draws, likelihoods for bounded data, conformal calibration, CRPS selection, small data.

Every formula is checked against an independent reference (scipy, numpy, Monte Carlo or a hand
computation on a tiny model), never against itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scoringrules as sr
import torch
from scipy import integrate, special, stats

import mvimpute as mvi
from mvimpute import likelihoods as lk
from mvimpute.batch import MultiViewBatch
from mvimpute.checkpoint import load_checkpoint
from mvimpute.models import build_model, eval_elbo
from mvimpute.models.base import ViewInfo
from mvimpute.models.calibration import ConformalCalibration, level_index, scores
from mvimpute.models.defaults import size_defaults
from mvimpute.models.jpvae import cross_shrinkage
from mvimpute.models.posterior import seeded_normal
from mvimpute.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


N_MC = 200_000


def _mc(likelihood: str, raw: torch.Tensor) -> np.ndarray:
    torch.manual_seed(0)
    return lk.sample(likelihood, raw.expand(N_MC, *raw.shape[1:])).double().numpy()


# ----------------------------------------------------------------------------- each likelihood's draws


def test_binary_draws_are_bits_with_bernoulli_moments():
    raw = torch.tensor([[-1.5, 0.0, 2.0]])
    for name in ("binary", "bernoulli"):
        x = _mc(name, raw)
        assert set(np.unique(x)) <= {0.0, 1.0}
        p = special.expit(raw.numpy()[0])
        np.testing.assert_allclose(x.mean(0), p, atol=5e-3)
        np.testing.assert_allclose(x.var(0), p * (1 - p), atol=5e-3)  # a draw that returned p has variance 0
        np.testing.assert_allclose(lk.mean(name, raw).numpy()[0], p, rtol=1e-6)


def test_gaussian_draws_have_the_decoded_mean_and_variance():
    raw = torch.tensor([[0.5, -2.0, 0.4, -1.0]])  # mu = (0.5, -2), logvar = (0.4, -1)
    x = _mc("gaussian", raw)
    np.testing.assert_allclose(x.mean(0), [0.5, -2.0], atol=1e-2)
    np.testing.assert_allclose(x.var(0), np.exp([0.4, -1.0]), rtol=2e-2)  # the soft floor at -9 is negligible


def _censored_reference(mu: float, s: float) -> tuple[float, float, float, float]:
    """Mean, variance, P(0), P(1) of clip(N(mu, s²), 0, 1) by numerical integration (scipy)."""
    p0, p1 = stats.norm.cdf(0, mu, s), stats.norm.sf(1, mu, s)
    m1 = integrate.quad(lambda x: x * stats.norm.pdf(x, mu, s), 0, 1)[0] + p1
    m2 = integrate.quad(lambda x: x**2 * stats.norm.pdf(x, mu, s), 0, 1)[0] + p1
    return m1, m2 - m1**2, p0, p1


@pytest.mark.parametrize("mu, logvar", [(0.1, -2.0), (0.5, -3.0), (0.95, -1.5), (-0.3, -2.5)])
def test_bounded_draws_lie_in_bounds_with_mass_on_them_and_censored_moments(mu, logvar):
    raw = torch.tensor([[mu, logvar]], dtype=torch.float64)
    x = _mc("bounded", raw)[:, 0]
    s = math.exp(0.5 * (lk.LOGVAR_FLOOR + np.logaddexp(0.0, logvar - lk.LOGVAR_FLOOR)))  # softly floored σ
    m, v, p0, p1 = _censored_reference(mu, s)
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_allclose([(x == 0).mean(), (x == 1).mean()], [p0, p1], atol=4e-3)
    assert (x == 0).mean() > 0.01  # mass on the bound, not only near it
    np.testing.assert_allclose(x.mean(), m, atol=3e-3)
    np.testing.assert_allclose(x.var(), v, rtol=3e-2, atol=1e-4)
    d = lk.distribution("bounded", raw)
    np.testing.assert_allclose(float(d.mean), m, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(d.variance), v, rtol=1e-4, atol=1e-7)


def test_bounded_log_prob_is_the_censored_gaussian_and_normalised():
    mu, logvar = 0.3, -2.0
    s = math.exp(0.5 * (lk.LOGVAR_FLOOR + np.logaddexp(0.0, logvar - lk.LOGVAR_FLOOR)))  # softly floored σ
    raw = torch.tensor([mu, logvar], dtype=torch.float64).expand(3, 2)
    y = torch.tensor([[0.0], [0.4], [1.0]], dtype=torch.float64)
    got = lk.log_prob("bounded", raw, y.expand(3, 1).contiguous()).numpy()[:, 0]
    ref = [stats.norm.logcdf(0, mu, s), stats.norm.logpdf(0.4, mu, s), stats.norm.logsf(1, mu, s)]
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    total = math.exp(ref[0]) + math.exp(ref[2]) + integrate.quad(lambda x: stats.norm.pdf(x, mu, s), 0, 1)[0]
    assert abs(total - 1.0) < 1e-8


def test_count_draws_have_poisson_and_negative_binomial_moments():
    raw = torch.tensor([[1.2]])
    x = _mc("poisson", raw)[:, 0]
    rate = np.log1p(np.exp(1.2)) + 1e-6
    assert np.all(x == np.round(x)) and x.min() >= 0
    np.testing.assert_allclose([x.mean(), x.var()], stats.poisson(rate).stats("mv"), rtol=2e-2)
    raw = torch.tensor([[math.log(4.0), math.log(2.5)]])  # mean 4, inverse dispersion 2.5
    x = _mc("negative_binomial", raw)[:, 0]
    ref = stats.nbinom(2.5, 2.5 / (2.5 + 4.0)).stats("mv")
    np.testing.assert_allclose([x.mean(), x.var()], ref, rtol=3e-2)


def test_posterior_model_links_against_scipy():
    mu = torch.tensor([0.2, 0.7], dtype=torch.float64)
    lv = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    s = np.exp(0.5 * lv.numpy())
    one = torch.ones(2, dtype=torch.float64)
    got = lk.link_log_prob("binary", one, mu, lv).numpy()
    np.testing.assert_allclose(got, stats.norm.logsf(0.5, mu.numpy(), s), rtol=1e-6)
    np.testing.assert_allclose(lk.link_mean("binary", mu, lv).numpy(), stats.norm.sf(0.5, mu.numpy(), s), rtol=1e-6)
    torch.manual_seed(0)
    x = lk.link_sample("binary", mu + torch.randn(N_MC, 2, dtype=torch.float64) * torch.as_tensor(s))
    np.testing.assert_allclose(x.mean(0).numpy(), stats.norm.sf(0.5, mu.numpy(), s), atol=5e-3)
    means = [_censored_reference(float(m), float(t))[0] for m, t in zip(mu, s, strict=True)]
    np.testing.assert_allclose(lk.link_mean("bounded", mu, lv).numpy(), means, rtol=1e-5)


# ----------------------------------------------------------------------------- inference and contradictions


def test_inference_binary_bounded_counts_gaussian():
    assert lk.infer_likelihood(np.array([[0, 1, np.nan], [1, 1, 0]], dtype=float)) == "binary"
    assert lk.infer_likelihood(np.array([[0, 0.25, 1.0]])) == "bounded"
    assert lk.infer_likelihood(np.array([[0, 3, 7.0]])) == "negative_binomial"
    assert lk.infer_likelihood(np.array([[-0.1, 0.5]])) == "gaussian"
    data = mvi.MultiViewData({"bits": np.array([[0, 1], [1, 0.0]]), "grey": np.array([[0, 0.5], [1, 0.2]])})
    assert data.likelihoods == {"bits": "binary", "grey": "bounded"}


@pytest.mark.parametrize(
    "likelihood, bad",
    [("binary", 0.5), ("poisson", -1.0), ("negative_binomial", 2.5), ("bounded", 1.5), ("bernoulli", -0.2)],
)
def test_a_contradicting_explicit_likelihood_names_view_and_column(likelihood, bad):
    rng = np.random.default_rng(0)
    ok = rng.integers(0, 2, size=(30, 3)).astype(float)
    x = ok.copy()
    x[4, 2] = bad
    views = {"a": rng.normal(size=(30, 2)), "b": x}
    with pytest.raises(ValueError, match=r"view 'b', column 'b_2'.*" + likelihood):
        mvi.MultiViewImputer("mvae", likelihoods={"b": likelihood}, epochs=1, progress=False).fit(views)
    mvi.MultiViewData({"a": views["a"], "b": ok}, likelihoods={"b": likelihood})  # fitting data is accepted


# ----------------------------------------------------------------------------- JPVAE latent uncertainty


def _jpvae(k=2, d=3, n_views=2, **kw):
    torch.manual_seed(0)
    infos = [ViewInfo(f"v{i}", d, "gaussian") for i in range(n_views)]
    return build_model("jpvae", infos, latent_dim=k, hidden=(8,), **kw), infos


def test_empirical_latent_covariance_adds_mean_encoder_variance():
    model, _ = _jpvae()
    rng = np.random.default_rng(1)
    batch = MultiViewBatch.from_arrays({"v0": rng.normal(size=(64, 3)), "v1": rng.normal(size=(64, 3))})
    model.eval()
    model.after_fit(lambda: iter([batch]))
    with torch.no_grad():
        mus, lvs = model.encode(batch)
    mu = torch.cat(mus, -1).double().numpy()
    var = torch.cat(lvs, -1).exp().double().numpy()
    ref = np.cov(mu, rowvar=False) + np.diag(var.mean(0))  # law of total variance
    np.testing.assert_allclose(model.cond_cov.double().numpy(), ref + 1e-5 * np.eye(4), rtol=1e-4, atol=1e-5)
    assert np.diag(var.mean(0)).trace() > 0.1 * np.trace(ref)  # the encoder term matters here


def test_latent_gaussian_streamed_over_batches_keeps_all_complete_rows(monkeypatch):
    """after_fit sums the complete samples' moments batch by batch (memory flat in the rows): Σ̂ and
    Σ̂ of the means equal numpy's on every sample with both views, in whatever batches they come,
    even where fewer rows than that are kept for the block-wise fit."""
    from mvimpute.models import jpvae

    monkeypatch.setattr(jpvae, "KEEP_ROWS", 50)
    model, _ = _jpvae()
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(300, 3)), rng.normal(size=(300, 3))
    b[rng.random(300) < 0.3] = np.nan  # these rows miss view v1: not in the complete-case moments
    batches = [MultiViewBatch.from_arrays({"v0": a[i : i + 70], "v1": b[i : i + 70]}) for i in range(0, 300, 70)]
    model.eval()
    model.after_fit(lambda: iter(batches))
    whole = MultiViewBatch.from_arrays({"v0": a, "v1": b})
    with torch.no_grad():
        mus, lvs = model.encode(whole)
    complete = ~np.isnan(b).any(1)
    mu = torch.cat(mus, -1).double().numpy()[complete]
    var = torch.cat(lvs, -1).exp().double().numpy()[complete]
    means = np.cov(mu, rowvar=False)
    np.testing.assert_allclose(model.cond_mean.double().numpy(), mu.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.cond_cov_means.double().numpy(), means + 1e-5 * np.eye(4), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        model.cond_cov.double().numpy(), means + np.diag(var.mean(0)) + 1e-5 * np.eye(4), rtol=1e-4, atol=1e-5
    )


def test_blockwise_latent_gaussian_with_few_complete_samples_matches_numpy():
    model, _ = _jpvae(n_views=3)
    rng = np.random.default_rng(3)
    arrays = {f"v{i}": rng.normal(size=(40, 3)) for i in range(3)}
    arrays["v0"][:15] = np.nan
    arrays["v1"][12:27] = np.nan
    arrays["v2"][25:] = np.nan  # no sample has all three views
    batch = MultiViewBatch.from_arrays(arrays)
    model.eval()
    model.after_fit(lambda: iter([batch]))
    assert bool(model.cond_fitted)
    with torch.no_grad():
        mus, lvs = model.encode(batch)
    obs = [~np.isnan(arrays[f"v{i}"][:, 0]) for i in range(3)]
    mu = [m.double().numpy() for m in mus]
    ref_mean = np.concatenate([mu[i][obs[i]].mean(0) for i in range(3)])
    np.testing.assert_allclose(model.cond_mean.double().numpy(), ref_mean, rtol=1e-5, atol=1e-6)
    both = obs[0] & obs[1]
    a, b = mu[0][both] - ref_mean[:2], mu[1][both] - ref_mean[2:4]
    np.testing.assert_allclose(model.cond_cov[2:4, :2].double().numpy(), b.T @ a / (both.sum() - 1), atol=2e-3)
    assert np.linalg.eigvalsh(model.cond_cov.double().numpy()).min() > 0


def _correlated(n, rho, rng):
    """(n, 4) Gaussian rows: two 2-dim blocks with cross-correlation ρ on the diagonal."""
    sigma = np.block([[np.eye(2), rho * np.eye(2)], [rho * np.eye(2), np.eye(2)]])
    return rng.multivariate_normal(np.zeros(4), sigma, size=n), sigma


def test_cross_shrinkage_estimates_the_oracle_intensity():
    # Independent reference: the intensity that minimises E||(1 − λ) r − ρ||² over the cross-view
    # correlations is Σ Var(r) / Σ E[r²]; its moments come from 4,000 simulated data sets.
    rng = np.random.default_rng(0)
    idx = [[0, 1], [2, 3]]
    for n, rho in ((20, 0.3), (40, 0.5), (30, 0.8)):
        rs, lams = [], []
        for _ in range(4000):
            x, _ = _correlated(n, rho, rng)
            rs.append(np.corrcoef(x, rowvar=False)[:2, 2:])
        rs = np.array(rs)
        oracle = rs.var(0).sum() / (rs**2).mean(0).sum()
        for _ in range(300):
            x, _ = _correlated(n, rho, rng)
            obs = torch.ones(n, 2, dtype=torch.bool)
            lams.append(cross_shrinkage(torch.tensor(x), obs, idx))
        assert abs(np.mean(lams) - oracle) < 0.25 * oracle, (n, rho, np.mean(lams), oracle)
    # no coupling to find: mostly shrunk; a strong coupling with many samples: kept
    ones = torch.ones(30, 2, dtype=torch.bool)
    assert np.mean([cross_shrinkage(torch.tensor(rng.normal(size=(30, 4))), ones, idx) for _ in range(200)]) > 0.6
    x, _ = _correlated(3000, 0.8, rng)
    assert cross_shrinkage(torch.tensor(x), torch.ones(3000, 2, dtype=torch.bool), idx) < 0.01


def test_jpvae_shrinks_only_the_cross_view_blocks_and_keeps_a_covariance():
    rng = np.random.default_rng(4)
    base = rng.normal(size=(30, 3))
    arrays = {"v0": base + 0.3 * rng.normal(size=(30, 3)), "v1": base + 0.3 * rng.normal(size=(30, 3))}
    arrays["v1"][:6] = np.nan
    batch = MultiViewBatch.from_arrays(arrays)
    fitted = {}
    for lam in (0.0, 0.4, "auto"):
        model, _ = _jpvae(cross_shrinkage=lam)
        model.eval()
        model.after_fit(lambda: iter([batch]))
        fitted[lam] = (model.cond_cov.double().numpy(), float(model.cross_shrinkage_))
    raw = fitted[0.0][0]
    shrunk, lam = fitted[0.4]
    assert lam == pytest.approx(0.4)
    np.testing.assert_allclose(shrunk[:2, 2:], 0.6 * raw[:2, 2:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(shrunk[:2, :2], raw[:2, :2], rtol=1e-6)
    np.testing.assert_allclose(shrunk[2:, 2:], raw[2:, 2:], rtol=1e-6)
    auto, lam_auto = fitted["auto"]
    with torch.no_grad():  # estimated on the encoder means of the samples observing both views
        mus, _ = model.encode(batch)
    obs = torch.tensor(np.c_[np.ones(30, bool), ~np.isnan(arrays["v1"][:, 0])])
    assert lam_auto == pytest.approx(cross_shrinkage(torch.cat(mus, -1), obs, [[0, 1], [2, 3]]), rel=1e-5)
    assert 0.0 < lam_auto
    np.testing.assert_allclose(auto[:2, 2:], (1 - lam_auto) * raw[:2, 2:], rtol=1e-4, atol=1e-6)
    assert np.linalg.eigvalsh(auto).min() > 0
    for bad in (1.5, -0.1, "often"):
        with pytest.raises(ValueError, match="cross_shrinkage"):
            _jpvae(cross_shrinkage=bad)


def test_conditional_latent_draws_carry_the_observed_encoders_variance():
    model, _ = _jpvae()
    cross = 0.8 * np.eye(2)
    sigma = np.block([[np.eye(2), cross], [cross.T, np.eye(2)]]) + np.diag([0.1, 0.2, 0.3, 0.4])
    model.cond_cov.copy_(torch.tensor(sigma, dtype=torch.float32))
    model.cond_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    model.cond_fitted.fill_(True)
    rng = np.random.default_rng(2)
    x = np.full((1, 3), np.nan)
    batch = MultiViewBatch.from_arrays({"v0": rng.normal(size=(1, 3)), "v1": x})
    with torch.no_grad():
        mus, lvs = model.encode(batch)
        torch.manual_seed(0)
        z = model.latents(batch, 100_000)[1][:, 0].double().numpy()
    mu_o, var_o = mus[0][0].double().numpy(), lvs[0][0].exp().double().numpy()
    m0 = model.cond_mean.double().numpy()
    s = model.cond_cov.double().numpy()
    gain = s[2:, :2] @ np.linalg.inv(s[:2, :2])
    ref_mean = m0[2:] + gain @ (mu_o - m0[:2])
    ref_cov = s[2:, 2:] - gain @ s[:2, 2:] + gain @ np.diag(var_o) @ gain.T
    np.testing.assert_allclose(z.mean(0), ref_mean, atol=0.02)
    np.testing.assert_allclose(np.cov(z, rowvar=False), ref_cov, atol=0.02)
    assert np.abs(gain @ np.diag(var_o) @ gain.T).max() > 0.1  # conditioning on the mean would miss this


# ----------------------------------------------------------------------------- MIWAE and the evaluation ELBO by hand


def _tiny_batch(n=5, seed=0, d=(2, 1)):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n, d[0])), rng.normal(size=(n, d[1]))
    a[0, 1] = np.nan
    b[1:3] = np.nan
    return MultiViewBatch.from_arrays({"a": a, "b": b}, dtype=torch.float64)


def test_miwae_weights_and_point_imputation_by_hand():
    torch.manual_seed(0)
    model = build_model("miwae", [ViewInfo("a", 2), ViewInfo("b", 1)], hidden=4, latent_dim=2, impute_samples=7)
    model = model.double().eval()
    batch = _tiny_batch()
    with torch.no_grad():
        w = model._weighted(batch, seeded=True)[0]
    with torch.no_grad():
        mu_z, lv_z = model.posterior_z(batch)
        eps = seeded_normal((7, len(batch), 2), batch.values["a"])
        z = (mu_z + torch.exp(0.5 * lv_z) * eps).numpy()
        mx, lvx = (t.numpy() for t in model.posterior_x_given_z(torch.as_tensor(z), batch))
    y, m = (t.numpy() for t in model.posterior.observed(batch))
    mu_z, sd_z = mu_z.numpy(), np.exp(0.5 * lv_z.numpy())
    log_w = (
        (stats.norm.logpdf(y, mx, np.exp(0.5 * lvx)) * m).sum(-1)
        + stats.norm.logpdf(z).sum(-1)
        - stats.norm.logpdf(z, mu_z, sd_z).sum(-1)
    )
    ref_w = np.exp(log_w - special.logsumexp(log_w, axis=0))
    np.testing.assert_allclose(w.numpy(), ref_w, rtol=1e-8)
    assert ref_w.max() > 2.0 / 7  # far from uniform: ignoring the weights would fail below
    ref_fill = np.where(m > 0, y, (ref_w[..., None] * mx).sum(0))
    got = model.impute_mean(batch)
    np.testing.assert_allclose(np.concatenate([got["a"], got["b"]], 1), ref_fill, rtol=1e-8)


def test_evaluation_elbo_is_below_an_importance_weighted_log_likelihood():
    torch.manual_seed(0)
    model = build_model("mvae", [ViewInfo("a", 2), ViewInfo("b", 1)], hidden=8, latent_dim=2).double().eval()
    truth = _tiny_batch(n=6, seed=3)
    truth = MultiViewBatch(dict(truth.values), {v: torch.ones_like(t) for v, t in truth.values.items()})
    corrupted = _tiny_batch(n=6, seed=3)
    elbo = eval_elbo.evaluation_elbo(model, truth, corrupted, steps=300, lr=1e-2, n_eval_samples=256)
    with torch.no_grad():
        mu_z, lv_z = model.posterior_z(corrupted)
        k = 20_000
        z = mu_z + torch.exp(0.5 * lv_z) * torch.randn(k, *mu_z.shape, dtype=torch.float64)
        mx, lvx = (t.numpy() for t in model.posterior_x_given_z(z, corrupted))
    x = model.posterior.observed(truth)[0].numpy()
    log_lik = stats.norm.logpdf(x, mx, np.exp(0.5 * lvx)).sum(-1)  # (K, n): q(x_t|z_k), z_k ~ q(z|y_t)
    log_q = float(np.mean(special.logsumexp(log_lik, axis=0) - math.log(k)))
    assert elbo <= log_q + 0.05, (elbo, log_q)
    assert elbo > log_q - 3.0  # and a useful bound: the encoder was fitted


# ----------------------------------------------------------------------------- conformal calibration


def _narrow(n, rng):
    """Heteroscedastic truths y ~ N(0, s²) whose draws are N(0, (0.3 s)²): far too narrow."""
    s = rng.uniform(0.5, 2.0, size=n)
    y = rng.normal(size=n) * s
    draws = rng.normal(size=(100, n)) * 0.3 * s
    return torch.as_tensor(draws[:, :, None]), torch.as_tensor(y[:, None])


def test_conformal_reaches_nominal_coverage_where_raw_draws_are_too_narrow():
    rng = np.random.default_rng(0)
    cal = ConformalCalibration(["v"], ["gaussian"])
    draws, y = _narrow(4000, rng)
    none = {"v": torch.zeros(len(y), dtype=torch.bool)}  # no whole view missing: the "entry" kind
    cal.fit([({"v": draws}, {"v": y}, {"v": torch.ones_like(y, dtype=torch.bool)}, none)])
    test_draws, test_y = _narrow(4000, rng)
    for level in (0.5, 0.8, 0.9):
        lo, hi = cal.interval("v", test_draws, level, none["v"], calibrated=False)
        raw = float(((test_y >= lo) & (test_y <= hi)).double().mean())
        lo, hi = cal.interval("v", test_draws, level, none["v"])
        cov = float(((test_y >= lo) & (test_y <= hi)).double().mean())
        assert raw < level - 0.2
        assert abs(cov - level) < 0.025, (level, raw, cov)
    x = cal.stretch_draws({"v": test_draws}, none)["v"].numpy()[:, :, 0]
    q = np.quantile(x, [0.05, 0.95], axis=0)
    cov = np.mean((test_y.numpy()[:, 0] >= q[0]) & (test_y.numpy()[:, 0] <= q[1]))
    assert abs(cov - 0.9) < 0.025, cov
    assert float(cal.stretch[0, 0, level_index(0.9)]) > 2.5  # it widened (by about 1/0.3)


def test_calibrated_draws_cover_like_the_calibrated_interval_where_raw_draws_are_all_equal():
    """Count draws that are mostly identical (each entry drawn its rounded mean every time) and
    truths spread around them: the conformal interval's floor δ widens them, and the calibrated
    draws (`sample`) must cover as the calibrated interval does, not stay a point."""
    rng = np.random.default_rng(5)

    def make(n):
        mean = rng.uniform(2, 8, size=n)
        y = rng.poisson(mean).astype(float)
        draws = np.repeat(np.round(mean)[None], 100, axis=0)
        draws[:3] += 1.0  # a few draws differ: the raw 90 % interval is still a point
        return torch.as_tensor(draws[:, :, None]), torch.as_tensor(y[:, None])

    cal = ConformalCalibration(["v"], ["poisson"])
    draws, y = make(4000)
    none = {"v": torch.zeros(len(y), dtype=torch.bool)}
    cal.fit([({"v": draws}, {"v": y}, {"v": torch.ones_like(y, dtype=torch.bool)}, none)])
    draws, y = make(4000)
    lo, hi = cal.interval("v", draws, 0.9, none["v"])
    by_interval = float(((y >= lo) & (y <= hi)).double().mean())
    torch.manual_seed(0)
    x = cal.stretch_draws({"v": draws}, none)["v"].numpy()[:, :, 0]
    assert np.all(x == np.round(x)) and x.min() >= 0  # still counts
    q = np.quantile(x, [0.05, 0.95], axis=0)
    by_draws = float(np.mean((y.numpy()[:, 0] >= q[0]) & (y.numpy()[:, 0] <= q[1])))
    assert by_interval > 0.88, by_interval
    assert abs(by_draws - by_interval) < 0.04, (by_draws, by_interval)
    width_draws, width_interval = float(np.mean(q[1] - q[0])), float((hi - lo).double().mean())
    assert abs(width_draws / width_interval - 1) < 0.15, (width_draws, width_interval)


def _censored_entries(n, rng, widen=1.0):
    """Truths from N(μ, σ²) censored to [0, 1] (about 40 % exactly 0) and latent draws N(μ, (widen·σ)²)."""
    mu, s = rng.uniform(-0.6, 0.9, size=n), rng.uniform(0.1, 0.4, size=n)
    y = np.clip(mu + s * rng.normal(size=n), 0, 1)
    draws = mu + widen * s * rng.normal(size=(100, n))
    return torch.as_tensor(draws[:, :, None]), torch.as_tensor(y[:, None])


def test_bounded_conformal_scores_a_truth_on_a_bound_as_the_nearest_latent_value():
    """By hand (numpy quantiles): a truth at 0 whose latent median lies below 0 scores 0; one whose
    median m lies above scores m / (m − q₀.₀₅); a truth at 1 mirrors it; an inner truth is unchanged."""
    grid = np.linspace(0, 1, 101)
    draws = np.stack([-1.0 + 1.2 * grid, -0.2 + grid, 0.2 + 1.2 * grid, 0.1 + 0.6 * grid], axis=1)
    y = np.array([0.0, 0.0, 1.0, 0.55])
    m = np.median(draws, axis=0)
    q05, q95 = np.quantile(draws, [0.05, 0.95], axis=0)
    want = [0.0, m[1] / (m[1] - q05[1]), (1 - m[2]) / (q95[2] - m[2]), (y[3] - m[3]) / (q95[3] - m[3])]
    got = scores(torch.as_tensor(draws), torch.as_tensor(y), 1e-3, levels=[0.9], bounds=(0.0, 1.0))[0]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


def test_bounded_conformal_reaches_nominal_coverage_with_an_atom_at_zero():
    """Censored truths and the exact predictive's latent draws. Its central 90 % interval covers more
    than 90 % (a truth at 0 is covered whenever the interval reaches 0), and scored on the censored
    draws the truths at 0 tie at a stretch of exactly 1, so calibration cannot shrink it. Scored on the
    latent draws it covers the level, and so do the calibrated draws, in [0, 1] with mass on 0."""
    rng = np.random.default_rng(3)
    none = {"v": None}
    latent = ConformalCalibration(["v"], ["bounded"])
    clamped = ConformalCalibration(["v"], ["bounded"])
    draws, y = _censored_entries(4000, rng)
    none["v"] = torch.zeros(len(y), dtype=torch.bool)
    hidden = {"v": torch.ones_like(y, dtype=torch.bool)}
    latent.fit([({"v": draws}, {"v": y}, hidden, none)])
    clamped.fit([({"v": draws.clamp(0, 1)}, {"v": y}, hidden, none)])
    test_draws, test_y = _censored_entries(4000, rng)
    assert float((test_y == 0).double().mean()) > 0.3
    for level in (0.8, 0.9):
        lo, hi = latent.interval("v", test_draws, level, none["v"])
        cov = float(((test_y >= lo) & (test_y <= hi)).double().mean())
        assert abs(cov - level) < 0.025, (level, cov)
        assert float(lo.min()) >= 0 and float(hi.max()) <= 1
    lo, hi = clamped.interval("v", test_draws.clamp(0, 1), 0.9, none["v"])
    assert float(((test_y >= lo) & (test_y <= hi)).double().mean()) > 0.94  # the tie
    assert float(clamped.stretch[0, 0, level_index(0.9)]) == 1.0
    torch.manual_seed(0)
    x = latent.stretch_draws({"v": test_draws}, none)["v"].numpy()[:, :, 0]
    assert x.min() >= 0 and x.max() <= 1 and (x == 0).mean() > 0.2
    q = np.quantile(x, [0.05, 0.95], axis=0)
    cov = np.mean((test_y.numpy()[:, 0] >= q[0]) & (test_y.numpy()[:, 0] <= q[1]))
    assert abs(cov - 0.9) < 0.025, cov


def test_conformal_calibrates_each_kind_of_missing_entry_apart():
    """Entries missing inside an observed view (draws too narrow) and of wholly missing views (draws
    too wide): one pooled stretch would miss both; per kind, both reach 90 %."""
    rng = np.random.default_rng(1)

    def make(n):
        y = rng.normal(size=(n, 1))
        whole = torch.as_tensor(rng.random(n) < 0.5)
        scale = torch.where(whole, 2.0, 0.3).double()[:, None]
        draws = torch.as_tensor(rng.normal(size=(100, n, 1))) * scale
        return draws, torch.as_tensor(y), whole

    cal = ConformalCalibration(["v"], ["gaussian"])
    draws, y, whole = make(6000)
    cal.fit([({"v": draws}, {"v": y}, {"v": torch.ones_like(y, dtype=torch.bool)}, {"v": whole})])
    draws, y, whole = make(6000)
    lo, hi = cal.interval("v", draws, 0.9, whole)
    inside = ((y >= lo) & (y <= hi))[:, 0]
    for kind in (whole, ~whole):
        assert abs(float(inside[kind].double().mean()) - 0.9) < 0.03


# ----------------------------------------------------------------------------- the validation score


def test_validation_score_defaults_to_crps_and_keeps_val_rmse():
    assert TrainConfig().val_score == "crps"
    with pytest.raises(ValueError, match="val_score"):
        TrainConfig(val_score="nll")
    data = mvi.load_dataset("synthetic-omics", n_samples=200)
    imp = mvi.MultiViewImputer("mvae", epochs=3, progress=False, hidden=16, latent_dim=2).fit(data)
    h = imp.history_[-1]
    assert {"val_rmse", "val_crps", "val_score"} <= set(h) and h["val_score"] == h["val_crps"]
    imp = mvi.MultiViewImputer("mvae", epochs=2, progress=False, val_score="rmse", hidden=16).fit(data)
    assert imp.history_[-1]["val_score"] == imp.history_[-1]["val_rmse"]


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_version_two_and_version_one_still_loads(tmp_path):
    data = mvi.load_dataset("synthetic-omics", n_samples=120)
    imp = mvi.MultiViewImputer("tae", epochs=2, progress=False, hidden=16, prior_hidden=8).fit(data)
    path = imp.save(tmp_path / "m.pt")
    state = torch.load(path, weights_only=True)
    assert state["version"] == 2 and bool(state["state_dict"]["calibration.fitted"])
    old = tmp_path / "v1.pt"
    v1 = dict(state, version=1, model_config={**state["model_config"]})
    v1["model_config"].pop("posterior_conditions_on_mask")
    # a version-1 TAE: q(x|z) without the mask input, no calibration buffers
    model = build_model("tae", imp.model_.view_infos, **{**v1["model_config"], "posterior_conditions_on_mask": False})
    v1["state_dict"] = {k: v for k, v in model.state_dict().items() if not k.startswith("calibration.")}
    torch.save(v1, old)
    loaded = mvi.MultiViewImputer.load(old)
    assert not bool(loaded.model_.calibration.fitted)
    assert loaded.model_.config.posterior_conditions_on_mask is False
    loaded.sample(data.subset(np.arange(5)), n_samples=3)
    torch.save(dict(state, version=9), tmp_path / "v9.pt")
    with pytest.raises(ValueError, match="version 9.*versions 1 to 2"):
        load_checkpoint(tmp_path / "v9.pt")


# ----------------------------------------------------------------------------- exact predictive


def linear_gaussian(n, seed, noise=0.5):
    """Two views from z ~ N(0, I₂): a = zA + ε, b = zB + ε; returns data and the exact b | a."""
    rng = np.random.default_rng(seed)
    g = np.random.default_rng(100)
    a_map, b_map = g.normal(size=(2, 4)), g.normal(size=(2, 3))
    z = rng.normal(size=(n, 2))
    a = z @ a_map + noise * rng.normal(size=(n, 4))
    b = z @ b_map + noise * rng.normal(size=(n, 3))
    caa = a_map.T @ a_map + noise**2 * np.eye(4)
    cba = b_map.T @ a_map
    cbb = b_map.T @ b_map + noise**2 * np.eye(3)
    gain = cba @ np.linalg.inv(caa)
    return {"a": a, "b": b}, a @ gain.T, np.sqrt(np.diag(cbb - gain @ cba.T))


FAST = {
    "jpvae": {"hidden": (64, 64), "latent_dim": 4},
    "mvae": {"hidden": 64, "latent_dim": 4},
    "miwae": {"hidden": 64, "latent_dim": 4, "K": 10},
    "tae": {"hidden": 64, "latent_dim": 4, "prior_hidden": 16, "prior_latent_dim": 2},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAST))
def test_intervals_and_crps_against_the_exact_conditional(name):
    views, _, _ = linear_gaussian(1500, 0)
    views = mvi.masking.drop_views(mvi.MultiViewData(views), 0.3, seed=0).data  # whole views missing in training too
    imp = mvi.MultiViewImputer(name, epochs=60, progress=False, seed=0, **FAST[name]).fit(views)
    test, mean, sd = linear_gaussian(400, 1)
    hidden = {"a": test["a"], "b": np.full_like(test["b"], np.nan)}
    lo, hi = imp.predict_interval(hidden, level=0.9)
    y = test["b"]
    coverage = float(np.mean((y >= lo["b"]) & (y <= hi["b"])))
    draws = imp.sample(hidden, n_samples=100)["b"]
    crps = float(np.mean(sr.crps_ensemble(y, draws, m_axis=0)))
    exact = float(np.mean(sr.crps_normal(y, mean, sd)))
    assert 0.85 <= coverage <= 0.95, coverage
    assert crps <= 1.2 * exact, (crps, exact)


# ----------------------------------------------------------------------------- small data


def test_size_defaults_rule():
    mp, tp = size_defaults("jpvae", 40)
    assert mp == {"hidden": (16, 16), "latent_dim": 2, "cross_shrinkage": "auto"}
    assert tp["batch_size"] == 8 and tp["val_frac"] == 0.2
    mp, tp = size_defaults("mvae", 400, given={"hidden"})
    assert mp == {"latent_dim": 16} and tp["batch_size"] == 50 and "val_frac" not in tp
    assert size_defaults("tae", 5000) == ({}, {})
    imp = mvi.MultiViewImputer("jpvae", epochs=1, progress=False, latent_dim=3)
    imp.fit(mvi.load_dataset("synthetic-omics", n_samples=60))
    assert imp.model_.config.latent_dim == 3 and imp.model_.config.hidden == (16, 16)
    assert imp.model_.config.cross_shrinkage == "auto" and 0 < float(imp.model_.cross_shrinkage_) <= 1


# ----------------------------------------------------------------------------- memory flat in the split's size


def test_conformal_from_thinned_chunks_reaches_nominal_coverage(monkeypatch):
    """Calibration collected a few rows at a time and thinned to about MAX_ENTRIES entries (what
    `calibrate` does on a large validation split) still reaches its nominal coverage."""
    from mvimpute.models import calibration

    monkeypatch.setattr(calibration, "MAX_ENTRIES", 600)
    rng = np.random.default_rng(2)
    cal = ConformalCalibration(["v"], ["gaussian"])
    draws, y = _narrow(6000, rng)
    hidden = {"v": torch.ones_like(y, dtype=torch.bool)}
    none = {"v": torch.zeros(len(y), dtype=torch.bool)}
    keep = cal.thinning([hidden], [none])
    assert keep[(0, 0)] == pytest.approx(1.05 * 600 / 6000)
    gen = torch.Generator().manual_seed(0)
    parts = []
    for start in range(0, 6000, 500):
        rows = slice(start, start + 500)
        part = ({"v": draws[:, rows]}, {"v": y[rows]}, {"v": hidden["v"][rows]}, {"v": none["v"][rows]})
        parts.append(cal.collect(part, keep, gen))
    kept = sum(x.shape[1] for x, _ in cal.merge(parts)[(0, 0)])
    assert 500 < kept < 760  # about 1.05 × 600 of the 6,000 entries
    cal.fit_collected(cal.merge(parts))
    assert 500 < int(cal.n_entries[0, 0]) <= 600
    test_draws, test_y = _narrow(6000, rng)
    lo, hi = cal.interval("v", test_draws, 0.9, none["v"])
    cov = float(((test_y >= lo) & (test_y <= hi)).double().mean())
    assert abs(cov - 0.9) < 0.03, cov


def test_validation_score_in_chunks_matches_numpy_on_the_whole_split(monkeypatch):
    from mvimpute.models import base
    from mvimpute.training import ValidationSet, validation_score

    data = mvi.load_dataset("synthetic-omics", n_samples=300)
    imp = mvi.MultiViewImputer("jpvae", epochs=2, progress=False, hidden=[16], latent_dim=2, calibrate=False).fit(data)
    val = ValidationSet.from_batch(imp.schema_.to_batch(data), 0.2, 0.3, seed=4)
    model = imp.model_.eval()
    with torch.no_grad():
        filled = model.impute_mean(val.corrupted)  # deterministic: the same for any batch of rows
        torch.manual_seed(0)
        draws = model.impute(val.corrupted, 64)
    err = {v: (filled[v] - val.truth.values[v])[h].double().numpy() for v, h in val.hidden.items()}
    ref = math.sqrt(sum(float((e**2).sum()) for e in err.values()) / sum(e.size for e in err.values()))
    crps = np.concatenate(
        [
            sr.crps_ensemble(val.truth.values[v][h].double().numpy(), draws[v][:, h].double().numpy(), m_axis=0)
            for v, h in val.hidden.items()
        ]
    ).mean()
    monkeypatch.setattr(base, "EVAL_CHUNK_ROWS", 37)  # 300 rows in 9 chunks
    got = validation_score(model, val, n_samples=64)
    assert got["val_rmse"] == pytest.approx(ref, rel=1e-5)
    for v, e in err.items():
        assert got[f"val_rmse_{v}"] == pytest.approx(math.sqrt((e**2).mean()), rel=1e-5)
    assert got["val_crps"] == pytest.approx(crps, rel=0.03)  # other draws, the same distribution


def test_jpvae_caps_decoded_count_means_at_the_training_maximum_and_old_checkpoints_load():
    data = mvi.load_dataset("synthetic-omics", n_samples=200)
    imp = mvi.MultiViewImputer("jpvae", epochs=2, progress=False, hidden=[16], latent_dim=2).fit(data)
    model = imp.model_.eval()
    held_out = {str(i) for i in imp.validation_index_}
    train_rows = [k for k, i in enumerate(data.index) if str(i) not in held_out]
    counts = np.asarray(data.views["counts"], dtype=float)[train_rows]
    cap = getattr(model, model._cap_names["counts"])
    np.testing.assert_allclose(cap.numpy(), np.nanmax(counts, 0))  # the training rows' maximum per column
    far = torch.full((5, 2), 40.0)  # a latent far out: the uncapped decoder's mean explodes
    with torch.no_grad():
        uncapped = lk.mean("negative_binomial", model.decoders["counts"](far))
        capped = lk.mean("negative_binomial", model.decode("counts", far))
        near = torch.zeros(5, 2)
        inside = lk.mean("negative_binomial", model.decode("counts", near))
        raw_inside = lk.mean("negative_binomial", model.decoders["counts"](near))
    assert bool((uncapped > cap).any())
    assert bool((capped <= cap * (1 + 1e-4) + 1e-6).all())
    assert torch.allclose(inside, torch.minimum(raw_inside, cap), rtol=1e-5)
    # a state without the caps (written before they existed) loads, with no cap
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("count_cap")}
    fresh = build_model("jpvae", model.view_infos, hidden=[16], latent_dim=2)
    fresh.load_state_dict(state, strict=True)
    assert bool(torch.isinf(getattr(fresh, fresh._cap_names["counts"])).all())


def test_a_view_with_too_few_calibration_entries_keeps_its_raw_draws():
    rng = np.random.default_rng(3)
    cal = ConformalCalibration(["v"], ["gaussian"])
    draws, y = _narrow(8, rng)  # at 90 %, 8 entries give a conformal quantile of +inf
    none = {"v": torch.zeros(len(y), dtype=torch.bool)}
    with pytest.warns(UserWarning, match="keeps the model's raw draws"):
        cal.fit([({"v": draws}, {"v": y}, {"v": torch.ones_like(y, dtype=torch.bool)}, none)])
    assert torch.equal(cal.stretch, torch.ones_like(cal.stretch))
    lo, hi = cal.interval("v", draws, 0.9, none["v"])
    raw_lo, raw_hi = cal.interval("v", draws, 0.9, none["v"], calibrated=False)
    assert torch.allclose(lo, raw_lo) and torch.allclose(hi, raw_hi)
