"""Evaluation ELBO (TAE paper, App. C.3): the probabilistic score of a trained posterior.

With the posterior q(z|y) q(x|z) frozen, a fresh encoder q_η(z|x) is fitted on ground truth x_t
to maximise E_{q_η(z|x_t)} log q(x_t|z) − KL(q_η(z|x_t) ‖ q(z|y_t)) over η only: a lower bound
on log q(x_t|y_t), per sample, summed over features, in the model's (scaled) data space.
log q(x_t|z) is q(x|z) observed through each view's likelihood (`PosteriorNetworks.link_log_prob`:
for `bounded` views a censored Gaussian, whose mass at the bounds is a probability).
"""

from __future__ import annotations

import torch

from ..batch import MultiViewBatch
from .base import soft_floor
from .posterior import kl_gaussians, leaky_mlp, reparameterise

ENCODER_LOGVAR_FLOOR = -14.0


def _bound(model, encoder, x, m_t, batch, mu_p, lv_p, eps):
    mu, raw = encoder(x).chunk(2, dim=-1)
    lv = soft_floor(raw, ENCODER_LOGVAR_FLOOR)
    z = reparameterise(mu, lv, eps)
    mu_x, lv_x = model.posterior_x_given_z(z, batch)
    log_lik = (model.posterior.link_log_prob(x, mu_x, lv_x) * m_t).sum(-1).mean(0)
    return log_lik - kl_gaussians(mu, lv, mu_p, lv_p)


def evaluation_elbo(
    model,
    truth_batch: MultiViewBatch,
    corrupted_batch: MultiViewBatch,
    steps: int = 2000,
    lr: float = 1e-3,
    seed: int = 0,
    batch_size: int = 256,
    hidden: int | None = None,
    n_eval_samples: int = 16,
    return_trace: bool = False,
) -> float | tuple[float, list[float]]:
    """Mean per-sample evaluation ELBO of `model` (TAE, MVAE or MIWAE) on the test pairs.

    `truth_batch` holds x_t (entries missing from it are left out of log q(x_t|z)),
    `corrupted_batch` y_t, both scaled as the model sees them. The model's weights and
    `requires_grad` flags are left as they were. With `return_trace`, also the bound on each
    step's minibatch.
    """
    post = model.posterior
    device = next(model.parameters()).device
    truth_batch, corrupted_batch = truth_batch.to(device), corrupted_batch.to(device)
    x_t, m_t = post.observed(truth_batch)
    n = x_t.shape[0]
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = leaky_mlp(post.data_dim, hidden or post.hidden, 2 * post.latent_dim).to(device, x_t.dtype)
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
        with torch.no_grad():
            mu_p, lv_p = model.posterior_z(corrupted_batch)
        opt = torch.optim.Adam(encoder.parameters(), lr=lr)
        trace: list[float] = []
        for _ in range(steps):
            rows = torch.randperm(n, generator=gen, device=device)[:batch_size] if n > batch_size else slice(None)
            sub = corrupted_batch.select(rows) if n > batch_size else corrupted_batch
            eps = torch.randn(1, x_t[rows].shape[0], post.latent_dim, generator=gen, device=device)
            bound = _bound(model, encoder, x_t[rows], m_t[rows], sub, mu_p[rows], lv_p[rows], eps).mean()
            opt.zero_grad(set_to_none=True)
            (-bound).backward()
            opt.step()
            trace.append(float(bound.detach()))
        total = 0.0
        with torch.no_grad():
            for start in range(0, n, batch_size):
                rows = slice(start, start + batch_size)
                sub = corrupted_batch.select(rows)
                k = x_t[rows].shape[0]
                eps = torch.randn(n_eval_samples, k, post.latent_dim, generator=gen, device=device)
                total += float(_bound(model, encoder, x_t[rows], m_t[rows], sub, mu_p[rows], lv_p[rows], eps).sum())
        value = total / n
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
        model.train(was_training)
    return (value, trace) if return_trace else value
