"""Progress bar and run summary of a feature run (items, failures by reason, time, throughput, bytes), the
fine-tune's per-epoch step bar, and the one stderr writer and transformers silencer of the extract wing."""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any

from mer_pipe.common.commands import command

_PAREN = re.compile(r"\s*\(.*$")
# More failed utterances than this share of a slot gets a warning; all of them fails the run.
WARN_FAILED_SHARE = 0.05


def stderr(msg: str) -> None:
    """One line to stderr, as given (the default `log` of the fine-tune stage)."""
    print(msg, file=sys.stderr, flush=True)


def notice(msg: str) -> None:
    """One `mer-pipe: ...` line to stderr (the default `log` of a feature run)."""
    stderr(f"mer-pipe: {msg}")


def quiet_transformers() -> None:
    """Switch off transformers' "Loading weights" / "Writing model shards" bars, which would shred the run's own
    progress bar (from every worker) and the fine-tune's step bar."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()


def reason_category(reason: str) -> str:
    """A short, path-free reason for counting failures: '/x/dia1_utt2.mp4: no audio stream (streams: ...)'
    -> 'no audio stream'. The full reason stays in the shard."""
    text = reason.strip()
    # media errors start with "<path>: "; utterance-prefixed ones with "utterance 'x' (...): "
    head, sep, rest = text.partition(": ")
    if sep and ("/" in head or "\\" in head or head.startswith(("(", "utterance"))):
        text = rest
    text = text.split(";", 1)[0]
    text = _PAREN.sub("", text).strip()
    return text or "unknown"


class Progress:
    """A bar over utterances (rate in utt/s and ETA; plain lines when stderr is no terminal, see
    common/progress.py); a no-op when disabled."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self._bar = None
        self._failed = 0
        if enabled and total:
            from mer_pipe.common.progress import progress_bar

            self._bar = progress_bar(total, unit="utt", desc="features", dynamic_ncols=True, smoothing=0.1)

    def update(self, n: int, failed: int = 0) -> None:
        if self._bar is None:
            return
        self._failed += failed
        if self._failed:
            self._bar.set_postfix(failed=self._failed, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


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


@dataclass
class StageSummary:
    """Counters of one stage in one run; `all_failures` covers every shard (from spec.json)."""

    slots: tuple[str, ...]
    extractor: str
    key: str
    n_shards: int
    cached_shards: int = 0
    computed_shards: int = 0
    items: int = 0
    ok: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> first utterance id
    bytes: int = 0
    decode_s: float = 0.0
    forward_s: float = 0.0
    task_s: float = 0.0
    dim: int | None = None
    layout: str | None = None
    all_failures: dict[str, int] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    n_items: int = 0  # utterances in the feature set (the manifest)
    corrupt_shards: int = 0  # found unusable and recomputed
    retried_shards: int = 0  # recomputed for their failed utterances (--retry-failed)

    def add(self, result: Any) -> None:
        """Fold in a ShardResult."""
        self.computed_shards += 1
        self.items += result.n
        self.ok += result.n_ok
        self.bytes += result.bytes
        self.decode_s += result.decode_s
        self.forward_s += result.forward_s
        self.task_s += result.total_s
        self.dim = result.dim
        self.layout = self.layout or result.layout
        if not self.provenance:
            self.provenance = {k: v for k, v in result.provenance.items() if k not in ("pid", "time")}
        for uid, reason in result.failures:
            cat = reason_category(reason)
            self.failures[cat] = self.failures.get(cat, 0) + 1
            self.examples.setdefault(cat, uid)

    @property
    def n_failed(self) -> int:
        return sum(self.failures.values())

    @property
    def n_failed_total(self) -> int:
        """Failed utterances in the whole feature set (cached shards included)."""
        return sum(self.all_failures.values())

    @property
    def all_failed(self) -> bool:
        return self.n_items > 0 and self.n_failed_total >= self.n_items


@dataclass
class RunSummary:
    dataset: str
    executor: str
    stages: dict[str, StageSummary] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def items(self) -> int:
        return sum(s.items for s in self.stages.values())

    @property
    def failed(self) -> int:
        return sum(s.n_failed for s in self.stages.values())

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.stages.values())

    @property
    def submitted_shards(self) -> int:
        return sum(s.computed_shards for s in self.stages.values())

    @property
    def throughput(self) -> float:
        """Utterances computed per second of wall time (whole run, start-up included)."""
        return self.items / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "executor": self.executor, "seconds": self.seconds, "items": self.items,
            "failed": self.failed, "bytes": self.bytes, "throughput": self.throughput,
            "stages": {k: {f: getattr(s, f) for f in ("slots", "extractor", "key", "n_shards", "cached_shards",
                                                       "computed_shards", "items", "ok", "failures", "all_failures",
                                                       "bytes", "decode_s", "forward_s", "task_s", "dim", "layout")}
                       for k, s in self.stages.items()},
        }

    def warnings(self) -> list[str]:
        """Slots where more than WARN_FAILED_SHARE of the utterances failed (but not all)."""
        out = []
        for s in self.stages.values():
            if s.n_items and not s.all_failed and s.n_failed_total > WARN_FAILED_SHARE * s.n_items:
                out.append(f"slot {','.join(s.slots)} ({s.extractor}): {s.n_failed_total} of {s.n_items} utterances "
                           f"({100 * s.n_failed_total / s.n_items:.1f}%) failed, more than {WARN_FAILED_SHARE:.0%}; "
                           f"the trainer masks them as missing. Check the corpus media ({command('prepare', '...', probe=True)}), "
                           "then rerun with --retry-failed")
        return out

    def check(self) -> None:
        """Raise MediaError naming every slot whose utterances all failed (its shards are kept, unlocked)."""
        from mer_pipe.common.errors import MediaError

        dead = [s for s in self.stages.values() if s.all_failed]
        if dead:
            what = "; ".join(f"slot {','.join(s.slots)} ({s.extractor}): all {s.n_items} utterances failed ("
                             + ", ".join(f"{r}: {n}" for r, n in sorted(s.all_failures.items(), key=lambda kv: -kv[1])[:3])
                             + ")" for s in dead)
            raise MediaError(f"{what}; the slot was not locked (its shards are kept). Fix the media (is --root / the "
                             f"corpus complete? `{command('prepare', '...', probe=True)}` lists bad files), then rerun "
                             "this command with --retry-failed")

    def format(self) -> str:
        """A table: one row per stage, then failures by reason, then totals."""
        rows = [("slot", "extractor", "key", "dim", "shards new/cached", "utts", "failed", "MB")]
        for s in self.stages.values():
            rows.append((",".join(s.slots), s.extractor, s.key, str(s.dim if s.dim is not None else "?"),
                         f"{s.computed_shards}/{s.cached_shards}", str(s.items), str(s.n_failed),
                         f"{s.bytes / 1e6:.2f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        for s in self.stages.values():
            counts = s.failures if s.computed_shards else s.all_failures
            for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]):
                eg = f" (e.g. {s.examples[reason]})" if reason in s.examples else ""
                when = "" if s.computed_shards else " [cached]"
                lines.append(f"  {','.join(s.slots)}: {n} failed: {reason}{eg}{when}")
            if s.corrupt_shards:
                lines.append(f"  {','.join(s.slots)}: {s.corrupt_shards} unusable shard(s) recomputed")
            if s.retried_shards:
                lines.append(f"  {','.join(s.slots)}: {s.retried_shards} shard(s) recomputed for their failed utterances")
        cached = sum(s.n_failed_total for s in self.stages.values())
        if cached:
            lines.append(f"{cached} failed utterance(s) are recorded in the cache; after fixing their media, rerun this "
                         "command with --retry-failed to re-extract only them")
        lines.append(
            f"{self.dataset}: {self.items} utterances extracted in {self.seconds:.1f} s "
            f"({self.throughput:.1f} utt/s, {self.executor}), {self.failed} failed, "
            f"{self.submitted_shards} shards written ({self.bytes / 1e6:.2f} MB)"
            + ("; everything was cached" if not self.submitted_shards else "")
        )
        return "\n".join(lines)
