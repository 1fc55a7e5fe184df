"""From splitting matrices to splitting indexes and splitting gradients.

The splitting index of a neuron is lambda_min(S), its splitting gradient the unit eigenvector v_min. Only the line
spanned by v_min matters (a split moves the offspring to theta + eps v and theta - eps v), so the sign is fixed
by convention, making results reproducible: the entry of largest magnitude is positive.
"""

from __future__ import annotations

from collections.abc import Callable
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


# From this size on, a CPU solve asks LAPACK for the smallest eigenpair only (MRRR, ``?syevr``): 3 to 5 times faster
# than a full batched ``eigh`` here. Below it the solve is cheap either way and the single batched call is kept.
SUBSET_SOLVER_MIN_DIM = 512


def dense_eigenpairs(matrices: Tensor) -> SplittingEigenpairs:
    """lambda_min and v_min of a batch of symmetric matrices (n, d, d).

    The matrices are symmetrised first, so that rounding asymmetries of their computation do not leak in. On a
    CPU, from d = ``SUBSET_SOLVER_MIN_DIM`` on, each matrix goes to LAPACK's ``?syevr`` for its smallest eigenpair
    alone; otherwise (smaller matrices, or a GPU) one batched ``torch.linalg.eigh`` computes all of them.
    """
    if matrices.dim() != 3 or matrices.shape[-1] != matrices.shape[-2]:
        raise ValueError(f"expected a batch of square matrices (n, d, d), got {tuple(matrices.shape)}")
    if matrices.shape[0] == 0:
        empty = matrices.new_empty((0,))
        return SplittingEigenpairs(empty, matrices.new_empty((0, matrices.shape[-1])))
    symmetric = 0.5 * (matrices + matrices.transpose(-1, -2))
    if (
        symmetric.device.type == "cpu"
        and symmetric.dtype in (torch.float32, torch.float64)
        and symmetric.shape[-1] >= SUBSET_SOLVER_MIN_DIM
    ):
        import scipy.linalg

        values = symmetric.new_empty(symmetric.shape[0])
        vectors = symmetric.new_empty(symmetric.shape[:2])
        for j, matrix in enumerate(symmetric.detach().numpy()):
            value, vector = scipy.linalg.eigh(matrix, subset_by_index=[0, 0], driver="evr")
            values[j] = float(value[0])
            vectors[j] = torch.from_numpy(vector[:, 0])
        return SplittingEigenpairs(values, canonical_sign(vectors))
    values, vectors = torch.linalg.eigh(symmetric)
    return SplittingEigenpairs(values[:, 0], canonical_sign(vectors[:, :, 0]))


@dataclass(frozen=True)
class IterativeEigenpairs(SplittingEigenpairs):
    """Eigenpairs from an iterative solver, with its convergence record.

    Attributes:
        converged: (n,) whether each neuron's residual met the tolerance; a neuron that did not must not be split
            on the strength of its index.
        residuals: (n,) ||S v - lambda v|| / scale at the end.
        iterations: iterations run (the same for all neurons of the call).
        products: operator applications (each one product S_j v_j for every neuron j).
    """

    converged: Tensor = None  # type: ignore[assignment]
    residuals: Tensor = None  # type: ignore[assignment]
    iterations: int = 0
    products: int = 0


def _index_scale(eigenvalues: Tensor) -> Tensor:
    """The magnitude of the most negative estimate (of the largest one if none is negative)."""
    negative = (-eigenvalues).clamp_min(0).max()
    scale = torch.where(negative > 0, negative, eigenvalues.abs().max())
    return scale.clamp_min(torch.finfo(eigenvalues.dtype).tiny)


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=1)


