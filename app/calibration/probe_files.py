"""Probe files: a probe (signals/probe.py) saved beside its params file, checked by SHA-256."""

import hashlib
from pathlib import Path

from signals.probe import Probe, ProbeError, from_bytes, to_bytes

from ..storage import write_bytes_atomic


def save_probe(probe: Probe, path: Path) -> str:
    """Write `probe` to `path` (.npz) atomically; return the file's SHA-256 hex digest."""
    data = to_bytes(probe)
    write_bytes_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def load_probe(path: Path, sha256: str) -> Probe:
    """Read a probe file; ProbeError if it is missing, malformed, or its SHA-256 is not `sha256`."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ProbeError(f"probe file {path}: cannot read ({e.strerror or e})") from e
    return from_bytes(data, sha256, str(path))
