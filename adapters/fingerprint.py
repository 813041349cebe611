"""A model's fingerprint: what calibrated params, probes and score checkpoints are bound to.

Architecture, block count, hidden size and vocabulary size say whether a probe or threshold can
apply at all; the weights digest tells two models of the same shape apart (a fine-tune, another
quantization). The digest reads each weights file's size and its first and last MiB (a header of
names, shapes and offsets, then data), so it is the same whatever the folder is called or the
precision it runs in, and costs milliseconds even for a 7B model.
"""

import hashlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

CHUNK = 1 << 20
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".npz")


@dataclass(frozen=True)
class Fingerprint:
    model_type: str
    blocks: int
    hidden_size: int
    vocab_size: int
    weights: str  # weights_digest of the weights files

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Fingerprint":
        """From a params file's `model_fingerprint`; ValueError when a field is missing or mistyped."""
        if not isinstance(data, dict):
            raise ValueError("model_fingerprint is missing" if data is None else "model_fingerprint is not an object")
        for f in fields(cls):
            kind = f.type
            if type(data.get(f.name)) is not kind:
                raise ValueError(f"model_fingerprint.{f.name} is missing or not a {kind.__name__}")
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    @property
    def id(self) -> str:
        """A short stable name for file names and pointers (16 hex digits)."""
        text = "|".join(str(getattr(self, f.name)) for f in fields(self))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def mismatch(self, other: "Fingerprint") -> str | None:
        """Which fields differ ("blocks 3 ≠ 4, ..."), or None when they are the same model."""
        diffs = [f"{f.name} {getattr(other, f.name)} ≠ {getattr(self, f.name)}"
                 for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]
        return ", ".join(diffs) or None


def weights_files(path: Path) -> list:
    """The files holding a model's weights: the .gguf itself, or a folder's weight files."""
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)


def weights_digest(files: list) -> str:
    """SHA-256 over each file's size, first MiB and last MiB, in order."""
    h = hashlib.sha256()
    for path in files:
        size = Path(path).stat().st_size
        h.update(size.to_bytes(8, "little"))
        with open(path, "rb") as f:
            h.update(f.read(CHUNK))
            f.seek(max(size - CHUNK, 0))
            h.update(f.read(CHUNK))
    return h.hexdigest()


def _config_int(config: dict, key: str) -> int:
    """`key` of a model config, or of its `text_config` (multimodal families nest it there)."""
    value = config.get(key, (config.get("text_config") or {}).get(key))
    return int(value) if value is not None else -1


def fingerprint(path: Path, config: dict, blocks: int) -> Fingerprint:
    """The fingerprint of a model loaded from `path` with this config and number of blocks."""
    return Fingerprint(str(config.get("model_type", "")), blocks, _config_int(config, "hidden_size"),
                       _config_int(config, "vocab_size"), weights_digest(weights_files(path)))
