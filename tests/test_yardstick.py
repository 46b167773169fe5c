"""The yardstick: every model's bound and the evaluation ELBO against exact values.

On a linear-Gaussian latent model, z ~ N(m0, S0), y = W z + b + ε with ε ~ N(0, diag σ²), the
evidence log p(y_obs) and the posterior p(z | y_obs) are closed forms; here they are computed with
torch.distributions and torch.linalg, never with the code under test. The models' own networks are
made to compute that model exactly: each two-hidden-layer MLP is set by hand to an affine map
(`set_affine`; leaky_relu(u) − leaky_relu(−u) = (1 + slope)·u), so the models' own code computes
each bound and only the bound's maths is on trial:

- MVAE's ELBO is log p(y) − KL(q(z|y) ‖ p(z|y)) for any encoder, log p(y) for the exact posterior;
- MIWAE's K-sample bound is log p(y) for the exact posterior (every K), and otherwise rises with K
  from the ELBO towards log p(y), never above it; its imputations resample the K draws by their
  importance weights, which turns a wrong proposal into the exact posterior predictive;
- TAE's objective has a closed form when q(zp|x) and r(z|x) are exact posteriors, and its
  condition E[log r − log q] is then the mutual information I(z; x) under q(z|y) q(x|z);
- JPVAE's ELBO is log p(x) − KL(q ‖ p(z|x)) under its joint prior N(0, Σ_C);
- the evaluation ELBO is log q(x_t | y_t) when its encoder is the exact posterior, and gets within
  a few hundredths of a nat of it when fitted.

Monte-Carlo tolerances are `Z` standard errors estimated from the draws themselves.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from mvimpute.batch import MultiViewBatch
from mvimpute.models import eval_elbo
from mvimpute.models.base import ViewInfo, build_model
from mvimpute.models.vae import miwae_bound, mvae_bound

Z = 4.0  # standard errors allowed for a Monte-Carlo estimate
DT = torch.float64
VIEWS = [ViewInfo("a", 3), ViewInfo("b", 3)]
D, J = 6, 2
# Each latent drives its own features (z1: 0, 1, 3; z2: 2, 4, 5), so every posterior of z given
# any subset of the features is diagonal, which a diagonal encoder can represent exactly.
W = torch.tensor([[1.2, 0.0], [-0.8, 0.0], [0.0, 1.1], [0.9, 0.0], [0.0, -1.0], [0.0, 0.7]], dtype=DT)
B = torch.tensor([0.3, -0.2, 0.1, 0.5, -0.4, 0.2], dtype=DT)
NOISE = torch.tensor([0.3, 0.5, 0.2, 0.4, 0.25, 0.35], dtype=DT)  # σ² of y | z
PATTERNS = {
    "all observed": [1, 1, 1, 1, 1, 1],
    "entries missing": [1, 0, 1, 0, 1, 1],
    "view b missing": [1, 1, 1, 0, 0, 0],
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- exact references


def marginal(w, b, noise, obs, m0, s0) -> MultivariateNormal:
    """p(y_obs) for z ~ N(m0, s0), y = W z + b + N(0, diag noise)."""
    wo = w[obs]
    return MultivariateNormal(wo @ m0 + b[obs], wo @ s0 @ wo.T + torch.diag(noise[obs]))


def posterior(w, b, noise, obs, m0, s0, y) -> MultivariateNormal:
    """p(z | y_obs), by conditioning the joint Gaussian of (z, y_obs)."""
    wo = w[obs]
    s_zy = s0 @ wo.T
    s_yy = wo @ s0 @ wo.T + torch.diag(noise[obs])
    gain = torch.linalg.solve(s_yy, s_zy.T).T
    cov = s0 - gain @ s_zy.T
    return MultivariateNormal(m0 + gain @ (y[obs] - wo @ m0 - b[obs]), 0.5 * (cov + cov.T))


def std_prior() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(J, dtype=DT), torch.eye(J, dtype=DT)


# ----------------------------------------------------------------------------- hand-set networks


def set_affine(net: nn.Sequential, a: torch.Tensor, c: torch.Tensor) -> None:
    """Make a Linear-act-Linear-act-Linear MLP (ReLU or leaky ReLU) compute x → a x + c exactly."""
    lin = [m for m in net if isinstance(m, nn.Linear)]
    act = next(m for m in net if not isinstance(m, nn.Linear))
    slope = float(getattr(act, "negative_slope", 0.0))
    assert len(lin) == 3, "expected two hidden layers"
    d = lin[0].in_features
    assert lin[0].out_features >= 2 * d and lin[1].out_features >= 2 * d, "hidden layers too narrow"
    eye = torch.eye(d, dtype=DT)
    with torch.no_grad():
        for m in lin:
            m.weight.zero_()
            m.bias.zero_()
        lin[0].weight[: 2 * d] = torch.cat([eye, -eye])
        lin[1].weight[: 2 * d, : 2 * d] = torch.cat([torch.cat([eye, -eye], 1), torch.cat([-eye, eye], 1)])
        lin[2].weight[:, : 2 * d] = torch.cat([a, -a], 1) / (1.0 + slope) ** 2
        lin[2].bias.copy_(c)


def raw_logvar(logvar: torch.Tensor, floor: float, cap: float | None = None) -> torch.Tensor:
    """The network output that the soft floor (after the soft cap, if any) turns into `logvar`."""
    t = floor + torch.log(torch.expm1(logvar - floor))
    return t if cap is None else cap - torch.log(torch.expm1(cap - t))


def set_head(net, a_mu, c_mu, logvar, floor, cap=None) -> None:
    """A Gaussian head [μ, raw log σ²]: μ = a_mu x + c_mu, constant log σ² = `logvar`."""
    a = torch.cat([a_mu, torch.zeros(len(logvar), a_mu.shape[1], dtype=DT)])
    set_affine(net, a, torch.cat([c_mu, raw_logvar(logvar, floor, cap)]))


def set_decoder(net, w, b, noise, floor) -> None:
    set_head(net, w, b, torch.log(noise), floor)


def exact_encoder_weights(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For rows whose mask is `obs`: the exact posterior's mean as a map of [y, m] (weights, bias) and
    its log-variance (z ~ N(0, I), so the posterior does not depend on y's values except via its mean)."""
    cov = posterior(W, B, NOISE, obs, *std_prior(), torch.zeros(D, dtype=DT)).covariance_matrix
    gain = cov @ W[obs].T @ torch.diag(1.0 / NOISE[obs])  # (J, |obs|)
    a = torch.zeros(J, 2 * D, dtype=DT)
    a[:, :D][:, obs] = gain
    return a, -gain @ B[obs], torch.log(torch.diagonal(cov))


