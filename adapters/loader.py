"""Resolve a model reference, load it with mlx-lm, and install the hidden-state taps.

A reference is one of: `default` (the embedded SmolLM2-135M-Instruct GGUF), a `.gguf` file,
an mlx-lm model folder, or a Hugging Face repo id already in the local cache (never downloaded).
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from . import BLAS
from .blas import check_matmul
from .families import Family, family_for, stop_token_ids
from .fingerprint import Fingerprint, fingerprint
from .taps import HiddenTaps, install_taps, transformer_blocks

PRECISIONS = ("auto", "float32", "native")


class ModelNotFound(ValueError):
    """The model reference names nothing loadable on this machine."""


@dataclass
class LoadedModel:
    """A model ready for generation with signals."""

    model_id: str
    path: Path
    model: nn.Module
    tokenizer: object  # mlx_lm.tokenizer_utils.TokenizerWrapper
    config: dict
    family: Family
    taps: HiddenTaps | None
    stop_ids: frozenset
    context_length: int | None
    dtype: str
    blas: str
    fingerprint: Fingerprint

    @property
    def n_layers(self) -> int:
        return len(transformer_blocks(self.model))


def use_float32(precision: str) -> bool:
    """Whether to run in float32: always for "float32"; for "auto" on Linux with OpenBLAS."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision == "auto":
        return sys.platform.startswith("linux") and BLAS == "openblas"
    return precision == "float32"


def _cached_repo_path(ref: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(ref, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError) as e:
        raise ModelNotFound(
            f"model {ref!r} not found: not 'default', a .gguf file, an mlx-lm model folder, "
            f"or a Hugging Face repo in the local cache (nothing is downloaded)"
        ) from e


def _model_id(ref: str, path: Path) -> str:
    if path.suffix == ".gguf":
        return path.stem
    parts = path.resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3][len("models--"):].replace("--", "/")
    if not Path(ref).exists():
        return ref  # a repo id from the local cache
    return path.name


def describe_dtype(model: nn.Module) -> str:
    """'float32', 'bfloat16', … or 'q4 (group 32)' for quantized models."""
    for _, m in model.named_modules():
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            return f"q{m.bits} (group {m.group_size})"
    for _, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            return str(m.weight.dtype).removeprefix("mlx.core.")
    return "unknown"


def _to_float32(model: nn.Module) -> None:
    from mlx_lm.utils import dequantize_model

    dequantize_model(model)
    model.set_dtype(mx.float32)
    mx.eval(model.parameters())


def load(ref: str = "default", precision: str = "auto", with_taps: bool = True) -> LoadedModel:
    """Load `ref` and install the taps (unless `with_taps` is False: a plain model for baselines).

    Raises ModelNotFound when `ref` names nothing loadable.
    """
    from mlx_lm.utils import load as mlx_load

    from .gguf import embedded_model_path, load_gguf

    f32 = use_float32(precision)
    if f32 and BLAS == "openblas":
        check_matmul()
    path = embedded_model_path() if ref == "default" else Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFound(f"model {ref!r} not found: no such .gguf file")
        model, tokenizer, config = load_gguf(path, dequantize=f32)
    else:
        if not path.exists():
            path = _cached_repo_path(ref)
        elif not (path / "config.json").is_file():
            raise ModelNotFound(f"model {ref!r} not found: {path} has no config.json")
        model, tokenizer, config = mlx_load(str(path), return_config=True)
        if f32:
            _to_float32(model)
    family = family_for(config.get("model_type", ""))
    return LoadedModel(
        model_id=_model_id(ref, path),
        path=path,
        model=model,
        tokenizer=tokenizer,
        config=config,
        family=family,
        taps=install_taps(model) if with_taps else None,
        stop_ids=stop_token_ids(family, tokenizer),
        context_length=config.get("max_position_embeddings"),
        dtype=describe_dtype(model),
        blas=BLAS,
        fingerprint=fingerprint(path, config, len(transformer_blocks(model))),
    )
