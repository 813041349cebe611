"""GET /health and GET /model."""

from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict:
    """Liveness: the model is loaded; says whether calibrated params are in effect, and how the
    response log fares (entries written, dropped, pruned, queued; null when it is off)."""
    state = request.app.state
    log = state.response_log
    return {"status": "ok", "model_loaded": state.engine.lm is not None,
            "params_loaded": state.served.params is not None, "log": log.counts() if log else None}


@router.get("/model")
async def model(request: Request) -> dict:
    """The loaded model, the params in effect (the default calibration) and every calibration it carries."""
    state = request.app.state
    lm, served = state.engine.lm, state.served
    return {
        "id": lm.model_id,
        "path": str(lm.path),
        "family": lm.family.name,
        "model_type": lm.config.get("model_type"),
        "layers": lm.n_layers,
        "dtype": lm.dtype,
        "blas": lm.blas,
        "context_length": lm.context_length,
        "stop_token_ids": sorted(lm.stop_ids),
        "fingerprint": {**lm.fingerprint.as_dict(), "id": lm.fingerprint.id},
        "params": served.params.summary() if served.params else None,
        "params_reason": served.reason,
        "params_source": served.source,
        "params_skipped": list(served.skipped),
        "calibrations": [params.summary() for params in served.calibrations],
    }