def posterior_model(name: str, **kw):
    torch.manual_seed(0)
    base = {"latent_dim": J, "hidden": 32}
    if name == "tae":
        base.update(prior_latent_dim=2, prior_hidden=16, noise="fixed")
    model = build_model(name, VIEWS, **{**base, **kw}).double()
    post = model.posterior
    set_decoder(post.decoder, W, B, NOISE, post.logvar_floor)
    return model


def set_encoder(model, a, c, logvar) -> None:
    post = model.posterior
    set_head(post.encoder, a, c, logvar, post.logvar_floor, post.latent_logvar_cap)


def sample_rows(n: int, seed: int, w=W, b=B, noise=NOISE, obs=None) -> np.ndarray:
    """Draws of y from the linear model (n, D); entries outside `obs` (a mask or (n, D) masks) NaN."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, w.shape[1]))
    y = z @ w.numpy().T + b.numpy() + rng.normal(size=(n, D)) * np.sqrt(noise.numpy())
    if obs is not None:
        y[~np.broadcast_to(np.asarray(obs, dtype=bool), y.shape)] = np.nan
    return y


def to_batch(y: np.ndarray) -> MultiViewBatch:
    return MultiViewBatch.from_arrays({"a": y[:, :3], "b": y[:, 3:]}, dtype=DT)


def y_and_mask(batch: MultiViewBatch) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.cat([batch.values["a"], batch.values["b"]], -1)
    m = torch.cat([batch.masks["a"], batch.masks["b"]], -1).bool()
    return y, m


def log_evidence(batch: MultiViewBatch, w=W, b=B, noise=NOISE) -> torch.Tensor:
    y, m = y_and_mask(batch)
    return torch.stack([marginal(w, b, noise, m[i], *std_prior()).log_prob(y[i][m[i]]) for i in range(len(y))])


def mean_and_se(x: torch.Tensor) -> tuple[float, float]:
    x = x.detach().flatten()
    return float(x.mean()), float(x.std() / math.sqrt(x.numel()))


# ----------------------------------------------------------------------------- MVAE


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_mvae_elbo_with_the_exact_posterior_is_the_log_evidence(pattern):
    """log p(y|z) + log p(z) − log q(z|y) is log p(y) for every z when q is the exact posterior; with
    the analytic KL the ELBO is log p(y) on average over the draws."""
    obs = torch.tensor(PATTERNS[pattern], dtype=torch.bool)
    model = posterior_model("mvae")
    set_encoder(model, *exact_encoder_weights(obs))
    batch = to_batch(sample_rows(64, seed=1, obs=obs))
    exact = log_evidence(batch)
    gen = torch.Generator().manual_seed(0)

    eps = torch.randn(len(batch), J, generator=gen, dtype=DT)
    bound = mvae_bound(model, batch, eps, analytic_kl=False)[0]
    torch.testing.assert_close(bound, exact, atol=1e-8, rtol=0)

    eps = torch.randn(400, len(batch), J, generator=gen, dtype=DT)
    gap, se = mean_and_se(mvae_bound(model, batch, eps, analytic_kl=True)[0] - exact)
    assert abs(gap) < Z * se + 1e-9, (gap, se)


def test_mvae_elbo_falls_short_of_the_log_evidence_by_the_kl_to_the_exact_posterior():
    """Any encoder (here the model's own, untrained) on rows with their own masks (whole views
    missing among them), a decoder with dense W (a correlated posterior): ELBO = log p(y) − KL(q ‖ p(z|y))."""
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(D, J, generator=gen, dtype=DT)
    model = posterior_model("mvae")
    set_decoder(model.posterior.decoder, w, B, NOISE, model.posterior.logvar_floor)
    rng = np.random.default_rng(2)
    masks = rng.random((96, D)) > 0.3
    masks[:16, 3:] = False
    masks[16:32, :3] = False
    masks[masks.sum(1) == 0, 0] = True
    batch = to_batch(sample_rows(96, seed=2, w=w, obs=masks))
    y, m = y_and_mask(batch)
    with torch.no_grad():
        mu, lv = model.posterior_z(batch)
    exact = torch.stack(
        [
            marginal(w, B, NOISE, m[i], *std_prior()).log_prob(y[i][m[i]])
            - kl_divergence(
                MultivariateNormal(mu[i], torch.diag(lv[i].exp())), posterior(w, B, NOISE, m[i], *std_prior(), y[i])
            )
            for i in range(len(y))
        ]
    )
    eps = torch.randn(400, len(batch), J, generator=gen, dtype=DT)
    with torch.no_grad():
        bound = mvae_bound(model, batch, eps)[0]
    gap, se = mean_and_se(bound - exact)
    assert abs(gap) < Z * se, (gap, se)
    assert float((log_evidence(batch, w=w) - exact).mean()) > 0.1  # the KL is not negligible here


# ----------------------------------------------------------------------------- MIWAE


@pytest.mark.parametrize("k", [1, 5, 50])
def test_miwae_bound_with_the_exact_posterior_is_the_log_evidence_for_every_K(k):
    """Every importance weight is p(y) when q is the exact posterior: log (1/K) Σ_k w_k = log p(y)."""
    obs = torch.tensor(PATTERNS["entries missing"], dtype=torch.bool)
    model = posterior_model("miwae", K=k)
    set_encoder(model, *exact_encoder_weights(obs))
    batch = to_batch(sample_rows(64, seed=4, obs=obs))
    torch.manual_seed(0)
    with torch.no_grad():
        loss = model.loss(batch).loss
    torch.testing.assert_close(-loss, log_evidence(batch).mean(), atol=1e-8, rtol=0)


def shifted_proposal(model, obs, shift: float, scale: float) -> None:
    """The exact posterior's encoder with its mean moved by `shift` and its variance × `scale`."""
    a, c, lv = exact_encoder_weights(obs)
    set_encoder(model, a, c + shift, lv + math.log(scale))


