"""Decode speed of the engine with all signals ÷ plain `mlx_lm.stream_generate` (goal ≥ 0.97).

Same model file and prompt. With `--http`, a third arm: a halluwatch server (a subprocess, as
users run it) streaming the same greedy generation over HTTP (`POST /generate`, `stream: true`),
its rate taken from the arrival times of the `token` events at the client; judged against
`--http-goal` (ratio http ÷ plain). Each run's decode rate is (tokens − 1) / (time of last token − time
of first token). The arms run in `--runs` rounds whose order changes (two arms: A B, B A, B A,
A B, …; three: each rotation and its reverse in turn), so that neither a drift of the machine's
speed nor one arm's wake (a server still writing its response log) favours an arm; each round gives
a ratio ours ÷ plain (a "pair" in the output). Prints every round, the median rates, the median of
the per-pair ratios with its range and IQR, and PASS or FAIL against `--goal`. The exit status is 0 either way, unless
`--strict` (then 1 on FAIL).

    python bench/overhead.py [--model default|bench8|embedded|PATH] [--runs 7] [--max-tokens 128] [--no-probes]
                             [--goal 0.97] [--http] [--http-goal 0.93] [--strict] [--json PATH]

The engine runs the probes a server runs on every request to the model (those of each calibration
it loads for the model; none for a model without params), so the in-process and HTTP arms do the
same work; `--no-probes` leaves them out of the in-process arm (the signals alone).
`bench8` and `embedded` are bench/concurrency.py's bench models (float32 mlx-lm folders).
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO / "bench", REPO):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import adapters  # noqa: E402,F401  (preloads OpenBLAS before mlx)
from mlx_lm import stream_generate  # noqa: E402

from adapters.loader import load  # noqa: E402
from app.engine import Engine, GenerationJob, StepRecord  # noqa: E402
from app.prompts import encode_prompt  # noqa: E402
import httpx  # noqa: E402
from benchlib import add_json_option, describe, exit_now, judge, machine, round_orders, spread, write_json  # noqa: E402
from concurrency import BUILDERS, bench_model, start  # noqa: E402

PROMPT = "Tell me a long story about a dragon who learns to cook, with many details."


def decode_rate(stamps: list) -> float:
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def plain_run(lm, ids, max_tokens) -> tuple:
    stamps = []
    for _ in stream_generate(lm.model, lm.tokenizer, ids, max_tokens=max_tokens):
        stamps.append(time.perf_counter())
    return decode_rate(stamps), len(stamps)


def engine_run(engine, ids, max_tokens, probes=()) -> tuple:
    handle = engine.submit(GenerationJob(ids, max_tokens, probes=probes))
    stamps = []
    emit = handle.emit

    def stamped(item):  # the time each step reaches the caller's side
        if isinstance(item, StepRecord):
            stamps.append(time.perf_counter())
        emit(item)

    handle.emit = stamped
    handle.wait()
    return decode_rate(stamps), len(stamps)


def http_run(url: str, max_tokens: int) -> tuple:
    """The same generation streamed by a halluwatch server; stamps taken as its token events arrive."""
    body = {"prompt": PROMPT, "chat_template": True, "max_tokens": max_tokens, "stream": True}
    stamps = []
    with httpx.stream("POST", f"{url}/generate", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line == "event: token":
                stamps.append(time.perf_counter())
    return decode_rate(stamps), len(stamps)


def ratio_of(pairs: list, arm: str, goal: float) -> dict:
    return judge(spread([p[arm] / p["plain"] for p in pairs], "median of per-pair ratios"), f"ratio {arm}/plain",
                 ("≥", goal))


def served_probes(lm) -> tuple:
    """The probes a server runs on every request to this model: those of each calibration it loads."""
    from app.assessment import job_probes
    from app.calibration.params import resolve
    from app.settings import Settings

    return job_probes(resolve(Settings(), lm.fingerprint).calibrations)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--runs", type=int, default=7, help="pairs of runs (one plain, one halluwatch)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--no-probes", action="store_true",
                    help="the in-process engine skips the probes a server runs (every loaded calibration's)")
    ap.add_argument("--goal", type=float, default=0.97, help="PASS when the median ratio is at least this")
    ap.add_argument("--http", action="store_true", help="also time a halluwatch server streaming over HTTP")
    ap.add_argument("--http-goal", type=float, default=0.93, help="PASS at a median http/plain ratio of at least this")
    ap.add_argument("--strict", action="store_true", help="exit status 1 on FAIL (default: 0 either way)")
    add_json_option(ap)
    args = ap.parse_args(argv)
    if args.model in BUILDERS:
        from app.settings import Settings

        args.model = str(bench_model(args.model, Settings().home))

    engine = Engine(args.model, precision=args.precision)
    lm_ours = engine.start()
    plain = load(args.model, args.precision, with_taps=False)  # a separate copy, on this thread
    ids = encode_prompt(plain, PROMPT, None, True, args.max_tokens)
    probes = () if args.no_probes else served_probes(lm_ours)
    arms = {"plain": lambda: plain_run(plain, ids, args.max_tokens),
            "ours": lambda: engine_run(engine, ids, args.max_tokens, probes)}
    with tempfile.TemporaryDirectory(prefix="halluwatch-overhead-") as work:
        server = None
        if args.http:
            server, url = start("halluwatch", Path(args.model), Path(work),
                                argparse.Namespace(max_batch_size=1, queue_depth=1, clients=[1]))
            arms["http"] = lambda: http_run(url, args.max_tokens)
        try:
            pairs = _pairs(arms, args.runs)
        finally:
            if server is not None:
                server.kill()
    engine.stop()
    med = {arm: statistics.median(p[arm] for p in pairs) for arm in arms}
    ratios = [ratio_of(pairs, "ours", args.goal)] + ([ratio_of(pairs, "http", args.http_goal)] if args.http else [])
    print(f"\nmodel {lm_ours.model_id} ({lm_ours.dtype}, BLAS {lm_ours.blas}), prompt {len(ids)} tokens; {machine()}")
    print(f"median decode: plain mlx_lm.stream_generate {med['plain']:.2f} tok/s, "
          f"halluwatch engine with all signals{f' and {len(probes)} probes' if probes else ''} {med['ours']:.2f} tok/s"
          + (f", halluwatch server streaming over HTTP {med['http']:.2f} tok/s" if args.http else ""))
    for ratio in ratios:
        print(describe(ratio))
    result = {"model": lm_ours.model_id, "dtype": lm_ours.dtype, "blas": lm_ours.blas, "prompt_tokens": len(ids),
              "max_tokens": args.max_tokens, "probes": len(probes), "plain_tok_s": med["plain"],
              "ours_tok_s": med["ours"], "ratio": ratios[0], "pairs": pairs}
    if args.http:
        result.update(http_tok_s=med["http"], http_ratio=ratios[1])
    write_json(args.json, "overhead", result, argv)
    return 1 if args.strict and not all(r["pass"] for r in ratios) else 0


def _pairs(arms: dict, runs: int) -> list:
    """`runs` rounds of every arm (after a short warm-up of each), in `round_orders` in turn."""
    for run in arms.values():
        run()
    orders = round_orders(list(arms))
    pairs = []
    for i in range(runs):
        order = orders[i % len(orders)]
        pair = {"order": " then ".join(order)}
        for arm in order:
            pair[arm], pair[f"{arm}_tokens"] = arms[arm]()
        pair["ratio"] = pair["ours"] / pair["plain"]
        pairs.append(pair)
        print(f"round {i + 1} ({pair['order']}): " + ", ".join(
            f"{arm} {pair[arm]:.2f} tok/s ({pair[f'{arm}_tokens']} tokens)" for arm in arms)
            + f", ratio ours/plain {pair['ratio']:.3f}", flush=True)
    return pairs


if __name__ == "__main__":
    exit_now(main())
