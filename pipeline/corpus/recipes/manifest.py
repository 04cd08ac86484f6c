"""User recipe: any corpus described by a JSONL manifest in the contract schema (docs/contracts.md).

`mer-pipe prepare manifest --manifest FILE --root DIR`: media paths in FILE are relative to DIR
(default: the folder holding FILE). Missing media are reported and set to null, like the other recipes.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from mer_pipe.common.errors import ConfigError

from ..manifest import Utterance, read_manifest
from .base import Recipe

LAYOUT = "a JSONL file given with --manifest (one row per utterance, docs/contracts.md), media relative to --root"


def collect(root: Path, report, probe: bool = False, manifest_file=None) -> list[Utterance]:
    from ..probe import probe_media

    if manifest_file is None:
        raise ConfigError("recipe 'manifest' needs --manifest FILE (a JSONL in the schema of docs/contracts.md)")
    utts = read_manifest(Path(manifest_file).expanduser())
    out: list[Utterance] = []
    probed: dict[tuple[str, str], str | None] = {}
    for u in utts:
        changes = {}
        for kind in ("video", "audio"):
            path = getattr(u, kind)
            if path is None:
                continue
            if not (root / path).is_file():
                report.missing(u.id, kind, path)
                changes[kind] = None
                changes[f"{kind}_segment"] = None
            elif probe:
                key = (kind, path)
                if key not in probed:  # dialog-level files are shared by many utterances
                    probed[key] = probe_media(root / path, need_video=kind == "video", need_audio=kind == "audio")
                if probed[key]:
                    report.bad(u.id, path, probed[key])
        if not u.text.strip():
            report.empty_texts.append(u.id)
        out.append(dataclasses.replace(u, **changes) if changes else u)
    return out


RECIPE = Recipe(name="manifest", labels=(), layout=LAYOUT, collect=collect)