def test_miwae_bound_rises_with_K_towards_the_log_evidence_and_never_above():
    """With a wrong proposal: E[bound_1] = log p(y) − KL(q ‖ p(z|y)) (the ELBO), E[bound_K] rises with
    K and stays ≤ log p(y)."""
    obs = torch.tensor(PATTERNS["entries missing"], dtype=torch.bool)
    model = posterior_model("miwae")
    shifted_proposal(model, obs, shift=0.6, scale=2.5)
    rows = to_batch(sample_rows(100, seed=5, obs=obs))
    reps = 40
    batch = MultiViewBatch(
        {v: t.repeat(reps, 1) for v, t in rows.values.items()}, {v: t.repeat(reps, 1) for v, t in rows.masks.items()}
    )
    exact = log_evidence(rows).repeat(reps)
    y, m = y_and_mask(rows)
    with torch.no_grad():
        mu, lv = model.posterior_z(rows)
    kl = torch.stack(
        [
            kl_divergence(
                MultivariateNormal(mu[i], torch.diag(lv[i].exp())), posterior(W, B, NOISE, m[i], *std_prior(), y[i])
            )
            for i in range(len(y))
        ]
    )
    gen = torch.Generator().manual_seed(0)
    gaps = {}
    for k in (1, 4, 16, 64):
        eps = torch.randn(k, len(batch), J, generator=gen, dtype=DT)
        with torch.no_grad():
            gaps[k] = mean_and_se(miwae_bound(model, batch, k, eps) - exact)
    g1, se1 = gaps[1]
    assert abs(g1 + float(kl.mean())) < Z * se1, (g1, float(kl.mean()), se1)
    ks = sorted(gaps)
    for lo, hi in zip(ks, ks[1:], strict=False):
        (g_lo, s_lo), (g_hi, s_hi) = gaps[lo], gaps[hi]
        assert g_hi - g_lo > Z * math.hypot(s_lo, s_hi), (lo, hi, gaps)
    for k, (g, se) in gaps.items():
        assert g < Z * se, (k, gaps)
    assert gaps[64][0] > 0.5 * gaps[1][0]  # closer to log p(y) than the ELBO by more than half


