"""Atomic file writes (a crash or Ctrl-C never leaves a half-written result behind) and
content fingerprints (what a resumed run checks it continues)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["fingerprint", "load_torch", "save_torch", "write_bytes", "write_json", "write_text", "write_with"]


def _atomic_target(path: Path) -> tuple[int, str]:
    """A temporary file beside ``path``, with the permissions a plain ``open`` would give
    (mkstemp makes it 0600, which a rename would carry over to the result)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, tmp


def write_with(path: str | Path, writer: Callable[[str], object]) -> None:
    """Let ``writer`` write a temporary file beside ``path`` (it gets the file's name), then
    rename it onto ``path`` atomically; nothing is left behind when ``writer`` fails."""
    path = Path(path)
    fd, tmp = _atomic_target(path)
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` via a temporary file and an atomic rename."""
    write_with(path, lambda tmp: Path(tmp).write_text(text))


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` via a temporary file and an atomic rename."""
    write_with(path, lambda tmp: Path(tmp).write_bytes(data))


def write_json(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    write_text(path, json.dumps(payload, indent=2) + "\n")


def save_torch(path: str | Path, payload: Any) -> None:
    """``torch.save`` via a temporary file and an atomic rename."""
    write_with(path, lambda tmp: torch.save(payload, tmp))


def load_torch(path: str | Path, what: str) -> Any:
    """Load a file written by :func:`save_torch` with ``weights_only=True`` (plain data and
    tensors only: no code in the file runs); a missing file names what was expected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower():
            raise ValueError(
                f"{what} file {path} holds pickled Python objects, which spikeconv does not load "
                "(torch.load(weights_only=True), so a file from someone else cannot run code): it was written by "
                "another program or an older spikeconv; write it again with this spikeconv"
            ) from error
        raise _unreadable(path, what, error) from error
    except (EOFError, RuntimeError) as error:  # torch reports a bad file in these
        raise _unreadable(path, what, error) from error


def _unreadable(path: Path, what: str, error: Exception) -> ValueError:
    return ValueError(
        f"{what} file {path} cannot be read ({type(error).__name__}: {str(error)[:200]}): "
        "it is truncated or not a file spikeconv wrote"
    )


def fingerprint(value: Any) -> str:
    """A SHA-256 digest (16 hex digits) of ``value``'s content: tensors (dtype, shape and
    bytes), mappings (in key order), sequences, strings and numbers. Two runs with equal
    fingerprints saw the same model weights, data and settings."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()[:16]


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        digest.update(f"tensor {t.dtype} {tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)};".encode())
        for key in sorted(value, key=str):
            _feed(digest, str(key))
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"seq {len(value)};".encode())
        for item in value:
            _feed(digest, item)
    else:
        digest.update(f"{type(value).__name__} {value!r};".encode())
