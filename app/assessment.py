"""One assessment path for HTTP, the CLI and calibration: a response's step records and the
params in effect → its scores, quadrant and `risk`, and the response body built from them."""

from signals.probe import sigmoid
from signals.response import response_scores

from .calibration.params import Params, quadrant_of
from .engine import Finished


def response_body(records: list, fin: Finished, params: Params | None, params_reason: str | None,
                  include_trace: bool) -> dict:
    """The JSON body of a finished generation (also the SSE `done` event, without trace)."""
    scores = response_scores(records).as_dict()
    probe = params.probe if params else None
    logit = inside = None
    if probe is not None:  # the probe's position: the prompt's end (step 0) or the last step
        step = records[0 if probe.position == "prompt_end" else -1]
        logit = step.probe_logit
        if step.probe_distance is not None and probe.distance_limit is not None:
            inside = bool(step.probe_distance <= probe.distance_limit)
    scores["probe_risk"] = None if logit is None else float(sigmoid(logit))
    scores["probe_in_distribution"] = inside
    body = {
        "text": "".join(r.text for r in records) + fin.text_tail,
        "finish_reason": fin.finish_reason,
        "usage": {
            "prompt_tokens": fin.prompt_tokens,
            # the step that halted on P_fail was scored but its token was not appended
            "completion_tokens": len(records) - (fin.finish_reason == "pfail"),
        },
        "scores": scores,
        "quadrant": quadrant_of(scores["hbar_s"], scores["pri"], params) if params else None,
        "quadrant_reason": None if params else params_reason,
        "risk": params.risk(scores, records[0].verdict, logit, inside) if params else None,
        "timing": {"ttft_s": fin.ttft_s, "tokens_per_s": fin.tokens_per_s},
    }
    if include_trace:
        body["trace"] = [r.as_dict() for r in records]
    return body
