"""Greedy generation with a KV cache that also returns, per step, what the signals need.

Mirrors mlx-lm's `generate_step`: the prompt is prefilled in chunks except its last token,
then each step is one forward pass whose outputs are evaluated with `async_eval`, the next
step being queued before the current one is read. Tokens and logprobs are computed with the
same expressions as mlx-lm, so they are bit-identical to `mlx_lm.generate`.
"""

from dataclasses import dataclass
from collections.abc import Callable, Iterator

import mlx.core as mx
import numpy as np
from mlx_lm.generate import generation_stream, wired_limit
from mlx_lm.models.cache import KVCache, make_prompt_cache
from mlx_lm.sample_utils import apply_top_p

from .loader import LoadedModel

# reduce(logits (1, V), hidden (1, L, D), token (1,), prev_final (1, D) or None) -> (1, F)
Reduce = Callable[[mx.array, mx.array, mx.array, mx.array | None], mx.array]


@dataclass
class RawStep:
    """One generation step as host values."""

    token: int
    logprob: float
    values: list  # the F floats returned by `reduce`
    top: list  # [(token, logprob)], most likely first; empty unless top_logprobs > 0
    hidden: np.ndarray | None = None  # (L, D) float32 block outputs, with capture_hidden only


@dataclass(frozen=True)
class RowSampling:
    """How one row of a batch samples instead of taking the argmax: at `temperature`, within the
    nucleus `top_p`, with its own random key from `seed` (so a row's draws do not depend on the
    other rows of its batch)."""

    temperature: float
    top_p: float = 1.0
    seed: int = 0

    def keys(self, max_tokens: int) -> mx.array:
        """One key per step, (max_tokens, 2)."""
        return mx.random.split(mx.random.key(self.seed), max_tokens)


def _sample_rows(greedy: mx.array, logprobs: mx.array, rows: list, keys: dict, step: int) -> mx.array:
    """The batch's tokens: the argmax `greedy` for rows without sampling (None in `rows`), a draw
    for the others (`keys`: row position in `rows` → that row's per-step keys)."""
    if not keys:
        return greedy
    tokens = []
    for i, row in enumerate(rows):
        if row is None:
            tokens.append(greedy[i])
            continue
        lp = logprobs[i] if row.top_p >= 1.0 else apply_top_p(logprobs[i], row.top_p)
        tokens.append(mx.random.categorical(lp * (1.0 / row.temperature), key=keys[i][step]))
    return mx.stack(tokens).astype(greedy.dtype)


def _top_k(logprobs: mx.array, k: int) -> tuple:
    """The ids and log-probabilities of the k most likely tokens along the last axis (unsorted)."""
    ids = mx.argpartition(-logprobs, k - 1, axis=-1)[..., :k]
    return ids, mx.take_along_axis(logprobs, ids, axis=-1)


def _sorted_top(ids: list, lps: list) -> list:
    """[(token, logprob)], most likely first (ties: lower id first, as argmax picks)."""
    return sorted(zip(ids, lps), key=lambda t: (-t[1], t[0]))


def _host_hidden(hidden: mx.array | None) -> np.ndarray | None:
    return None if hidden is None else np.array(hidden)


def _to_host(out) -> RawStep:
    token, logprob, values, top_ids, top_lps, hidden = out
    top = _sorted_top(top_ids.tolist(), top_lps.tolist()) if top_ids is not None else []
    return RawStep(token.item(), logprob.item(), values.tolist(), top, _host_hidden(hidden))


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


MIN_SHARED_PREFIX = 16


def _copy_prefix(cache: list, prev_cache: list, prev_ids: list, ids: list) -> int:
    """Fill `cache` with the KV entries of the prefix `ids` shares with `prev_ids`; return its length.

    `prev_cache` holds all of `prev_ids` but its last token. Only plain KVCaches are shared (a
    rotating cache may have dropped the prefix); short prefixes are not worth it (returns 0).
    """
    n = 0
    limit = min(len(prev_ids), len(ids)) - 1
    while n < limit and prev_ids[n] == ids[n]:
        n += 1
    if n < MIN_SHARED_PREFIX or not all(type(c) is KVCache for c in cache + prev_cache):
        return 0
    for c, p in zip(cache, prev_cache):
        c.keys, c.values, c.offset = p.keys[..., :n, :], p.values[..., :n, :], n
    return n


def generate_steps(
    lm: LoadedModel,
    prompt_ids: list,
    max_tokens: int,
    reduce: Reduce,
    *,
    top_logprobs: int = 0,
    prefill_step_size: int = 2048,
    sampler: Callable[[mx.array], mx.array] | None = None,
    capture_hidden: bool = False,
) -> Iterator[RawStep]:
    """Yield up to `max_tokens` steps for `prompt_ids`; the caller decides when to stop.

    Greedy unless `sampler` (an mlx-lm sampler over log-probabilities) is given. With
    `capture_hidden` each step also carries a host copy of its block outputs (calibration).
    """
    if not prompt_ids:
        raise ValueError("prompt_ids must not be empty")
    model, taps = lm.model, lm.taps
    cache = make_prompt_cache(model)
    prev_final = None

    def step(tokens: mx.array):
        nonlocal prev_final
        logits = model(tokens[None], cache=cache)[:, -1, :]
        logprobs = logits - mx.logsumexp(logits, keepdims=True)
        token = sampler(logprobs) if sampler else mx.argmax(logprobs, axis=-1)
        hidden = taps.stacked()
        values = reduce(logits, hidden, token, prev_final)[0]
        prev_final = hidden[:, -1, :]
        lp = logprobs[0]
        top_ids = top_lps = None
        if top_logprobs > 0:
            top_ids, top_lps = _top_k(lp, top_logprobs)
        captured = hidden[0].astype(mx.float32) if capture_hidden else None  # evaluated with the step
        return token, lp[token], values, top_ids, top_lps, captured

    with wired_limit(model, [generation_stream]), mx.stream(generation_stream):
        prompt = _prefill(model, cache, prompt_ids, prefill_step_size)
        current = step(prompt)
        mx.async_eval(current)
        for n in range(max_tokens):
            if n + 1 < max_tokens:
                upcoming = step(current[0])
                mx.async_eval(upcoming)
            yield _to_host(current)
            if n % 256 == 0:
                mx.clear_cache()
            if n + 1 < max_tokens:
                current = upcoming


