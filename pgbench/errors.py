"""Errors meant for users: the CLI prints them as one line, without a traceback."""


class PgbenchError(Exception):
    """Base class for errors caused by user input rather than by a bug."""


class ConfigError(PgbenchError):
    """A configuration key or value is invalid."""


class DataError(PgbenchError):
    """A data file or dataset cannot be used."""


class TrainingError(PgbenchError):
    """Training cannot go on (e.g. too many consecutive non-finite steps)."""
