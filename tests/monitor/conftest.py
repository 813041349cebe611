"""Fixtures of the log tests."""

import pytest
from support.postgres import STORES, log_url

from app.monitor.store import Store, database_url


@pytest.fixture(params=STORES)
def store(request, tmp_path):
    """An empty log store, on SQLite and on PostgreSQL."""
    with log_url(request.param) as url:
        s = Store(database_url(url, tmp_path))
        yield s
        s.close()
