"""Progress of a fine-tune in this process: a bar per epoch over the optimiser steps, and transformers' own
loading/saving bars switched off so they do not shred it."""
from __future__ import annotations


def quiet_transformers() -> None:
    # "Loading weights" / "Writing model shards" bars would shred the fine-tune's own progress lines
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


class StepBar:
    """One tqdm bar per fine-tune epoch over its optimiser steps (plain lines when not on a terminal)."""

    def __init__(self, desc: str, epochs: int, enabled: bool) -> None:
        self._bar, self._desc, self._epochs, self._enabled, self._epoch = None, desc, epochs, enabled, 0

    def step(self, i: int, n: int) -> None:
        if not self._enabled:
            return
        if self._bar is None or i == 1:
            self.close()
            from mer_pipe.common.progress import progress_bar  # a bar on a terminal, else plain lines

            self._epoch += 1
            self._bar = progress_bar(n, unit="step", desc=f"{self._desc} ep {self._epoch}/{self._epochs}",
                                     dynamic_ncols=True, smoothing=0.1)
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
