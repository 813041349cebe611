"""The round orders of the benches with arms (overhead, idle memory) favour no arm."""

import collections

import pytest

from support import load_bench

benchlib = load_bench("benchlib")


@pytest.mark.parametrize("names", [["plain", "ours"], ["plain", "ours", "http"]])
def test_every_arm_runs_first_and_after_each_other_arm_equally_often(names):
    orders = benchlib.round_orders(names)
    assert all(sorted(order) == sorted(names) for order in orders)
    first = collections.Counter(order[0] for order in orders)
    after = collections.Counter((a, b) for order in orders for a, b in zip(order, order[1:]))
    assert set(first.values()) == {len(orders) // len(names)} and len(first) == len(names)
    assert len(after) == len(names) * (len(names) - 1) and len(set(after.values())) == 1
