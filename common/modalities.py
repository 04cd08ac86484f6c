"""The three modalities and their one-letter names, used by slots, batches and models."""

MODALITIES = ("t", "a", "v")
MODALITY_NAMES = {"t": "text", "a": "audio", "v": "video"}
