"""What a followed run's events mean for the fine-tune screen: one reducer over the typed events
of core.finetune.events that folds them into the points of the loss and accuracy plots, the
progress bar and the figures of the progress line. It holds no widget: the screen draws what
`apply` returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.finetune.events import Epoch, RunEvent, Stage, Step


@dataclass
class Change:
    """What one event changes on the screen."""

    losses: list[tuple[str, float, float | None]] = field(default_factory=list)  # (series, x, loss)
    accuracy: tuple[float, float] | None = None  # (x, validation accuracy %)
    bar: tuple[int, int] | None = None           # (total, progress) in batches
    line: tuple | None = None                    # the progress line: (epochs, epoch, images/s, ETA s, step event)


@dataclass
class RunProgress:
    """The run so far: stages laid end to end on the plots' x axes (steps and epochs)."""

    step_offsets: dict[int, int] = field(default_factory=dict)   # stage -> steps of the stages before it
    epoch_offsets: dict[int, int] = field(default_factory=dict)
    max_step: int = 0
    max_epoch: int = 0
    stage: Stage | None = None        # the latest stage event
    best_val: float | None = None
    speed: float | None = None        # images/s and ETA of the latest step
    eta: float | None = None
    last_time: float | None = None    # the latest event's time

    def saw(self, record: dict) -> None:
        """Note the time of any line (of a kind this version reads or not)."""
        when = record.get("time") if isinstance(record, dict) else None
        if isinstance(when, (int, float)):
            self.last_time = max(self.last_time or 0.0, float(when))

    def apply(self, event: RunEvent) -> Change | None:
        """Fold `event` in; what the screen should draw (None: nothing for this kind)."""
        if isinstance(event, Stage):
            return self._stage(event)
        if isinstance(event, Step):
            return self._step(event)
        if isinstance(event, Epoch):
            return self._epoch(event)
        return None

    def _stage(self, e: Stage) -> Change:
        self.step_offsets.setdefault(e.stage, self.max_step)
        self.epoch_offsets.setdefault(e.stage, self.max_epoch)
        self.stage, self.best_val, self.speed, self.eta = e, None, None, None
        return Change(bar=(e.epochs * e.steps_per_epoch, 0), line=(e.epochs, 0, None, None, None))

    def _step(self, e: Step) -> Change:
        steps = e.steps_per_epoch
        done = e.global_step if e.global_step is not None else e.epoch * steps + e.step
        x = self.step_offsets.get(e.stage, 0) + done
        self.max_step = max(self.max_step, x)
        losses = [(name, x, value) for name, value in (e.losses or {"loss": e.loss}).items()]
        epochs = self.stage.epochs if self.stage is not None and self.stage.stage == e.stage else None
        self.speed, self.eta = e.images_per_s, e.eta_s
        return Change(losses=losses, bar=((epochs or e.epoch + 1) * steps, e.epoch * steps + e.step),
                      line=(epochs, e.epoch + 1, e.images_per_s, e.eta_s, e))

    def _epoch(self, e: Epoch) -> Change:
        x = self.epoch_offsets.get(e.stage, 0) + e.epoch
        self.max_epoch = max(self.max_epoch, x)
        change = Change(accuracy=(x, 100 * e.val_acc) if e.val_acc is not None else None)
        self.best_val = e.best_val
        if self.stage is not None and self.stage.stage == e.stage:
            steps = self.stage.steps_per_epoch
            change.bar = (e.epochs * steps, e.epoch * steps)
            change.line = (e.epochs, e.epoch, self.speed, self.eta, None)
        return change
