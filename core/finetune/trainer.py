"""The fine-tuning loop: stages of `ce`, `mse` or `aux` training (METHOD.md steps 3 and 4)
with SGD + MultiStepLR, best-validation model selection, events, and checkpoints that let a
run stop anywhere and resume to the same weights.

Determinism: the batch order of (stage, epoch) comes from a generator seeded with those
numbers, and the global RNG is re-seeded before each batch (augmentation, dropout), so a run
resumed from a checkpoint continues bit for bit. Under torchrun every rank builds the same
global batch and trains on its slice, so N processes agree with one on the same batch.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import threading
import time
from collections import Counter
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, default_collate

from core.atomic import atomic_path
from core.data import DataSplits
from core.errors import WorkbenchError
from core.finetune.losses import aux_loss, ce_loss, final_mse_loss
from core.finetune.segments import capture, loss_reach, resolve_pivots
from core.finetune.settings import FinetuneStage
from core.models.zoo import Arch

CHECKPOINT_VERSION = 1
EVAL_BATCH = 256
Emit = Callable[[dict], None]


class Stopped(WorkbenchError):
    """A stop request (SIGTERM, Ctrl-C) was honoured: the run checkpointed and returned."""

    exit_code = 3


@dataclass
class Placement:
    """Where this process trains: device, and its rank among `world` processes."""

    device: torch.device
    rank: int = 0
    world: int = 1

    @classmethod
    def detect(cls) -> "Placement":
        """CUDA when present; the process group's rank and size when torchrun started us."""
        distributed = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        if torch.cuda.is_available():
            device = torch.device("cuda", rank % torch.cuda.device_count())
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        return cls(device, rank, world)

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class StageState:
    """Where a stage stands: what a checkpoint stores besides the tensors."""

    stage: int = 0
    epoch: int = 0            # epochs completed in this stage
    step: int = 0             # batches completed in the current epoch
    best_val: float | None = None
    best_epoch: int | None = None
    sums: dict[str, float] = field(default_factory=dict)  # loss sums of the epoch (from a checkpoint)
    completed: list[dict] = field(default_factory=list)   # what each finished stage reported


