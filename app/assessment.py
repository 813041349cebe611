"""One assessment path for HTTP, the CLI and calibration: a response's step records and the
calibrations in effect → its scores, quadrant and `risk`, and the response body built from them.

A model can carry several calibrations (one per kind of traffic). A job runs the probes of each
(`job_probes`: the one `risk` reads and the one that reads the calibration's range), and the
response is assessed by the calibration whose range probe finds the request closest to its
training states (distance ÷ its in-range limit), the first (default) one on ties or when none has
a probe. A caller that names a calibration passes that one alone.
"""

import math

from signals.probe import sigmoid
from signals.response import response_scores

from .calibration.params import quadrant_of
from .engine import Finished


def job_probes(calibrations: tuple) -> tuple:
    """The probes a job runs for these calibrations, in their order (`Params.probes` of each)."""
    return tuple(probe for params in calibrations for probe in params.probes)


def _reading(probe, j: int, records: list) -> tuple:
    """(logit, distance) of the job's `j`-th probe over the records, or None if the job did not run it."""
    if not all(j < len(r.probe_logits) for r in records):
        return None
    return probe.reading([r.probe_logits[j] for r in records], [r.probe_distances[j] for r in records])


def _readings(calibrations: tuple, records: list) -> list:
    """Per calibration: (params, served probe's logit, in range, range probe's distance ÷ limit)
    from the records (`Params.probes`: the served probe first, the range probe last)."""
    out, j = [], 0
    for params in calibrations:
        logit, inside, ratio = None, None, math.inf
        readings = [_reading(probe, j + k, records) for k, probe in enumerate(params.probes)]
        j += len(readings)
        if readings and None not in readings:
            logit, distance = readings[0][0], readings[-1][1]
            if (limit := params.range_probe.distance_limit) is not None:
                inside, ratio = bool(distance <= limit), distance / limit
        out.append((params, logit, inside, ratio))
    return out


def response_body(records: list, fin: Finished, calibrations: tuple, params_reason: str | None,
                  include_trace: bool) -> dict:
    """The JSON body of a finished generation (also the SSE `done` event, without trace)."""
    scores = response_scores(records).as_dict()
    params, logit, inside, ratio = None, None, None, math.inf
    if calibrations:
        params, logit, inside, ratio = min(_readings(calibrations, records), key=lambda r: r[3])  # first on ties
    scores["probe_risk"] = None if logit is None else float(sigmoid(logit))
    scores["probe_in_distribution"] = inside
    scores["probe_distance_ratio"] = float(ratio) if math.isfinite(ratio) else None
    risk = params.risk(scores, records[0].verdict, logit, inside) if params else None
    if risk is not None:
        risk["calibration"] = params.path.name
    body = {
        "text": "".join(r.text for r in records) + fin.text_tail,
        "finish_reason": fin.finish_reason,
        "usage": {
            "prompt_tokens": fin.prompt_tokens,
            "cached_tokens": fin.cached_tokens,
            # the step that halted on P_fail was scored but its token was not appended
            "completion_tokens": len(records) - (fin.finish_reason == "pfail"),
        },
        "scores": scores,
        "quadrant": quadrant_of(scores["hbar_s"], scores["pri"], params) if params else None,
        "quadrant_reason": None if params else params_reason,
        "risk": risk,
        "timing": {"ttft_s": fin.ttft_s, "tokens_per_s": fin.tokens_per_s, "queue_s": fin.queue_s},
    }
    if include_trace:
        body["trace"] = [r.as_dict() for r in records]
    return body
