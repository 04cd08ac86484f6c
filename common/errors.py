"""One exception family. The CLI turns any `MerPipeError` into a one-line message and exit code 2.

Messages name the bad value (file, utterance id, option), the choices where there are some,
and the fix.
"""


class MerPipeError(Exception):
    """Base class for every user-facing error; never raised for programming bugs."""


class ConfigError(MerPipeError):
    """A bad option, preset or configuration value."""


class ManifestError(MerPipeError):
    """A manifest row or corpus layout that cannot be read."""


class MediaError(MerPipeError):
    """A media file that is missing or cannot be decoded (recorded per utterance, fatal with --strict)."""


class ModelLoadError(MerPipeError):
    """Extractor weights that cannot be loaded (hub id offline, wrong local path)."""


class CacheError(MerPipeError):
    """Missing, corrupt or mismatched feature sets, lock files or checkpoints."""


class DiskFullError(MerPipeError):
    """ENOSPC while writing a file: names the file; what was written before is kept."""


class FeaturesMissing(CacheError):
    """A dataset slot has no usable feature set. Structured so the pipeline can add the command that
    builds it; the cache's own message says only what is wrong."""

    def __init__(self, dataset: str, slot: str, detail: str) -> None:
        super().__init__(detail)
        self.dataset, self.slot, self.detail = dataset, slot, detail


class CorruptShard(CacheError):
    """A shard that cannot be opened or fails its checksum. Carries the path so a feature run can
    treat it as missing and recompute it."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(detail)
        self.path, self.detail = path, detail
