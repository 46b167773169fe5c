"""Multi-view data: in-memory containers, scaling, embedded data sets."""

from .datasets import DATASETS, load_dataset
from .multiview import MultiViewData, ViewScaler, ViewSchema, as_multiview

__all__ = ["DATASETS", "MultiViewData", "ViewScaler", "ViewSchema", "as_multiview", "load_dataset"]
