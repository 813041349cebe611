"""PostgreSQL for the log tests: a fresh database per test on the server HALLUWATCH_TEST_POSTGRES_URL
names (its role needs CREATEDB). Without that URL the PostgreSQL tests fail in CI (CI=true) and are
skipped elsewhere."""

import os
import uuid
from contextlib import contextmanager

import pytest

URL_VARIABLE = "HALLUWATCH_TEST_POSTGRES_URL"
STORES = ("sqlite", "postgresql")


def server_url() -> str:
    """The test server's URL; fails in CI and skips elsewhere when it is not set."""
    url = os.environ.get(URL_VARIABLE)
    if not url:
        message = f"{URL_VARIABLE} is not set: the PostgreSQL log tests need a server (.ci/run starts one)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return url


@contextmanager
def fresh_database(server: str | None = None):
    """Yield the postgresql:// URL of a new, empty database on `server` (default: the test server);
    dropped afterwards."""
    import sqlalchemy as sa

    from app.monitor.store import database_url

    url = server or server_url()
    name = f"halluwatch_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(database_url(url, None), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield sa.make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def log_url(kind: str):
    """The log_url setting of a fresh log of `kind` ("sqlite": None, the default store)."""
    if kind == "sqlite":
        yield None
    else:
        with fresh_database() as url:
            yield url
