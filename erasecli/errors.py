"""Typed errors. The library raises these and never exits; `cli.main()` prints one line and exits 1."""

from __future__ import annotations


class EraseError(Exception):
    """An error a user can fix. `hint` says how, in one short sentence."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        msg = " ".join(str(self).split())
        return f"{msg} ({self.hint})" if self.hint else msg


class UsageError(EraseError):
    """Arguments that cannot work together or are malformed; exit code 2."""

    exit_code = 2


class RecipeError(EraseError):
    """A recipe file or --set override that is malformed, has unknown keys, wrong types or bad values."""


class BaseNotFoundError(EraseError):
    """Base model weights that are neither bundled, in a local folder, nor in the local HF cache."""


class DeltaError(EraseError):
    """A delta folder that is missing, malformed, or made for another base."""


class OutputExistsError(EraseError):
    """An output folder that already exists and would be overwritten."""
