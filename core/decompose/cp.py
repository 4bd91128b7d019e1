"""CP3 decomposition of a conv weight (METHOD.md, Step 2: the reference's "cp3" variant): CP of the
(cout, cin, kh*kw) tensor, giving a 1x1 conv cin -> R, a depthwise kh x kw conv on R channels and a
1x1 conv R -> cout.

CP-ALS in torch, replacing tensorly's `parafac(init="svd", linesearch=True, n_iter_max=100)`
(bench/bench_decompose.py compares the two in one run: several times faster at a lower mean
error on the res56_norm convs). Four changes from tensorly's:
- the start is the tensor's own exact expansion into rank-one terms, truncated: the taps mode in
  its SVD basis, each rotated (cout, cin) slice by its SVD, and the R terms with the largest
  singular values (tensorly's SVD start pads a rank above a mode's size with random columns;
  this start needs about a quarter fewer sweeps to the same error on the res56_norm convs);
- Nesterov-accelerated ALS (Mitchell, Ye, De Sterck 2018) instead of tensorly's occasional line
  search: each sweep starts from x + beta (x - x_prev), beta = n / (n + 3), restarting with a
  plain sweep (momentum 0) whenever the error would rise; it needs about half the sweeps;
- sweep order A, C, B so that A's and C's right-hand sides share one GEMM (T x_1 B); each update
  is a Cholesky solve with the Hadamard product of the other factors' Gram matrices;
- the error comes from those Grams, never from a rebuilt tensor; it stops when a sweep lowers the
  relative error by less than TOL of itself (after MIN_SWEEPS, at most MAX_SWEEPS).
"""

from __future__ import annotations

import math

import torch

from core.decompose.ranks import max_cp_rank
from core.errors import WorkbenchError

MAX_SWEEPS = 42
MIN_SWEEPS = 10
TOL = 5e-4              # stop when a sweep lowers the relative error by less than this fraction of it


def _solve(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """rhs @ gram^-1 for a symmetric positive semi-definite `gram` (pseudo-inverse when singular)."""
    low, info = torch.linalg.cholesky_ex(gram)
    if int(info):
        return rhs @ torch.linalg.pinv(gram, hermitian=True)
    y = torch.linalg.solve_triangular(low.mT, rhs, upper=True, left=False)
    return torch.linalg.solve_triangular(low, y, upper=False, left=False)


def _khatri_rao(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Column-wise Kronecker product: row (p, q) holds x[p] * y[q]."""
    return (x[:, None, :] * y[None]).reshape(-1, x.shape[1])


def _init(tensor: torch.Tensor, rank: int) -> list[torch.Tensor]:
    """The `rank` largest rank-one terms of the tensor's exact expansion: with the taps mode in its
    SVD basis (orthonormal rows `taps`), T = sum over taps t and singular triplets (u, s, v) of the
    rotated slice T x_2 taps[t]: (u s) o v o taps[t]. Needs rank <= (taps) * min(I, J), which
    `max_cp_rank` guarantees."""
    i, j, k = tensor.shape
    taps = torch.linalg.svd(tensor.reshape(i * j, k), full_matrices=False)[2]         # (k', k)
    u, s, vh = torch.linalg.svd((tensor @ taps.T).permute(2, 0, 1), full_matrices=False)
    top = s.reshape(-1).argsort(descending=True, stable=True)[:rank]
    if len(top) < rank:
        raise ValueError(f"CP rank {rank} above the {len(top)} terms of a {tuple(tensor.shape)} tensor")
    slice_, term = top // s.shape[1], top % s.shape[1]
    return [(u[slice_, :, term] * s[slice_, term, None]).T, vh[slice_, term, :].T, taps[slice_].T]


def cp_als(tensor: torch.Tensor, rank: int) -> tuple[list[torch.Tensor], list[float]]:
    """Factors (I, R), (J, R), (K, R) of a rank-R CP approximation of a 3-way tensor, and the
    relative error after each sweep."""
    i, j, k = tensor.shape
    x = _init(tensor, rank)
    by_j = tensor.transpose(1, 2).reshape(i * k, j)                # rows (i, k)
    by_b = tensor.transpose(0, 1).reshape(j, i * k)                # mode-1 unfolding, columns (i, k)
    norm2 = float(tensor.double().square().sum())

    def sweep(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> tuple[tuple, float]:
        """One ALS sweep in the order A, C, B: the first two share T x_1 B (one GEMM), B takes another."""
        tb = (by_j @ b).reshape(i, k, rank)
        gb, gc = b.T @ b, c.T @ c
        a = _solve(gb * gc, (tb * c).sum(1))
        ga = a.T @ a
        c = _solve(ga * gb, (tb * a[:, None]).sum(0))
        gc = c.T @ c
        mttkrp_b = by_b @ _khatri_rao(a, c)
        b = _solve(ga * gc, mttkrp_b)
        inner = float((b.double() * mttkrp_b.double()).sum())
        approx2 = float((ga.double() * (b.T @ b).double() * gc.double()).sum())
        return (a, b, c), math.sqrt(max(norm2 - 2 * inner + approx2, 0.0) / norm2) if norm2 else 0.0

    x, err = sweep(*x)
    errors, previous, momentum = [err], x, 0
    for n in range(1, MAX_SWEEPS):
        momentum += 1
        beta = momentum / (momentum + 3)
        nxt, err = sweep(*(u + beta * (u - p) for u, p in zip(x, previous)))
        if err > errors[-1]:                                       # restart from the plain sweep
            (nxt, err), momentum = sweep(*x), 0
        previous, x = x, nxt
        errors.append(err)
        if n + 1 >= MIN_SWEEPS and errors[-2] - err < TOL * errors[-2]:
            break
    return list(x), errors


def cp3(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First (rank, cin), depthwise (rank, 1, kh, kw), last (cout, rank) with
    W[o, i, h, w] ~ sum_r last[o, r] * depthwise[r, 0, h, w] * first[r, i], by `cp_als` in the
    weight's precision, at least float32."""
    cout, cin, kh, kw = weight.shape
    if not 1 <= rank <= max_cp_rank(cin, cout, kh, kw):
        raise WorkbenchError(f"CP3 rank {rank} must lie in [1, {max_cp_rank(cin, cout, kh, kw)}] for this conv: "
                             "lower it")
    dtype = torch.promote_types(weight.dtype, torch.float32)
    (last, first, taps), _ = cp_als(weight.detach().to(dtype).reshape(cout, cin, kh * kw), rank)
    out = weight.dtype
    return (first.T.contiguous().to(out), taps.T.reshape(rank, 1, kh, kw).contiguous().to(out),
            last.contiguous().to(out))