def exact_predictive_of_missing(obs, y_row) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of each missing entry of y under p(y_mis | y_obs)."""
    post = posterior(W, B, NOISE, obs, *std_prior(), y_row)
    wm = W[~obs]
    return wm @ post.mean + B[~obs], torch.diagonal(wm @ post.covariance_matrix @ wm.T) + NOISE[~obs]


def test_miwae_importance_resampling_recovers_the_exact_posterior_predictive():
    """Sampling importance resampling from a shifted, widened proposal: the draws of the missing view
    have the exact predictive's mean and variance (within Monte-Carlo error), which the proposal's
    own draws (uniform resampling) are far from; the weighted mean is the exact mean."""
    obs = torch.tensor(PATTERNS["view b missing"], dtype=torch.bool)
    model = posterior_model("miwae", impute_samples=4000)
    shift, scale = 1.0, 4.0
    shifted_proposal(model, obs, shift=shift, scale=scale)
    batch = to_batch(sample_rows(8, seed=6, obs=obs))
    y, _ = y_and_mask(batch)
    exact = [exact_predictive_of_missing(obs, y[i]) for i in range(len(y))]
    mean = torch.stack([e[0] for e in exact])
    var = torch.stack([e[1] for e in exact])
    # the proposal's own predictive, to show the test can tell the two apart
    with torch.no_grad():
        mu_q, lv_q = model.posterior_z(batch)
    wm = W[~obs]
    q_mean = mu_q @ wm.T + B[~obs]
    q_var = lv_q.exp() @ (wm**2).T + NOISE[~obs]
    assert float(((q_mean - mean).abs() / var.sqrt()).min()) > 0.8
    assert float((q_var / var).min()) > 1.4

    torch.manual_seed(0)
    draws = model.impute(batch, n_samples=4000)["b"]  # (S, n, 3)
    err = (draws.mean(0) - mean) / var.sqrt()
    assert float(err.abs().max()) < 0.2, err
    ratio = draws.var(0) / var
    assert float((ratio - 1).abs().max()) < 0.2, ratio
    point = model.impute_mean(batch)["b"]
    assert float(((point - mean) / var.sqrt()).abs().max()) < 0.1


# ----------------------------------------------------------------------------- TAE


PRIOR_V = torch.tensor([[0.9, 0.0], [0.0, 1.1], [-0.7, 0.0], [0.0, 0.8], [1.0, 0.0], [0.0, -0.6]], dtype=DT)
PRIOR_C = torch.tensor([0.1, 0.2, -0.1, 0.4, -0.3, 0.0], dtype=DT)
PRIOR_NOISE = torch.tensor([0.2, 0.3, 0.25, 0.15, 0.35, 0.3], dtype=DT)


@pytest.mark.parametrize("lam", [0.0, 2.0])
def test_tae_objective_matches_its_closed_form(lam):
    """TAE with linear-Gaussian q(z|y) q(x|z), fixed noise β, a linear-Gaussian prior LVM whose encoder
    q(zp|x) is its exact posterior, and r(z|x) the exact posterior of z given x (every row has the
    same y, so r needs no y). At γ = 1 every term has a closed form:
    E log p(y_obs|x, β), E_x log p(x) (the prior ELBO is log p(x) exactly), H(q(z|y)), H(q(x|z)),
    and the condition E[log r − log q] = I(z; x)."""
    beta2, C = 0.3**2, 10.0
    model = posterior_model("tae", lam=lam, C=C, noise_std=0.3)
    post = model.posterior
    obs = torch.tensor(PATTERNS["entries missing"], dtype=torch.bool)
    row = sample_rows(1, seed=7, obs=obs)
    mu_z, var_z = torch.tensor([0.8, -0.5], dtype=DT), torch.tensor([0.4, 0.7], dtype=DT)
    set_head(
        post.encoder, torch.zeros(J, 2 * D, dtype=DT), mu_z, torch.log(var_z), post.logvar_floor, post.latent_logvar_cap
    )
    # prior LVM: zp ~ N(0, I), x = V zp + c + N(0, diag τ²); q(zp|x) its exact posterior
    floor = model.config.logvar_floor
    set_decoder(model.prior_decoder, PRIOR_V, PRIOR_C, PRIOR_NOISE, floor)
    all_x = torch.ones(D, dtype=torch.bool)
    p_cov = posterior(PRIOR_V, PRIOR_C, PRIOR_NOISE, all_x, *std_prior(), torch.zeros(D, dtype=DT)).covariance_matrix
    p_gain = p_cov @ PRIOR_V.T @ torch.diag(1 / PRIOR_NOISE)
    set_head(model.prior_encoder, p_gain, -p_gain @ PRIOR_C, torch.log(torch.diagonal(p_cov)), floor)
    # r(z|x): the exact posterior of z given x under q(z|y) q(x|z)
    s0 = torch.diag(var_z)
    r_cov = posterior(W, B, NOISE, all_x, mu_z, s0, torch.zeros(D, dtype=DT)).covariance_matrix
    r_gain = r_cov @ W.T @ torch.diag(1 / NOISE)
    set_head(
        model.auxiliary_posterior,
        r_gain,
        r_cov @ torch.linalg.solve(s0, mu_z) - r_gain @ B,
        torch.log(torch.diagonal(r_cov)),
        floor,
    )

    # closed forms: x ~ q(x|y) = N(m_x, C_x)
    m_x, c_x = W @ mu_z + B, W @ s0 @ W.T + torch.diag(NOISE)
    y = torch.as_tensor(row[0], dtype=DT)
    yo, mo, vo = y[obs], m_x[obs], torch.diagonal(c_x)[obs]
    log_lik = float((-0.5 * math.log(2 * math.pi * beta2) - ((yo - mo) ** 2 + vo) / (2 * beta2)).sum())
    p_x = marginal(PRIOR_V, PRIOR_C, PRIOR_NOISE, all_x, *std_prior())
    prior_elbo = float(p_x.log_prob(m_x) - 0.5 * torch.trace(torch.linalg.solve(p_x.covariance_matrix, c_x)))
    h_z = float(Normal(mu_z, var_z.sqrt()).entropy().sum())
    h_x = float(Normal(torch.zeros(D, dtype=DT), NOISE.sqrt()).entropy().sum())
    info = float(MultivariateNormal(mu_z, s0).entropy() - MultivariateNormal(mu_z, r_cov).entropy())
    exact = {
        "log_lik": log_lik,
        "prior_elbo": prior_elbo,
        "entropy_z": h_z,
        "entropy_x": h_x,
        "condition_value": info,
        "objective": log_lik + prior_elbo + h_z + h_x - lam * abs(info - C),
    }

    batch = to_batch(np.repeat(row, 500, axis=0))
    torch.manual_seed(0)
    with torch.no_grad():
        calls = [model.loss(batch, progress=1.0).components for _ in range(40)]
    assert all(c["gamma"] == 1.0 for c in calls)
    for key, value in exact.items():
        est, se = mean_and_se(torch.tensor([float(c[key]) for c in calls], dtype=DT))
        assert abs(est - value) < Z * se + 1e-9, (key, est, value, se)


# ----------------------------------------------------------------------------- JPVAE


def test_jpvae_elbo_falls_short_of_the_log_evidence_by_the_kl_to_the_exact_posterior():
    """Linear-Gaussian decoders under the joint prior N(0, Σ_C), the model's own (untrained) encoders,
    rows with a view or entries missing: −loss = mean over rows of log p(x_obs) − KL(q ‖ p(z_O | x_obs)),
    z_O the latents of the views a row observes."""
    k = 2
    torch.manual_seed(0)
    model = build_model("jpvae", VIEWS, latent_dim=k, hidden=(8, 8), prior="orthogonal", alpha=0.9).double()
    sigma = model.prior.covariance().detach()
    cross = sigma[k:, :k]
    torch.testing.assert_close(sigma[:k, :k], torch.eye(k, dtype=DT))
    torch.testing.assert_close(torch.linalg.svdvals(cross), torch.full((k,), 0.9, dtype=DT))
    gen = torch.Generator().manual_seed(8)
    w_views = [torch.randn(3, k, generator=gen, dtype=DT) for _ in range(2)]
    floor = -9.0  # the Gaussian likelihood's soft floor on log σ² (likelihoods.LOGVAR_FLOOR)
    for name, w, sl in zip(("a", "b"), w_views, (slice(0, 3), slice(3, 6)), strict=True):
        set_decoder(model.decoders[name], w, B[sl], NOISE[sl], floor)
    w_full = torch.block_diag(*w_views)  # x = blockdiag(W_a, W_b) [z_a; z_b] + b + ε

    rng = np.random.default_rng(9)
    n = 120
    z = rng.multivariate_normal(np.zeros(2 * k), sigma.numpy(), size=n)
    x = z @ w_full.numpy().T + B.numpy() + rng.normal(size=(n, D)) * np.sqrt(NOISE.numpy())
    masks = rng.random((n, D)) > 0.25
    masks[:20, 3:] = False
    masks[20:40, :3] = False
    masks[masks.sum(1) == 0, 0] = True
    x[~masks] = np.nan
    batch = to_batch(x)
    y, m = y_and_mask(batch)
    with torch.no_grad():
        mus, lvs = model.encode(batch)
    mu, lv = torch.cat(mus, -1), torch.cat(lvs, -1)
    exact = []
    for i in range(n):
        seen = [v for v, sl in enumerate((slice(0, 3), slice(3, 6))) if bool(m[i, sl].any())]
        lat = [j for v in seen for j in range(v * k, (v + 1) * k)]
        w_o, s_oo = w_full[:, lat], sigma[lat][:, lat]
        zero = torch.zeros(len(lat), dtype=DT)
        evidence = marginal(w_o, B, NOISE, m[i], zero, s_oo).log_prob(y[i][m[i]])
        q = MultivariateNormal(mu[i, lat], torch.diag(lv[i, lat].exp()))
        exact.append(evidence - kl_divergence(q, posterior(w_o, B, NOISE, m[i], zero, s_oo, y[i])))
    exact = torch.stack(exact).mean()

    torch.manual_seed(0)
    with torch.no_grad():
        elbos = torch.stack([-model.loss(batch, progress=1.0).loss for _ in range(100)])
    est, se = mean_and_se(elbos)
    assert abs(est - float(exact)) < Z * se, (est, float(exact), se)


# ----------------------------------------------------------------------------- evaluation ELBO


EVAL_MU = torch.tensor([1.5, -1.2], dtype=DT)  # q(z|y)'s mean is far from N(0, I)'s
EVAL_VAR = torch.tensor([0.4, 0.7], dtype=DT)


def evaluation_setup(name: str, n: int, seed: int):
    """A trained-looking posterior: q(z|y,m) = N(A_y y + A_m m + c, diag s²), q(x|z) = N(W z + b, diag σ²);
    truth x_t from the linear model and y_t = x_t with entries hidden (no noise, so that q(z|y_t) is an
    affine function of x_t and the exact posterior of z given x_t is within the encoder's reach)."""
    model = posterior_model(name)
    gen = torch.Generator().manual_seed(seed)
    a = 0.3 * torch.randn(J, 2 * D, generator=gen, dtype=DT)
    set_encoder(model, a, EVAL_MU, torch.log(EVAL_VAR))
    obs = torch.tensor(PATTERNS["entries missing"], dtype=torch.bool)
    x_t = sample_rows(n, seed=seed)
    truth, corrupted = to_batch(x_t), to_batch(np.where(obs.numpy(), x_t, np.nan))
    # exact log q(x_t | y_t)
    xt = torch.as_tensor(x_t, dtype=DT)
    mu_y = torch.cat([xt * obs, obs.to(DT).expand(n, D)], -1) @ a.T + EVAL_MU
    s0 = torch.diag(EVAL_VAR)
    cov = W @ s0 @ W.T + torch.diag(NOISE)
    exact = MultivariateNormal(mu_y @ W.T + B, cov).log_prob(xt)
    # the exact posterior of z given x_t under the prior q(z|y_t), as an affine map of x_t
    precision = torch.linalg.inv(s0) + W.T @ torch.diag(1 / NOISE) @ W
    p_cov = torch.linalg.inv(precision)
    gain = p_cov @ (torch.linalg.solve(s0, a[:, :D] * obs.to(DT)) + W.T @ torch.diag(1 / NOISE))
    bias = p_cov @ (torch.linalg.solve(s0, a[:, D:] @ obs.to(DT) + EVAL_MU) - W.T @ (B / NOISE))
    return model, truth, corrupted, exact, (gain, bias, torch.log(torch.diagonal(p_cov)))


@pytest.mark.parametrize("name", ["mvae", "miwae", "tae"])
def test_evaluation_bound_with_the_exact_encoder_is_log_q_x_given_y(name):
    """The bound the evaluation ELBO maximises, E_{q_η(z|x_t)} log q(x_t|z) − KL(q_η ‖ q(z|y_t)), with
    q_η the exact posterior, is log q(x_t | y_t) on average over the draws."""
    model, truth, corrupted, exact, (gain, bias, lv) = evaluation_setup(name, n=200, seed=10)
    encoder = eval_elbo.leaky_mlp(D, 16, 2 * J).double()
    set_head(encoder, gain, bias, lv, eval_elbo.ENCODER_LOGVAR_FLOOR)
    x_t, m_t = model.posterior.observed(truth)
    with torch.no_grad():
        mu_p, lv_p = model.posterior_z(corrupted)
        eps = torch.randn(200, len(x_t), J, generator=torch.Generator().manual_seed(0), dtype=DT)
        bound = eval_elbo._bound(model, encoder, x_t, m_t, corrupted, mu_p, lv_p, eps)
    gap, se = mean_and_se(bound - exact)
    assert abs(gap) < Z * se, (gap, se)


def test_evaluation_elbo_fitted_reaches_log_q_x_given_y_and_not_beyond():
    """`evaluation_elbo` fits its own encoder: the value it reports is a lower bound on the exact
    mean log q(x_t | y_t) (up to Monte-Carlo error) and, on this small problem, within 0.05 nats of it."""
    n, draws = 256, 64
    model, truth, corrupted, exact, (gain, bias, lv) = evaluation_setup("mvae", n=n, seed=11)
    value = eval_elbo.evaluation_elbo(
        model, truth, corrupted, steps=1000, lr=2e-2, seed=0, batch_size=256, hidden=16, n_eval_samples=draws
    )
    target = float(exact.mean())
    # the reported value's Monte-Carlo error: the spread of log q(x_t|z) over z from the exact
    # posterior (torch.distributions), over `draws` draws for each of n rows
    x_t = torch.cat([truth.values["a"], truth.values["b"]], -1)
    torch.manual_seed(0)
    z = Normal(x_t @ gain.T + bias, torch.exp(0.5 * lv)).sample((draws,))
    log_q = Normal(z @ W.T + B, NOISE.sqrt()).log_prob(x_t).sum(-1)
    se = float(log_q.std(0).mean()) / math.sqrt(draws * n)
    assert value < target + Z * se, (value, target, se)
    assert value > target - 0.05, (value, target)
