"""Corpus wing: what utterances exist. Manifest (schema, read/write, digest), recipes that read MELD.Raw,
IEMOCAP or a JSONL manifest into it, `prepare` (validate, report, write to the cache), media probing,
and synthetic corpora with planted cues. Imports nothing from the other wings."""
