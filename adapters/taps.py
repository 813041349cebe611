"""Capture the last-position output of every transformer block during a normal forward call.

MLX has no forward hooks, so each block's `__class__` is swapped, once at load, for a subclass
whose `__call__` calls the original and records `out[:, -1, :]`. The model is then called as
usual (its own masks, caches and heads), so tokens and logits are unchanged.
"""

import mlx.core as mx
import mlx.nn as nn


class HiddenTaps:
    """The recorded block outputs of the latest forward call: per block (B, D) at the last
    position, or (B, T, D) at every position while `all_positions` is set."""

    def __init__(self, n_blocks: int):
        self.states: list = [None] * n_blocks
        self.all_positions = False

    def stacked(self) -> mx.array:
        """Block outputs stacked on a new second-to-last axis: (B, L, D) or (B, T, L, D)."""
        return mx.stack(self.states, axis=-2)


def transformer_blocks(model: nn.Module) -> list:
    """The model's transformer blocks, in order (mlx-lm models expose them as `model.layers`)."""
    blocks = getattr(model, "layers", None)
    if not blocks:
        raise ValueError(f"{type(model).__module__} exposes no transformer blocks as `model.layers`")
    return list(blocks)


def _recording_class(base: type, taps: HiddenTaps, index: int) -> type:
    def __call__(self, *args, **kwargs):
        out = base.__call__(self, *args, **kwargs)
        h = out[0] if isinstance(out, tuple) else out
        taps.states[index] = h if taps.all_positions else h[:, -1, :]
        return out

    return type(base.__name__, (base,), {"__call__": __call__, "_halluwatch_tap": index})


def install_taps(model: nn.Module) -> HiddenTaps:
    """Make every block of `model` record its last-position output; call once per model."""
    blocks = transformer_blocks(model)
    if any(hasattr(type(b), "_halluwatch_tap") for b in blocks):
        raise RuntimeError("hidden-state taps are already installed on this model")
    taps = HiddenTaps(len(blocks))
    for i, block in enumerate(blocks):
        block.__class__ = _recording_class(type(block), taps, i)
    return taps
