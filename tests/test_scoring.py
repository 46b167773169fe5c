"""score(): hand-computed references on a tiny example, Monte Carlo calibration, CRPS, errors;
and the column-mean baseline against np.nanmean."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import log_loss

from mvimpute.baselines import mean_imputer
from mvimpute.data import MultiViewData
from mvimpute.scoring import hidden_entries, interval_scores, score


class StubImputer:
    """Fixed outputs: `transform` returns `filled`, `sample` returns `draws` (S, n, d) per view."""

    def __init__(self, filled: dict[str, np.ndarray], draws: dict[str, np.ndarray] | None = None):
        self.filled, self.draws = filled, draws
        self.calls: list[tuple[str, int | None]] = []

    def transform(self, views):
        self.calls.append(("transform", None))
        return {v: np.where(np.isnan(views[v]), self.filled[v], views[v]) for v in self.filled}

    def sample(self, views, n_samples=100):
        self.calls.append(("sample", n_samples))
        return self.draws


def closed_form_crps(y, mu, sigma):
    """CRPS of N(mu, sigma²) at y (Gneiting & Raftery 2007)."""
    z = (y - mu) / sigma
    return sigma * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / np.sqrt(np.pi))


# ----------------------------------------------------------------------------- tiny example


S = 101  # draws: c + scale·(s − 50), s = 0..100 → exact quantiles c ± 45·scale, c ± 25·scale


@pytest.fixture
def tiny():
    rng = np.random.default_rng(0)
    n = 5
    x_true = rng.normal(size=(n, 3))
    b_true = (rng.random((n, 4)) < 0.5).astype(float)
    b_true[0] = [0, 1, 1, 0]
    truth = MultiViewData({"x": x_true, "b": b_true}, likelihoods={"x": "gaussian", "b": "bernoulli"})
    hx = np.zeros((n, 3), bool)
    hx[[0, 1, 3], [0, 2, 1]] = True
    hx[4] = True
    hb = np.zeros((n, 4), bool)
    hb[0] = True  # a whole row of the binary view
    hb[2, [1, 3]] = True
    hb[4, 0] = True
    corrupted = truth.with_views({"x": np.where(hx, np.nan, x_true), "b": np.where(hb, np.nan, b_true)})
    filled = {"x": x_true + rng.normal(scale=0.5, size=(n, 3)), "b": rng.uniform(0.05, 0.95, size=(n, 4))}
    center = {v: filled[v] + rng.normal(scale=0.2, size=filled[v].shape) for v in filled}
    scale = {v: rng.uniform(0.005, 0.03, size=filled[v].shape) for v in filled}
    steps = rng.permutation(np.arange(S) - 50.0)  # order of the draws must not matter
    draws = {v: center[v][None] + scale[v][None] * steps[:, None, None] for v in filled}
    return truth, corrupted, {"x": hx, "b": hb}, filled, center, scale, draws


def test_hidden_entries(tiny):
    truth, corrupted, hidden, *_ = tiny
    h = hidden_entries(truth, corrupted)
    for v in hidden:
        np.testing.assert_array_equal(h[v], hidden[v])


def test_point_metrics_against_numpy(tiny):
    truth, corrupted, hidden, filled, *_ = tiny
    imp = StubImputer(filled)
    out = score(imp, truth, corrupted, n_samples=0)
    errs = {v: filled[v][hidden[v]] - truth.views[v][hidden[v]] for v in hidden}
    for v, e in errs.items():
        assert out[f"rmse/{v}"] == pytest.approx(np.sqrt(np.mean(e**2)), rel=1e-12)
        assert out[f"mae/{v}"] == pytest.approx(np.mean(np.abs(e)), rel=1e-12)
    e = np.concatenate(list(errs.values()))
    assert out["n_hidden"] == hidden["x"].sum() + hidden["b"].sum()
    assert out["rmse"] == pytest.approx(np.sqrt(np.mean(e**2)), rel=1e-12)
    assert out["mae"] == pytest.approx(np.mean(np.abs(e)), rel=1e-12)
    # pooled RMSE is not the mean of per-view RMSEs (the views have different counts)
    assert out["rmse"] != pytest.approx((out["rmse/x"] + out["rmse/b"]) / 2, rel=1e-6)
    assert "coverage_90" not in out and "bce/x" not in out


def test_bce_is_summed_per_sample_over_hidden_entries(tiny):
    truth, corrupted, hidden, filled, *_ = tiny
    out = score(StubImputer(filled), truth, corrupted, n_samples=0)
    y, p, h = truth.views["b"], filled["b"], hidden["b"]
    per_row = [
        log_loss(y[i, h[i]], p[i, h[i]], labels=[0, 1], normalize=False)
        for i in range(len(y))
        if h[i].any()
    ]
    assert len(per_row) == 3
    assert out["bce/b"] == pytest.approx(np.mean(per_row), rel=1e-9)
    mse = np.mean((p[h] - y[h]) ** 2)
    assert out["psnr/b"] == pytest.approx(10 * np.log10(1 / mse), rel=1e-9)


def test_interval_metrics_against_hand_computed_quantiles(tiny):
    truth, corrupted, hidden, filled, center, scale, draws = tiny
    imp = StubImputer(filled, draws)
    out = score(imp, truth, corrupted, n_samples=S)
    assert ("sample", S) in imp.calls
    ys, cov, width, crps = [], {50: [], 90: []}, {50: [], 90: []}, []
    for v, h in hidden.items():
        y, c, s = truth.views[v][h], center[v][h], scale[v][h]
        ys.append(y)
        vcov, vwidth = {}, {}
        for level, half in ((50, 25.0), (90, 45.0)):
            inside = np.abs(y - c) <= half * s
            vcov[level], vwidth[level] = inside, 2 * half * s
            cov[level].append(inside)
            width[level].append(2 * half * s)
            assert out[f"coverage_{level}/{v}"] == pytest.approx(inside.mean(), abs=1e-12)
            assert out[f"width_{level}/{v}"] == pytest.approx(np.mean(2 * half * s), rel=1e-9)
        x = draws[v][:, h]  # (S, k)
        ref = np.abs(x - y).mean(0) - 0.5 * np.abs(x[:, None] - x[None]).mean((0, 1))
        crps.append(ref)
        assert out[f"crps/{v}"] == pytest.approx(ref.mean(), rel=1e-9)
    for level in (50, 90):
        assert out[f"coverage_{level}"] == pytest.approx(np.concatenate(cov[level]).mean(), abs=1e-12)
        assert out[f"width_{level}"] == pytest.approx(np.concatenate(width[level]).mean(), rel=1e-9)
    assert out["crps"] == pytest.approx(np.concatenate(crps).mean(), rel=1e-9)
    # the example is not degenerate: some entries are covered, some are not
    all_cov = np.concatenate(cov[90])
    assert 0 < all_cov.mean() < 1


def test_interval_scores_direct():
    # column 0 holds 0..100, column 1 holds 0..200 step 2: central 90 % = [5, 95] and [10, 190],
    # central 50 % = [25, 75] and [50, 150]
    draws = np.arange(S, dtype=float)[:, None] * np.array([1.0, 2.0])[None]
    cases = {  # y → (coverage_50, coverage_90)
        (4.0, 60.0): (0.5, 0.5),
        (10.0, 9.0): (0.0, 0.5),
        (30.0, 100.0): (1.0, 1.0),
        (99.0, 195.0): (0.0, 0.0),
    }
    for y, (c50, c90) in cases.items():
        out = interval_scores(draws, np.array(y))
        assert out["coverage_50"] == pytest.approx(c50), y
        assert out["coverage_90"] == pytest.approx(c90), y
        assert out["width_90"] == pytest.approx(np.mean([90.0, 180.0]))
        assert out["width_50"] == pytest.approx(np.mean([50.0, 100.0]))


# ----------------------------------------------------------------------------- Monte Carlo


def gaussian_case(draw_std: float, n: int = 2000, d: int = 2, n_draws: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(n, d))
    other = rng.normal(size=(n, 1))
    truth = MultiViewData({"g": y, "o": other}, likelihoods={"g": "gaussian", "o": "gaussian"})
    corrupted = truth.with_views({"g": np.full_like(y, np.nan), "o": other})
    draws = {"g": rng.normal(scale=draw_std, size=(n_draws, n, d)), "o": np.broadcast_to(other, (n_draws, n, 1))}
    imp = StubImputer({"g": np.zeros_like(y), "o": other}, draws)
    return score(imp, truth, corrupted, n_samples=n_draws), y


def test_calibrated_draws_cover_at_nominal_rate():
    out, y = gaussian_case(1.0)
    k = y.size
    for level, nominal in ((50, 0.5), (90, 0.9)):
        tol = 5 * np.sqrt(nominal * (1 - nominal) / k) + 0.01  # binomial + finite-ensemble quantiles
        assert abs(out[f"coverage_{level}"] - nominal) < tol, (level, out[f"coverage_{level}"])
    assert out["width_90"] == pytest.approx(2 * norm.ppf(0.95), rel=0.03)
    assert out["width_50"] == pytest.approx(2 * norm.ppf(0.75), rel=0.03)
    assert out["rmse"] == pytest.approx(np.sqrt(np.mean(y**2)), rel=1e-12)


def test_overconfident_draws_undercover():
    out, y = gaussian_case(0.1)
    expect90 = np.mean(np.abs(y) <= 0.1 * norm.ppf(0.95))
    expect50 = np.mean(np.abs(y) <= 0.1 * norm.ppf(0.75))
    assert out["coverage_90"] < 0.3 and out["coverage_50"] < 0.15
    assert out["coverage_90"] == pytest.approx(expect90, abs=0.03)
    assert out["coverage_50"] == pytest.approx(expect50, abs=0.03)


@pytest.mark.parametrize("draw_std", [1.0, 0.1, 2.0])
def test_crps_matches_closed_form_gaussian(draw_std):
    n_draws = 200
    out, y = gaussian_case(draw_std, n_draws=n_draws)
    exact = closed_form_crps(y, 0.0, draw_std).mean()
    # the ensemble (non-fair) estimator is biased up by E|X − X'| / (2S) = σ / (S √π)
    bias = draw_std / (n_draws * np.sqrt(np.pi))
    assert out["crps"] == pytest.approx(exact + bias, rel=0.01)
    assert out["crps/g"] == out["crps"]


def test_crps_prefers_the_true_distribution():
    good, _ = gaussian_case(1.0)
    for std in (0.1, 3.0):
        bad, _ = gaussian_case(std)
        assert bad["crps"] > good["crps"] + 0.05


# ----------------------------------------------------------------------------- errors


def test_nothing_hidden_raises(tiny):
    truth, _, _, filled, *_ = tiny
    with pytest.raises(ValueError, match="nothing to score"):
        score(StubImputer(filled), truth, truth)


def test_shape_or_view_mismatch_raises(tiny):
    truth, corrupted, _, filled, *_ = tiny
    narrow = MultiViewData({"x": corrupted.views["x"][:, :2], "b": corrupted.views["b"]})
    with pytest.raises(ValueError, match="'x'"):
        score(StubImputer(filled), truth, narrow)
    short = MultiViewData({v: a[:3] for v, a in corrupted.views.items()})
    with pytest.raises(ValueError, match="shape"):
        score(StubImputer(filled), truth, short)
    renamed = MultiViewData({"x": corrupted.views["x"], "c": corrupted.views["b"]})
    with pytest.raises(ValueError, match="differ"):
        score(StubImputer(filled), truth, renamed)


# ----------------------------------------------------------------------------- mean baseline


def test_mean_imputer_fills_training_column_means():
    rng = np.random.default_rng(1)
    a, b = rng.normal(3.0, 2.0, size=(100, 4)), rng.normal(-5.0, 1.0, size=(100, 3))
    a[rng.random(a.shape) < 0.3] = np.nan
    b[rng.random(b.shape) < 0.3] = np.nan
    b[:, 2] = np.nan  # never observed in training → 0
    imp = mean_imputer().fit({"a": a, "b": b})
    na, nb = rng.normal(size=(20, 4)), rng.normal(size=(20, 3))
    na[rng.random(na.shape) < 0.5] = np.nan
    nb[rng.random(nb.shape) < 0.5] = np.nan
    nb[0] = np.nan
    out = imp.transform({"a": na, "b": nb})
    means = {"a": np.nanmean(a, 0), "b": np.concatenate([np.nanmean(b[:, :2], 0), [0.0]])}
    for v, new in (("a", na), ("b", nb)):
        miss = np.isnan(new)
        assert not np.isnan(out[v]).any()
        np.testing.assert_array_equal(out[v][~miss], new[~miss])
        expected = np.broadcast_to(means[v], new.shape)
        np.testing.assert_allclose(out[v][miss], expected[miss], rtol=1e-12)


def test_mean_imputer_keeps_views_apart_when_given_in_another_order():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.0, 1.0, size=(50, 3)), rng.normal(10.0, 1.0, size=(50, 3))
    imp = mean_imputer().fit({"a": a, "b": b})
    empty = np.full((2, 3), np.nan)
    out = imp.transform({"b": empty, "a": empty.copy()})
    np.testing.assert_allclose(out["a"], np.broadcast_to(a.mean(0), (2, 3)))
    np.testing.assert_allclose(out["b"], np.broadcast_to(b.mean(0), (2, 3)))
    with pytest.raises(ValueError, match="differ"):
        imp.transform({"a": empty, "b": np.full((2, 4), np.nan)})


def test_score_with_mean_imputer_matches_numpy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, 5))
    truth = MultiViewData({"x": x, "y": x[:, :2] + rng.normal(size=(80, 2))})
    train = {v: a[:40] for v, a in truth.views.items()}
    test = truth.subset(np.arange(40, 80))
    hide = rng.random((40, 5)) < 0.3
    corrupted = test.with_views({"x": np.where(hide, np.nan, test.views["x"]), "y": test.views["y"]})
    out = score(mean_imputer().fit(train), test, corrupted)
    e = (np.broadcast_to(x[:40].mean(0), (40, 5)) - test.views["x"])[hide]
    assert out["rmse"] == pytest.approx(np.sqrt(np.mean(e**2)), rel=1e-12)
    assert out["rmse/x"] == out["rmse"] and "rmse/y" not in out
