"""Tucker-2 decomposition of a conv weight on its two channel modes, by HOOI (METHOD.md, Step 2).

HOOI as tensorly's `partial_tucker` runs it (SVD initialisation, alternating sweeps over the two
modes, stop when the relative error improves by less than 1e-4 after at least three sweeps), with
one change for speed: each factor is the leading eigenvectors of the Gram matrix of the unfolding
instead of its leading left singular vectors from a full SVD. The subspaces are the same, and so
are the errors (to 6 digits in bench/bench_decompose.py, about 5x faster); tensorly has no option
for that inside its sweeps (its `svd` choice applies to the initialisation only), and the
wide-matrix SVDs are most of its time. Computed in the weight's precision, at least float32: at
full rank the weight comes back to ~1e-6 relative.
"""

from __future__ import annotations

import math

import torch

from core.errors import WorkbenchError

MAX_SWEEPS = 100
TOL = 1e-4
MIN_SWEEPS = 3


def _leading(gram: torch.Tensor, rank: int) -> torch.Tensor:
    """The `rank` leading eigenvectors of a symmetric positive semi-definite matrix, as columns."""
    return torch.linalg.eigh(gram)[1][:, -rank:].flip(1)


def tucker2(weight: torch.Tensor, r_out: int, r_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Core (r_out, r_in, kh, kw), U_out (cout, r_out), U_in (cin, r_in) with
    W ~ core x_0 U_out x_1 U_in (orthonormal factors), by HOOI on modes 0 and 1."""
    cout, cin, kh, kw = weight.shape
    if not (1 <= r_out <= cout and 1 <= r_in <= cin):
        raise WorkbenchError(f"Tucker-2 ranks ({r_out}, {r_in}) must lie in [1, {cout}] x [1, {cin}] "
                             "for this conv: lower them")
    dtype = torch.promote_types(weight.dtype, torch.float32)
    w = weight.detach().to(dtype).reshape(cout, cin, kh * kw)
    by_out = w.reshape(cout, -1)                                    # mode-0 unfolding
    by_in = w.transpose(0, 1).reshape(cin, -1)                      # mode-1 unfolding
    taps_in = w.transpose(1, 2).reshape(cout * kh * kw, cin)        # rows (o, k), columns i
    taps_out = w.permute(1, 2, 0).reshape(cin * kh * kw, cout)      # rows (i, k), columns o
    norm2 = float(by_out.square().sum())
    u_out = _leading(by_out @ by_out.T, r_out)
    u_in = _leading(by_in @ by_in.T, r_in)
    errors = []
    for sweep in range(MAX_SWEEPS):
        a = (taps_in @ u_in).reshape(cout, -1)                      # W x_1 U_in^T, columns in any order
        u_out = _leading(a @ a.T, r_out)
        b = (taps_out @ u_out).reshape(cin, -1)                     # W x_0 U_out^T, columns (k, a)
        u_in = _leading(b @ b.T, r_in)
        core = u_in.T @ b                                           # (r_in, k * r_out)
        errors.append(math.sqrt(max(norm2 - float(core.square().sum()), 0.0) / norm2) if norm2 else 0.0)
        if sweep + 1 >= MIN_SWEEPS and abs(errors[-2] - errors[-1]) < TOL:
            break
    core = core.reshape(r_in, kh, kw, r_out).permute(3, 0, 1, 2)
    out = weight.dtype
    return core.contiguous().to(out), u_out.to(out), u_in.to(out)
