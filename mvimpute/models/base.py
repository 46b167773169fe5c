"""The shared model interface, the model registry and the pieces every model uses."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields

import torch
from torch import nn

from ..batch import MultiViewBatch
from ..likelihoods import COUNT_LIKELIHOODS, LIKELIHOODS
from .calibration import ConformalCalibration


@dataclass(frozen=True)
class ViewInfo:
    """What a model needs to know of a view: its name, width and likelihood."""

    name: str
    dim: int
    likelihood: str = "gaussian"

    def __post_init__(self) -> None:
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"view {self.name!r}: unknown likelihood {self.likelihood!r}; choose one of {LIKELIHOODS}")
        if self.dim < 1:
            raise ValueError(f"view {self.name!r} has no columns")


@dataclass
class LossOutput:
    """The objective to minimise and its named parts (floats or 0-d tensors, for logging)."""

    loss: torch.Tensor
    components: dict[str, float] = field(default_factory=dict)

    def detached(self) -> dict[str, float]:
        return {"loss": float(self.loss.detach()), **{k: float(v) for k, v in self.components.items()}}


EVAL_CHUNK_ROWS = 2048  # validation rows imputed at a time (scoring, calibration)


def row_chunks(n: int) -> Iterator[slice]:
    """Slices of at most `EVAL_CHUNK_ROWS` rows covering range(n): memory flat in n."""
    for start in range(0, n, EVAL_CHUNK_ROWS):
        yield slice(start, min(n, start + EVAL_CHUNK_ROWS))


class ImputationModel(nn.Module):
    """Base class: `loss(batch, progress)` for training and `impute(batch, n_samples)` for use.

    `progress` is the fraction of training done (0 → 1) and drives annealing schedules. `forward`
    is `loss`, so a DistributedDataParallel wrapper synchronises gradients.
    """

    name: str = ""
    config_class: type = object
    one_pass: bool = False  # fitted by `after_fit` in one pass over the training data: no parameters, no epochs

    def __init__(self, views: list[ViewInfo], config) -> None:
        super().__init__()
        if not views:
            raise ValueError("a model needs at least one view")
        self.view_infos = list(views)
        self.config = config
        self.calibration = ConformalCalibration([v.name for v in views], [v.likelihood for v in views])
        self.pending_calibration = None  # (ValidationSet, n_samples), set by the training loop

    @property
    def view_names(self) -> list[str]:
        return [v.name for v in self.view_infos]

    def forward(self, batch: MultiViewBatch, progress: float = 1.0) -> LossOutput:
        return self.loss(batch, progress)

    def loss(self, batch: MultiViewBatch, progress: float = 1.0) -> LossOutput:
        raise NotImplementedError

    def impute(self, batch: MultiViewBatch, n_samples: int, censored: bool = True) -> dict[str, torch.Tensor]:
        """Draws (n_samples, n, d_v) per view; observed entries are the observed values. With
        `censored=False`, a `bounded` view's draws are the latent Gaussian values before the clamp to
        its range (what the conformal calibration scores and stretches)."""
        raise NotImplementedError

    def impute_mean(self, batch: MultiViewBatch) -> dict[str, torch.Tensor]:
        """Point imputation (n, d_v) per view; observed entries are the observed values."""
        draws = self.impute(batch, n_samples=32)
        return {v: d.mean(0) for v, d in draws.items()}

    def after_fit(self, batches: Callable[[], object]) -> None:
        """Hook run once training ends, with an iterable factory over the training batches.

        Subclasses fit what they need first and then call this, which fits the conformal
        calibration on the validation set the training loop left in `pending_calibration`."""
        pending, self.pending_calibration = self.pending_calibration, None
        if pending is not None:
            sets, n_samples = pending
            self.calibrate(sets, n_samples)

    def training_rows_held(self) -> dict | None:
        """What of the training data the model's state holds ({"rows", "columns", "bytes"}), or None."""
        return None

    @staticmethod
    def view_missing(batch: MultiViewBatch) -> dict[str, torch.Tensor]:
        """Per view, (n,) bool: the sample's whole view is missing."""
        return {v: ~batch.view_observed(v) for v in batch.views}

    @torch.no_grad()
    def calibrate(self, sets, n_samples: int = 100) -> None:
        """Fit split-conformal calibration (see `calibration.py`) from raw draws: `sets` is a list of
        (corrupted batch, truth values, hidden masks), scored on the hidden entries (per view, in the
        model's scaled space)."""
        was = self.training
        self.eval()
        missing = [self.view_missing(c) for c, _, _ in sets]
        keep = self.calibration.thinning([h for _, _, h in sets], missing)
        gen = torch.Generator().manual_seed(1)
        collected = []
        for (c, t, h), m in zip(sets, missing, strict=True):
            # rows a chunk at a time, keeping only the (thinned) hidden entries' draws: memory stays
            # flat in the validation split's size
            for rows in row_chunks(len(c)):
                part = (
                    self.impute(c.select(rows), n_samples, censored=False),
                    {v: x[rows] for v, x in t.items()},
                    {v: x[rows] for v, x in h.items()},
                    {v: x[rows] for v, x in m.items()},
                )
                collected.append(self.calibration.collect(part, keep, gen))
        self.calibration.fit_collected(self.calibration.merge(collected))
        self.train(was)

    @torch.no_grad()
    def sample_draws(self, batch: MultiViewBatch, n_samples: int, calibrated: bool = True) -> dict[str, torch.Tensor]:
        """Predictive draws (S, n, d_v), stretched by the conformal calibration when fitted and
        `calibrated`; observed entries keep their values."""
        if not calibrated:
            return self.impute(batch, n_samples)
        draws = self.impute(batch, n_samples, censored=False)
        return self.keep_observed(batch, self.calibration.stretch_draws(draws, self.view_missing(batch)))

    @torch.no_grad()
    def intervals(
        self, batch: MultiViewBatch, level: float = 0.9, n_samples: int = 100, calibrated: bool = True
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Central `level` intervals (lo, hi), each (n, d_v) per view; observed entries give lo = hi = y."""
        draws = self.impute(batch, n_samples, censored=False)
        missing = self.view_missing(batch)
        out = {}
        for v, x in draws.items():
            lo, hi = self.calibration.interval(v, x, level, missing[v], calibrated)
            obs = batch.masks[v].bool()
            out[v] = (torch.where(obs, batch.values[v], lo), torch.where(obs, batch.values[v], hi))
        return out

    @staticmethod
    def keep_observed(batch: MultiViewBatch, filled: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Put the observed values back; works on (n, d) and (S, n, d) tensors."""
        return {v: torch.where(batch.masks[v].bool(), batch.values[v], x) for v, x in filled.items()}


def module_device(module: nn.Module) -> torch.device:
    """Where a model's parameters (or, for a model without any, its buffers) are."""
    for t in itertools.chain(module.parameters(), module.buffers()):  # the first: no list of every tensor
        return t.device
    return torch.device("cpu")


MODEL_REGISTRY: dict[str, type[ImputationModel]] = {}


def register_model(name: str):
    def deco(cls: type[ImputationModel]) -> type[ImputationModel]:
        cls.name = name
        MODEL_REGISTRY[name] = cls
        return cls

    return deco


def config_from_kwargs(config_class: type, kwargs: dict, model_name: str):
    """Build a model config dataclass; an unknown key is a `ValueError` naming it."""
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"model {model_name!r} has no parameter(s) {unknown}; it takes {sorted(known)}")
    return config_class(**kwargs)


