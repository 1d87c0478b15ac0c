"""Atomic file writes: a crash or Ctrl-C never leaves a half-written result behind."""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["write_json", "write_text", "save_torch", "load_torch"]


def _atomic_target(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` via a temporary file and an atomic rename."""
    path = Path(path)
    fd, tmp = _atomic_target(path)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    write_text(path, json.dumps(payload, indent=2) + "\n")


def save_torch(path: str | Path, payload: Any) -> None:
    """``torch.save`` via a temporary file and an atomic rename."""
    path = Path(path)
    fd, tmp = _atomic_target(path)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_torch(path: str | Path, what: str) -> Any:
    """Load a file written by :func:`save_torch`; a missing file names what was expected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as error:  # torch reports a bad file in these
        raise ValueError(
            f"{what} file {path} cannot be read ({type(error).__name__}: {str(error)[:200]}): "
            "it is truncated or not a file spikeconv wrote"
        ) from error
