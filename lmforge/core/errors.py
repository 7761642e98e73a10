"""The project's own exceptions. The CLI maps them to exit codes."""


class LmforgeError(Exception):
    """Base class for errors a user can act on (printed without a traceback)."""

    exit_code = 1


class ConfigError(LmforgeError):
    """A config key, type or path is wrong. Raised before any work starts."""

    exit_code = 2


class DataError(LmforgeError):
    """Input data is unusable (for example nothing usable remains after reading)."""

    exit_code = 1


class EmptyCorpusError(DataError):
    """Cleaning removed every document; the flow stops before tokenizer training."""


class ArtifactError(LmforgeError):
    """An artifact is missing, unreadable, or fails verification."""

    exit_code = 1
