"""Cutoffs for halt_on_pfail picked from a run's own per-step P_fail."""


def first_over(pfail: list, cutoff: float) -> int | None:
    """The step a run halts at: the first whose P_fail is strictly greater than the cutoff."""
    return next((i for i, p in enumerate(pfail) if p > cutoff), None)


def halt_cases(pfail: list) -> list:
    """[(cutoff, step the run halts at, or None)] for a run whose steps have these P_fail, for
    every step k > 0 whose P_fail is above all before it:

    - strictly between the highest P_fail before k and step k's: halts exactly at k;
    - equal to step k's P_fail: not greater, so no halt at k; it halts at the next step above it,
      or (k the highest) not at all.
    """
    rises = [i for i in range(1, len(pfail)) if pfail[i] > max(pfail[:i])]
    assert rises, f"P_fail never rises above its first value: {pfail}"
    cases = []
    for k, after in zip(rises, rises[1:] + [None]):
        between = (max(pfail[:k]) + pfail[k]) / 2
        assert max(pfail[:k]) < between < pfail[k]
        assert first_over(pfail, between) == k and first_over(pfail, pfail[k]) == after
        cases += [(between, k), (pfail[k], after)]
    return cases
