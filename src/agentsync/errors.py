"""Errors that carry a message meant for the user, not a traceback."""


class ConfigError(ValueError):
    """Bad user input: the CLI prints it as one line and exits with code 2."""


class JobFailed(RuntimeError):
    """A training job ended early; the message names the rank that caused it."""
