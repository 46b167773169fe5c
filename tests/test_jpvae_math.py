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
