"""Errors a user can fix. The CLI prints their message and exits without a traceback."""

from __future__ import annotations


class LocaltrainError(Exception):
    """A problem with the user's input or machine.

    The message is one paragraph that names the input, says what is wrong with it and
    what to do about it.
    """

    exit_code = 2


class ConfigError(LocaltrainError):
    """One or more problems with the configuration, reported together."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        head = "1 problem" if count == 1 else f"{count} problems"
        body = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"The configuration has {head}:\n{body}")


class DataError(LocaltrainError):
    """The corpus cannot be read, is empty, or is too small for the configuration."""


class CheckpointError(LocaltrainError):
    """No usable checkpoint where one was asked for."""


class PeerFailed(LocaltrainError):
    """Another process of a torchrun job stopped on an error, which that process reported."""
