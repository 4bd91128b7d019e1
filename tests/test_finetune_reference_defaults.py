"""Stage defaults that follow the reference scripts (METHOD.md steps 3 and 4): nesterov for `aux`,
step 4 after a decomposition, and the `aux_target = "zeros"` option of the reference step-3 script."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.errors import WorkbenchError
from core.finetune.losses import aux_loss
from core.finetune.settings import FinetuneStage
from core.session import parse_session

HEAD = 'version = 1\n[model]\nname = "resnet20"\n[data]\nspec = "demo"\n'


def stages(text: str) -> list[tuple]:
    return [(s.mode, s.epochs, s.lr, s.milestones, s.nesterov) for s in parse_session(HEAD + text).finetune]


def test_aux_uses_nesterov_mse_and_ce_do_not():
    assert FinetuneStage(mode="aux").nesterov is True
    assert FinetuneStage(mode="mse").nesterov is False and FinetuneStage(mode="ce").nesterov is False
    assert FinetuneStage(mode="aux", nesterov=False).nesterov is False


def test_step4_after_pruning_alone_and_after_a_decomposition():
    tune = '[[finetune]]\nmode = "aux"\n[[finetune]]\nmode = "ce"\n'
    a1 = stages('[prune]\nstrategy = "P1"\n' + tune)
    assert a1 == [("aux", 140, 1e-3, [80, 120], True), ("ce", 30, 1e-4, [], False)]
    a2 = stages('[decompose]\nx = 2.32\n' + tune)
    assert a2 == [("aux", 140, 1e-3, [80, 120], True), ("ce", 40, 1e-3, [20], False)]
    a3 = stages('[prune]\n[decompose]\n' + tune)
    assert a3 == a2
    given = stages('[decompose]\n[[finetune]]\nmode = "ce"\nepochs = 5\nmilestones = []\n')
    assert given == [("ce", 5, 1e-3, [], False)]  # what the session states wins
    assert parse_session(HEAD + '[decompose]\n[train]\nmode = "ce"\n').train.epochs == 30  # the baseline is not step 4


def test_aux_target_only_for_aux():
    assert FinetuneStage(mode="aux").aux_target == "teacher"
    assert FinetuneStage(mode="aux", aux_target="zeros").aux_target == "zeros"
    with pytest.raises(WorkbenchError, match='finetune.0: aux_target only applies to mode = "aux"'):
        parse_session(HEAD + '[[finetune]]\nmode = "ce"\naux_target = "zeros"\n')
    with pytest.raises(WorkbenchError, match="finetune.0.aux_target"):
        parse_session(HEAD + '[[finetune]]\nmode = "aux"\naux_target = "ones"\n')


def test_zeros_target_pulls_features_to_zero():
    torch.manual_seed(0)
    logits, teacher_logits, y = torch.randn(4, 10), torch.randn(4, 10), torch.randint(0, 10, (4,))
    student = [torch.randn(4, 8, 4, 4), torch.randn(4, 16, 2, 2)]
    teacher = [torch.randn(4, 8, 4, 4), torch.randn(4, 3)]  # the teacher's shapes do not matter for zeros
    gammas, names = [0.125, 1.0, 1.0], ["a", "b"]
    total, terms = aux_loss(logits, y, teacher_logits, 5.0, student, teacher, gammas, names, "zeros")
    final = F.cross_entropy(logits, y) + 5.0 * F.mse_loss(logits, teacher_logits)
    torch.testing.assert_close(terms["aux1"], student[0].pow(2).mean())
    torch.testing.assert_close(total, final + 0.125 * student[0].pow(2).mean() + student[1].pow(2).mean())
    _, by_teacher = aux_loss(logits, y, teacher_logits, 5.0, student[:1], teacher[:1], gammas, names)
    torch.testing.assert_close(by_teacher["aux1"], F.mse_loss(student[0], teacher[0]))
    with pytest.raises(WorkbenchError, match="differs from the teacher's"):
        aux_loss(logits, y, teacher_logits, 5.0, student, teacher, gammas, names)


def test_saved_session_keeps_its_step4_values(tmp_path):
    """The workbench writes only keys that differ from the defaults: those of a `ce` stage after a
    decomposition are AFTER_DECOMPOSITION, so a stage at the A1 values must be written out."""
    from core.session import load_session
    from core.session_file import save_session_file

    session = parse_session(HEAD + '[decompose]\n[[finetune]]\nmode = "ce"\nepochs = 30\nlr = 0.0001\nmilestones = []\n'
                            '[[finetune]]\nmode = "ce"\n')
    save_session_file(session, tmp_path / "s.toml")
    again = load_session(tmp_path / "s.toml")
    assert [(s.epochs, s.lr, s.milestones) for s in again.finetune] == [(30, 1e-4, []), (40, 1e-3, [20])]
