"""Training progress: what a run reports while it trains.

The bar (`TrainProgress`): one bar over seeds x epochs with ETA, the current selection W-F1, the best so far,
and the early-stop reason, plus one line per finished seed. Without a terminal the bar is plain lines
(common/progress.py); with progress off only the per-seed lines. A `board` (`RunBoard`, below) gets the
same start/epoch calls, and `close(metrics)` hands it the final metrics.

The TensorBoard event files (`RunBoard`), so `tensorboard --logdir runs/` watches a run or a sweep.

Layout, under the run dir:
    tensorboard/                   hparams (the resolved config's scalar fields) + final dev/test metrics
    tensorboard/seed-<s>[-<fold>]/ per epoch: train/loss, train/loss_<part>, dev/weighted_f1, dev/accuracy,
                                   dev/loss, lr (one TensorBoard run per fit, so seeds and configs overlay)

The final metrics are the means over seeds from metrics.json (`final/dev_weighted_f1`, `final/test_weighted_f1`,
accuracy and macro F1 too); they sit in the same run as the hparams, which is what the HParams view compares.
Written with `torch.utils.tensorboard` (the `tensorboard` package); nothing here is read back by mer-pipe.

No MLflow tracker: even `mlflow-skinny` 3.18 installs 20 packages here (fastapi, starlette, uvicorn, databricks-sdk,
google-auth, cryptography, GitPython, opentelemetry x4, ...; the full `mlflow` adds SQLAlchemy/alembic, Flask and
more), against TensorBoard's 7, for what the run dir (config.yaml, metrics.json, `mer-pipe runs`, `runs compare`)
and TensorBoard's HParams view already give.
A lab on MLflow can log a finished run dir with `mlflow.log_artifacts(run_dir)` and `mlflow.log_params` of the
config in a few lines of its own.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Callable


class TrainProgress:
    def __init__(self, n_fits: int, max_epochs: int, select_on: str, *, enabled: bool = True,
                 log: Callable[[str], None] = print, board: Any = None) -> None:
        self.n_fits, self.max_epochs, self.select_on, self.log, self.board = n_fits, max_epochs, select_on, log, board
        self.label, self.done_epochs, self.bar = "", 0, None
        if enabled:
            from mer_pipe.common.progress import progress_bar

            # total = the epoch budget; early stops jump the bar forward, so the ETA is an upper bound
            self.bar = progress_bar(n_fits * max_epochs, unit="ep", file=sys.stderr, dynamic_ncols=True,
                                    bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} ep "
                                               "[{elapsed}<{remaining}] {postfix}")

    def start(self, label: str) -> None:
        self.label, self.epochs_this_fit = label, 0
        if self.board is not None:
            self.board.start(label)
        if self.bar is not None:
            self.bar.set_description_str(label)

    def epoch(self, rec: dict[str, Any]) -> None:
        self.epochs_this_fit += 1
        if self.board is not None:
            self.board.epoch(rec)
        if self.bar is not None:  # postfix first: a plain-lines bar prints it with this update
            self.bar.set_postfix_str(f"{self.select_on} W-F1 {rec['dev_weighted_f1']:.4f} "
                                     f"best {rec['best_weighted_f1']:.4f}@{rec['best_epoch'] + 1} "
                                     f"loss {rec['train_loss']:.3f}", refresh=False)
            self.bar.update(1)

    def finish(self, res: Any) -> None:
        if self.bar is not None:
            self.bar.update(self.max_epochs - self.epochs_this_fit)  # epochs an early stop skipped
        line = (f"{self.label}: {res.stop_reason}; best epoch {res.best_epoch + 1} ({self.select_on} W-F1 "
                f"{res.dev['weighted_f1']:.4f}), test W-F1 {res.test['weighted_f1']:.4f}, "
                f"{res.seconds_per_epoch:.1f}s/epoch")
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            self.log(line)

    def close(self, metrics: dict[str, Any] | None = None) -> None:
        """Close the bar; with the run's final metrics the board writes hparams (else it only closes)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.board is not None:
            if metrics:
                self.board.finish(metrics)
            else:
                self.board.close()
            self.board = None



