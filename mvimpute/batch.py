"""`MultiViewBatch`: the one tensor type every model sees."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class MultiViewBatch:
    """Per-view values (missing entries set to 0) and observed masks (1 = observed).

    `values[v]` and `masks[v]` are float tensors of shape (n, d_v). A view whose mask row is all
    zero is a whole missing view for that sample.
    """

    values: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    index: np.ndarray | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if set(self.values) != set(self.masks):
            raise ValueError(f"values and masks name different views: {sorted(self.values)} vs {sorted(self.masks)}")
        sizes = {v: t.shape[0] for v, t in self.values.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"views have different numbers of rows: {sizes}")
        for v in self.values:
            if self.values[v].shape != self.masks[v].shape:
                raise ValueError(
                    f"view {v!r}: values {tuple(self.values[v].shape)} and mask "
                    f"{tuple(self.masks[v].shape)} differ in shape"
                )

    @classmethod
    def from_arrays(
        cls,
        arrays: Mapping[str, np.ndarray],
        dtype: torch.dtype = torch.float32,
        index: np.ndarray | None = None,
    ) -> MultiViewBatch:
        """Build from arrays with NaN marking missing entries."""
        values, masks = {}, {}
        for v, a in arrays.items():
            a = np.asarray(a, dtype=np.float64)
            m = ~np.isnan(a)
            values[v] = torch.as_tensor(np.where(m, a, 0.0), dtype=dtype)
            masks[v] = torch.as_tensor(m, dtype=dtype)
        return cls(values, masks, index)

    @property
    def views(self) -> list[str]:
        return list(self.values)

    def __len__(self) -> int:
        return next(iter(self.values.values())).shape[0]

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def view_observed(self, view: str) -> torch.Tensor:
        """Bool (n,): the sample has at least one observed entry in `view`."""
        return self.masks[view].bool().any(dim=1)

    def to(self, device: torch.device | str) -> MultiViewBatch:
        return MultiViewBatch(
            {v: t.to(device, non_blocking=True) for v, t in self.values.items()},
            {v: t.to(device, non_blocking=True) for v, t in self.masks.items()},
            self.index,
        )

    def select(self, rows: torch.Tensor | np.ndarray | slice) -> MultiViewBatch:
        """Rows `rows` of every view."""
        if isinstance(rows, np.ndarray):
            rows = torch.as_tensor(rows)
        index = None if self.index is None else self.index[rows.cpu().numpy() if torch.is_tensor(rows) else rows]
        return MultiViewBatch(
            {v: t[rows] for v, t in self.values.items()},
            {v: t[rows] for v, t in self.masks.items()},
            index,
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Values as float64 arrays with NaN where missing."""
        return {
            v: np.where(self.masks[v].cpu().numpy() > 0, self.values[v].cpu().double().numpy(), np.nan)
            for v in self.values
        }
