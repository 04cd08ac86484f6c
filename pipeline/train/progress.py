"""Training progress: one bar over seeds x epochs with ETA, the current selection W-F1, the best so far,
and the early-stop reason. Without a terminal (or with progress off) one line per finished seed."""
from __future__ import annotations

import sys
from typing import Any, Callable


class TrainProgress:
    def __init__(self, n_fits: int, max_epochs: int, select_on: str, *, enabled: bool = True,
                 log: Callable[[str], None] = print) -> None:
        self.n_fits, self.max_epochs, self.select_on, self.log = n_fits, max_epochs, select_on, log
        self.label, self.done_epochs, self.bar = "", 0, None
        if enabled:
            from tqdm import tqdm

            # total = the epoch budget; early stops jump the bar forward, so the ETA is an upper bound
            self.bar = tqdm(total=n_fits * max_epochs, unit="ep", file=sys.stderr, dynamic_ncols=True,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} ep "
                                       "[{elapsed}<{remaining}] {postfix}")

    def start(self, label: str) -> None:
        self.label, self.epochs_this_fit = label, 0
        if self.bar is not None:
            self.bar.set_description_str(label)

    def epoch(self, rec: dict[str, Any]) -> None:
        self.epochs_this_fit += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"{self.select_on} W-F1 {rec['dev_weighted_f1']:.4f} "
                                     f"best {rec['best_weighted_f1']:.4f}@{rec['best_epoch'] + 1} "
                                     f"loss {rec['train_loss']:.3f}")

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

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
