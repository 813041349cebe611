"""Continuous batching: sequences join a running decode batch at any step and leave it at any step.

A newcomer's prompt is prefilled alone, in chunks (`Prefill.advance`, one chunk per call, so a
caller can interleave it with decode steps), all but its last token, exactly as `generate_steps`
does; with a prompt cache (mlx-lm's `LRUPromptCache`) it starts from the longest prefix it shares
with a prompt prefilled before it, as `mlx_lm.server` does. Its cache is then merged into
mlx-lm's batch caches (`BatchKVCache` / `BatchRotatingKVCache` `merge` and `extend`: left
padding, the models' own masks) and its last prompt token is its input to the next batched step.
Every step is one forward pass over all rows and one `mx.eval`; a row leaves with the caches'
`filter`. A sequence decoding alone keeps a plain `KVCache` (no padding mask per step, as
`generate_step`): it is merged into batch caches when others join, and extracted again when it is
the last row left. Tokens and logprobs are computed with `generate_steps`' expressions row by row, so a
sequence gets the same tokens, and the same values up to float rounding, as when it runs alone.
"""

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np
from mlx_lm.generate import generation_stream
from mlx_lm.models.cache import (BatchKVCache, KVCache, LRUPromptCache, can_trim_prompt_cache, make_prompt_cache,
                                 trim_prompt_cache)
from mlx_lm.sample_utils import apply_top_p

from .decode import HostReduce, Reduce, RawStep, _host_hidden, _sorted_top, _top_k, float32_logprobs, host_logprobs
from .loader import LoadedModel


REUSE_ENTRIES = 256  # prompts a prompt cache keeps at most (its byte budget usually binds first)
# the batch's KV caches grow by this many tokens at a time (mlx-lm's default: 256): a chat answer
# is often shorter than that, and each row of the batch would carry the rest
BATCH_KV_STEP = 64


@dataclass
class Sampling:
    """Per-sequence sampling: mlx-lm's temperature and top-p sampler with the sequence's own random
    key, split once per step as `mx.random.seed(seed)` would, so a seeded sequence draws the same
    tokens whatever else is in the batch (and the same as mlx-lm's sampler after that seed)."""

    temperature: float
    top_p: float = 1.0
    seed: int | None = None

    def key(self) -> mx.array:
        return mx.random.key(self.seed if self.seed is not None else random.getrandbits(63))


@dataclass(eq=False)
class Row:
    """What the batch keeps for one sequence besides its cache row."""

    owner: object  # what the caller knows this sequence by
    top_logprobs: int = 0
    capture_hidden: bool = False
    sampling: Sampling | None = None
    max_steps: int | None = None  # it leaves the batch by itself after this many steps
    key: mx.array | None = None  # the sampling key, advanced each step
    started: int = 0  # steps started for it
    keep: bool = False  # offer its prompt and tokens' KV to the prompt cache (if any) when it leaves
    ids: list = field(default_factory=list)  # with `keep`: its prompt, then the tokens read so far


