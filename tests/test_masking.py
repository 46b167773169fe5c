"""Masking: rates within binomial tolerance, hidden = newly missing entries, truth untouched, MAR ≠ MCAR."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from mvimpute import masking
from mvimpute.data import MultiViewData


def binomial_tol(p: float, n: int, k: float = 4.5) -> float:
    return k * np.sqrt(p * (1 - p) / n)


def make_data(n: int = 1500, dims=(6, 5, 4), missing: float = 0.2, seed: int = 0) -> MultiViewData:
    rng = np.random.default_rng(seed)
    views = {}
    for i, d in enumerate(dims):
        x = rng.normal(size=(n, d))
        x[rng.random(x.shape) < missing] = np.nan
        views[f"v{i}"] = x
    return MultiViewData(views)


def snapshot(data: MultiViewData) -> dict[str, np.ndarray]:
    return {v: a.copy() for v, a in data.views.items()}


def assert_hidden_is_newly_missing(c: masking.Corrupted, original: dict[str, np.ndarray]) -> None:
    for v, a in original.items():
        new = c.data.views[v]
        assert np.isnan(new[np.isnan(a)]).all(), f"view {v}: an already-missing entry came back"
        np.testing.assert_array_equal(c.hidden[v], np.isnan(new) & ~np.isnan(a))
        keep = ~np.isnan(new)
        np.testing.assert_array_equal(new[keep], a[keep])


def assert_truth_untouched(c: masking.Corrupted, original: dict[str, np.ndarray]) -> None:
    assert c.truth.view_names == list(original)
    for v, a in original.items():
        np.testing.assert_array_equal(c.truth.views[v], a)


# ----------------------------------------------------------------------------- MCAR


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_mcar_rate_and_bookkeeping(rate):
    data = make_data()
    original = snapshot(data)
    c = masking.mcar(data, rate, seed=3)
    n_obs = sum(int((~np.isnan(a)).sum()) for a in original.values())
    n_hidden = sum(int(h.sum()) for h in c.hidden.values())
    assert abs(n_hidden / n_obs - rate) < binomial_tol(rate, n_obs)
    for v, a in original.items():
        obs = ~np.isnan(a)
        assert abs(c.hidden[v].sum() / obs.sum() - rate) < binomial_tol(rate, int(obs.sum()))
    assert_hidden_is_newly_missing(c, original)
    assert_truth_untouched(c, original)
    for v, a in original.items():  # the input is not modified
        np.testing.assert_array_equal(data.views[v], a)


def test_mcar_is_reproducible_and_respects_views():
    data = make_data(n=300)
    a = masking.mcar(data, 0.3, seed=1)
    b = masking.mcar(data, 0.3, seed=1)
    c = masking.mcar(data, 0.3, seed=2)
    for v in data.views:
        np.testing.assert_array_equal(a.hidden[v], b.hidden[v])
    assert any(not np.array_equal(a.hidden[v], c.hidden[v]) for v in data.views)
    only = masking.mcar(data, 0.3, seed=1, views=["v1"])
    assert only.hidden["v1"].any()
    assert not only.hidden["v0"].any() and not only.hidden["v2"].any()


# ----------------------------------------------------------------------------- whole views


def view_hidden_rows(c: masking.Corrupted, v: str) -> np.ndarray:
    h = c.hidden[v]
    return h.any(1)


@pytest.mark.parametrize(("rate", "dims"), [(0.3, (6, 5)), (0.5, (6, 5, 4)), (0.9, (6, 5, 4))])
def test_drop_views_whole_views_rate_and_no_empty_sample(rate, dims):
    n = 3000
    data = make_data(n=n, dims=dims, missing=0.0, seed=1)
    original = snapshot(data)
    c = masking.drop_views(data, rate, seed=5)
    assert_hidden_is_newly_missing(c, original)
    assert_truth_untouched(c, original)
    n_views = len(dims)
    for v in data.views:
        rows = view_hidden_rows(c, v)
        np.testing.assert_array_equal(c.hidden[v], np.repeat(rows[:, None], data.dims[v], 1))
        # each view is dropped with prob `rate`; when all are dropped one (uniformly) is restored
        expected = rate - rate**n_views / n_views
        assert abs(rows.mean() - expected) < binomial_tol(expected, n)
    kept = np.stack([(~np.isnan(a)).any(1) for a in c.data.views.values()], 1)
    assert kept.any(1).all()


def test_drop_views_never_empties_a_sample_that_already_misses_views():
    n = 2000
    rng = np.random.default_rng(2)
    a, b, cc = rng.normal(size=(n, 3)), rng.normal(size=(n, 2)), rng.normal(size=(n, 4))
    a[: n // 2] = np.nan  # half the samples already lack view a
    b[n // 4 : n // 2] = np.nan  # and a quarter lack a and b
    data = MultiViewData({"a": a, "b": b, "c": cc})
    original = snapshot(data)
    c = masking.drop_views(data, 0.8, seed=0)
    assert_hidden_is_newly_missing(c, original)
    kept = np.stack([(~np.isnan(x)).any(1) for x in c.data.views.values()], 1)
    assert kept.any(1).all()
    assert not c.hidden["a"][: n // 2].any()
    assert not c.hidden["c"][n // 4 : n // 2].any()  # the only view left there


def test_hide_view():
    data = make_data(n=50, missing=0.1)
    original = snapshot(data)
    c = masking.hide_view(data, "v1", rows=[0, 3, 7])
    assert_hidden_is_newly_missing(c, original)
    assert np.isnan(c.data.views["v1"][[0, 3, 7]]).all()
    assert set(np.flatnonzero(c.hidden["v1"].any(1))) <= {0, 3, 7}
    assert not c.hidden["v0"].any()
    everything = masking.hide_view(data, "v2")
    assert np.isnan(everything.data.views["v2"]).all()
    with pytest.raises(ValueError, match="'v9'"):
        masking.hide_view(data, "v9")


# ----------------------------------------------------------------------------- MAR


def mar_data(n: int = 2000, seed: int = 0) -> MultiViewData:
    rng = np.random.default_rng(seed)
    return MultiViewData({"clin": rng.normal(size=(n, 5)), "rna": rng.normal(size=(n, 4)),
                          "prot": rng.normal(size=(n, 3))})


def test_mar_rate_driver_untouched():
    data = mar_data()
    original = snapshot(data)
    rate = 0.3
    c = masking.mar(data, rate, seed=4, driver="clin")
    assert_hidden_is_newly_missing(c, original)
    assert_truth_untouched(c, original)
    assert not c.hidden["clin"].any()
    np.testing.assert_array_equal(c.data.views["clin"], original["clin"])
    n = data.n_samples
    for v in ("rna", "prot"):
        for j in range(data.dims[v]):
            # each column's expected rate is `rate`; Bernoulli with unequal p has variance ≤ binomial
            assert abs(c.hidden[v][:, j].mean() - rate) < binomial_tol(rate, n)
    total = np.concatenate([c.hidden["rna"].ravel(), c.hidden["prot"].ravel()])
    assert abs(total.mean() - rate) < binomial_tol(rate, total.size)
    # the first view drives by default
    default = masking.mar(data, rate, seed=4)
    assert not default.hidden["clin"].any() and default.hidden["rna"].any()


def cv_auc(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(cross_val_score(LogisticRegression(), x, y, cv=3, scoring="roc_auc")))


def test_mar_missingness_depends_on_the_driver_and_mcar_does_not():
    data = mar_data()
    driver = data.views["clin"]
    mar = masking.mar(data, 0.3, seed=4, driver="clin", strength=2.0)
    mcar = masking.mcar(data, 0.3, seed=4)
    for j in range(data.dims["rna"]):
        auc_mar = cv_auc(driver, mar.hidden["rna"][:, j])
        auc_mcar = cv_auc(driver, mcar.hidden["rna"][:, j])
        assert auc_mar > 0.75, f"column {j}: MAR missingness not predictable from the driver ({auc_mar:.3f})"
        assert abs(auc_mcar - 0.5) < 0.06, f"column {j}: MCAR missingness predictable ({auc_mcar:.3f})"
    # and with strength 0 MAR degenerates to MCAR
    flat = masking.mar(data, 0.3, seed=4, driver="clin", strength=0.0)
    assert abs(cv_auc(driver, flat.hidden["rna"][:, 0]) - 0.5) < 0.06


# ----------------------------------------------------------------------------- noise


def test_add_noise_std_and_clean_truth():
    data = make_data(n=2000, missing=0.1)
    original = snapshot(data)
    std = 0.4
    c = masking.add_noise(data, std, seed=9)
    assert_truth_untouched(c, original)
    diffs = []
    for v, a in original.items():
        assert not c.hidden[v].any() and c.hidden[v].shape == a.shape
        np.testing.assert_array_equal(np.isnan(c.data.views[v]), np.isnan(a))
        diffs.append((c.data.views[v] - a)[~np.isnan(a)])
    d = np.concatenate(diffs)
    # relative sd of a sample std is about 1/sqrt(2N)
    assert abs(d.std() / std - 1) < 5 / np.sqrt(2 * d.size)
    assert abs(d.mean()) < 5 * std / np.sqrt(d.size)
    only = masking.add_noise(data, std, seed=9, views=["v2"])
    np.testing.assert_array_equal(only.data.views["v0"], original["v0"])
    clipped = masking.add_noise(data, 3.0, seed=9, clip=(-1.0, 1.0))
    obs = ~np.isnan(original["v0"])
    assert clipped.data.views["v0"][obs].min() >= -1 and clipped.data.views["v0"][obs].max() <= 1
    with pytest.raises(ValueError, match="std"):
        masking.add_noise(data, -1.0)


# ----------------------------------------------------------------------------- composition, errors


def test_then_unions_hidden():
    data = make_data(n=400, missing=0.1)
    original = snapshot(data)
    first = masking.drop_views(data, 0.4, seed=1)
    second = masking.mcar(first.data, 0.3, seed=2)
    both = first.then(lambda d: masking.mcar(d, 0.3, seed=2))
    assert_truth_untouched(both, original)
    for v in data.views:
        np.testing.assert_array_equal(both.hidden[v], first.hidden[v] | second.hidden[v])
        np.testing.assert_array_equal(both.data.views[v], second.data.views[v])
    assert_hidden_is_newly_missing(both, original)


def test_corrupt_composes():
    data = make_data(n=1000, missing=0.1)
    original = snapshot(data)
    c = masking.corrupt(data, view_rate=0.3, mcar_rate=0.2, mar_rate=0.2, noise_std=0.1, seed=0)
    assert_truth_untouched(c, original)
    for v, a in original.items():
        newly = np.isnan(c.data.views[v]) & ~np.isnan(a)
        np.testing.assert_array_equal(c.hidden[v], newly)
        assert np.isnan(c.data.views[v][np.isnan(a)]).all()
        left = ~np.isnan(c.data.views[v])
        d = c.data.views[v][left] - a[left]
        assert 0.08 < d.std() < 0.12  # noise on what stays observed
    whole_rows = c.hidden["v1"].all(1)
    assert whole_rows.any()  # whole views were dropped ...
    partial = c.hidden["v1"].any(1) & ~whole_rows
    assert partial.any()  # ... and single entries too
    obs = sum(int((~np.isnan(a)).sum()) for a in original.values())
    hidden = sum(int(h.sum()) for h in c.hidden.values())
    assert hidden / obs > 0.3  # more than any single step alone


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_bad_rate_raises(rate):
    data = make_data(n=20)
    for fn in (masking.mcar, masking.drop_views, masking.mar):
        with pytest.raises(ValueError, match="rate"):
            fn(data, rate)
    with pytest.raises(ValueError, match="rate"):
        masking.corrupt(data, mcar_rate=rate)
    with pytest.raises(ValueError, match="rate"):
        masking.corrupt(data, view_rate=rate)


def test_unknown_view_raises_naming_it():
    data = make_data(n=20)
    with pytest.raises(ValueError, match="'methyl'"):
        masking.mcar(data, 0.2, views=["v0", "methyl"])
    with pytest.raises(ValueError, match="'methyl'"):
        masking.drop_views(data, 0.2, views=["methyl"])
    with pytest.raises(ValueError, match="'methyl'"):
        masking.mar(data, 0.2, driver="methyl")
    with pytest.raises(ValueError, match="'methyl'"):
        masking.add_noise(data, 0.1, views=["methyl"])
