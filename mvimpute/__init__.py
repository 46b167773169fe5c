"""mvimpute: multi-view imputation with honest uncertainty (TAE, JPVAE), on Ray, tracked in MLflow."""

from . import baselines, masking
from .batch import MultiViewBatch
from .data import DATASETS, MultiViewData, load_dataset
from .imputer import MultiViewImputer
from .models import MODEL_REGISTRY, ImputationModel, LossOutput
from .scoring import score

__all__ = [
    "DATASETS",
    "MODEL_REGISTRY",
    "ImputationModel",
    "LossOutput",
    "MultiViewBatch",
    "MultiViewData",
    "MultiViewImputer",
    "load_dataset",
    "baselines",
    "masking",
    "score",
]
__version__ = "0.1.0"
