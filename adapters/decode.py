"""What generation and scoring share: the per-step record, chunked prefill, and
scoring a given response (teacher forcing). Generation itself is `adapters.batching`.
"""

from dataclasses import dataclass
from collections.abc import Callable

import mlx.core as mx
import numpy as np
from mlx_lm.generate import generation_stream, wired_limit
from mlx_lm.models.cache import make_prompt_cache

from .loader import LoadedModel

# reduce(logprobs (B, V) float32, or None where the step's reductions are made on the host, hidden (B, L, D),
#        token (B,), prev_final (B, D) or None) -> (B, F): on the device
Reduce = Callable[[mx.array | None, mx.array, mx.array, mx.array | None], mx.array]
# host_reduce(logprobs (B, V) float32, token (B,), hidden (B, L, D) float32, prev_final (B, D) float32 or None)
#             -> (B, K): in NumPy on the host (RawStep.rows)
HostReduce = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]
HOST_CHUNK = 64  # positions of a scored response whose logits go to the host at once


def reductions_on_host() -> bool:
    """Whether a step's reductions are cheaper in NumPy on the host: where MLX computes on the CPU,
    its `exp` goes element by element (~20 ns each on x86), NumPy's is vectorised (~1 ns), and each
    of the thirty small MLX operations over the block outputs costs more than its NumPy twin."""
    return mx.default_device() == mx.cpu


def host_log_softmax(logits: np.ndarray) -> np.ndarray:
    """The float32 log-softmax along the last axis, in NumPy: logits less their logsumexp, as
    mlx-lm computes it (equal to its values up to float rounding)."""
    top = logits.max(axis=-1, keepdims=True)
    return logits - (top + np.log(np.exp(logits - top).sum(axis=-1, keepdims=True)))


def host_logprobs(logits: np.ndarray, token: np.ndarray, top_ids: np.ndarray | None, host_reduce: HostReduce,
                  hidden: np.ndarray, prev_final: np.ndarray | None) -> tuple:
    """(the tokens' logprobs, the top ids' logprobs or None, `host_reduce`'s values) of float32
    logits (B, V), from their log-softmax made in NumPy: where MLX computes on the CPU its `exp` is
    element by element (`reductions_on_host`). Logprobs equal mlx-lm's to float rounding (closer to
    exact: MLX's CPU logsumexp of a 49k vocabulary is off by up to ~2e-4)."""
    logprobs = host_log_softmax(logits)
    chosen = np.take_along_axis(logprobs, token[:, None], axis=-1)[:, 0]
    top = None if top_ids is None else np.take_along_axis(logprobs, top_ids, axis=-1)
    return chosen, top, host_reduce(logprobs, token, hidden, prev_final)


def float32_logprobs(logits: mx.array, logprobs: mx.array) -> mx.array:
    """The log-softmax a reduction gets, in float32: the decoder's own `logprobs` when the logits
    are float32 already (no second pass over the vocabulary), else computed again from the logits
    cast to float32."""
    if logits.dtype == mx.float32:
        return logprobs
    x = logits.astype(mx.float32)
    return x - mx.logsumexp(x, axis=-1, keepdims=True)


@dataclass
class RawStep:
    """One generation step as host values."""

    token: int
    logprob: float
    values: list  # the F floats returned by `reduce`
    top: list  # [(token, logprob)], most likely first; empty unless top_logprobs > 0
    hidden: np.ndarray | None = None  # (L, D) float32 block outputs, with capture_hidden only
    rows: np.ndarray | None = None  # (K,) `host_reduce`'s values, where the step's log-softmax was made on the host


def _top_k(logprobs: mx.array, k: int) -> tuple:
    """The ids and log-probabilities of the k most likely tokens along the last axis (unsorted)."""
    ids = mx.argpartition(-logprobs, k - 1, axis=-1)[..., :k]
    return ids, mx.take_along_axis(logprobs, ids, axis=-1)


def _sorted_top(ids: list, lps: list) -> list:
    """[(token, logprob)], most likely first (ties: lower id first, as argmax picks)."""
    return sorted(zip(ids, lps), key=lambda t: (-t[1], t[0]))


def _host_hidden(hidden: mx.array | None) -> np.ndarray | None:
    return None if hidden is None else np.array(hidden)


