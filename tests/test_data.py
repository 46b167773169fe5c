"""MultiViewData, ViewScaler, ViewSchema and the embedded data sets, against numpy/pandas/sklearn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mvimpute.data import DATASETS, MultiViewData, ViewScaler, ViewSchema, load_dataset


def frame(values: np.ndarray, index, prefix: str) -> pd.DataFrame:
    return pd.DataFrame(values, index=index, columns=[f"{prefix}{j}" for j in range(values.shape[1])])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# ----------------------------------------------------------------------------- bad input


def test_different_row_counts_name_both_views(rng):
    with pytest.raises(ValueError, match="rows") as err:
        MultiViewData({"rna": rng.normal(size=(5, 2)), "protein": rng.normal(size=(4, 3))})
    msg = str(err.value)
    assert "'rna'" in msg and "'protein'" in msg
    assert "5" in msg and "4" in msg


def test_non_numeric_dataframe_column_names_view_and_column():
    df = pd.DataFrame({"g1": [1.0, 2.0, 3.0], "g2": ["0.5", "high", "1"]})
    with pytest.raises(ValueError, match=r"view 'rna'.*column 'g2'"):
        MultiViewData({"rna": df, "protein": np.zeros((3, 2))})


def test_numeric_strings_in_a_dataframe_are_parsed():
    df = pd.DataFrame({"g1": ["1.5", "2", None]})
    data = MultiViewData({"rna": df})
    np.testing.assert_array_equal(data.views["rna"][:, 0], pd.to_numeric(df["g1"]).to_numpy(dtype=float))


def test_non_numeric_object_array_names_view_and_column():
    arr = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, "x"]], dtype=object)
    with pytest.raises(ValueError, match=r"view 'img'.*column 'img_2'"):
        MultiViewData({"img": arr})


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_inf_names_view_and_column(bad):
    df = pd.DataFrame({"a": [1.0, 2.0], "b": [0.0, bad], "c": [1.0, 1.0]})
    with pytest.raises(ValueError, match=r"view 'clin'.*column 'b'.*Inf"):
        MultiViewData({"clin": df})
    arr = df.to_numpy()
    with pytest.raises(ValueError, match=r"view 'clin'.*column 'clin_1'"):
        MultiViewData({"clin": arr})


def test_dataframes_with_different_ids_raise(rng):
    a = frame(rng.normal(size=(3, 2)), ["s1", "s2", "s3"], "a")
    b = frame(rng.normal(size=(3, 2)), ["s1", "s2", "s4"], "b")
    with pytest.raises(ValueError, match=r"view 'b'.*sample ids"):
        MultiViewData({"a": a, "b": b})


def test_duplicate_ids_in_a_later_view_raise_valueerror(rng):
    a = frame(rng.normal(size=(3, 2)), ["s1", "s2", "s3"], "a")
    b = frame(rng.normal(size=(3, 2)), ["s1", "s1", "s2"], "b")
    with pytest.raises(ValueError, match=r"view 'b'.*duplicate"):
        MultiViewData({"a": a, "b": b})


def test_unknown_likelihood_raises(rng):
    with pytest.raises(ValueError, match=r"view 'a'.*'gauss'"):
        MultiViewData({"a": rng.normal(size=(4, 2))}, likelihoods={"a": "gauss"})
    with pytest.raises(ValueError, match=r"'zz'"):
        MultiViewData({"a": rng.normal(size=(4, 2))}, likelihoods={"zz": "gaussian"})


def test_rows_with_every_view_missing(rng):
    a, b = rng.normal(size=(6, 2)), rng.normal(size=(6, 3))
    a[[1, 4]] = np.nan
    b[[1, 4]] = np.nan
    b[2] = np.nan  # row 2 still has view a
    MultiViewData({"a": a, "b": b})  # allowed by default
    with pytest.raises(ValueError, match="2 sample") as err:
        MultiViewData({"a": a, "b": b}, allow_empty_rows=False)
    assert "[1, 4]" in str(err.value)
    a[[1, 4]] = 0.0
    MultiViewData({"a": a, "b": b}, allow_empty_rows=False)


# ----------------------------------------------------------------------------- alignment, split


def test_shuffled_dataframe_indices_are_aligned(rng):
    ids = [f"id{i}" for i in range(20)]
    a = frame(rng.normal(size=(20, 3)), ids, "a")
    b = frame(rng.normal(size=(20, 2)), ids, "b")
    b_shuffled = b.sample(frac=1.0, random_state=1)
    assert not b_shuffled.index.equals(a.index)
    data = MultiViewData({"a": a, "b": b_shuffled})
    np.testing.assert_array_equal(data.index, a.index.to_numpy())
    np.testing.assert_array_equal(data.views["a"], a.to_numpy())
    np.testing.assert_array_equal(data.views["b"], b_shuffled.reindex(a.index).to_numpy())
    assert data.columns["b"] == list(b.columns)


def test_split_is_a_reproducible_partition_that_keeps_obs_aligned(rng):
    n = 103
    ids = np.array([f"s{i}" for i in range(n)])
    x = rng.normal(size=(n, 4))
    obs = pd.DataFrame({"row": np.arange(n), "label": rng.integers(0, 3, n)})
    data = MultiViewData({"a": x, "b": x[:, :2] * 2}, index=ids, obs=obs)
    train, test = data.split(test_frac=0.25, seed=7)
    assert len(test) == round(0.25 * n) and len(train) + len(test) == n
    assert set(train.index).isdisjoint(test.index)
    assert set(train.index) | set(test.index) == set(ids)
    for part in (train, test):
        rows = part.obs["row"].to_numpy()
        np.testing.assert_array_equal(part.index, ids[rows])
        np.testing.assert_array_equal(part.views["a"], x[rows])
        np.testing.assert_array_equal(part.views["b"], 2 * x[rows, :2])
        np.testing.assert_array_equal(part.obs["label"].to_numpy(), obs["label"].to_numpy()[rows])
    train2, test2 = data.split(test_frac=0.25, seed=7)
    np.testing.assert_array_equal(test2.index, test.index)
    np.testing.assert_array_equal(train2.index, train.index)
    _, test3 = data.split(test_frac=0.25, seed=8)
    assert set(test3.index) != set(test.index)
    with pytest.raises(ValueError, match="test_frac"):
        data.split(test_frac=1.0)


# ----------------------------------------------------------------------------- scaling


def with_holes(rng, shape, rate=0.3, positive=False) -> np.ndarray:
    x = rng.gamma(2.0, 3.0, size=shape) if positive else rng.normal(5.0, 3.0, size=shape)
    x[rng.random(shape) < rate] = np.nan
    return x


def test_standard_scaler_uses_observed_entries_only(rng):
    x = with_holes(rng, (200, 5))
    sc = ViewScaler("standard").fit(x)
    np.testing.assert_allclose(sc.mean, np.nanmean(x, 0), rtol=1e-12)
    np.testing.assert_allclose(sc.std, np.nanstd(x, 0, ddof=1), rtol=1e-12)
    z = sc.transform(x)
    np.testing.assert_array_equal(np.isnan(z), np.isnan(x))
    np.testing.assert_allclose(np.nanmean(z, 0), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.nanstd(z, 0, ddof=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(sc.inverse(z), x, rtol=1e-12, equal_nan=True)
    other = rng.normal(size=(7, 5))
    np.testing.assert_allclose(sc.inverse(sc.transform(other)), other, rtol=1e-10, atol=1e-12)


def test_log1p_scaler(rng):
    x = with_holes(rng, (200, 4), positive=True)
    sc = ViewScaler("log1p").fit(x)
    lx = np.log1p(x)
    np.testing.assert_allclose(sc.mean, np.nanmean(lx, 0), rtol=1e-12)
    np.testing.assert_allclose(sc.std, np.nanstd(lx, 0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(sc.inverse(sc.transform(x)), x, rtol=1e-10, equal_nan=True)


def test_none_scaler_is_identity_and_state_round_trips(rng):
    x = with_holes(rng, (20, 3))
    sc = ViewScaler("none").fit(x)
    np.testing.assert_array_equal(sc.transform(x), x)
    np.testing.assert_array_equal(sc.inverse(x), x)
    std = ViewScaler("standard").fit(x)
    back = ViewScaler.from_state(std.state())
    np.testing.assert_array_equal(back.transform(x), std.transform(x))
    with pytest.raises(ValueError, match="'zscore'"):
        ViewScaler("zscore")


def test_constant_column_gets_unit_std(rng):
    x = np.column_stack([np.full(10, 3.0), rng.normal(size=10)])
    sc = ViewScaler("standard").fit(x)
    assert sc.std[0] == 1.0
    np.testing.assert_allclose(sc.transform(x)[:, 0], 0.0)


# ----------------------------------------------------------------------------- schema


@pytest.fixture
def schema_data(rng) -> MultiViewData:
    a = frame(rng.normal(size=(30, 4)), range(30), "g")
    b = frame(rng.normal(size=(30, 3)), range(30), "p")
    return MultiViewData({"rna": a, "protein": b})


def test_schema_fit_matches_scalers(schema_data):
    s = ViewSchema.fit(schema_data)
    assert s.dims == {"rna": 4, "protein": 3}
    np.testing.assert_allclose(s.scalers["rna"].mean, schema_data.views["rna"].mean(0))
    np.testing.assert_allclose(s.scalers["protein"].std, schema_data.views["protein"].std(0, ddof=1))
    back = ViewSchema.from_state(s.state())
    assert back.columns == s.columns and back.likelihoods == s.likelihoods


def test_schema_check_unknown_view(schema_data, rng):
    s = ViewSchema.fit(schema_data)
    with pytest.raises(ValueError, match="'methylation'"):
        s.check({"rna": rng.normal(size=(2, 4)), "methylation": rng.normal(size=(2, 5))})


def test_schema_check_wrong_width_names_view_and_widths(schema_data, rng):
    s = ViewSchema.fit(schema_data)
    with pytest.raises(ValueError, match="'protein'") as err:
        s.check({"rna": rng.normal(size=(2, 4)), "protein": rng.normal(size=(2, 5))})
    assert "5" in str(err.value) and "3" in str(err.value)


def test_schema_check_omitted_view_is_all_missing(schema_data, rng):
    s = ViewSchema.fit(schema_data)
    x = rng.normal(size=(6, 4))
    out = s.check({"rna": x})
    assert out.view_names == ["rna", "protein"]
    np.testing.assert_array_equal(out.views["rna"], x)
    assert out.views["protein"].shape == (6, 3)
    assert np.isnan(out.views["protein"]).all()


def test_schema_check_puts_reordered_columns_back(schema_data, rng):
    s = ViewSchema.fit(schema_data)
    new = frame(rng.normal(size=(5, 4)), range(5), "g")
    shuffled = new[["g2", "g0", "g3", "g1"]]
    out = s.check({"rna": shuffled})
    np.testing.assert_array_equal(out.views["rna"], new.to_numpy())
    wide = MultiViewData({"rna": new, "protein": frame(rng.normal(size=(5, 3)), range(5), "p")}).to_frame()
    cols = list(wide.columns)
    out = s.check(wide[cols[::-1]])
    np.testing.assert_array_equal(out.views["rna"], new.to_numpy())
    with pytest.raises(ValueError, match="'rna'.*g3"):
        s.check({"rna": new.rename(columns={"g3": "other"})})


def test_frame_round_trip(rng):
    data = load_dataset("synthetic-omics", n_samples=25, dims=(3, 2, 4), seed=3)
    data.views["rna"][[0, 5], 1] = np.nan
    wide = data.to_frame()
    assert wide.shape == (25, 9)
    assert list(wide.columns[:3]) == [f"rna:{c}" for c in data.columns["rna"]]
    back = MultiViewData.from_frame(wide, likelihoods=data.likelihoods)
    assert back.view_names == data.view_names
    assert back.columns == data.columns
    np.testing.assert_array_equal(back.index, data.index)
    for v in data.views:
        np.testing.assert_array_equal(back.views[v], data.views[v])
    with pytest.raises(ValueError, match="'nocolon'"):
        MultiViewData.from_frame(wide.assign(nocolon=1.0))


# ----------------------------------------------------------------------------- data sets


def test_digits_halves_matches_sklearn():
    from sklearn.datasets import load_digits

    data = load_dataset("digits-halves")
    ref = load_digits().data / 16.0
    assert data.dims == {"top": 32, "bottom": 32} and data.n_samples == 1797
    both = np.concatenate([data.views["top"], data.views["bottom"]], axis=1)
    np.testing.assert_array_equal(both, ref)
    assert both.min() >= 0 and both.max() <= 1
    assert data.likelihoods == {"top": "bounded", "bottom": "bounded"}  # grey levels with mass at 0 and 1
    np.testing.assert_array_equal(data.obs["label"].to_numpy(), load_digits().target)


def test_synthetic_omics_sizes_counts_and_determinism():
    data = load_dataset("synthetic-omics", n_samples=120, dims=(10, 8, 6, 5), seed=4)
    assert len(data.views) >= 3 and data.n_samples == 120
    assert data.dims == {"rna": 10, "protein": 8, "counts": 6, "view3": 5}
    counts = data.views["counts"]
    assert data.likelihoods["counts"] == "negative_binomial"
    assert (counts >= 0).all() and np.array_equal(counts, np.round(counts))
    assert counts.std() > 0
    again = load_dataset("synthetic-omics", n_samples=120, dims=(10, 8, 6, 5), seed=4)
    other = load_dataset("synthetic-omics", n_samples=120, dims=(10, 8, 6, 5), seed=5)
    for v in data.views:
        np.testing.assert_array_equal(again.views[v], data.views[v])
        assert not np.array_equal(other.views[v], data.views[v])
    default = load_dataset("synthetic-omics")
    assert len(default.views) >= 3


def test_unknown_dataset_lists_names():
    with pytest.raises(ValueError, match="nope") as err:
        load_dataset("nope")
    for name in DATASETS:
        assert name in str(err.value)


def test_schema_fitted_on_bare_arrays_accepts_named_columns_by_position():
    named = MultiViewData({"a": pd.DataFrame(np.ones((3, 2)), columns=["g1", "g2"])})
    schema = ViewSchema.fit(MultiViewData({"a": np.ones((3, 2))}))
    np.testing.assert_array_equal(schema.check(named).views["a"], named.views["a"])
