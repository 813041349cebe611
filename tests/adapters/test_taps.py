"""The hidden-state taps record exactly the block outputs, and change nothing else."""

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import load as mlx_load
from mlx_lm.models.base import create_attention_mask

from adapters.loader import load
from adapters.taps import install_taps


def test_taps_equal_a_manual_walk_of_llama_blocks(tiny_model_path):
    # Walking the blocks by hand is valid for plain llama (one causal mask), so it can check the taps.
    path = str(tiny_model_path("llama"))
    lm = load(path, precision="native")
    ids = mx.array([[5, 17, 42, 99, 7, 23, 64, 11]])
    logits = lm.model(ids)
    tapped = np.array(lm.taps.stacked()[0])
    inner = lm.model.model
    h = inner.embed_tokens(ids)
    mask = create_attention_mask(h, None)
    manual = []
    for block in inner.layers:
        h = block(h, mask, None)
        manual.append(np.array(h[0, -1]))
    np.testing.assert_array_equal(tapped, np.array(manual))
    plain, _ = mlx_load(path)
    np.testing.assert_array_equal(np.array(logits), np.array(plain(ids)))


def test_taps_install_once(tiny_model_path):
    lm = load(str(tiny_model_path("qwen2")), precision="native")
    with pytest.raises(RuntimeError, match="already installed"):
        install_taps(lm.model)