def _prefill(model, cache, prompt_ids: list, step_size: int) -> mx.array:
    """Run all but the last prompt token through the model in chunks; return the last token."""
    prompt = mx.array(prompt_ids)
    while prompt.size > 1:
        n = min(step_size, prompt.size - 1)
        model(prompt[:n][None], cache=cache)
        mx.eval([c.state for c in cache])
        prompt = prompt[n:]
        mx.clear_cache()
    return prompt


# Takes the same leading parameters as batching.generate_steps, on purpose: both are the model's
# decode contract (one for generating, one for scoring a given response).
def teacher_forced_steps(
    lm: LoadedModel,
    prompt_ids: list,
    response_ids: list,
    reduce: Reduce,
    *,
    top_logprobs: int = 0,
    prefill_step_size: int = 2048,
    capture_hidden: bool = False,
    host_reduce: HostReduce | None = None,
) -> list:
    """The steps generation would have recorded had it produced `response_ids`, in one forward pass.

    The prompt is prefilled as for generation; then its last token and all response tokens
    but the last go through the model at once, and the taps keep every position (each step's
    block outputs go with it with `capture_hidden`, as generation's do). With `host_reduce` (and
    float32 logits) the log-softmax is made on the host as generation makes it, HOST_CHUNK
    positions at a time.
    """
    if not prompt_ids or not response_ids:
        raise ValueError("prompt_ids and response_ids must not be empty")
    model, taps = lm.model, lm.taps
    cache = make_prompt_cache(model)
    with wired_limit(model, [generation_stream]), mx.stream(generation_stream):
        last = _prefill(model, cache, prompt_ids, prefill_step_size)
        taps.all_positions = True
        try:
            logits = model(mx.concatenate([last, mx.array(response_ids[:-1], dtype=last.dtype)])[None],
                           cache=cache)[0]
            hidden = taps.stacked()[0]  # (R, L, D)
        finally:
            taps.all_positions = False
        token = mx.array(response_ids)
        on_host = host_reduce is not None and logits.dtype == mx.float32
        if on_host:  # the log-softmax is made below, on the host; the logits rank the top ids alike
            first = later = None
            chosen = ranked = logits
        else:
            ranked = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            signal_lp = float32_logprobs(logits, ranked)
            first, later = signal_lp[:1], signal_lp[1:]
            chosen = mx.take_along_axis(ranked, token[:, None], axis=-1)[:, 0]
        values = reduce(first, hidden[:1], token[:1], None)  # Δh_0 = 0
        if len(response_ids) > 1:
            values = mx.concatenate([values, reduce(later, hidden[1:], token[1:], hidden[:-1, -1, :])])
        captured = hidden.astype(mx.float32) if capture_hidden or on_host else None
        top_ids, top_lps = _top_k(ranked, top_logprobs) if top_logprobs > 0 else (None, None)
        mx.eval([x for x in (chosen, values, captured, top_ids, top_lps) if x is not None])
    top_ids = None if top_ids is None else np.array(top_ids)
    rows = [None] * len(response_ids)
    states = _host_hidden(captured)
    if on_host:  # `chosen` are the logits, `top_lps` their top values: made into logprobs here
        prev = np.concatenate([np.zeros_like(states[:1, -1, :]), states[:-1, -1, :]])  # zeros: Δh_0 = 0
        parts = [host_logprobs(np.array(chosen[i:i + HOST_CHUNK]), np.array(response_ids[i:i + HOST_CHUNK]),
                               None if top_ids is None else top_ids[i:i + HOST_CHUNK], host_reduce,
                               states[i:i + HOST_CHUNK], prev[i:i + HOST_CHUNK])
                 for i in range(0, len(response_ids), HOST_CHUNK)]
        chosen, rows = np.concatenate([p[0] for p in parts]), list(np.concatenate([p[2] for p in parts]))
        top_lps = None if top_ids is None else np.concatenate([p[1] for p in parts])
    tops = [[]] * len(response_ids)
    if top_ids is not None:
        tops = [_sorted_top(i, lp) for i, lp in zip(top_ids.tolist(), top_lps.tolist())]
    states = list(states) if capture_hidden else [None] * len(response_ids)
    return [RawStep(t, lp, v, top, h, r)
            for t, lp, v, top, h, r in zip(response_ids, chosen.tolist(), values.tolist(), tops, states, rows)]