def generate_batch(
    lm: LoadedModel,
    prompts: list,
    max_tokens: int,
    reduce: Reduce,
    *,
    prefill_step_size: int = 2048,
    capture_hidden: bool = False,
    sampling: list | None = None,
) -> list:
    """Steps for several prompts at once: one list of RawStep per prompt; greedy unless `sampling`
    gives a row a RowSampling (one entry per prompt, None for a greedy row).

    Each prompt is prefilled alone as in `generate_steps`, except that a prefix it shares with
    the previous prompt (HaluEval's right and hallucinated answers share their whole context) is
    copied from that prompt's cache instead of recomputed (plain KV caches only). The caches are
    then merged into mlx-lm's batch caches (left padding) and every decode step is one forward
    pass over the unfinished sequences. A sequence ends after a stop token (`lm.stop_ids`) or
    `max_tokens` steps and leaves the batch. Values match one-at-a-time generation up to float
    rounding. `capture_hidden` as in `generate_steps`. A sampled row draws with its own per-step
    keys, so its tokens depend on its seed and prompt only (up to float rounding of the batched
    logits); the greedy rows stay the argmax.
    """
    model, taps = lm.model, lm.taps
    steps = [[] for _ in prompts]
    sampling = sampling or [None] * len(prompts)
    keys = {i: row.keys(max_tokens) for i, row in enumerate(sampling) if row is not None}
    with wired_limit(model, [generation_stream]), mx.stream(generation_stream):
        caches, last = [], []
        for i, ids in enumerate(prompts):
            cache = make_prompt_cache(model)
            shared = _copy_prefix(cache, caches[-1], prompts[i - 1], ids) if i else 0
            last.append(_prefill(model, cache, ids[shared:], prefill_step_size))
            caches.append(cache)
        cache = [type(layer[0]).merge(list(layer)) for layer in zip(*caches)]
        active = list(range(len(prompts)))
        inputs, prev = mx.stack(last), None
        for n in range(max_tokens):
            logits = model(inputs, cache=cache)[:, -1, :]
            logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            token = _sample_rows(mx.argmax(logprobs, axis=-1), logprobs, [sampling[a] for a in active],
                                 {row: keys[a] for row, a in enumerate(active) if a in keys}, n)
            hidden = taps.stacked()
            values = reduce(logits, hidden, token, prev)
            prev = hidden[:, -1, :]
            chosen = mx.take_along_axis(logprobs, token[:, None], axis=-1)[:, 0]
            captured = hidden.astype(mx.float32) if capture_hidden else None
            mx.eval(token, chosen, values, prev, *([captured] if capture_hidden else []))
            rows_hidden = _host_hidden(captured) if capture_hidden else [None] * len(active)
            keep = []
            for row, (t, lp, v) in enumerate(zip(token.tolist(), chosen.tolist(), values.tolist())):
                steps[active[row]].append(RawStep(t, lp, v, [], rows_hidden[row]))
                if t not in lm.stop_ids:
                    keep.append(row)
            if not keep or n + 1 == max_tokens:
                break
            if len(keep) < len(active):
                rows = mx.array(keep)
                for c in cache:
                    c.filter(rows)
                token, prev = token[rows], prev[rows]
                active = [active[r] for r in keep]
            inputs = token[:, None]
    return steps


# Takes the same leading parameters as generate_steps, on purpose: both are the model's decode
# contract (one for generating, one for scoring a given response).
def teacher_forced_steps(
    lm: LoadedModel,
    prompt_ids: list,
    response_ids: list,
    reduce: Reduce,
    *,
    top_logprobs: int = 0,
    prefill_step_size: int = 2048,
) -> list:
    """The steps generation would have recorded had it produced `response_ids`, in one forward pass.

    The prompt is prefilled as in `generate_steps`; then its last token and all response tokens
    but the last go through the model at once, and the taps keep every position.
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
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        token = mx.array(response_ids)
        values = reduce(logits[:1], hidden[:1], token[:1], None)  # Δh_0 = 0
        if len(response_ids) > 1:
            values = mx.concatenate([values, reduce(logits[1:], hidden[1:], token[1:], hidden[:-1, -1, :])])
        chosen = mx.take_along_axis(logprobs, token[:, None], axis=-1)[:, 0]
        out = [chosen, values]
        if top_logprobs > 0:
            out += _top_k(logprobs, top_logprobs)
        mx.eval(out)
    tops = [[]] * len(response_ids)
    if top_logprobs > 0:
        tops = [_sorted_top(i, lp) for i, lp in zip(out[2].tolist(), out[3].tolist())]
    return [RawStep(t, lp, v, top) for t, lp, v, top in zip(response_ids, chosen.tolist(), values.tolist(), tops)]
