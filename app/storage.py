"""Files that are never left half-written: write a temp file, fsync, rename."""

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path):
    """A temporary path beside `path` to write to; when the block ends without error the file is
    fsynced and renamed over `path`, otherwise removed (the old file stays intact either way)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, text: str) -> Path:
    """Replace `path` with `text` atomically (the old file stays intact until the rename)."""
    return write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Replace `path` with `data` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: Path, data) -> Path:
    """`write_atomic` for JSON (indented, UTF-8 kept readable)."""
    return write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