def build_model(name: str, views: list[ViewInfo], **kwargs) -> ImputationModel:
    if name not in MODEL_REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODEL_REGISTRY)}")
    cls = MODEL_REGISTRY[name]
    return cls(views, config_from_kwargs(cls.config_class, kwargs, name))


# ----------------------------------------------------------------------------- building blocks


def mlp(d_in: int, hidden: tuple[int, ...] | list[int], d_out: int, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = d_in
    for h in hidden:
        layers += [nn.Linear(d, h), act()]
        d = h
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


def soft_floor(x: torch.Tensor, floor: float) -> torch.Tensor:
    """A smooth lower bound `floor + softplus(x - floor)`: no dead gradient, unlike a clamp."""
    return floor + nn.functional.softplus(x - floor)


def soft_cap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """A smooth upper bound `cap - softplus(cap - x)`."""
    return cap - nn.functional.softplus(cap - x)


def gaussian_entropy(logvar: torch.Tensor) -> torch.Tensor:
    """H(N(μ, diag exp(logvar))) summed over the last dimension."""
    return 0.5 * (logvar + 1.0 + math.log(2 * math.pi)).sum(-1)


def gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Element-wise log N(x; μ, exp(logvar))."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (x - mu) ** 2 * torch.exp(-logvar))


def encoder_input(batch: MultiViewBatch, view: str, likelihood: str) -> torch.Tensor:
    """`[y with NaN→0, m]`; counts enter on a log scale."""
    y = batch.values[view]
    if likelihood in COUNT_LIKELIHOODS:
        y = torch.log1p(y.clamp_min(0))
    return torch.cat([y, batch.masks[view]], dim=-1)
