"""Errors that mean "the input is wrong": the CLI prints their message as one line and exits 2."""


class PwmError(Exception):
    """Base class for user-facing errors. The message says what is wrong and what to do."""


class DatasetError(PwmError):
    """A dataset that is missing, foreign, of a newer format, or inconsistent."""


class EnvError(PwmError):
    """An environment that cannot be built or driven as asked."""
