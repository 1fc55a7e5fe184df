"""From splitting matrices to splitting indexes and splitting gradients.

The splitting index of a neuron is lambda_min(S), its splitting gradient the unit eigenvector v_min. Only the line
spanned by v_min matters (a split moves the offspring to theta + eps v and theta - eps v), so the sign is fixed
by convention, making results reproducible: the entry of largest magnitude is positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SplittingEigenpairs:
    """The smallest eigenpair of each neuron's splitting matrix.

    Attributes:
        indexes: (n,) splitting indexes lambda_min; the more negative, the more splitting lowers the loss.
        directions: (n, d) unit splitting gradients v_min, one row per neuron.
    """

    indexes: Tensor
    directions: Tensor

    def __len__(self) -> int:
        return int(self.indexes.shape[0])


def canonical_sign(vectors: Tensor) -> Tensor:
    """Flip each row so that its entry of largest magnitude is positive (rows of zeros are left alone)."""
    pivot = vectors.abs().argmax(dim=-1, keepdim=True)
    signs = torch.sign(torch.gather(vectors, -1, pivot))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return vectors * signs


def dense_eigenpairs(matrices: Tensor) -> SplittingEigenpairs:
    """lambda_min and v_min of a batch of symmetric matrices (n, d, d) by one batched ``torch.linalg.eigh``.

    The matrices are symmetrised first, so that rounding asymmetries of their computation do not leak in.
    """
    if matrices.dim() != 3 or matrices.shape[-1] != matrices.shape[-2]:
        raise ValueError(f"expected a batch of square matrices (n, d, d), got {tuple(matrices.shape)}")
    if matrices.shape[0] == 0:
        empty = matrices.new_empty((0,))
        return SplittingEigenpairs(empty, matrices.new_empty((0, matrices.shape[-1])))
    symmetric = 0.5 * (matrices + matrices.transpose(-1, -2))
    values, vectors = torch.linalg.eigh(symmetric)
    return SplittingEigenpairs(values[:, 0], canonical_sign(vectors[:, :, 0]))
