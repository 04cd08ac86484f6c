"""Feature presets: which extractor and config fills each slot. Every default lives here.

`offline` runs anywhere without downloads: the packaged all-MiniLM-L6-v2 for text, openSMILE
eGeMAPSv02 for audio, and tiny randomly initialised Swin / wav2vec2 checkpoints (created on first use
under `<cache>/_weights/`). The tiny ones are PLUMBING, not research features: they exercise the exact
code path real checkpoints take. `paper` names the encoders the published models use (RoBERTa-large,
wav2vec2-base as DeepMSI's audio, eGeMAPS, Swin-base); they need downloaded weights or local paths.

Per-slot overrides come from the CLI as `--set SLOT.KEY=VALUE` (VALUE parsed as YAML: 3, true, null);
`--set SLOT.extractor=NAME` swaps the extractor (and clears the preset's config for that slot),
which is also how a new slot is added. `--only t,a` keeps a subset.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Sequence

from mer_pipe.common.config import parse_overrides
from mer_pipe.common.errors import ConfigError

DEFAULT_PRESET = "offline"
TINY_PREFIX = "tiny:"  # a config value "tiny:swin" means "the tiny checkpoint under <cache>/_weights/"
WEIGHTS_DIR = "_weights"
_SLOT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class SlotSpec:
    """One slot of a feature run: the extractor's registered name and its (unresolved) config.

    batch_size is a run setting (never hashed): utterances per forward pass.
    """

    slot: str
    extractor: str
    config: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 16
    note: str = ""
    # fine-tune stage (pipeline/extract/finetune.py): None = the frozen encoder; a mapping of
    # FinetuneConfig options (possibly empty) = fine-tune it first. `upstream` and `inputs` are filled
    # when the plan binds the slot to its fine-tune: the fine-tune key and the encoder input format.
    finetune: Mapping[str, Any] | None = None
    upstream: str | None = None
    inputs: Mapping[str, Any] = field(default_factory=dict)


PRESETS: dict[str, tuple[SlotSpec, ...]] = {
    "offline": (
        SlotSpec("t", "text-hf", {}, 64, "all-MiniLM-L6-v2 (packaged, offline)"),
        SlotSpec("a", "opensmile", {}, 16, "openSMILE eGeMAPSv02 functionals"),
        SlotSpec("v", "swin", {"model": "tiny:swin"}, 8, "tiny Swin: plumbing, not research features"),
        SlotSpec("a_w2v", "wav2vec2", {"model": "tiny:wav2vec2"}, 8, "tiny wav2vec2: plumbing, not research features"),
    ),
    "paper": (
        SlotSpec("t", "text-hf", {"model": "FacebookAI/roberta-large"}, 32, "RoBERTa-large (hub id or local dir)"),
        SlotSpec("a", "opensmile", {}, 16, "openSMILE eGeMAPSv02 functionals"),
        SlotSpec("a_w2v", "wav2vec2", {"model": "facebook/wav2vec2-base"}, 8, "wav2vec2-base (DeepMSI's audio)"),
        SlotSpec("v", "swin", {"model": "microsoft/swin-base-patch4-window7-224"}, 8, "Swin-base, 15 frames"),
    ),
    # DeepMSI-MER's pipeline: BERT and wav2vec 2.0 fine-tuned on the emotion labels (their features feed
    # the model), openSMILE functionals, frozen Swin frames. Hub ids: pass local dirs offline.
    "deepmsi": (
        SlotSpec("t", "text-hf", {"model": "google-bert/bert-base-uncased"}, 32,
                 "BERT-base fine-tuned on the train labels", finetune={}),
        SlotSpec("a", "opensmile", {}, 16, "openSMILE eGeMAPSv02 functionals"),
        SlotSpec("a_w2v", "wav2vec2", {"model": "facebook/wav2vec2-base"}, 8,
                 "wav2vec2-base fine-tuned on the train labels", finetune={"batch_size": 8, "lr": 3e-5}),
        SlotSpec("v", "swin", {"model": "microsoft/swin-base-patch4-window7-224"}, 8, "Swin-base, 15 frames (frozen)"),
    ),
}


def _tiny_builders() -> dict[str, Callable[[Path], Path]]:
    from mer_pipe.extractors import tiny

    return {"swin": tiny.ensure_tiny_swin, "wav2vec2": tiny.ensure_tiny_wav2vec2, "text": tiny.ensure_tiny_text}


def preset_slots(name: str) -> tuple[SlotSpec, ...]:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown --preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def parse_override(text: str) -> tuple[str, str, Any]:
    """'t.model=/path' -> ('t', 'model', '/path'), through the CLI's one KEY=VALUE parser (common/config.py)."""
    head = text.partition("=")[0].strip()
    if "." not in head or "=" not in text:
        raise ConfigError(
            f"--set {text!r} is not SLOT.KEY=VALUE; e.g. --set t.model=/path/to/roberta-large, "
            "--set a.extractor=wav2vec2, --set v.batch_size=4"
        )
    (slot, opts), = parse_overrides([text]).items()
    if not _SLOT_RE.match(slot):
        raise ConfigError(f"--set {text!r}: slot name {slot!r} must be letters, digits and _ (e.g. t, a, v, a_w2v)")
    (key, value), = opts.items()
    return slot, key, value


