"""Ranks of a decomposed layer: from the compression factor X (METHOD.md, Step 2) or estimated
by VBMF. Every rank is clamped to what the layer's shape allows."""

from __future__ import annotations

import math

import torch

from core.errors import WorkbenchError

_EVB_GRID = 256  # log-spaced noise-variance candidates searched before the bounded refinement


def _check_x(x: float) -> None:
    if not x > 0:
        raise WorkbenchError(f"decompose.x: compression factor {x} must be positive (e.g. 1.71 or 2)")


def _clamp(rank: int, high: int) -> int:
    return max(1, min(int(rank), high))


def tucker_ranks(cin: int, cout: int, kh: int, kw: int, x: float) -> tuple[int, int]:
    """(R_out, R_in) so the Tucker-2 layer has about 1/X of the conv's weights: METHOD.md "Ranks
    from a compression factor X" (the reference's `estimate_rank_for_compression_rate`, tucker2)."""
    _check_x(x)
    if cout > cin:
        beta = (cout / cin - 1) / x + 1
    elif cin > cout:
        beta = 1 / ((cin / cout - 1) / x + 1)
    else:
        beta = 1.0
    b = (cin + beta * cout) / (beta * kh * kw)
    c = -cin * cout / (x * beta)
    r_in = _clamp(int((-b + math.sqrt(b * b - 4 * c)) / 2), cin)  # clamped first, so R_out keeps the ratio
    return _clamp(math.ceil(beta * r_in), cout), r_in


def max_cp_rank(cin: int, cout: int, kh: int, kw: int) -> int:
    """The largest CP rank a (cout, cin, kh*kw) tensor can need: the product of its two smaller sizes."""
    a, b, _ = sorted((cout, cin, kh * kw))
    return a * b


def cp_rank(cin: int, cout: int, kh: int, kw: int, x: float) -> int:
    """CP3 rank R = floor(cout*cin*kh*kw / (X * (cin + kh*kw + cout))): METHOD.md "CP3 rank from X"
    (the reference's `estimate_rank_for_compression_rate`, cp3)."""
    _check_x(x)
    rank = math.floor(cout * cin * kh * kw / (x * (cin + kh * kw + cout)))
    return _clamp(rank, max_cp_rank(cin, cout, kh, kw))


def svd_rank(in_f: int, out_f: int, x: float) -> int:
    """Rank r of a truncated SVD so the two Linear layers hold about 1/X of the weights:
    r * (in + out) = in * out / X, floored (the linear counterpart of the CP3 rule)."""
    _check_x(x)
    return _clamp(math.floor(in_f * out_f / (x * (in_f + out_f))), min(in_f, out_f))


def _evb_objective(sigma2: torch.Tensor, s2: torch.Tensor, m: int, alpha: float, x_bar: float) -> torch.Tensor:
    """EVBMF free energy (up to constants) of each noise variance in `sigma2`, all singular values kept (H = L)."""
    x = (s2 / (m * sigma2[:, None])).clamp_min(torch.finfo(torch.float64).tiny)  # zero singular values stay finite
    big = x > x_bar
    xb = torch.where(big, x, torch.full_like(x, 2 * x_bar))  # placeholder where tau is not used
    tau = 0.5 * (xb - (1 + alpha) + torch.sqrt((xb - (1 + alpha)) ** 2 - 4 * alpha))
    above = xb - tau + torch.log((tau + 1) / xb) + alpha * torch.log(tau / alpha + 1)
    return torch.where(big, above, x - torch.log(x)).sum(1)


def vbmf_rank(matrix: torch.Tensor) -> int:
    """Rank of `matrix` by empirical variational Bayesian matrix factorisation: the analytic EVBMF
    solution of Nakajima et al. (JMLR 2013), noise variance estimated, as the reference's VBMF.
    Singular values above the EVB threshold count; 0 for a zero matrix."""
    y = matrix.detach().reshape(matrix.shape[0], -1).double()
    if y.shape[0] > y.shape[1]:
        y = y.T
    rows, cols = y.shape
    s2 = torch.linalg.svdvals(y).square()
    alpha = rows / cols
    tau_bar = 2.5129 * math.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    upper = float(s2.sum()) / (rows * cols)
    if upper <= 0:
        return 0
    tail = min(math.ceil(rows / (1 + alpha)) - 1, rows)  # the reference's eH_ub + 1
    lower = max(float(s2[tail]) / (cols * x_bar), float(s2[tail:].mean()) / cols)
    lower = min(max(lower, upper * 1e-12), upper)
    grid = torch.logspace(math.log10(lower), math.log10(upper), _EVB_GRID, dtype=torch.float64)
    best = int(torch.argmin(_evb_objective(grid, s2, cols, alpha, x_bar)))
    lo, hi = float(grid[max(best - 1, 0)]), float(grid[min(best + 1, _EVB_GRID - 1)])
    from scipy.optimize import minimize_scalar  # noqa: PLC0415  (0.6 s to import: only when ranks are estimated)

    sigma2 = lo if lo == hi else minimize_scalar(
        lambda v: float(_evb_objective(torch.tensor([v], dtype=torch.float64), s2, cols, alpha, x_bar)[0]),
        bounds=(lo, hi), method="bounded").x
    threshold2 = cols * sigma2 * (1 + tau_bar) * (1 + alpha / tau_bar)
    return int((s2 > threshold2).sum())


def vbmf_ranks(weight: torch.Tensor) -> tuple[int, int]:
    """(R_out, R_in) of a conv weight (cout, cin, kh, kw): VBMF ranks of its mode-0 and mode-1 unfoldings."""
    cout, cin = weight.shape[:2]
    return _clamp(vbmf_rank(weight.reshape(cout, -1)), cout), _clamp(vbmf_rank(weight.transpose(0, 1)), cin)
