"""Tamper evidence for run dirs: what `train` wrote is recorded when the run finishes, and `runs`, `runs compare`
and `evaluate` check the files against it.

Two records, written by report.write_run in this order (metrics.json last, so a run whose checkpoint or
metrics write failed never claims `"complete": true`):

* checkpoint.pt `record`: the metrics dict (metrics.json without `files`/`digest`), the full text of
  predictions.csv and the sha256 of config.yaml and predictions.csv. `evaluate` compares metrics.json and
  predictions.csv with it and names the first differing field or cell.
* metrics.json `files`: sha256 of every other run file (checkpoint.pt included) and `digest`: sha256 of
  metrics.json's own content without the digest (canonical JSON). `runs` and `runs compare` check these
  cheaply, without loading torch.

This detects edits, truncation and bit rot. It is not a signature: someone who rewrites a file and its
records consistently is not caught (the checkpoint's copy of the metrics still catches an edit of metrics.json
alone).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any

from mer_pipe.common.files import sha256_file

FILES_KEY = "files"
DIGEST_KEY = "digest"
FIGURES = ("confusion.png", "per_class_f1.png", "curves.png")
CHECKED = ("config.yaml", "predictions.csv", "checkpoint.pt", *FIGURES)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def metrics_digest(metrics: dict[str, Any]) -> str:
    """sha256 of metrics.json's content without its digest (sorted keys; floats as JSON writes them)."""
    body = {k: v for k, v in metrics.items() if k != DIGEST_KEY}
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())


def plain_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics as metrics.json holds them (tuples as lists), without the integrity keys."""
    body = {k: v for k, v in metrics.items() if k not in (FILES_KEY, DIGEST_KEY)}
    return json.loads(json.dumps(body, ensure_ascii=False))


def file_problems(run_dir: Path, met: dict[str, Any]) -> list[str]:
    """What no longer matches metrics.json's records: '<file> missing' / '<file> changed since written'.
    Runs written before the records existed have none and give no problems."""
    problems = []
    if isinstance(met.get(DIGEST_KEY), str) and met[DIGEST_KEY] != metrics_digest(met):
        problems.append("metrics.json edited since written (digest differs)")
    files = met.get(FILES_KEY)
    for name, sha in (files.items() if isinstance(files, dict) else ()):
        if name not in CHECKED or not isinstance(sha, str):
            continue
        path = Path(run_dir) / name
        if not path.is_file():
            problems.append(f"{name} missing")
        elif sha256_file(path) != sha:
            problems.append(f"{name} changed since written (sha256 differs)")
    return problems


def describe_problems(problems: list[str]) -> str:
    return "MODIFIED: " + ", ".join(problems) + " (corrupted, a failed write, or edited)"


def _first_difference(got: Any, want: Any, where: str = "") -> tuple[str, Any, Any] | None:
    """(dotted path, value in the file, recorded value) of the first difference, depth first in recorded order."""
    if isinstance(want, dict) and isinstance(got, dict):
        for k in [*want, *(k for k in got if k not in want)]:
            sub = f"{where}.{k}" if where else str(k)
            if k not in got or k not in want:
                return sub, got.get(k, "<absent>"), want.get(k, "<absent>")
            d = _first_difference(got[k], want[k], sub)
            if d:
                return d
        return None
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return f"{where} (length)", len(got), len(want)
        for i, (g, w) in enumerate(zip(got, want)):
            d = _first_difference(g, w, f"{where}[{i}]")
            if d:
                return d
        return None
    same = got == want or (isinstance(got, float) and isinstance(want, float) and math.isnan(got) and math.isnan(want))
    return None if same and type(got) is type(want) else (where, got, want)


def metrics_difference(met: dict[str, Any], recorded: dict[str, Any]) -> str | None:
    """'metrics.json: aggregate.test.weighted_f1.mean is 0.9, the checkpoint recorded 0.61' or None."""
    d = _first_difference(plain_metrics(met), recorded)
    if d is None:
        return None
    return f"metrics.json: {d[0]} is {d[1]!r}, the checkpoint recorded {d[2]!r}"


def predictions_difference(text: str, recorded: str) -> str | None:
    """'predictions.csv: row 3 (seed 0, id d1_u2) column predicted is 'joy', the checkpoint recorded 'anger'' or None."""
    if text == recorded:
        return None
    got, want = list(csv.reader(io.StringIO(text))), list(csv.reader(io.StringIO(recorded)))
    head = want[0] if want else []
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            if i == 0 or len(g) != len(w):
                return f"predictions.csv: line {i + 1} has {len(g)} cells, the checkpoint recorded {len(w)} ({w[:4]}...)"
            j = next(j for j, (a, b) in enumerate(zip(g, w)) if a != b)
            row = dict(zip(head, w))
            return (f"predictions.csv: row {i} (seed {row.get('seed')}, id {row.get('id')}) column {head[j]} is "
                    f"{g[j]!r}, the checkpoint recorded {w[j]!r}")
    if len(got) != len(want):
        return f"predictions.csv: {len(got) - 1} rows, the checkpoint recorded {len(want) - 1}"
    return "predictions.csv: bytes differ from the checkpoint's record (line endings or encoding)"
