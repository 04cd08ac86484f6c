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
