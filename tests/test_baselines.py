"""Classic imputers behind the multi-view interface."""

import numpy as np
from sklearn.impute import KNNImputer

import mvimpute as mvi
from mvimpute.baselines import knn_imputer, mice_imputer, missforest_imputer


def _data(seed=0):
    data = mvi.load_dataset("synthetic-omics", n_samples=150, dims=(6, 5), seed=seed)
    return mvi.masking.mcar(data, 0.3, seed=seed)


def test_knn_matches_sklearn_on_concatenated_views():
    train, test = _data(0).data, _data(1).data
    ours = knn_imputer(5).fit(train).transform(test.views)
    ref = KNNImputer(n_neighbors=5).fit(np.hstack([train.views["rna"], train.views["protein"]]))
    ref = ref.transform(np.hstack([test.views["rna"], test.views["protein"]]))
    np.testing.assert_allclose(np.hstack([ours["rna"], ours["protein"]]), ref)


def test_mice_gives_distinct_draws_and_keeps_observed_values():
    c = _data(0)
    imp = mice_imputer(n_draws=4, max_iter=3).fit(c.data)
    draws = imp.sample(c.data.views)
    for v, a in c.data.views.items():
        obs = ~np.isnan(a)
        assert draws[v].shape == (4, *a.shape)
        np.testing.assert_array_equal(draws[v][:, obs], np.broadcast_to(a[obs], (4, obs.sum())))
        assert draws[v][:, ~obs].std(0).mean() > 0
    s = mvi.score(imp, c.truth, c.data, n_samples=4)
    assert 0 < s["coverage_90"] <= 1 and np.isfinite(s["crps"])


def test_model_based_baselines_beat_the_column_mean():
    c = _data(0)
    base = mvi.score(mvi.baselines.mean_imputer().fit(c.data), c.truth, c.data)["rmse"]
    for imp in (knn_imputer(10), missforest_imputer(n_estimators=10, max_iter=2)):
        assert mvi.score(imp.fit(c.data), c.truth, c.data)["rmse"] < 0.9 * base