# ---- TensorBoard event files -------------------------------------------------------------------------------

SUBDIR = "tensorboard"
FINAL_PARTS = ("dev", "test")
FINAL_SCALARS = ("weighted_f1", "accuracy", "macro_f1")
# Epoch-record keys (pipeline/train/loop.py `fit`) and their tags; loss parts (`loss_<name>`) go under train/.
EPOCH_TAGS = {"train_loss": "train/loss", "dev_weighted_f1": "dev/weighted_f1", "dev_accuracy": "dev/accuracy",
              "dev_loss": "dev/loss", "lr": "lr"}


def flat_hparams(config: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """The scalar fields of a resolved config as TensorBoard hparams: nested sections become dotted names
    (`trainer.lr`, `model_config.hidden`, `slots.a`), tuples of scalars a comma-joined string, None 'none'."""
    out: dict[str, bool | int | float | str] = {}
    for k, v in config.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_hparams(v, f"{name}."))
        elif isinstance(v, (list, tuple)):
            if all(isinstance(x, (bool, int, float, str)) for x in v):
                out[name] = ",".join(map(str, v))
        elif v is None:
            out[name] = "none"
        elif isinstance(v, (bool, int, float, str)):
            out[name] = v
    return out


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """`final/<part>_<metric>` = the mean over seeds in metrics.json (report.summarize)."""
    agg = metrics.get("aggregate", {})
    return {f"final/{part}_{m}": float(agg[part][m]["mean"])
            for part in FINAL_PARTS for m in FINAL_SCALARS if m in agg.get(part, {})}


class RunBoard:
    """Event-file writer of one run: `start(label)` opens a fit's writer, `epoch(rec)` logs an epoch record,
    `finish(metrics)` writes hparams + final metrics and closes. An earlier run's `tensorboard/` in the same
    dir (`--overwrite`) is removed first, so its curves do not mix with the new ones."""

    def __init__(self, run_dir: Path, config: dict[str, Any], log: Callable[[str], None] = print) -> None:
        self.dir = Path(run_dir) / SUBDIR
        self.config, self._fit, self._step = config, None, 0
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # tensorboard is a dependency; a broken install only loses the event files
            log(f"no TensorBoard event files ({e}); reinstall with `pip install -c constraints.txt -e .`")
            self._writer_cls = None
            return
        self._writer_cls = SummaryWriter
        if self.dir.exists():
            shutil.rmtree(self.dir)

    @property
    def enabled(self) -> bool:
        return self._writer_cls is not None

    def start(self, label: str) -> None:
        """A new fit (seed, fold): its own TensorBoard run `seed-<s>[-<fold>]`."""
        self._close_fit()
        if self.enabled:
            self._fit = self._writer_cls(log_dir=str(self.dir / label.replace(" ", "-")))

    def epoch(self, rec: dict[str, Any]) -> None:
        """One epoch record of loop.fit; step = the epoch number counted from 1."""
        if self._fit is None:
            return
        step = int(rec["epoch"]) + 1
        for key, tag in EPOCH_TAGS.items():
            if key in rec:
                self._fit.add_scalar(tag, float(rec[key]), step)
        for key, value in rec.items():
            if key.startswith("loss_"):
                self._fit.add_scalar(f"train/{key}", float(value), step)

    def finish(self, metrics: dict[str, Any]) -> None:
        """hparams + final metrics in `tensorboard/` (the HParams view's session for this run)."""
        self._close_fit()
        if not self.enabled or not metrics:
            return
        from torch.utils.tensorboard.summary import hparams

        values = final_metrics(metrics)
        with self._writer_cls(log_dir=str(self.dir)) as w:
            for summary in hparams(flat_hparams(self.config), values):
                w.file_writer.add_summary(summary)
            for tag, value in values.items():
                w.add_scalar(tag, value, 0)

    def close(self) -> None:
        self._close_fit()

    def _close_fit(self) -> None:
        if self._fit is not None:
            self._fit.close()
            self._fit = None