def parse_only(only: str | Sequence[str] | None) -> list[str] | None:
    """'t,a' or ['t', 'a'] -> ['t', 'a']; None or '' -> None (all slots)."""
    if only is None:
        return None
    parts = only.split(",") if isinstance(only, str) else [p for o in only for p in o.split(",")]
    names = [p.strip() for p in parts if p.strip()]
    return names or None


def resolve_slots(
    preset: str | None = None,
    only: str | Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    *,
    cache_root: str | Path | None = None,
    media: Collection[str] | None = None,
    on_skip: Callable[[str], None] | None = None,
) -> list[SlotSpec]:
    """Preset slots with overrides applied, filtered by `only`, tiny checkpoints materialised.

    Tiny checkpoints ("tiny:NAME" values) are built once under `<cache_root>/_weights/tiny-NAME`.
    `media`: the modalities the manifest has files for; slots of any other modality are dropped (before any
    checkpoint is built) with one line each to `on_skip`, so a text-only corpus locks no audio/video slot.
    """
    slots: dict[str, SlotSpec] = {s.slot: s for s in preset_slots(preset or DEFAULT_PRESET)}
    for text in overrides:
        slot, key, value = parse_override(text)
        current = slots.get(slot)
        if key == "extractor":
            if not isinstance(value, str):
                raise ConfigError(f"--set {text!r}: extractor must be a registered name (e.g. text-hf, wav2vec2)")
            slots[slot] = SlotSpec(slot, value, {}, current.batch_size if current else 16, "set on the command line")
            continue
        if current is None:
            raise ConfigError(
                f"--set {text!r}: slot {slot!r} is not in preset {preset or DEFAULT_PRESET!r} "
                f"(slots: {', '.join(slots)}); add it first with --set {slot}.extractor=NAME"
            )
        if key == "finetune":
            slots[slot] = replace(current, finetune=merge_finetune(text, current.finetune, value))
            continue
        if key == "batch_size":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"--set {text!r}: batch_size must be a positive integer")
            slots[slot] = replace(current, batch_size=value)
        else:
            slots[slot] = replace(current, config={**current.config, key: value})

    wanted = parse_only(only)
    if wanted is not None:
        unknown = [s for s in wanted if s not in slots]
        if unknown:
            raise ConfigError(f"--only {','.join(unknown)}: no such slot; choose from: {', '.join(slots)}")
        chosen = [slots[s] for s in dict.fromkeys(wanted)]
    else:
        chosen = list(slots.values())
    if media is not None:
        chosen = _with_media(chosen, media, on_skip or (lambda line: None))
    return [materialise_tiny(s, cache_root) for s in chosen]


def _with_media(slots: list[SlotSpec], media: Collection[str], on_skip: Callable[[str], None]) -> list[SlotSpec]:
    from mer_pipe.extractors import EXTRACTORS

    kept = []
    for s in slots:
        modality = EXTRACTORS.get(s.extractor).modality
        if modality in media:
            kept.append(s)
        else:
            on_skip(f"skipped slot {s.slot} ({s.extractor}): the manifest has no {modality} files")
    if not kept:
        raise ConfigError(f"no selected slot has media in this manifest (it has {', '.join(sorted(media))} only); "
                          "choose a slot of that modality, e.g. --only t")
    return kept


def merge_finetune(text: str, current: Mapping[str, Any] | None, value: Any) -> Mapping[str, Any] | None:
    """`SLOT.finetune=true|false` switches the fine-tune stage on (default settings) or off;
    `SLOT.finetune.KEY=VALUE` sets one option (and switches it on). Options are checked when planned."""
    if isinstance(value, bool):
        return (dict(current or {})) if value else None
    if isinstance(value, Mapping):
        return {**(current or {}), **value}
    raise ConfigError(f"--set {text!r}: finetune takes true/false, or options as SLOT.finetune.KEY=VALUE "
                      "(e.g. --set t.finetune=true --set t.finetune.epochs=3)")


def weights_dir(cache_root: str | Path | None = None) -> Path:
    from mer_pipe.pipeline.corpus.manifest import cache_root as _root

    return _root(cache_root) / WEIGHTS_DIR


def materialise_tiny(spec: SlotSpec, cache_root: str | Path | None = None) -> SlotSpec:
    """Replace "tiny:NAME" config values by the path of that tiny checkpoint (built on first use)."""
    tiny = {k: v for k, v in spec.config.items() if isinstance(v, str) and v.startswith(TINY_PREFIX)}
    if not tiny:
        return spec
    builders = _tiny_builders()
    config = dict(spec.config)
    for k, v in tiny.items():
        name = v[len(TINY_PREFIX):]
        if name not in builders:
            raise ConfigError(f"slot {spec.slot!r}: {k}={v!r} names no tiny checkpoint; choose one of: "
                              + ", ".join(TINY_PREFIX + b for b in builders))
        config[k] = str(builders[name](weights_dir(cache_root) / f"tiny-{name}"))
    return replace(spec, config=config)
