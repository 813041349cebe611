"""Response-level scores: the mean of the top-k per-step values (docs/signals.md)."""

from dataclasses import asdict, dataclass
from collections.abc import Sequence

TOP_K = 5


def top_k_mean(values: Sequence[float], k: int = TOP_K) -> float:
    """Mean of the k largest values (all of them when there are fewer than k)."""
    if not values:
        raise ValueError("top_k_mean needs at least one value")
    top = sorted(values, reverse=True)[:k]
    return sum(top) / len(top)


@dataclass(frozen=True)
class ResponseScores:
    """Response-level ℏₛ and PRI (top-5 means), the largest per-step P_fail, and baselines:
    mean and max surprise (mean = log-perplexity), mean and max entropy, smallest chosen-token
    probability."""

    hbar_s: float
    pri: float
    pfail_max: float
    surprise_mean: float
    surprise_max: float
    entropy_mean: float
    entropy_max: float
    prob_min: float

    def as_dict(self) -> dict:
        return asdict(self)


def response_scores(steps: Sequence) -> ResponseScores:
    """Aggregate per-step records (objects with hbar_s, pri, pfail, surprise, entropy and prob)."""
    if not steps:
        raise ValueError("response_scores needs at least one step")
    col = {k: [getattr(s, k) for s in steps] for k in ("hbar_s", "pri", "pfail", "surprise", "entropy", "prob")}
    return ResponseScores(
        hbar_s=top_k_mean(col["hbar_s"]), pri=top_k_mean(col["pri"]), pfail_max=max(col["pfail"]),
        surprise_mean=sum(col["surprise"]) / len(steps), surprise_max=max(col["surprise"]),
        entropy_mean=sum(col["entropy"]) / len(steps), entropy_max=max(col["entropy"]), prob_min=min(col["prob"]))
