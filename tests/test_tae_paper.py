"""`jobs/tae_paper.yaml`: TAE with its paper's settings (Tonolini et al., ICLR 2021, App. B–C; the table
in docs/tae.md). Loading it gives exactly those values, and the model it names builds and trains; the
budget curve's named variants of it (`jobs/tae_budget.py`)."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pytest

import mvimpute as mvi
from mvimpute.config import load_job_config, train_config
from mvimpute.models.tae import TAEConfig

CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "tae_paper.yaml"
ITERATIONS, BATCH, MNIST_TRAIN = 500_000, 20, 60_000

# What the paper gives (section: quote)
PAPER_MODEL = {
    "latent_dim": 20,  # C.1: "the latent space z is 20-dimensional"
    "hidden": 400,  # C.1: "The two intermediate deterministic layers have 400 hidden units"
    "prior_latent_dim": 5,  # C.1: "the latent variables zp are 5-dimensional"
    "prior_hidden": 50,  # C.1: "the two deterministic hidden layers have 50 hidden units each"
    "posterior_conditions_on_y": False,  # C.1: "the independence assumption q(x|z, y) = q(x|z)"
    "C": 10.0,  # C.2: "λ = 2 and C = 10"
    "lam": 2.0,
    "noise": "inferred",  # B.2, Algorithm 1 line 6: β_i ~ q(β|z_i, y_i, α_i)
    "gamma0": 0.01,  # C.2: "γ initially set to 0.01 and then linearly increased to 1 between
    "warmup_start": 50_000 / ITERATIONS,  # 50, 000 and 100, 000 iterations" (of 500,000)
    "warmup_end": 100_000 / ITERATIONS,
}
PAPER_TRAIN = {
    "batch_size": BATCH,  # C.2: "batch size of 20"
    "lr": 2e-4,  # C.2: "an initial training [rate] of 2[×10⁻]4"
    "epochs": round(ITERATIONS * BATCH / MNIST_TRAIN),  # C.2: "500, 000 iterations", in passes over MNIST
    "patience": None,  # a fixed number of iterations: no early stopping
    "val_frac": 0.0,  # trained on the whole corrupted set
}
# Where the paper is silent: the choices docs/tae.md explains
CHOSEN_MODEL = {
    "noise_std": 0.1,
    "latent_logvar_cap": 0.0,
    "logvar_floor": -9.0,
    "posterior_conditions_on_mask": False,
    "predictive_noise": False,
    "denoise": True,
}
CHOSEN_TRAIN = {"weight_decay": 0.0, "grad_clip": 10.0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_tae_paper_gives_exactly_the_papers_settings():
    job = load_job_config(CONFIG)
    assert job.model == "tae"
    assert job.model_params == {**PAPER_MODEL, **CHOSEN_MODEL}
    # every field of the model's config is set, so a change of a default cannot change this config
    assert set(job.model_params) == {f.name for f in fields(TAEConfig)}
    cfg = train_config(job.train)
    for key, value in {**PAPER_TRAIN, **CHOSEN_TRAIN}.items():
        assert getattr(cfg, key) == value, key


def test_tae_paper_builds_and_takes_a_training_step():
    job = load_job_config(CONFIG)
    rng = np.random.default_rng(0)
    n = BATCH  # one batch: one optimiser step
    t = rng.normal(size=(n, 2))
    views = {"a": np.tanh(t @ rng.normal(size=(2, 6))), "b": np.sin(t @ rng.normal(size=(2, 5)))}
    views["a"][rng.random((n, 6)) < 0.5] = np.nan
    views["b"][:4] = np.nan
    imp = mvi.MultiViewImputer(job.model, **job.model_params, **{**job.train, "epochs": 1, "device": "cpu"})
    imp.fit(views)
    assert len(imp.history_) == 1 and np.isfinite(imp.history_[0]["train_loss"])
    # the data-size rule (below 1,000 samples) changed none of the paper's settings
    assert asdict(imp.model_.config) == {**PAPER_MODEL, **CHOSEN_MODEL}
    assert imp.train_config.batch_size == BATCH and imp.train_config.lr == PAPER_TRAIN["lr"]
    draws = imp.sample(views, n_samples=3)
    assert draws["a"].shape == (3, n, 6) and np.isfinite(draws["a"]).all()


def test_the_budget_curves_named_variants_change_only_what_they_name(monkeypatch):
    """`jobs/tae_budget.py`'s `name:key=value,...` configurations (docs/tae.md's probes): the named
    settings replaced, YAML-typed, everything else as the base configuration; a bad item is an error."""
    monkeypatch.syspath_prepend(str(CONFIG.parent))  # the script imports its neighbours as it runs
    from jobs import tae_budget

    model, base, batch = tae_budget.config_params("tae")
    named = "tae:latent_logvar_cap=2,C=0,posterior_conditions_on_mask=true"
    v_model, variant, v_batch = tae_budget.config_params(named)
    assert (v_model, v_batch) == (model, batch)
    assert variant == {**base, "latent_logvar_cap": 2, "C": 0, "posterior_conditions_on_mask": True}
    with pytest.raises(ValueError, match="key.path=value"):
        tae_budget.config_params("tae:latent_logvar_cap")
