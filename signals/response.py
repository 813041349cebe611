"""Response-level scores: the mean of the top-k per-step values (SIGNALS.md)."""

from dataclasses import asdict, dataclass
from typing import Sequence

TOP_K = 5


def top_k_mean(values: Sequence[float], k: int = TOP_K) -> float:
    """Mean of the k largest values (all of them when there are fewer than k)."""
    if not values:
        raise ValueError("top_k_mean needs at least one value")
    top = sorted(values, reverse=True)[:k]
    return sum(top) / len(top)


@dataclass(frozen=True)
class ResponseScores:
    """Response-level ℏₛ and PRI (top-5 means) and the largest per-step P_fail."""

    hbar_s: float
    pri: float
    pfail_max: float

    def as_dict(self) -> dict:
        return asdict(self)


def response_scores(hbar: Sequence[float], pri: Sequence[float], pfail: Sequence[float]) -> ResponseScores:
    """Aggregate per-step values into the response scores."""
    return ResponseScores(hbar_s=top_k_mean(hbar), pri=top_k_mean(pri), pfail_max=max(pfail))
