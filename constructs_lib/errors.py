"""The one error type the library raises for bad settings or bad inputs."""

from __future__ import annotations


class ConfigurationError(ValueError):
    """A setting or an input file is not usable.

    The message names where the problem is (the environment and the field, or
    the file), the value that was received, and what is allowed instead.
    ``main.py`` prints it as one line and exits non-zero without touching the
    previously rendered ``dist/``.
    """

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")
