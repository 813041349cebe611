"""GET /health and GET /model."""

from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict:
    """Liveness: the model is loaded; says whether calibrated params are in effect."""
    state = request.app.state
    return {"status": "ok", "model_loaded": state.engine.lm is not None, "params_loaded": state.params is not None}


@router.get("/model")
async def model(request: Request) -> dict:
    """The loaded model and the params in effect."""
    state = request.app.state
    lm = state.engine.lm
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
        "params": state.params.summary() if state.params else None,
        "params_reason": state.params_reason,
        "params_source": state.served.source,
        "params_skipped": list(state.served.skipped),
    }
