"""JPVAE maths against torch.distributions and numpy references."""

import numpy as np
import pytest
import torch
from torch import distributions as D

from mvimpute.models.jpvae import (
    JointPrior,
    cayley,
    cyclical_kl_weight,
    gaussian_conditional,
    gaussian_kl_full,
    joint_prior_kl,
    orthogonal_prior_kl,
)


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _reference_kl(mus, logvars, cov):
    mu = torch.cat(mus, -1)
    var = torch.cat(logvars, -1).exp()
    q = D.MultivariateNormal(mu, covariance_matrix=torch.diag_embed(var))
    p = D.MultivariateNormal(torch.zeros(cov.shape[0]), covariance_matrix=cov)
    return D.kl_divergence(q, p)


def _random_posteriors(dims, n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    mus = [torch.randn(n, d, generator=g) for d in dims]
    logvars = [0.5 * torch.randn(n, d, generator=g) for d in dims]
    return mus, logvars


def _randomise(prior: JointPrior, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    return prior.double()


@pytest.mark.parametrize(
    "kind,dims",
    [
        ("independent", [4, 4]),
        ("svd", [4, 4]),
        ("svd", [3, 5]),
        ("orthogonal", [4, 4]),
        ("orthogonal", [3, 5]),
        ("orthogonal", [5, 3]),
        ("cholesky", [4, 4]),
        ("cholesky", [3, 4, 2]),
        ("independent", [3, 4, 2]),
    ],
)
def test_kl_matches_torch_distributions(kind, dims):
    prior = _randomise(JointPrior(dims, kind, alpha=0.9))
    mus, logvars = _random_posteriors(dims)
    observed = torch.ones(7, len(dims), dtype=torch.bool)
    ours = prior.kl(mus, logvars, observed)
    ref = _reference_kl(mus, logvars, prior.covariance())
    torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-8)


def test_kl_with_missing_views_uses_the_marginal():
    dims = [3, 4, 2]
    prior = _randomise(JointPrior(dims, "cholesky", alpha=0.9))
    mus, logvars = _random_posteriors(dims, n=6)
    observed = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    ours = prior.kl(mus, logvars, observed)
    cov = prior.covariance()
    for i in range(6):
        views = [v for v in range(3) if observed[i, v]]
        idx = prior.indices(views)
        ref = _reference_kl(
            [mus[v][i : i + 1] for v in views], [logvars[v][i : i + 1] for v in views], cov[idx][:, idx]
        )
        torch.testing.assert_close(ours[i : i + 1], ref)


def test_cayley_is_orthogonal_and_signs_reach_reflections():
    g = torch.Generator().manual_seed(0)
    for n in (2, 5, 20):
        raw = torch.randn(n, n, generator=g)
        signs = torch.randint(0, 2, (n,), generator=g).double() * 2 - 1
        o = cayley(raw, signs)
        torch.testing.assert_close(o.T @ o, torch.eye(n), atol=1e-5, rtol=0)
        assert torch.isclose(torch.det(o), torch.prod(signs), atol=1e-6)


def test_svd_prior_keeps_singular_values_below_one():
    prior = JointPrior([6, 4], "svd", alpha=0.9).float()
    with torch.no_grad():
        prior.rho.fill_(40.0)  # tanh(20) rounds to 1 in float32: the bound must hold there too
    s = torch.linalg.svdvals(prior.cross())
    assert s.max() < 1.0 and s.max() > 0.99
    torch.linalg.cholesky(prior.covariance())
    prior = _randomise(JointPrior([6, 4], "svd", alpha=0.9))
    assert torch.linalg.svdvals(prior.cross()).max() < 1.0
    torch.linalg.cholesky(prior.covariance())  # positive definite


def test_orthogonal_closed_form_equals_general_kl():
    prior = _randomise(JointPrior([5, 5], "orthogonal", alpha=0.95))
    c = prior.cross()
    torch.testing.assert_close(c.T @ c, 0.95**2 * torch.eye(5), atol=1e-6, rtol=0)
    mus, logvars = _random_posteriors([5, 5])
    closed = orthogonal_prior_kl(mus[0], logvars[0], mus[1], logvars[1], c, 0.95)
    two_view = joint_prior_kl(mus[0], logvars[0], mus[1], logvars[1], c)
    general = gaussian_kl_full(torch.cat(mus, -1), torch.cat(logvars, -1), prior.covariance())
    torch.testing.assert_close(closed, two_view)
    torch.testing.assert_close(closed, general)


def test_cholesky_prior_has_identity_blocks_and_agrees_with_two_view_formula():
    prior = _randomise(JointPrior([3, 4], "cholesky", alpha=0.9))
    sigma = prior.covariance()
    torch.testing.assert_close(sigma[:3, :3], torch.eye(3))
    torch.testing.assert_close(sigma[3:, 3:], torch.eye(4))
    mus, logvars = _random_posteriors([3, 4])
    general = prior.kl(mus, logvars, torch.ones(7, 2, dtype=torch.bool))
    two_view = joint_prior_kl(mus[0], logvars[0], mus[1], logvars[1], sigma[3:, :3])
    torch.testing.assert_close(general, two_view)


def test_conditional_gaussian_matches_numpy():
    rng = np.random.default_rng(0)
    a_ = rng.normal(size=(7, 7))
    cov = a_ @ a_.T + 0.5 * np.eye(7)
    mean = rng.normal(size=7)
    obs, miss = [0, 2, 3, 6], [1, 4, 5]
    a = rng.normal(size=(5, 4))
    s_oo, s_mo = cov[np.ix_(obs, obs)], cov[np.ix_(miss, obs)]
    ref_mean = mean[miss] + (a - mean[obs]) @ np.linalg.inv(s_oo) @ s_mo.T
    ref_cov = cov[np.ix_(miss, miss)] - s_mo @ np.linalg.inv(s_oo) @ s_mo.T
    cm, cc = gaussian_conditional(torch.tensor(mean), torch.tensor(cov), obs, miss, torch.tensor(a))
    np.testing.assert_allclose(cm.numpy(), ref_mean, rtol=1e-10)
    np.testing.assert_allclose(cc.numpy(), ref_cov, rtol=1e-10, atol=1e-12)


def test_prior_conditional_is_c_z1():
    prior = _randomise(JointPrior([4, 4], "svd", alpha=0.9))
    c = prior.cross()
    z1 = torch.randn(3, 4)
    cm, cc = gaussian_conditional(torch.zeros(8), prior.covariance(), [0, 1, 2, 3], [4, 5, 6, 7], z1)
    torch.testing.assert_close(cm, z1 @ c.T)
    torch.testing.assert_close(cc, torch.eye(4) - c @ c.T)


def test_cyclical_kl_weight():
    assert cyclical_kl_weight(0.0, 4) == 0.0
    assert cyclical_kl_weight(1 / 16, 4) == pytest.approx(0.5)
    assert cyclical_kl_weight(1 / 8, 4) == pytest.approx(1.0)
    assert cyclical_kl_weight(0.2, 4) == 1.0
    assert cyclical_kl_weight(0.25, 4) == pytest.approx(0.0)
    assert cyclical_kl_weight(1.0, 4) == 1.0
    assert cyclical_kl_weight(0.3, 0) == 1.0


def test_two_view_priors_reject_three_views():
    with pytest.raises(ValueError, match="cholesky"):
        JointPrior([3, 3, 3], "orthogonal", alpha=0.9)


# ----------------------------------------------------------------------------- the point imputation


def _linear_bounded_jpvae(rng, n=3000, d=3, k=2):
    """A JPVAE with linear encoders and decoders on two correlated `bounded` views, its empirical
    latent Gaussian and location spreads fitted on `n` rows: encoder variance 0.3, decoder scale 0.2."""
    from mvimpute.batch import MultiViewBatch
    from mvimpute.models.base import ViewInfo, build_model

    torch.manual_seed(0)
    infos = [ViewInfo(v, d, "bounded") for v in ("a", "b")]
    model = build_model("jpvae", infos, latent_dim=k, hidden=())
    with torch.no_grad():
        for enc in model.encoders.values():
            enc[0].weight[k:].zero_()  # log σ² rows: constant
            enc[0].bias[k:].fill_(np.log(0.3))
            enc[0].weight[:k].copy_(torch.tensor(rng.normal(0, 1.5, (k, 2 * d))))
        for dec in model.decoders.values():
            dec[0].weight[d:].zero_()  # log-variance rows: constant, scale 0.2
            dec[0].bias[d:].fill_(np.log(0.04))
            dec[0].weight[:d].copy_(torch.tensor(rng.normal(0, 0.6, (d, k))))
            dec[0].bias[:d].copy_(torch.tensor([0.0, 0.05, 0.95][:d]))  # locations near the bounds
    a = rng.uniform(0, 1, (n, d))
    b = np.clip(a[:, ::-1] + 0.15 * rng.normal(size=(n, d)), 0, 1)
    train = MultiViewBatch.from_arrays({"a": a, "b": b}, dtype=torch.float64)
    model.eval()
    model.after_fit(lambda: iter([train]))
    return model, train


def _clip_mean_mc(model, view, z_mean, z_cov, rng, n_draws=400_000):
    """E[clamp(loc(z) + 0.2 ε, 0, 1)] with z ~ N(z_mean, z_cov), by Monte Carlo through the decoder's
    weights read as numpy (no library code)."""
    w = model.decoders[view][0].weight.detach().numpy()
    bias = model.decoders[view][0].bias.detach().numpy()
    d = w.shape[0] // 2
    z = rng.multivariate_normal(z_mean, z_cov, size=n_draws)
    loc = z @ w[:d].T + bias[:d]
    return np.clip(loc + 0.2 * rng.normal(size=loc.shape), 0, 1).mean(0)


def test_point_imputation_is_the_predictive_mean_of_a_linear_jpvae():
    # Independent reference: a missing view's latent given the observed view is the least-squares
    # regression of the training encoder means (numpy lstsq), spread by its residual covariance plus
    # the missing view's encoder variance; an entry missing inside an observed view has its encoder's
    # spread. E[y] is then a Monte Carlo average of clamped decoder draws (the model's own sampler and
    # censored-mean formula are not used).
    from mvimpute.batch import MultiViewBatch

    rng = np.random.default_rng(0)
    model, train = _linear_bounded_jpvae(rng)
    with torch.no_grad():
        mus, _ = model.encode(train)
    mu_a, mu_b = (m.numpy() for m in mus)
    design = np.c_[np.ones(len(mu_a)), mu_a]
    coef, *_ = np.linalg.lstsq(design, mu_b, rcond=None)
    resid = mu_b - design @ coef
    spread = resid.T @ resid / (len(mu_a) - 1) + 0.3 * np.eye(2)

    a_row = np.array([[0.9, 0.1, 0.6]])
    b_row = np.array([[0.2, np.nan, 0.7]])
    batch = MultiViewBatch.from_arrays(
        {"a": np.r_[a_row, a_row], "b": np.r_[np.full((1, 3), np.nan), b_row]}, dtype=torch.float64
    )
    point = model.impute_mean(batch)
    with torch.no_grad():
        mus_row, _ = model.encode(batch)
    z_view = np.r_[1.0, mus_row[0][0].numpy()] @ coef  # row 0: view b missing
    ref_view = _clip_mean_mc(model, "b", z_view, spread, rng)
    np.testing.assert_allclose(point["b"][0].numpy(), ref_view, atol=4e-3)
    ref_entry = _clip_mean_mc(model, "b", mus_row[1][1].numpy(), 0.3 * np.eye(2), rng)  # row 1: one entry
    assert point["b"][1, 1].item() == pytest.approx(ref_entry[1], abs=4e-3)
    assert point["b"][1, 0].item() == 0.2 and point["b"][1, 2].item() == 0.7  # observed values kept
    # the latent spread matters here: decoding the conditional mean alone is far from E[y]
    plug_in = _clip_mean_mc(model, "b", z_view, 1e-12 * np.eye(2), rng)
    assert np.abs(ref_view - plug_in).max() > 0.01


def test_point_imputation_needs_no_draws_and_a_row_does_not_depend_on_its_batch():
    from mvimpute.batch import MultiViewBatch

    rng = np.random.default_rng(1)
    model, train = _linear_bounded_jpvae(rng, n=400)
    rows = {"a": rng.uniform(0, 1, (6, 3)), "b": rng.uniform(0, 1, (6, 3))}
    rows["b"][:3] = np.nan
    rows["a"][4, 1] = np.nan
    batch = MultiViewBatch.from_arrays(rows, dtype=torch.float64)
    state = torch.random.get_rng_state()
    torch.manual_seed(123)
    first = model.impute_mean(batch)
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    second = model.impute_mean(batch)
    assert torch.equal(before, torch.random.get_rng_state())  # no random draw
    for v in first:
        assert torch.equal(first[v], second[v])
    for i in (0, 4):
        alone = model.impute_mean(batch.select(slice(i, i + 1)))
        for v in first:
            assert torch.equal(alone[v][0], first[v][i])
    torch.random.set_rng_state(state)


def test_point_imputation_of_an_older_checkpoint_is_the_plug_in_with_its_sigma():
    from mvimpute.batch import MultiViewBatch
    from mvimpute.models.base import ViewInfo, build_model

    rng = np.random.default_rng(2)
    model, _ = _linear_bounded_jpvae(rng, n=400)
    old = {k: v for k, v in model.state_dict().items() if k != "cond_cov_means" and not k.startswith("point_var")}
    again = build_model("jpvae", [ViewInfo(v, 3, "bounded") for v in ("a", "b")], latent_dim=2, hidden=())
    again.load_state_dict(old)
    again.eval()
    batch = MultiViewBatch.from_arrays(
        {"a": rng.uniform(0, 1, (2, 3)), "b": np.full((2, 3), np.nan)}, dtype=torch.float64
    )
    with torch.no_grad():
        mus, _ = again.encode(batch)
        z, _ = gaussian_conditional(again.cond_mean, again.cond_cov, [0, 1], [2, 3], mus[0])
        raw = again.decoders["b"](z)
    loc, logvar = raw.chunk(2, -1)
    s = torch.exp(0.5 * (-9.0 + torch.nn.functional.softplus(logvar + 9.0)))
    expected = torch.distributions.Normal(0, 1)
    lo, hi = (0 - loc) / s, (1 - loc) / s
    mean = (
        (1 - expected.cdf(hi))
        + loc * (expected.cdf(hi) - expected.cdf(lo))
        + s * (expected.log_prob(lo).exp() - expected.log_prob(hi).exp())
    )
    np.testing.assert_allclose(again.impute_mean(batch)["b"].numpy(), mean.numpy(), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- the cross-view term


def test_cross_reconstruction_decodes_each_view_from_the_prior_conditional_of_the_other(monkeypatch):
    # Reference in numpy: linear encoders and decoders on two Gaussian views (decoder scale 0.5), the
    # latent draws the encoder means. For a row observing both views, view b is
    # decoded from E[z_b | z_a] = C z_a and view a from E[z_a | z_b] = Cᵀ z_b (C the orthogonal
    # prior's cross block), scored on the observed entries only; a row missing a view adds nothing.
    from mvimpute.batch import MultiViewBatch
    from mvimpute.models.base import ViewInfo, build_model

    torch.manual_seed(0)
    d, k = 3, 2
    infos = [ViewInfo(v, d, "gaussian") for v in ("a", "b")]
    model = build_model("jpvae", infos, latent_dim=k, hidden=(), alpha=0.8, cross_weight=0.7).double()
    with torch.no_grad():
        for dec in model.decoders.values():
            dec[0].weight[d:].zero_()
            dec[0].bias[d:].fill_(np.log(0.25))
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, d))
    b = rng.normal(size=(3, d))
    b[0, 1] = np.nan  # row 0: both views, one entry of b missing
    b[1] = np.nan  # row 1: view b missing
    a[2] = np.nan  # row 2: view a missing
    batch = MultiViewBatch.from_arrays({"a": a, "b": b}, dtype=torch.float64)
    with torch.no_grad():
        mus, _ = model.encode(batch)
        got = model.cross_reconstruction(batch, mus, model.observed_views(batch)).numpy()
        c = model.prior.cross().numpy()
    mu_a, mu_b = (m.numpy() for m in mus)

    def nll(view, z, y):
        w = model.decoders[view][0].weight.detach().numpy()[:d]
        bias = model.decoders[view][0].bias.detach().numpy()[:d]
        loc = z @ w.T + bias
        var = np.exp(-9 + np.log1p(np.exp(np.log(0.25) + 9)))  # 0.25 through the likelihoods' soft floor at e⁻⁹
        per = 0.5 * np.log(2 * np.pi * var) + (y - loc) ** 2 / (2 * var)
        return np.nansum(per, axis=-1)  # observed entries only

    ref0 = nll("b", mu_a[0] @ c.T, b[0]) + nll("a", mu_b[0] @ c, a[0])
    np.testing.assert_allclose(got, [ref0, 0.0, 0.0], rtol=1e-10, atol=1e-10)

    # the loss adds cross_weight × this term, on the draws its reconstruction used (here the means)
    monkeypatch.setattr(torch, "randn_like", torch.zeros_like)
    with torch.no_grad():
        with_term = model.loss(batch).loss.item()
        model.config.cross_weight = 0.0
        without = model.loss(batch).loss.item()
    assert with_term - without == pytest.approx(0.7 * ref0 / 3, rel=1e-9)


def test_cross_weight_must_be_a_non_negative_number():
    from mvimpute.models.jpvae import JPVAEConfig

    with pytest.raises(ValueError, match="cross_weight"):
        JPVAEConfig(cross_weight=-0.5)
