"""The fine-tuning loop: stages of `ce`, `mse` or `aux` training (METHOD.md steps 3 and 4)
with SGD + MultiStepLR, best-validation model selection, events, and checkpoints that let a
run stop anywhere and resume to the same weights.

Determinism: the batch order of (stage, epoch) comes from a generator seeded with those
numbers, and the global RNG is re-seeded before each batch (augmentation, dropout), so a run
resumed from a checkpoint continues bit for bit on a CPU, and on CUDA with `deterministic =
true`. Under torchrun every rank builds the same global batch and trains on its slice (each
rank draws its own dropout), so N processes agree with one on the same batch up to rounding.

Several processes exchange at fixed points only (core.finetune.distributed). A failure on one
rank (out of memory, no deterministic kernel) is recorded there, that rank keeps joining the
exchanges, and every rank raises the same error at the next logged batch, before anything is
saved. Checkpoints: core.finetune.train_state; events: core.finetune.events.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from core.data import DataSplits
from core.errors import WorkbenchError, first_line
from core.finetune import events
from core.finetune.distributed import (
    Placement,
    broadcast_from_main,
    distributed,
    exchange_status,
    mean_over,
    sync_buffers,
    sync_gradients,
)
from core.finetune.loader import EpochBatches, auto_workers, batch_seed, fetch
from core.finetune.losses import aux_loss, ce_loss, final_mse_loss
from core.finetune.segments import capture, loss_reach, resolve_pivots
from core.finetune.settings import FinetuneStage
from core.finetune.train_state import (
    StageState,
    load_checkpoint,
    restore,
    save_checkpoint,
)
from core.models.zoo import Arch

__all__ = ["Placement", "Stopped", "Trainer", "check_amp", "distributed", "epoch_order", "load_checkpoint",
           "steps_per_epoch"]  # distributed, load_checkpoint: re-exported for the callers of this module
EVAL_BATCH = 256          # evaluation batch per process (at most the training batch per process)
AMP_DEVICES = ("cuda",)   # device types on which `amp` may be asked for
CUBLAS_DETERMINISTIC = ":4096:8"
Emit = Callable[[events.RunEvent], None]
# what a step may fail with on one process and how it is told (code -> what)
OUT_OF_MEMORY, NOT_DETERMINISTIC = 1, 2


class Stopped(WorkbenchError):
    """A stop request (SIGTERM, Ctrl-C) was honoured: the run checkpointed and returned."""

    exit_code = 3


def steps_per_epoch(n: int, stage: FinetuneStage) -> int:
    """Full batches per epoch (the last partial batch is dropped), capped by max_steps."""
    steps = max(1, n // stage.batch_size)
    return min(steps, stage.max_steps) if stage.max_steps else steps


def epoch_order(n: int, stage: FinetuneStage, stage_index: int, epoch: int) -> torch.Tensor:
    """(steps, batch) sample indices of one epoch, from a generator seeded by (seed, stage, epoch)."""
    g = torch.Generator().manual_seed(stage.seed * 1_000_003 + stage_index * 10_007 + epoch)
    batch = min(stage.batch_size, n)
    steps = steps_per_epoch(n, stage)
    return torch.randperm(n, generator=g)[: steps * batch].view(steps, batch)


def section(phase: str, index: int) -> str:
    """Where a stage is in the session file: `train` (the baseline) or `finetune[i]`."""
    return "train" if phase == "baseline" else f"finetune[{index}]"


def check_amp(stages: list[FinetuneStage], place: Placement, phase: str = "finetune") -> None:
    """Refuse `amp` where autocast would not run as asked (no CUDA: e.g. a driver too old for
    this torch build makes torch.cuda.is_available() false and training falls back to the CPU)."""
    for index, stage in enumerate(stages):
        if stage.amp != "off" and place.device.type not in AMP_DEVICES:
            raise WorkbenchError(f"{section(phase, index)}.amp = \"{stage.amp}\" needs a CUDA GPU but this process "
                                 f"trains on {place.name} (torch sees no usable GPU; is the driver too old for "
                                 f"torch {torch.__version__}?): set amp = \"off\" or fix the GPU setup")


class Trainer:
    """Runs the session's fine-tuning stages on `student`, with `teacher` (the uncompressed
    network, frozen) for the reconstruction losses. Rank 0 emits events (tagged with `phase`:
    "finetune", or "baseline" when training the uncompressed network) and checkpoints."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, arch: Arch, data: DataSplits,
                 stages: list[FinetuneStage], input_shape: tuple[int, int, int], emit: Emit,
                 checkpoint: Path | None = None, place: Placement | None = None, phase: str = "finetune"):
        if len(data.train) == 0:
            raise WorkbenchError(f"data '{data.name}' has no training images: fine-tuning needs some")
        if teacher is None and any(s.mode != "ce" for s in stages):
            raise WorkbenchError("the mse and aux modes need the uncompressed network as teacher")
        self.place = place or Placement.detect()
        check_amp(stages, self.place, phase)
        if any(s.deterministic for s in stages):  # read when cuBLAS first starts: set it early
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
        if teacher is not None:
            teacher = teacher.to(self.place.device).eval().requires_grad_(False)
        self.student = student.to(self.place.device).requires_grad_(True)
        self.teacher = teacher
        self.arch, self.data, self.stages, self.input_shape = arch, data, stages, input_shape
        self.phase = phase
        self.emit = (lambda event: emit(replace(event, phase=phase))) if self.place.main else (lambda event: None)
        self.checkpoint_path = checkpoint if self.place.main else None
        self.state = StageState()
        self._sums: dict[str, torch.Tensor] = {}  # loss sums of the current epoch, on the device
        self._failure: tuple[int, int, str] | None = None  # this process's (code, batch, detail)
        self._stop = threading.Event()
        self._run_start = self._steps_timed = 0

    # ------------------------------------------------------------------ public

    def run(self, resume: dict | None = None,
            on_stage_end: Callable[[int, nn.Module, dict], dict] | None = None) -> list[dict]:
        """Train every stage (from `resume`, a loaded checkpoint, if given). After each stage
        the student holds its best-validation weights and `on_stage_end(index, model, result)`
        returns the entry recorded for it. Returns those entries; raises Stopped on a signal."""
        if resume is not None:
            self.state = restore(resume, self.student)
        with self._signals():
            while self.state.stage < len(self.stages):
                index = self.state.stage
                with self._kernels(self.stages[index]):
                    result = self._train_stage(index, self.stages[index], resume)
                resume = None
                entry = on_stage_end(index, self.student, result) if on_stage_end else result
                self.state = StageState(stage=index + 1, completed=[*self.state.completed, entry])
                self._save(None, None)
        return self.state.completed

    def request_stop(self) -> None:
        """Ask the run to checkpoint and stop after the current batch (signal handlers call it);
        several processes stop together at the next logged batch."""
        self._stop.set()

    # ------------------------------------------------------------------ one stage

    def _train_stage(self, index: int, stage: FinetuneStage, resume: dict | None) -> dict:
        place, n = self.place, len(self.data.train)
        where = section(self.phase, index)
        if stage.batch_size % place.world:
            raise WorkbenchError(f"{where}.batch_size {stage.batch_size} must divide by the "
                                 f"{place.world} processes (it is the global batch)")
        model = self.student
        if stage.channels_last:  # the teacher sees the same inputs: same layout
            model = model.to(memory_format=torch.channels_last)
            if self.teacher is not None:
                self.teacher.to(memory_format=torch.channels_last)
        pivots = resolve_pivots(model, self.arch, stage) if stage.mode == "aux" else None
        optimizer = self._optimizer(model, stage, pivots)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, stage.milestones, stage.gamma)
        scaler = torch.amp.GradScaler(place.device.type, enabled=stage.amp == "fp16")
        if resume is not None and resume.get("optimizer") is not None:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict({**resume["scheduler"], "milestones": Counter(resume["scheduler"]["milestones"])})
            if resume.get("scaler"):
                scaler.load_state_dict(resume["scaler"])
        wrapped = self._wrap(model)
        amp = self._autocast(stage)
        steps = steps_per_epoch(n, stage)
        eval_batch = min(EVAL_BATCH, stage.batch_size // place.world)
        best = resume.get("best") if resume is not None else None
        self._sums = {k: torch.tensor(v, dtype=torch.float64, device=place.device) for k, v in self.state.sums.items()}
        self.emit(events.Stage(stage=index, stages=len(self.stages), mode=stage.mode, epochs=stage.epochs,
                               steps_per_epoch=steps, device=place.name, processes=place.world))
        self._run_start, self._steps_timed = time.perf_counter(), 0
        while self.state.epoch < stage.epochs:
            epoch = self.state.epoch
            order = epoch_order(n, stage, index, epoch)
            seeds = [batch_seed(stage.seed, index, epoch, s) for s in range(steps)]
            workers = stage.workers if stage.workers is not None else auto_workers(self.data.train, place.world)
            self._batches = EpochBatches(self.data.train, order, seeds, self.state.step, workers,
                                         pin=place.device.type == "cuda")
            wrapped.train()
            last_log = (time.perf_counter(), self.state.step)
            while self.state.step < steps:
                step = self.state.step
                seed = seeds[step]
                loss, terms = self._step(wrapped, model, stage, pivots, optimizer, scaler, amp, order[step], seed)
                self.state.step += 1
                self._steps_timed += 1
                if loss is not None:
                    for name, value in (("loss", loss), *terms.items()):
                        self._sums[name] = self._sums.get(name, 0) + value.detach().double()
                log = self.state.step % stage.log_every == 0 or self.state.step == steps
                save = self.state.step % stage.checkpoint_every == 0 and self.state.step < steps
                asked = self._stop.is_set()
                if not (log or save or (place.world == 1 and (asked or self._failure))):
                    continue
                stop = self._agree(index, epoch, asked)  # raises, on every process, on a failure
                if log:
                    last_log = self._log_step(index, stage, epoch, steps, loss, terms, optimizer, last_log)
                if save or stop:
                    self._save(optimizer, scheduler, best, scaler)
                if stop:
                    self.emit(events.Stopped(reason="signal", stage=index, epoch=epoch, step=self.state.step))
                    raise Stopped(f"stopped at stage {index + 1} ({stage.mode}), epoch {epoch + 1}, "
                                  f"batch {self.state.step}/{steps}")
            scheduler.step()
            averages = dict(zip(self._sums, (mean_over(place, torch.stack(list(self._sums.values()))) / steps).tolist()))
            val = self._accuracy(model, self.data.val, eval_batch, index)
            if val is not None and (self.state.best_val is None or val >= self.state.best_val):
                self.state.best_val, self.state.best_epoch = val, epoch + 1
                best = copy.deepcopy(model.state_dict())
            self.state.epoch, self.state.step, self._sums = epoch + 1, 0, {}
            self.emit(events.Epoch(stage=index, mode=stage.mode, epoch=epoch + 1, epochs=stage.epochs,
                                   loss=averages.pop("loss"), losses=averages, val_acc=val,
                                   best_val=self.state.best_val, lr=optimizer.param_groups[0]["lr"]))
            self._save(optimizer, scheduler, best, scaler)
        if best is not None:
            model.load_state_dict(best)
        test = self._accuracy(model, self.data.test, eval_batch, index)
        result = {"mode": stage.mode, "epochs": stage.epochs, "best_val": self.state.best_val,
                  "best_epoch": self.state.best_epoch, "test_acc": test}
        self.emit(events.StageEnd(stage=index, **result))
        return result

    def _step(self, wrapped, model, stage, pivots, optimizer, scaler, amp, indices, seed):
        """One batch: build this process's slice, forward, backward, average the gradients over
        the processes, SGD step. Returns (loss, terms), or (None, {}) when this process has
        failed: it then keeps joining the exchanges (with zero gradients) until `_agree` stops
        every process at the same batch."""
        loss, terms = None, {}
        if self._failure is None:
            try:
                torch.manual_seed(seed)  # augmentation: the same global batch on every process
                x, y = self._batch(indices)
                if self.place.rank:  # dropout: each process its own masks
                    torch.manual_seed(seed + 1_000_000_007 * self.place.rank)
                with amp:
                    loss, terms = self._loss(wrapped, model, stage, pivots, x, y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                self._fail(exc, stage)
                loss, terms = None, {}
        if self.place.world > 1:
            sync_gradients(model, self.place.world, self._failure is not None)
        if self._failure is None:
            try:
                scaler.step(optimizer)
                scaler.update()
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                self._fail(exc, stage)
        if self.place.world > 1:
            sync_buffers(model)
        return loss, terms

    def _fail(self, exc: BaseException, stage: FinetuneStage) -> None:
        """Record a failure this process can report in one line (re-raise anything else)."""
        if isinstance(exc, torch.OutOfMemoryError):
            code = OUT_OF_MEMORY
        elif stage.deterministic and "determinis" in str(exc):
            code = NOT_DETERMINISTIC
        else:
            raise exc
        self._failure = (code, self.state.step + 1, first_line(exc))
        if self.place.device.type == "cuda":
            torch.cuda.empty_cache()

    def _failure_error(self, index: int, code: int, rank: int, when: str) -> WorkbenchError:
        """The one line every process raises for a failure of process `rank`."""
        stage, where = self.stages[index], section(self.phase, index)
        who = f" on process {rank}" if self.place.world > 1 else ""
        if code == NOT_DETERMINISTIC:
            detail = f" ({self._failure[2]})" if self._failure is not None and rank == self.place.rank else ""
            return WorkbenchError(f"{where}.deterministic = true, but an operation of this model has no deterministic "
                                  f"kernel on {self.place.device.type}{detail}, {when}{who}: "
                                  f"set {where}.deterministic = false")
        return WorkbenchError(
            f"out of memory{who} ({self.place.device.type}) {when} at {where}.batch_size {stage.batch_size}: set "
            f"{where}.batch_size = {max(stage.batch_size // 2, self.place.world)} (or amp = \"bf16\") and replay into "
            "a new --out (--resume continues only the unchanged session)")

    def _agree(self, index: int, epoch: int, asked: bool) -> bool:
        """Share every process's stop request, failure and loss sum (one all-reduce). Raises
        the same error on every process when one failed or the loss is not finite (before
        anything is saved from it); returns whether to stop."""
        stop, loss, failed = exchange_status(self.place, asked, self._sums.get("loss", 0.0),
                                             self._failure[:2] if self._failure is not None else None)
        for rank, code, batch in failed[:1]:
            when = f"at stage {index + 1}, epoch {epoch + 1}, batch {batch}"
            message = str(self._failure_error(index, code, rank, when))
            self.emit(events.Failed(message=message))
            raise WorkbenchError(message)
        self._check_finite(index, epoch, loss)
        return stop

    def _optimizer(self, model: nn.Module, stage: FinetuneStage, pivots) -> torch.optim.SGD:
        """SGD over the trainable parameters. In aux mode the paper steps one optimizer per loss
        over nested segments; by linearity that equals one step on the gamma-weighted sum with
        each parameter's weight decay counted once per loss that reaches it."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if pivots is None:
            groups = [{"params": [p for _, p in named]}]
        else:
            reach = loss_reach(model, pivots, self.input_shape)
            by_count: dict[int, list] = {}
            for name, p in named:
                if reach.get(name, 0):
                    by_count.setdefault(reach[name], []).append(p)
            groups = [{"params": ps, "weight_decay": stage.weight_decay * count} for count, ps in sorted(by_count.items())]
        return torch.optim.SGD(groups, lr=stage.lr, momentum=stage.momentum, nesterov=stage.nesterov,
                               weight_decay=stage.weight_decay)

    def _wrap(self, model: nn.Module) -> nn.Module:
        """The module that trains: the model, with SyncBatchNorm on several GPUs, starting from
        rank 0's weights. No DistributedDataParallel: its exchanges run inside forward and
        backward, where a failure on one process would leave the others waiting, so the
        gradients are averaged after backward (`sync_gradients`). Parameters no loss
        reaches (outside every aux segment, or unused) keep no gradient on any process."""
        if self.place.world == 1:
            return model
        if self.place.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        broadcast_from_main(model)
        return model

    def _autocast(self, stage: FinetuneStage):
        if stage.amp == "off":
            return nullcontext()
        return torch.autocast(self.place.device.type, dtype=torch.bfloat16 if stage.amp == "bf16" else torch.float16)

    @contextmanager
    def _kernels(self, stage: FinetuneStage):
        """Deterministic kernels when the stage asks (cuDNN, use_deterministic_algorithms,
        cuBLAS workspace), else cuDNN's autotuner on CUDA (the shapes are fixed); the previous
        settings come back afterwards."""
        cudnn = torch.backends.cudnn
        before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                  cudnn.deterministic, cudnn.benchmark)
        if stage.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
        torch.use_deterministic_algorithms(stage.deterministic)
        cudnn.deterministic = stage.deterministic
        cudnn.benchmark = self.place.device.type == "cuda" and not stage.deterministic
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])
            cudnn.deterministic, cudnn.benchmark = before[2], before[3]

    def _batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slice of the global batch (every rank builds the whole batch so that the
        augmentation each image gets does not depend on the number of processes)."""
        x, y = self._batches.take(self.state.step)  # built ahead (core.finetune.loader), at `indices`
        if self.place.world > 1:
            part = len(indices) // self.place.world
            x, y = x[self.place.rank * part:(self.place.rank + 1) * part], y[self.place.rank * part:(self.place.rank + 1) * part]
        return x.to(self.place.device, non_blocking=True), y.to(self.place.device, non_blocking=True)

    def _loss(self, wrapped: nn.Module, model: nn.Module, stage: FinetuneStage, pivots, x, y):
        if stage.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if stage.mode == "ce":
            return ce_loss(wrapped(x), y)
        names = pivots.modules if pivots is not None else []
        # the teacher's targets in full precision: outside the student's autocast
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False), capture(self.teacher, names) as teacher_out:
            teacher_logits = self.teacher(x)
        with capture(model, names) as student_out:
            logits = wrapped(x)
        if stage.mode == "mse":
            return final_mse_loss(logits, y, teacher_logits, stage.mse_factor)
        return aux_loss(logits, y, teacher_logits, stage.mse_factor, list(student_out), list(teacher_out),
                        pivots.gammas, names, stage.aux_target)

    # ------------------------------------------------------------------ bookkeeping

    def _log_step(self, index, stage, epoch, steps, loss, terms, optimizer, last_log):
        now = time.perf_counter()
        images = (self.state.step - last_log[1]) * stage.batch_size
        per_step = (now - self._run_start) / max(self._steps_timed, 1)
        packed = mean_over(self.place,
                           torch.stack([loss.detach().float(), *(v.detach().float() for v in terms.values())]))
        loss, values = packed[0], dict(zip(terms, packed[1:].tolist()))
        self.emit(events.Step(stage=index, mode=stage.mode, epoch=epoch, step=self.state.step, steps_per_epoch=steps,
                              global_step=epoch * steps + self.state.step, loss=float(loss.detach()), losses=values,
                              lr=optimizer.param_groups[0]["lr"], images_per_s=images / max(now - last_log[0], 1e-9),
                              eta_s=per_step * self._remaining_steps(index, epoch, steps)))
        return now, self.state.step

    def _remaining_steps(self, index: int, epoch: int, steps: int) -> int:
        left = steps - self.state.step + (self.stages[index].epochs - epoch - 1) * steps
        n = len(self.data.train)
        return left + sum(s.epochs * steps_per_epoch(n, s) for s in self.stages[index + 1:])

    def _check_finite(self, index: int, epoch: int, total: float) -> None:
        """Stop on a NaN/Inf loss since the last check (`total`: the loss sum over the processes)."""
        if not math.isfinite(total):
            stage = self.stages[index]
            message = (f"the {stage.mode} loss became {total} at stage {index + 1}, epoch {epoch + 1}, "
                       f"by batch {self.state.step}: lower {section(self.phase, index)}.lr (now {stage.lr}); "
                       "the last good checkpoint is kept")
            self.emit(events.Failed(message=message))
            raise WorkbenchError(message)

    @torch.no_grad()
    def _accuracy(self, model: nn.Module, dataset: Dataset, batch: int, index: int) -> float | None:
        """Top-1 accuracy over `dataset` (each rank a share, summed), None when it is empty. Out
        of memory on any process stops every process with one line."""
        if len(dataset) == 0:
            return None
        was_training = model.training
        model.eval()
        world, rank = self.place.world, self.place.rank
        counts = torch.zeros(2 + world, dtype=torch.float64, device=self.place.device)
        try:
            for chunk in torch.arange(rank, len(dataset), world).split(batch):
                x, y = fetch(dataset, chunk)
                logits = model(x.to(self.place.device))
                counts[0] += (logits.argmax(1).cpu() == y).sum().item()
                counts[1] += len(y)
        except torch.OutOfMemoryError:
            counts[2 + rank] = OUT_OF_MEMORY
            if self.place.device.type == "cuda":
                torch.cuda.empty_cache()
        if world > 1:
            dist.all_reduce(counts)
        model.train(was_training)
        for r, code in enumerate(counts[2:].tolist()):
            if code:
                message = str(self._failure_error(index, int(code), r, f"while evaluating (batches of {batch})"))
                self.emit(events.Failed(message=message))
                raise WorkbenchError(message)
        return float(counts[0] / counts[1])

    def _save(self, optimizer, scheduler, best: dict | None = None, scaler=None) -> None:
        """Write the checkpoint (rank 0) and say so."""
        if self.checkpoint_path is None:
            return
        save_checkpoint(self.checkpoint_path, self.state, self._sums, self.student, best, optimizer, scheduler,
                        scaler)
        s = self.state
        self.emit(events.Checkpoint(stage=s.stage, epoch=s.epoch, step=s.step))

    def _signals(self):
        """SIGTERM and SIGINT request a clean stop while training (main thread only)."""
        stack = ExitStack()
        if threading.current_thread() is not threading.main_thread():
            return stack
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.signal(sig, lambda *_: self.request_stop())
            stack.callback(signal.signal, sig, previous)
        return stack