def _normalise(vectors: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    norms = vectors.norm(dim=1, keepdim=True).clamp_min(torch.finfo(vectors.dtype).tiny)
    return (vectors / norms, *(other / norms for other in others), norms.squeeze(1))


def lobpcg_smallest(
    matvec: Callable[[Tensor], Tensor],
    initial: Tensor,
    *,
    tolerance: float = 1e-3,
    max_iterations: int = 300,
    refresh_every: int = 20,
) -> IterativeEigenpairs:
    """The smallest eigenpair of n symmetric d x d matrices at once, given only V -> (S_j V_j)_j.

    Locally optimal block preconditioned conjugate gradient (LOBPCG, Knyazev 2001) with one vector per matrix:
    each iteration applies the operator once (to the residuals), orthonormalises {x, r, p} per neuron and solves
    the 3 x 3 Rayleigh-Ritz problem of every neuron in one batched ``eigh``. A neuron stops moving once
    ||S v - lambda v|| <= tolerance * scale, where scale is the magnitude of the most negative index among all the
    neurons of the call (the largest |lambda| if none is negative): the error of every index is then below
    ``tolerance`` times that scale, which is what ranking them needs. A neuron that has not converged after
    ``max_iterations`` is reported in ``converged``.

    Args:
        matvec: the operator, (n, d) -> (n, d).
        initial: (n, d) starting vectors (random, or warm starts such as the previous growth step's directions).
        tolerance: relative residual at which a neuron has converged.
        max_iterations: iteration cap.
        refresh_every: recompute S x directly every this many iterations, against drift of the recurrences.
    """
    dtype = initial.dtype
    (x,) = _normalise(initial.clone())[:1]
    ax = matvec(x)
    products = 1
    eigenvalues = _rowdot(x, ax)
    p = torch.zeros_like(x)
    ap = torch.zeros_like(x)
    has_p = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    converged = torch.zeros_like(has_p)
    residual_norms = torch.zeros_like(eigenvalues)
    tiny = torch.finfo(dtype).eps ** 0.5
    iteration = 0
    for iteration in range(1, max_iterations + 1):
        residual = ax - eigenvalues[:, None] * x
        residual_norms = residual.norm(dim=1)
        scale = _index_scale(eigenvalues)
        converged = residual_norms <= tolerance * scale
        active = ~converged
        if not bool(active.any()):
            break
        # orthonormal basis {x, w, q} of span{x, r, p}, with the operator applied by linearity
        w = residual - _rowdot(x, residual)[:, None] * x
        (w,) = _normalise(w)[:1]
        aw = matvec(w)
        products += 1
        q = p - _rowdot(x, p)[:, None] * x
        aq = ap - _rowdot(x, p)[:, None] * ax
        along_w = _rowdot(w, q)
        q = q - along_w[:, None] * w
        aq = aq - along_w[:, None] * aw
        q_norms = q.norm(dim=1)
        use_q = has_p & (q_norms > tiny * p.norm(dim=1).clamp_min(torch.finfo(dtype).tiny))
        safe = torch.where(use_q, q_norms, torch.ones_like(q_norms))[:, None]
        q, aq = torch.where(use_q[:, None], q / safe, 0.0), torch.where(use_q[:, None], aq / safe, 0.0)
        basis = torch.stack([x, w, q], dim=2)  # (n, d, 3)
        applied = torch.stack([ax, aw, aq], dim=2)
        projected = basis.transpose(1, 2) @ applied  # (n, 3, 3)
        projected = 0.5 * (projected + projected.transpose(1, 2))
        # without q the third direction is absent: put its Ritz value above every other one (Gershgorin: the
        # 2 x 2 block's eigenvalues are within twice its largest entry), without overflowing float32
        far = 4.0 * projected.abs().amax(dim=(1, 2)) + 1.0
        projected[:, 2, 2] += torch.where(use_q, torch.zeros_like(q_norms), far)
        ritz_vectors = torch.linalg.eigh(projected)[1]
        y = ritz_vectors[:, :, 0]  # (n, 3)
        new_x = (basis @ y.unsqueeze(2)).squeeze(2)
        new_ax = (applied @ y.unsqueeze(2)).squeeze(2)
        new_p = (basis[:, :, 1:] @ y[:, 1:].unsqueeze(2)).squeeze(2)
        new_ap = (applied[:, :, 1:] @ y[:, 1:].unsqueeze(2)).squeeze(2)
        new_x, new_ax, _ = _normalise(new_x, new_ax)
        new_p, new_ap, _ = _normalise(new_p, new_ap)
        keep = active[:, None]
        x = torch.where(keep, new_x, x)
        ax = torch.where(keep, new_ax, ax)
        p = torch.where(keep, new_p, p)
        ap = torch.where(keep, new_ap, ap)
        has_p = has_p | active
        if iteration % refresh_every == 0:
            ax = matvec(x)
            products += 1
        eigenvalues = _rowdot(x, ax)
    residual_norms = (ax - eigenvalues[:, None] * x).norm(dim=1)
    scale = _index_scale(eigenvalues)
    converged = residual_norms <= tolerance * scale
    return IterativeEigenpairs(
        indexes=eigenvalues,
        directions=canonical_sign(x),
        converged=converged,
        residuals=residual_norms / scale,
        iterations=iteration,
        products=products,
    )


def rayleigh_quotient_descent(
    batch_matvec: Callable[[int, Tensor], Tensor],
    num_batches: int,
    matvec: Callable[[Tensor], Tensor],
    initial: Tensor,
    *,
    epochs: int = 10,
    learning_rate: float = 0.01,
    tolerance: float = 1e-3,
) -> IterativeEigenpairs:
    """The energy-aware splitting paper's solver (Wang et al. 2019): minimise each neuron's Rayleigh quotient
    v^T S v / v^T v by RMSprop, one batch's S_b at a time, for a number of epochs over the batches, with the
    learning rate decaying linearly to zero (a constant one leaves v oscillating at a distance ~ learning rate).

    ``batch_matvec(b, V)`` applies batch b's matrices (an unbiased estimate of S); ``matvec`` applies the whole S,
    once at the end, to report the index and the residual (``converged`` uses the rule of
    :func:`lobpcg_smallest`).
    """
    (v,) = _normalise(initial.clone())[:1]
    average = torch.zeros_like(v)
    products = 0
    steps = epochs * num_batches
    for epoch in range(epochs):
        for batch in range(num_batches):
            sv = batch_matvec(batch, v)
            products += 1
            quotient = _rowdot(v, sv)
            gradient = 2.0 * (sv - quotient[:, None] * v)
            average = 0.9 * average + 0.1 * gradient**2
            rate = learning_rate * (1.0 - (epoch * num_batches + batch) / steps)
            v = v - rate * gradient / (average.sqrt() + 1e-8)
            (v,) = _normalise(v)[:1]
    sv = matvec(v)
    products += 1
    eigenvalues = _rowdot(v, sv)
    scale = _index_scale(eigenvalues)
    residuals = (sv - eigenvalues[:, None] * v).norm(dim=1) / scale
    return IterativeEigenpairs(
        indexes=eigenvalues,
        directions=canonical_sign(v),
        converged=residuals <= tolerance,
        residuals=residuals,
        iterations=epochs * num_batches,
        products=products,
    )