@contextmanager
def distributed():
    """The process group torchrun asks for (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPUs."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield
        return
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


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


def fetch(dataset: Dataset, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch (images, labels) of `dataset` at `indices`."""
    idx = indices.tolist()
    items = dataset.__getitems__(idx) if hasattr(dataset, "__getitems__") else [dataset[i] for i in idx]
    return default_collate(items)


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
        if teacher is not None:
            teacher = teacher.to(self.place.device).eval().requires_grad_(False)
        self.student = student.to(self.place.device).requires_grad_(True)
        self.teacher = teacher
        self.arch, self.data, self.stages, self.input_shape = arch, data, stages, input_shape
        self.emit = (lambda event: emit({**event, "phase": phase})) if self.place.main else (lambda event: None)
        self.checkpoint_path = checkpoint if self.place.main else None
        self.state = StageState()
        self._sums: dict[str, torch.Tensor] = {}  # loss sums of the current epoch, on the device
        self._stop = threading.Event()
        self._run_start = self._steps_timed = 0

    # ------------------------------------------------------------------ public

    def run(self, resume: dict | None = None,
            on_stage_end: Callable[[int, nn.Module, dict], dict] | None = None) -> list[dict]:
        """Train every stage (from `resume`, a loaded checkpoint, if given). After each stage
        the student holds its best-validation weights and `on_stage_end(index, model, result)`
        returns the entry recorded for it. Returns those entries; raises Stopped on a signal."""
        if resume is not None:
            self._restore(resume)
        with self._signals():
            while self.state.stage < len(self.stages):
                index = self.state.stage
                result = self._train_stage(index, self.stages[index], resume)
                resume = None
                entry = on_stage_end(index, self.student, result) if on_stage_end else result
                self.state = StageState(stage=index + 1, completed=[*self.state.completed, entry])
                self._save(None, None)
        return self.state.completed

    def request_stop(self) -> None:
        """Ask the run to checkpoint and stop after the current batch (signal handlers call it)."""
        self._stop.set()

    # ------------------------------------------------------------------ one stage

    def _train_stage(self, index: int, stage: FinetuneStage, resume: dict | None) -> dict:
        place, n = self.place, len(self.data.train)
        if stage.batch_size % place.world:
            raise WorkbenchError(f"finetune[{index}].batch_size {stage.batch_size} must divide by the "
                                 f"{place.world} processes (it is the global batch)")
        model = self.student
        if stage.channels_last:
            model = model.to(memory_format=torch.channels_last)
        pivots = resolve_pivots(model, self.arch, stage) if stage.mode == "aux" else None
        optimizer = self._optimizer(model, stage, pivots)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, stage.milestones, stage.gamma)
        if resume is not None and resume.get("optimizer") is not None:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict({**resume["scheduler"], "milestones": Counter(resume["scheduler"]["milestones"])})
        wrapped = self._wrap(model)
        amp = self._autocast(stage)
        scaler = torch.amp.GradScaler("cuda", enabled=stage.amp == "fp16" and place.device.type == "cuda")
        steps = steps_per_epoch(n, stage)
        best = resume.get("best") if resume is not None else None
        self._sums = {k: torch.tensor(v, dtype=torch.float64, device=place.device) for k, v in self.state.sums.items()}
        self.emit({"event": "stage", "stage": index, "stages": len(self.stages), "mode": stage.mode,
                   "epochs": stage.epochs, "steps_per_epoch": steps})
        self._run_start, self._steps_timed = time.perf_counter(), 0
        while self.state.epoch < stage.epochs:
            epoch = self.state.epoch
            order = epoch_order(n, stage, index, epoch)
            wrapped.train()
            last_log = (time.perf_counter(), self.state.step)
            while self.state.step < steps:
                step = self.state.step
                torch.manual_seed(stage.seed * 7_919 + index * 104_729 + epoch * 1_299_709 + step)
                x, y = self._batch(order[step])
                try:
                    with amp:
                        loss, terms = self._loss(wrapped, model, stage, pivots, x, y)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                except torch.OutOfMemoryError:
                    raise WorkbenchError(
                        f"out of GPU memory at finetune[{index}].batch_size {stage.batch_size}: try batch_size = "
                        f"{max(stage.batch_size // 2, 1)} (or amp = \"bf16\"), then --resume") from None
                scaler.step(optimizer)
                scaler.update()
                self.state.step += 1
                self._steps_timed += 1
                for name, value in (("loss", loss), *terms.items()):
                    self._sums[name] = self._sums.get(name, 0) + value.detach().double()
                stop = self._stop_requested()
                log = self.state.step % stage.log_every == 0 or self.state.step == steps
                save = stop or (self.state.step % stage.checkpoint_every == 0 and self.state.step < steps)
                if log or save:
                    self._check_finite(index, epoch)
                if log:
                    last_log = self._log_step(index, stage, epoch, steps, loss, terms, optimizer, last_log)
                if save:
                    self._save(optimizer, scheduler, best)
                if stop:
                    self.emit({"event": "stopped", "reason": "signal", "stage": index, "epoch": epoch,
                               "step": self.state.step})
                    raise Stopped(f"stopped at stage {index + 1} ({stage.mode}), epoch {epoch + 1}, "
                                  f"batch {self.state.step}/{steps}")
            self._check_finite(index, epoch)
            scheduler.step()
            averages = dict(zip(self._sums, (self._mean(torch.stack(list(self._sums.values()))) / steps).tolist()))
            val = self._accuracy(model, self.data.val)
            if val is not None and (self.state.best_val is None or val >= self.state.best_val):
                self.state.best_val, self.state.best_epoch = val, epoch + 1
                best = copy.deepcopy(model.state_dict())
            self.state.epoch, self.state.step, self._sums = epoch + 1, 0, {}
            self.emit({"event": "epoch", "stage": index, "mode": stage.mode, "epoch": epoch + 1,
                       "epochs": stage.epochs, "loss": averages.pop("loss"), "losses": averages, "val_acc": val,
                       "best_val": self.state.best_val, "lr": optimizer.param_groups[0]["lr"]})
            self._save(optimizer, scheduler, best)
        if best is not None:
            model.load_state_dict(best)
        test = self._accuracy(model, self.data.test)
        result = {"mode": stage.mode, "epochs": stage.epochs, "best_val": self.state.best_val,
                  "best_epoch": self.state.best_epoch, "test_acc": test}
        self.emit({"event": "stage_end", "stage": index, **result})
        return result

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
        if self.place.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if self.place.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return DistributedDataParallel(model, device_ids=[self.place.device])
        return DistributedDataParallel(model)

    def _autocast(self, stage: FinetuneStage):
        if stage.amp == "off" or self.place.device.type != "cuda":
            return nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if stage.amp == "bf16" else torch.float16)

    def _batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slice of the global batch (every rank builds the whole batch so that the
        augmentation each image gets does not depend on the number of processes)."""
        x, y = fetch(self.data.train, indices)
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
        with torch.no_grad(), capture(self.teacher, names) as teacher_out:
            teacher_logits = self.teacher(x)
        with capture(model, names) as student_out:
            logits = wrapped(x)
        if stage.mode == "mse":
            return final_mse_loss(logits, y, teacher_logits, stage.mse_factor)
        return aux_loss(logits, y, teacher_logits, stage.mse_factor, list(student_out), list(teacher_out),
                        pivots.gammas, names)

    # ------------------------------------------------------------------ bookkeeping

    def _log_step(self, index, stage, epoch, steps, loss, terms, optimizer, last_log):
        now = time.perf_counter()
        images = (self.state.step - last_log[1]) * stage.batch_size
        per_step = (now - self._run_start) / max(self._steps_timed, 1)
        packed = self._mean(torch.stack([loss.detach().float(), *(v.detach().float() for v in terms.values())]))
        loss, values = packed[0], dict(zip(terms, packed[1:].tolist()))
        self.emit({"event": "step", "stage": index, "mode": stage.mode, "epoch": epoch, "step": self.state.step,
                   "steps_per_epoch": steps, "global_step": epoch * steps + self.state.step,
                   "loss": float(loss.detach()), "losses": values, "lr": optimizer.param_groups[0]["lr"],
                   "images_per_s": images / max(now - last_log[0], 1e-9),
                   "eta_s": per_step * self._remaining_steps(index, epoch, steps)})
        return now, self.state.step

    def _mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of `values` over the processes (itself in a single process)."""
        if self.place.world > 1:
            values = values.clone()
            dist.all_reduce(values)
            values /= self.place.world
        return values

    def _remaining_steps(self, index: int, epoch: int, steps: int) -> int:
        left = steps - self.state.step + (self.stages[index].epochs - epoch - 1) * steps
        n = len(self.data.train)
        return left + sum(s.epochs * steps_per_epoch(n, s) for s in self.stages[index + 1:])

    def _check_finite(self, index: int, epoch: int) -> None:
        """Stop on a NaN/Inf loss since the last check (before anything is saved from it)."""
        total = float(self._sums.get("loss", 0.0))
        if not math.isfinite(total):
            stage = self.stages[index]
            message = (f"the {stage.mode} loss became {total} at stage {index + 1}, epoch {epoch + 1}, "
                       f"by batch {self.state.step}: lower finetune[{index}].lr (now {stage.lr}); "
                       "the last good checkpoint is kept")
            self.emit({"event": "failed", "message": message})
            raise WorkbenchError(message)

    def _stop_requested(self) -> bool:
        stop = self._stop.is_set()
        if self.place.world > 1:  # every rank must stop at the same batch
            flag = torch.tensor([int(stop)], device=self.place.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    @torch.no_grad()
    def _accuracy(self, model: nn.Module, dataset: Dataset) -> float | None:
        """Top-1 accuracy over `dataset` (each rank a share, summed), None when it is empty."""
        if len(dataset) == 0:
            return None
        was_training = model.training
        model.eval()
        counts = torch.zeros(2, dtype=torch.float64, device=self.place.device)
        mine = torch.arange(self.place.rank, len(dataset), self.place.world)
        for chunk in mine.split(EVAL_BATCH):
            x, y = fetch(dataset, chunk)
            logits = model(x.to(self.place.device))
            counts[0] += (logits.argmax(1).cpu() == y).sum().item()
            counts[1] += len(y)
        if self.place.world > 1:
            dist.all_reduce(counts)
        model.train(was_training)
        return float(counts[0] / counts[1])

    def _save(self, optimizer, scheduler, best: dict | None = None) -> None:
        """Write the checkpoint atomically (rank 0): weights, optimizer, schedule, progress."""
        if self.checkpoint_path is None:
            return
        sched = scheduler.state_dict() if scheduler is not None else None
        if sched is not None:
            sched["milestones"] = dict(sched["milestones"])
        s = self.state
        document = {
            "version": CHECKPOINT_VERSION, "stage": s.stage, "epoch": s.epoch, "step": s.step,
            "best_val": s.best_val, "best_epoch": s.best_epoch,
            "sums": {k: float(v) for k, v in self._sums.items()}, "completed": list(s.completed),
            "model": self.student.state_dict(), "best": best,
            "optimizer": optimizer.state_dict() if optimizer is not None else None, "scheduler": sched,
        }
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(document, tmp)
        self.emit({"event": "checkpoint", "stage": s.stage, "epoch": s.epoch, "step": s.step})

    def _restore(self, document: dict) -> None:
        if document.get("version") != CHECKPOINT_VERSION:
            raise WorkbenchError(f"the checkpoint has version {document.get('version')}, this workbench reads "
                                 f"{CHECKPOINT_VERSION}: start the run again without --resume")
        try:
            self.student.load_state_dict(document["model"])
        except RuntimeError as exc:
            raise WorkbenchError("the checkpoint does not fit the compressed model (was the session changed?): "
                                 f"{str(exc).splitlines()[0]}") from None
        self.state = StageState(document["stage"], document["epoch"], document["step"], document["best_val"],
                                document["best_epoch"], dict(document["sums"]), list(document["completed"]))

    def _signals(self):
        """SIGTERM and SIGINT request a clean stop while training (main thread only)."""
        stack = ExitStack()
        if threading.current_thread() is not threading.main_thread():
            return stack
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.signal(sig, lambda *_: self.request_stop())
            stack.callback(signal.signal, sig, previous)
        return stack


def load_checkpoint(path: Path) -> dict:
    """A training checkpoint, read safely (weights_only)."""
    try:
        document = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WorkbenchError(f"nothing to resume: {path} does not exist (run without --resume)") from None
    except Exception as exc:
        raise WorkbenchError(f"cannot read the checkpoint {path} ({type(exc).__name__}); it is damaged: "
                             "start the run again without --resume") from None
    if not isinstance(document, dict) or "model" not in document:
        raise WorkbenchError(f"{path} is not a fine-tuning checkpoint of this workbench")
    return document
