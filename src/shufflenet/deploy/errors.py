"""The error every deployment check raises, and how runtime exceptions are shortened into its messages."""

from __future__ import annotations

from pathlib import Path


class DeployError(ValueError):
    """A model, file or input that cannot be deployed as asked; the message says what to change."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def _describe(source: str | Path) -> str:
    return str(source)
