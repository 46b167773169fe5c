"""mvimpute: multi-view imputation with honest uncertainty (TAE, JPVAE), on Ray, tracked in MLflow.

Names are imported on first use (PEP 562), so that `import mvimpute` and the command line's
`--help` do not load torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DATASETS": ".data",
    "MultiViewData": ".data",
    "load_dataset": ".data",
    "MODEL_REGISTRY": ".models",
    "ImputationModel": ".models",
    "LossOutput": ".models",
    "MultiViewBatch": ".batch",
    "MultiViewImputer": ".imputer",
    "score": ".scoring",
}
_SUBMODULES = ("baselines", "masking")

__all__ = sorted([*_EXPORTS, *_SUBMODULES])
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mvimpute' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
