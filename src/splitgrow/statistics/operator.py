"""What every matrix-free splitting operator shares: batches cached once, products summed over them.

An engine's operator caches what it needs of each batch (:meth:`CachedBatchOperator._cache`) and computes one
batch's products S_b V (:meth:`CachedBatchOperator._product`); the weighting by batch, the stochastic one-batch
products and the dense fallback are the same for all engines and live here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..graph import ChannelGraph, Site
from .recording import BatchRecord

#: the most samples :meth:`CachedBatchOperator.consolidate` puts in one merged batch
MERGE_SAMPLES = 1024


@dataclass
class CachedBatchOperator:
    """The splitting matrices of one site as a linear operator on (n, d) directions, from cached batches."""

    graph: ChannelGraph
    site: Site
    dtype: torch.dtype
    batches: list[Any] = field(default_factory=list)
    total_weight: float = 0.0
    matvecs: int = 0

    def __post_init__(self) -> None:
        self.num_neurons, self.neuron_dim = self.site.num_neurons, self.site.neuron_dim

    def _cache(self, record: BatchRecord) -> Any:
        """What the operator keeps of one batch."""
        raise NotImplementedError

    def _product(self, cached: Any, directions: Tensor) -> Tensor:
        """S_b V of one cached batch, unweighted, in ``self.dtype``: (n, d) -> (n, d)."""
        raise NotImplementedError

    #: whether the engine can merge cached batches (:meth:`consolidate`)
    merges = False

    def _merge(self, cached: list[Any]) -> Any:
        """One cached batch standing for several of equal scale, their samples concatenated (engines that merge)."""
        raise NotImplementedError

    @staticmethod
    def _samples(cached: Any) -> int:
        """Samples in one cached batch (engines that merge)."""
        raise NotImplementedError

    @staticmethod
    def _merge_key(cached: Any) -> Any:
        """What cached batches merged into one must share: their scale, and whatever else the engine needs."""
        return cached.scale

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    def add(self, record: BatchRecord) -> None:
        """Cache one batch's statistics."""
        self.batches.append(self._cache(record))
        self.total_weight += record.weight

    def consolidate(self, max_samples: int = MERGE_SAMPLES) -> None:
        """Merge runs of consecutive cached batches of equal scale (and shape) into batches of at most ``max_samples``
        samples, so that every product runs a few large kernels rather than many small ones: on a GPU the small
        ones are bound by the cost of dispatching them (a VGG19 phase over 16 batches of 64 on an H200 was; the
        solver merges on GPUs only). The products are the same sums in another order. Groups are merged one at a
        time and their batches released, so the extra memory is one merged batch."""
        if not self.merges:
            return
        pending, self.batches = self.batches[::-1], []
        group: list[Any] = []
        samples = 0

        def close() -> None:
            self.batches.extend([self._merge(group)] if len(group) > 1 else group)
            group.clear()

        while pending:
            cached = pending.pop()
            full = samples + self._samples(cached) > max_samples
            if group and (full or self._merge_key(cached) != self._merge_key(group[0])):
                close()
                samples = 0
            group.append(cached)
            samples += self._samples(cached)
        close()

    @property
    def num_batches(self) -> int:
        return len(self.batches)

    def matvec(self, directions: Tensor) -> Tensor:
        """S_j v_j for every neuron j: (n, d) -> (n, d)."""
        if directions.shape != (self.num_neurons, self.neuron_dim):
            raise ValueError(f"expected directions of shape {(self.num_neurons, self.neuron_dim)}")
        if not self.batches:
            raise ValueError("the operator has no data; add batches first")
        self.matvecs += 1
        out = torch.zeros_like(directions)
        for cached in self.batches:
            out += cached.scale * self._product(cached, directions.to(self.dtype)).to(out.dtype)
        return out / self.total_weight

    def matvec_batch(self, index: int, directions: Tensor) -> Tensor:
        """S_b V for one cached batch b alone, scaled to estimate S V (for stochastic solvers)."""
        self.matvecs += 1
        cached = self.batches[index]
        share = cached.scale * self.num_batches / self.total_weight
        return share * self._product(cached, directions.to(self.dtype)).to(directions.dtype)

    def dense(self) -> Tensor:
        """The (n, d, d) matrices, by d products with the unit vectors (for checks on small sites)."""
        eye = torch.eye(self.neuron_dim, dtype=self.dtype, device=self.device)
        columns = [self.matvec(eye[k].expand(self.num_neurons, -1).clone()) for k in range(self.neuron_dim)]
        return torch.stack(columns, dim=2)
