"""Training progress: one bar over seeds x epochs with ETA, the current selection W-F1, the best so far,
and the early-stop reason, plus one line per finished seed. Without a terminal the bar is plain lines
(common/progress.py); with progress off only the per-seed lines. A `board` (tensorboard.RunBoard) gets the
same start/epoch calls, and `close(metrics)` hands it the final metrics."""
from __future__ import annotations

import sys
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


class RunTally:
    """The facts of a sweep's per-run lines (plain lines, terminal or not): rate, ETA and the best score so far."""

    def __init__(self, total: int, select_on: str) -> None:
        import time

        self.total, self.select_on, self.done, self.best = total, select_on, 0, None
        self._t0, self._clock = time.perf_counter(), time.perf_counter

    def add(self, score: float | None) -> str:
        """Count one finished run (score None = failed); returns '; 40.1 s/run, ETA 02:40, best dev W-F1 0.7012'."""
        from mer_pipe.common.progress import hms

        self.done += 1
        if score is not None and (self.best is None or score > self.best):
            self.best = score
        per = (self._clock() - self._t0) / self.done
        eta = f", ETA {hms(per * (self.total - self.done))}" if self.done < self.total else ""
        best = f", best {self.select_on} W-F1 {self.best:.4f}" if self.best is not None else ""
        return f"; {per:.1f} s/run{eta}{best}"
