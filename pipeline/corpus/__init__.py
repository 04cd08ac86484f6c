"""Corpus wing: what utterances exist. Manifest (schema, read/write, digest), recipes that read MELD.Raw,
IEMOCAP or a JSONL manifest into it (the recipe registry), `prepare` (validate, report, write to the cache), media
probing, synthetic corpora with planted cues, and the hints that errors quote (hints.py: the dataset-name rule and
the commands, built by common/commands.py). Imports nothing from the other wings."""
