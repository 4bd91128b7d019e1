"""Truncated SVD of a fully connected layer's weight (the "fc" part of the reference's
compression_conv_fc): W (out, in) ~ second @ first with an inner size of `rank`."""

from __future__ import annotations

import torch

from core.errors import WorkbenchError


def truncated_svd(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First (rank, in), second (out, rank): the `rank` leading singular triplets, each factor
    carrying the square root of the singular values."""
    out_f, in_f = weight.shape
    if not 1 <= rank <= min(out_f, in_f):
        raise WorkbenchError(f"SVD rank {rank} must lie in [1, {min(out_f, in_f)}] for this linear layer: lower it")
    dtype = torch.promote_types(weight.dtype, torch.float32)
    u, s, vh = torch.linalg.svd(weight.detach().to(dtype), full_matrices=False)
    root = s[:rank].sqrt()
    return (root[:, None] * vh[:rank]).to(weight.dtype), (u[:, :rank] * root).to(weight.dtype)
