"""Calibrated params files: matching, newest-first, validation, and the shipped imported files."""

import json

import pytest

import calibrated_params
from adapters.fingerprint import Fingerprint
from app.calibration.params import ParamsError, check_model, find_params, load_params

SHIPPED = calibrated_params.DIR


def _write(d, name, **data):
    (d / name).write_text(json.dumps(data))
    return d / name


FP = Fingerprint("llama", 4, 64, 512, "0" * 64)


def test_shipped_prototype_params_load_but_fit_no_model():
    for model_id, tau_hbar, tau_pri in [("mlx-community/Llama-3.2-3B-Instruct-4bit", 2.689, 1.092),
                                        ("mlx-community/Qwen2.5-7B-Instruct-4bit", 2.541, 0.535)]:
        (path,) = [p for p in SHIPPED.glob("*_prototype.json") if load_params(p).data["model"] == model_id]
        p = load_params(path)
        assert p.data["imported"] is True and (p.thresholds.tau_hbar, p.thresholds.tau_pri) == (tau_hbar, tau_pri)
        with pytest.raises(ParamsError, match="no usable model fingerprint"):  # never served by name
            check_model(p, FP)
    found, skipped = find_params(FP, SHIPPED)
    assert found is None and len(skipped) == len(list(SHIPPED.glob("*.json")))


def test_newest_match_wins(tmp_path):
    fp = FP.as_dict()
    for name, fingerprint, tau, created in (("a", fp, 1, "2026-01-02"), ("b", fp, 2, "2026-01-01"),
                                            ("c", {**fp, "blocks": 5}, 3, "2027-01-01"), ("d", fp, "x", "2028-01-01")):
        _write(tmp_path, f"{name}.json", model="m", model_fingerprint=fingerprint, tau_hbar=tau, tau_pri=3,
               created_utc=f"{created}T00:00:00Z")
    found, skipped = find_params(FP, tmp_path)
    assert found.path.name == "a.json"
    reasons = {s["path"].rsplit("/", 1)[1]: s["reason"] for s in skipped}
    assert set(reasons) == {"c.json", "d.json"} and "blocks 5 ≠ 4" in reasons["c.json"]


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

    from app.calibration.probe_files import load_probe

    path = max(SHIPPED.glob("smollm2-135m-instruct*_n*.json"))
    p = load_params(path)
    assert p.probe is not None and p.probe.position == p.data["probe"]
    assert p.data["risk"]["detector"] in p.data["ranking"] and p.data["drift_reference"]["risk"]
    for name, entry in p.data["detectors"].items():  # every probe file named in the params is intact
        if name.startswith("probe_"):
            load_probe(SHIPPED / entry["file"], entry["sha256"])
    _json.dumps(p.summary())
