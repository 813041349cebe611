"""Command line: `halluwatch serve` and `halluwatch generate`."""

import argparse
import json
import logging
import sys

from .settings import Settings


def _engine(settings: Settings):
    from adapters.loader import ModelNotFound

    from .engine import Engine

    engine = Engine(settings.model, precision=settings.precision, pfail_tau=settings.pfail_tau,
                    pfail_lambda=settings.pfail_lambda, queue_depth=settings.queue_depth,
                    prefill_step_size=settings.prefill_step_size)
    try:
        engine.start()
    except (ModelNotFound, FileNotFoundError, ValueError) as e:
        sys.exit(f"halluwatch: cannot load model: {e}")
    return engine


def _app(settings: Settings, engine):
    from .params import ParamsError
    from .server import create_app

    try:
        return create_app(settings, engine)
    except ParamsError as e:
        sys.exit(f"halluwatch: {e}")


def serve(settings: Settings) -> None:
    import uvicorn

    engine = _engine(settings)
    app = _app(settings, engine)
    params = app.state.params
    logging.getLogger("halluwatch").info(
        "params: %s", params.path if params else app.state.params_reason)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
    finally:
        engine.stop()


def generate(settings: Settings, args) -> None:
    from .engine import GenerationJob, run_blocking
    from .generation import InputError, encode_prompt, response_body

    engine = _engine(settings)
    app = _app(settings, engine)
    try:
        ids = encode_prompt(engine.lm, args.prompt, None, not args.raw, args.max_tokens)
    except InputError as e:
        sys.exit(f"halluwatch: {e.field}: {e}")
    records, fin = run_blocking(engine, GenerationJob(ids, args.max_tokens))
    engine.stop()
    body = response_body(records, fin, app.state.params, app.state.params_reason, args.trace)
    if args.json:
        print(json.dumps(body, indent=2, ensure_ascii=False))
        return
    s, q = body["scores"], body["quadrant"]
    print(body["text"])
    print(f"\n[finish: {body['finish_reason']}, tokens: {body['usage']['completion_tokens']}, "
          f"ℏₛ {s['hbar_s']:.4f}, PRI {s['pri']:.4f}, P_fail max {s['pfail_max']:.4f}]")
    print(f"[quadrant: {q['name']} — {q['label']}]" if q else f"[quadrant: none — {body['quadrant_reason']}]")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="halluwatch", description=(
        "Local MLX inference that scores every token and response for hallucination risk."))
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--model", help="default (embedded SmolLM2-135M-Instruct), a .gguf file, an mlx-lm "
                                       "folder or a Hugging Face repo id in the local cache")
        p.add_argument("--params", help="calibrated params JSON (default: newest match in calibrated_params/)")
        p.add_argument("--precision", choices=["auto", "float32", "native"],
                       help="auto: float32 on Linux with OpenBLAS, else weights as stored")

    p = sub.add_parser("serve", help="run the HTTP server")
    common(p)
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p = sub.add_parser("generate", help="generate once and print text, scores and quadrant")
    common(p)
    p.add_argument("prompt")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--raw", action="store_true", help="encode the prompt as is, without the chat template")
    p.add_argument("--trace", action="store_true", help="with --json, include the per-step trace")
    p.add_argument("--json", action="store_true", help="print the full JSON response")
    args = parser.parse_args(argv)

    overrides = {k: v for k in ("model", "params", "precision", "host", "port")
                 if (v := getattr(args, k, None)) is not None}
    settings = Settings(**overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        serve(settings)
    else:
        generate(settings, args)


if __name__ == "__main__":
    main()