class Prefill:
    """A newcomer's prompt going through the model alone, a chunk per `advance()`. With `reuse`, it
    starts from the KV cache of the longest prefix it shares with a prompt prefilled before it,
    looked up at the first `advance()` (so prompts admitted together share theirs, as calibration
    batches of HaluEval pairs share their whole context)."""

    def __init__(self, lm: LoadedModel, row: Row, prompt_ids: list, step_size: int,
                 reuse: LRUPromptCache | None = None):
        if not prompt_ids:
            raise ValueError("prompt_ids must not be empty")
        self.row, self.ids = row, prompt_ids
        self.cache = None  # made by the first advance()
        self.reused = 0  # prompt tokens whose KV entries came from `reuse`
        self._rest, self._reuse = prompt_ids, reuse
        self._model, self._key, self._step = lm.model, lm.model_id, step_size

    @property
    def done(self) -> bool:
        return self.cache is not None and len(self._rest) <= 1

    def _start(self) -> None:
        cache, rest = (None, self.ids) if self._reuse is None else self._reuse.fetch_nearest_cache(self._key, self.ids)
        if cache is not None and not rest:  # all of it is cached, but its last token is the first input
            if can_trim_prompt_cache(cache):
                trim_prompt_cache(cache, 1)
                rest = self.ids[-1:]
            else:
                cache, rest = None, self.ids
        self.cache = cache if cache is not None else make_prompt_cache(self._model)
        for layer in self.cache:  # newcomers admitted together are prefilled before any joins: keep them small
            if type(layer) is KVCache:
                layer.step = BATCH_KV_STEP
        self._rest, self.reused = rest, len(self.ids) - len(rest)

    def advance(self, budget: int) -> int:
        """Run the next chunk of the prompt (all but its last token), at most `budget` tokens;
        return how many went through. Once done, a copy of the prompt's cache cut to its tokens is
        offered to `reuse` (`_compacted`)."""
        first = self.cache is None
        if first:
            self._start()
        n = max(0, min(self._step, budget, len(self._rest) - 1))
        if n:
            with mx.stream(generation_stream):
                self._model(mx.array(self._rest[:n])[None], cache=self.cache)
                mx.eval([c.state for c in self.cache])
            self._rest = self._rest[n:]
            mx.clear_cache()
        if self.done and (n or first) and self._reuse is not None and len(self.ids) > 1:
            # (again when all of it was cached: it is the most recently used then)
            self._reuse.insert_cache(self._key, self.ids[:-1], _compacted(self.cache))
        return n


def _compacted(cache: list) -> list:
    """A prompt's cache as the prompt cache keeps it: each `KVCache` layer's keys and values cut to
    the tokens in it (they are allocated BATCH_KV_STEP tokens at a time), copied as `BatchKVCache.extract`
    copies them for `mlx_lm.server`; other kinds of layer, and a layer with at most one spare slot
    (as fetched from the prompt cache, less its last token), as they are."""
    kept, cut = [], []
    with mx.stream(generation_stream):
        for layer in cache:
            if type(layer) is KVCache and layer.keys is not None and layer.offset < layer.keys.shape[2] - 1:
                layer, old = KVCache(), layer
                layer.keys, layer.values = (mx.contiguous(x[..., :old.offset, :]) for x in (old.keys, old.values))
                layer.offset = old.offset
                cut.append(layer.state)
            kept.append(layer)
        if cut:
            mx.eval(cut)
    return kept


def _plain(cache: list) -> bool:
    """Whether every layer is a plain `KVCache` (one sequence's, as `generate_step` uses)."""
    return all(type(layer) is KVCache for layer in cache)


def _alone(layer: KVCache) -> KVCache:
    """One sequence's `KVCache` layer as the batch's own: new arrays cut to its tokens (the prompt
    cache may keep a prefill's layer as it is, `_compacted`, and a step writes into the arrays in
    place), grown BATCH_KV_STEP tokens at a time as the batch's are."""
    own = KVCache()
    own.step = BATCH_KV_STEP
    if layer.keys is not None:
        own.keys, own.values = (x[..., :layer.offset, :] for x in (layer.keys, layer.values))
        own.offset = layer.offset
    return own


def _batched(caches) -> list:
    """Per layer, the batch cache of these sequences' caches (mlx-lm's `merge`: a copy, left-padded)."""
    merged = [type(layer[0]).merge(list(layer)) for layer in zip(*caches)]
    for layer in merged:
        if type(layer) is BatchKVCache:
            layer.step = BATCH_KV_STEP
    return merged


