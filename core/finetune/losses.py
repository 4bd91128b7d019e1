"""The fine-tuning objectives of METHOD.md steps 3 and 4, one function per mode.

Each returns the total to back-propagate and the unweighted terms to log: `ce`, `mse`
(logits against the teacher's) and `aux1..auxN` (segment outputs against the teacher's at
the same pivots)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.errors import WorkbenchError


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Step 4: plain cross-entropy."""
    ce = F.cross_entropy(logits, labels)
    return ce, {"ce": ce}


def final_mse_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor,
                   mse_factor: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Step 3, "final MSE": CE(student, y) + mse_factor * MSE(student logits, teacher logits)."""
    ce = F.cross_entropy(logits, labels)
    mse = F.mse_loss(logits.float(), teacher_logits.float())
    return ce + mse_factor * mse, {"ce": ce, "mse": mse}


def aux_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor, mse_factor: float,
             student_pivots: list[torch.Tensor], teacher_pivots: list[torch.Tensor], gammas: list[float],
             pivot_names: list[str], target: str = "teacher") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Step 3, "multiple auxiliary MSE losses": sum_k gamma_k * MSE(segment k output, teacher at
    pivot k) plus the last segment's CE + mse_factor * MSE on logits (gamma 1).

    `target = "zeros"` matches the segment outputs against zeros instead of the teacher's, as
    the reference step-3 script does by a bug (METHOD.md), for exact reproduction of its runs.

    One backward pass of this sum gives every parameter sum_k gamma_k dL_k/dtheta over the
    losses that reach it: what the paper's optimizers over nested segments apply (SGD with
    momentum is linear in the gradient)."""
    if target not in ("teacher", "zeros"):
        raise WorkbenchError(f"aux_target must be \"teacher\" or \"zeros\", got {target!r}")
    total, terms = final_mse_loss(logits, labels, teacher_logits, mse_factor)
    for k, (s, t, gamma) in enumerate(zip(student_pivots, teacher_pivots, gammas)):
        if target == "zeros":
            t = torch.zeros_like(s)
        elif s.shape != t.shape:
            raise WorkbenchError(
                f"aux pivot {pivot_names[k]}: the compressed network's output {tuple(s.shape[1:])} differs "
                f"from the teacher's {tuple(t.shape[1:])}; pick other pivots or use mode = \"mse\"")
        term = F.mse_loss(s.float(), t.float())
        terms[f"aux{k + 1}"] = term
        total = total + gamma * term
    return total, terms
