"""Schemathesis fuzz of every route of a live server on the tiny llama: about 100 generated requests
(bench/fuzz.py's `run_fuzz`; the bench itself sends 1000+)."""


import pytest

pytest.importorskip("schemathesis")

from support import load_bench  # noqa: E402


fuzz = load_bench("fuzz")

TOTAL = 100  # requests, spread over every operation and generation mode (fuzz.examples_for_total)


@pytest.fixture(scope="module")
def report(tiny_model_path, tmp_path_factory):
    with fuzz.serve(tiny_model_path("llama"), tmp_path_factory.mktemp("fuzz"), max_tokens_limit=8,
                    default_max_tokens=8) as (url, _app, _engine):
        result = fuzz.run_fuzz(url, total=TOTAL, seed=0, request_timeout_s=30, time_budget_s=45, job_wait_s=20)
    result.print()  # shown by pytest when a test fails: every failing case in full, with a curl command
    return result


def _cases(findings: list) -> str:
    return "\n\n".join(f"{f.operation} ({f.mode}) -> {f.status}: {', '.join(f.checks)}\n{f.report}"
                       for f in findings[:5])


def test_fuzz_sent_about_100_requests(report):
    assert 0.8 * TOTAL <= report.requests <= 1.5 * TOTAL and not report.stopped_early, report.requests
    assert report.transport_errors == 0


def test_no_response_is_a_server_error(report):
    assert report.server_errors == 0, _cases(report.of_kind("server error"))
    assert not report.of_kind("server error"), _cases(report.of_kind("server error"))


def test_no_schema_violations(report):
    assert not report.schema_violations, _cases(report.schema_violations)


def test_started_calibration_jobs_stop_when_cancelled(report):
    assert not report.of_kind("job"), _cases(report.of_kind("job"))


def test_every_status_code_is_documented(report):
    assert not report.of_kind("undocumented status"), _cases(report.of_kind("undocumented status"))