class DecodeBatch:
    """The running batch: `rows` in cache order, stepped together by `step()`. With `reuse_bytes`,
    the KV caches of prefilled prompts are kept (least recently used out first, within that many
    bytes) for later prompts that share a prefix with them.

    Steps are pipelined as in mlx-lm's `generate_step`: `step()` starts the next forward pass
    (its tokens feed it without a round trip to the host) before it reads the previous one's
    results, so the caller's work on a step overlaps the model's work on the next (on a GPU: on a
    CPU, `mx.async_eval` returns only once the step is nearly computed). A row that
    leaves early (a stop token, a cancel) has had one step computed for nothing; one that reaches
    its `max_steps` has not. A row that joins gets its first step one call later.
    """

    def __init__(self, lm: LoadedModel, prefill_step_size: int = 2048, reuse_bytes: int = 0):
        self.lm = lm
        self.prefill_step_size = prefill_step_size
        self.reuse = LRUPromptCache(max_size=REUSE_ENTRIES, max_bytes=reuse_bytes) if reuse_bytes > 0 else None
        self.rows: list = []
        self._cache = None  # per layer: a batch cache over `rows`
        self._inputs = None  # (B,) the next input token of every row
        self._prev = None  # (B, D) every row's previous final hidden state (zeros: none yet); or None
        self._pending = None  # the started step: (its outputs, the rows they are for, its tag, its host_reduce)
        self._kept = []  # KV caches just given to the prompt cache, computed with the next step
        self._steps = 0

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def kv_bytes(self) -> int:
        """Bytes of the batch's KV caches as allocated (BATCH_KV_STEP tokens at a time). Only array
        sizes are read, so another thread may ask."""
        cache = self._cache
        return sum(layer.nbytes for layer in cache) if cache is not None else 0

    def prefill(self, prompt_ids: list, row: Row) -> Prefill:
        """A newcomer to prefill; `join` it once `done`."""
        if row.sampling is not None:
            row.key = row.sampling.key()
        row.keep = row.keep and self.reuse is not None  # without a prompt cache, nothing to keep its tokens for
        if row.keep:
            row.ids = list(prompt_ids)
        return Prefill(self.lm, row, prompt_ids, self.prefill_step_size, self.reuse)

    def join(self, prefills: list) -> None:
        """Add prefilled sequences as the last rows (their caches merged at once: extending the
        batch copies all of it); their first step is the next one started."""
        if not all(p.done for p in prefills):
            raise ValueError("a prompt is not prefilled yet")
        with mx.stream(generation_stream):
            last = mx.array([p.ids[-1] for p in prefills])
            if not self.rows:
                alone = len(prefills) == 1 and _plain(prefills[0].cache)
                cache = [_alone(c) for c in prefills[0].cache] if alone else _batched(p.cache for p in prefills)
                self._cache, self._inputs, self._prev = cache, last, None
            else:
                if _plain(self._cache):  # one row so far: it becomes a batch
                    self._cache = _batched([self._cache])
                for mine, theirs in zip(self._cache, _batched(p.cache for p in prefills)):
                    mine.extend(theirs)
                self._inputs = mx.concatenate([self._inputs, last.astype(self._inputs.dtype)])
                if self._prev is not None:  # rows of zeros: no previous step
                    zeros = mx.zeros((len(prefills), self._prev.shape[1]), self._prev.dtype)
                    self._prev = mx.concatenate([self._prev, zeros])
        self.rows.extend(p.row for p in prefills)

    def leave(self, rows: list) -> None:
        """These rows leave the batch (those still in it); with a prompt cache, the KV caches of
        those that `keep` are offered to it."""
        gone = {id(r) for r in rows}
        indices = [i for i, r in enumerate(self.rows) if id(r) not in gone]
        if len(indices) == len(self.rows):
            return
        self._keep([(i, r) for i, r in enumerate(self.rows) if id(r) in gone and r.keep and r.started])
        self.rows = [self.rows[i] for i in indices]
        if not indices:
            mx.eval(self._kept)  # no next step to compute them with
            self._cache = self._inputs = self._prev = self._pending = None
            self._kept = []
            return
        with mx.stream(generation_stream):
            picked = mx.array(indices)
            if len(indices) == 1 and all(type(c) is BatchKVCache for c in self._cache):
                self._cache = [_alone(c.extract(indices[0])) for c in self._cache]  # one row left: alone again
            else:
                for c in self._cache:
                    c.filter(picked)
            self._inputs = self._inputs[picked]
            self._prev = None if self._prev is None else self._prev[picked]
            if self._pending is not None:
                outputs, started, tag, host_reduce = self._pending
                stay = [i for i, r in enumerate(started) if id(r) not in gone]
                picked = mx.array(stay)
                self._pending = ([None if x is None else x[picked] for x in outputs], [started[i] for i in stay],
                                 tag, host_reduce) if stay else None

    def _keep(self, leaving: list) -> None:
        """Offer leaving rows' KV caches to the prompt cache, keyed by the tokens they hold (the
        prompt, then every token fed since: a conversation's next turn starts with them), as
        `mlx_lm.server` does. Only where every layer's cache is a `BatchKVCache` (the cut copies
        are computed with the next step, `_kept`) or a row alone's `KVCache` (cut to its tokens,
        `_compacted`): cutting a row out of another kind waits for the step in flight."""
        alone = _plain(self._cache)
        if not leaving or not (alone or all(type(c) is BatchKVCache for c in self._cache)):
            return
        with mx.stream(generation_stream):
            for i, row in leaving:
                cache = _compacted(self._cache) if alone else [layer.extract(i) for layer in self._cache]
                if len(row.ids) >= cache[0].offset:  # always: one step at most is started and not read
                    self.reuse.insert_cache(self.lm.model_id, row.ids[:cache[0].offset], cache)
                    self._kept += [x for c in cache for x in (c.keys, c.values)]

    def _choose(self, logits: mx.array, logprobs: mx.array | None) -> mx.array:
        """The next token of every row: argmax, or the row's own sampler (on the log-softmax,
        made here for a sampling row when the step makes none)."""
        greedy = mx.argmax(logits if logprobs is None else logprobs, axis=-1)
        if all(r.sampling is None for r in self.rows):
            return greedy
        picks = []
        for i, r in enumerate(self.rows):
            if r.sampling is None:
                picks.append(greedy[i:i + 1])
                continue
            r.key, sub = mx.random.split(r.key)
            lp = logits[i:i + 1] - mx.logsumexp(logits[i:i + 1], axis=-1, keepdims=True) if logprobs is None \
                else logprobs[i:i + 1]
            if 0 < r.sampling.top_p < 1.0:
                lp = apply_top_p(lp, r.sampling.top_p)
            picks.append(mx.random.categorical(lp * (1 / r.sampling.temperature), key=sub).astype(greedy.dtype))
        return mx.concatenate(picks)

    def step(self, reduce: Reduce, tag=None, host_reduce: HostReduce | None = None) -> tuple:
        """Start the next forward pass over every row that can use it (computing `reduce`, tagged
        `tag`), and return the previous one's results: `([(row, RawStep)], its tag)`, for the rows
        that took part in it and have not left since. A row that joined since gets its first step
        from the next call; a row at its `max_steps` has left.

        `reduce` gets the whole batch; `prev_final` is None while no row has a previous step, and
        its rows of zeros are rows at their first step. With `host_reduce` (and float32 logits),
        the step's log-softmax is made on the host instead (see `host_logprobs`): `reduce` gets
        None for it, and greedy tokens are the logits' argmax.
        """
        fresh = self._pending is None
        if fresh:
            self._start(reduce, tag, host_reduce)
        pending = self._pending
        if fresh:  # nothing was in flight: read this step before starting the next (the first token sooner)
            steps = self._host_steps(pending)
        self._pending = None
        self.leave([r for r in self.rows if r.max_steps is not None and r.started >= r.max_steps])
        if self.rows:
            self._start(reduce, tag, host_reduce)
        if not fresh:
            steps = self._host_steps(pending)
        return steps, pending[2]

    def _start(self, reduce: Reduce, tag, host_reduce: HostReduce | None) -> None:
        """Build the next step over every row and start computing it (`mx.async_eval`)."""
        model, taps = self.lm.model, self.lm.taps
        k = max(r.top_logprobs for r in self.rows)
        capture = any(r.capture_hidden for r in self.rows)
        with mx.stream(generation_stream):
            logits = model(self._inputs[:, None], cache=self._cache)[:, -1, :]
            on_host = host_reduce is not None and logits.dtype == mx.float32
            logprobs = None if on_host else logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            token = self._choose(logits, logprobs)
            hidden = taps.stacked()
            values = reduce(None if on_host else float32_logprobs(logits, logprobs), hidden, token, self._prev)
            if on_host:  # the logprobs are made from the logits on the host
                chosen, top = logits, (_top_k(logits, k)[0], None) if k else (None, None)
            else:
                chosen = mx.take_along_axis(logprobs, token[:, None], axis=-1)[:, 0]
                top = _top_k(logprobs, k) if k else (None, None)
            outputs = [token, chosen, values, *top, hidden.astype(mx.float32) if capture or on_host else None,
                       self._prev if on_host else None]
            self._inputs, self._prev = token, hidden[:, -1, :]
            mx.async_eval([x for x in outputs if x is not None], self._prev,
                          [r.key for r in self.rows if r.key is not None], self._kept)
        self._kept = []
        for r in self.rows:
            r.started += 1
        self._pending = (outputs, list(self.rows), tag, host_reduce if on_host else None)
        self._steps += 1
        if self._steps % 256 == 0:
            mx.clear_cache()

    @staticmethod
    def _host_steps(pending: tuple) -> list:
        """[(row, RawStep)] of a started step; with its `host_reduce`, its `chosen` are the logits."""
        (token, chosen, values, top_ids, top_lps, captured, prev), rows, _, host_reduce = pending
        token, top_ids, reduced = np.array(token), None if top_ids is None else np.array(top_ids), None
        hidden = _host_hidden(captured)
        if host_reduce is not None:
            chosen, top_lps, reduced = host_logprobs(np.array(chosen), token, top_ids, host_reduce, hidden,
                                                     _host_hidden(prev))
        tops = zip(top_ids.tolist(), top_lps.tolist()) if top_ids is not None else None
        steps = []
        for i, (row, t, lp, v) in enumerate(zip(rows, token.tolist(), chosen.tolist(), values.tolist())):
            top = []
            if tops is not None:
                ids, lps = next(tops)
                top = _sorted_top(ids, lps)[:row.top_logprobs]
            if row.keep:
                row.ids.append(t)
            steps.append((row, RawStep(t, lp, v, top, hidden[i] if row.capture_hidden else None,
                                       None if reduced is None else reduced[i])))
        return steps


def generate_steps(
    lm: LoadedModel,
    prompt_ids: list,
    max_tokens: int,
    reduce: Reduce,
    *,
    top_logprobs: int = 0,
    prefill_step_size: int = 2048,
    sampling: Sampling | None = None,
    capture_hidden: bool = False,
    host_reduce: HostReduce | None = None,
) -> Iterator[RawStep]:
    """Up to `max_tokens` steps of one sequence alone (a batch of one); the caller decides when
    to stop. Greedy tokens and logprobs are bit-identical to mlx-lm's `generate_step` (with
    `host_reduce`, logprobs to float rounding: `host_logprobs`)."""
    batch = DecodeBatch(lm, prefill_step_size)
    prefill = batch.prefill(prompt_ids, Row(None, top_logprobs, capture_hidden, sampling, max_tokens))
    while not prefill.done:
        prefill.advance(prefill_step_size)
    batch.join([prefill])
    for _ in range(max_tokens):
        yield batch.step(reduce, host_reduce=host_reduce)[0][0][1]
