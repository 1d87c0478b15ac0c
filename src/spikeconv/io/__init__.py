"""Reading and writing: atomic result files and content fingerprints (:mod:`.files`)."""

from .files import (
    fingerprint,
    load_torch,
    save_torch,
    write_bytes,
    write_json,
    write_text,
    write_with,
)

__all__ = ["fingerprint", "load_torch", "save_torch", "write_bytes", "write_json", "write_text", "write_with"]
