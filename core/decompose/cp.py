"""CP3 decomposition of a conv weight (METHOD.md, Step 2: the reference's "cp3" variant): CP of the
(cout, cin, kh*kw) tensor, giving a 1x1 conv cin -> R, a depthwise kh x kw conv on R channels and a
1x1 conv R -> cout."""

from __future__ import annotations

import warnings

import tensorly as tl
import torch
from tensorly.decomposition import parafac

from core.decompose.ranks import max_cp_rank
from core.errors import WorkbenchError

SEED = 0
N_ITER = 100  # ALS sweeps; with line search this reaches a lower error than 100 plain sweeps


def cp3(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First (rank, cin), depthwise (rank, 1, kh, kw), last (cout, rank) with
    W[o, i, h, w] ~ sum_r last[o, r] * depthwise[r, 0, h, w] * first[r, i].

    tensorly's parafac (ALS with line search), SVD initialisation, a fixed seed for the columns
    the SVD cannot supply when the rank exceeds a mode's size.
    """
    cout, cin, kh, kw = weight.shape
    if not 1 <= rank <= max_cp_rank(cin, cout, kh, kw):
        raise WorkbenchError(f"CP3 rank {rank} must lie in [1, {max_cp_rank(cin, cout, kh, kw)}] for this conv: "
                             "lower it")
    dtype = torch.promote_types(weight.dtype, torch.float32)
    tensor = weight.detach().to(dtype).reshape(cout, cin, kh * kw)
    with tl.backend_context("pytorch", local_threadsafe=True), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tensorly warns when the rank exceeds a mode's size: expected here
        scale, (last, first, taps) = parafac(tensor, rank, n_iter_max=N_ITER, init="svd", random_state=SEED,
                                             linesearch=True)
    depthwise = (taps * scale).T.reshape(rank, 1, kh, kw)
    out = weight.dtype
    return first.T.contiguous().to(out), depthwise.contiguous().to(out), last.contiguous().to(out)
