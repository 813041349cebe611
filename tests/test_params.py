"""Calibrated params files: matching, newest-first, validation, and the shipped imported files."""

import json

import pytest

from app.params import ParamsError, find_params, load_params
from app.settings import REPO_ROOT

SHIPPED = REPO_ROOT / "calibrated_params"


def _write(d, name, **data):
    (d / name).write_text(json.dumps(data))
    return d / name


def test_shipped_prototype_params_match_their_models():
    for model_id, tau_hbar, tau_pri in [("mlx-community/Llama-3.2-3B-Instruct-4bit", 2.689, 1.092),
                                        ("mlx-community/Qwen2.5-7B-Instruct-4bit", 2.541, 0.535)]:
        p = find_params(model_id, SHIPPED)
        assert p is not None and p.data["imported"] is True
        assert (p.thresholds.tau_hbar, p.thresholds.tau_pri) == (tau_hbar, tau_pri)
        # a local folder of the same name (e.g. a converted copy) matches too
        assert find_params(model_id.split("/")[1], SHIPPED).path == p.path
    assert find_params("someone/unknown-model", SHIPPED) is None


def test_newest_match_wins(tmp_path):
    _write(tmp_path, "a.json", model="m", tau_hbar=1, tau_pri=1, created_utc="2026-01-02T00:00:00Z")
    _write(tmp_path, "b.json", model="m", tau_hbar=2, tau_pri=2, created_utc="2026-01-01T00:00:00Z")
    _write(tmp_path, "c.json", model="other", tau_hbar=3, tau_pri=3, created_utc="2027-01-01T00:00:00Z")
    _write(tmp_path, "d.json", model="m", tau_hbar="x", tau_pri=3, created_utc="2028-01-01T00:00:00Z")
    assert find_params("m", tmp_path).path.name == "a.json"


@pytest.mark.parametrize("data,msg", [
    ({"tau_pri": 1}, "tau_hbar"),
    ({"tau_hbar": 1, "tau_pri": float("nan")}, "tau_pri"),
    ({"tau_hbar": True, "tau_pri": 1}, "tau_hbar"),
])
def test_load_params_rejects_bad_thresholds(tmp_path, data, msg):
    with pytest.raises(ParamsError, match=msg):
        load_params(_write(tmp_path, "p.json", **data))


def test_load_params_rejects_unreadable(tmp_path):
    with pytest.raises(ParamsError, match="cannot read"):
        load_params(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(ParamsError, match="cannot read"):
        load_params(tmp_path / "bad.json")


def test_shipped_default_params_load_their_checksummed_probe():
    import json as _json

    from app.probes import load_probe

    path = max(SHIPPED.glob("smollm2-135m-instruct*_n*.json"))
    p = load_params(path)
    assert p.probe is not None and p.probe.position == p.data["probe"]
    assert p.data["risk"]["detector"] == p.data["ranking"][0]
    for name, entry in p.data["detectors"].items():  # every probe file named in the params is intact
        if name.startswith("probe_"):
            load_probe(SHIPPED / entry["file"], entry["sha256"])
    _json.dumps(p.summary())
