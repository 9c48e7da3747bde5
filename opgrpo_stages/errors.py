"""Errors a user can act on: each names the file, key or value and what was expected."""


class OpgrpoError(Exception):
    """Base class for every error the pipeline raises on bad input."""


class ConfigError(OpgrpoError, ValueError):
    """The configuration has an unknown key, a wrong type or an out-of-range value."""


class ArtifactError(OpgrpoError, ValueError):
    """A file between stages is missing, truncated, or does not match its schema."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ModelPathError(OpgrpoError, FileNotFoundError):
    """A real model's weights are missing at the configured local path."""
