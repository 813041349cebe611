import pytest

from app.monitor.flagging import is_flagged


@pytest.mark.parametrize("body, flagged", [
    ({"risk": {"probability": 0.7}, "quadrant": {"name": "Q1"}}, True),
    ({"risk": {"probability": 0.5}, "quadrant": {"name": "Q2"}}, True),
    ({"risk": {"probability": 0.2}, "quadrant": {"name": "Q2"}}, False),
    ({"risk": None, "quadrant": {"name": "Q2"}}, True),
    ({"risk": None, "quadrant": {"name": "Q3"}}, False),
    ({"risk": None, "quadrant": None}, None),
])
def test_risk_decides_else_both_seed_signals(body, flagged):
    assert is_flagged(body, 0.5) is flagged
