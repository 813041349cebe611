"""The response log's store: SQLite (WAL) by default, PostgreSQL for several replicas, through
SQLAlchemy Core. The schema comes from the Alembic migrations in `migrations/` (run at open); the
table is reflected from the database, so the migrations are its one definition.

Rows are dicts with the table's columns; times (`ts`) are UNIX seconds. Pages are ordered newest
first by (ts, id), and a cursor is the (ts, id) of the last row of the previous page.
"""

import base64
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import REGCLASS

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
TABLE = "responses"
LABELS = ("hallucinated", "correct")
_MIGRATION_LOCK = 7_411_902  # PostgreSQL advisory lock: replicas starting together migrate one at a time
_PRUNE_LOCK = 7_411_903  # PostgreSQL advisory lock: one replica at a time prunes by size
SIZE_HEADROOM = 0.9  # a store over its size limit is pruned to this share of it
_SIZE_ROUNDS = 5  # prune-and-measure rounds at most (the size per entry is an estimate)


class BadCursor(ValueError):
    """A `cursor` that no page of this log handed out."""


@dataclass
class Filters:
    """What /monitor/responses and the export select; None: no condition."""

    since: float | None = None
    until: float | None = None
    route: str | None = None
    quadrant: str | None = None  # Q1..Q4, or "none" for unassessed responses
    risk_above: float | None = None
    flagged: bool | None = None
    labelled: bool | None = None


def database_url(log_url: str | None, state_dir: Path) -> str:
    """SQLAlchemy URL of the log: `log_url` (postgresql://… uses psycopg 3), else SQLite in `state_dir`."""
    if log_url is None:
        return f"sqlite:///{Path(state_dir) / 'responses.sqlite3'}"
    if log_url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + log_url.split("://", 1)[1]
    return log_url


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new file: pruned pages can be freed
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer; a crash keeps the file intact
    cursor.execute("PRAGMA synchronous=FULL")  # a committed batch survives power loss too
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the newest migration (idempotent; concurrent replicas are serialised)."""
    logging.getLogger("alembic").setLevel(logging.WARNING)  # not a line per plugin and step at every start
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def encode_cursor(row: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps([row["ts"], row["id"]]).encode()).decode()


def decode_cursor(cursor: str) -> tuple:
    try:
        ts, rid = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not isinstance(rid, str):
            raise ValueError
        return float(ts), rid
    except (ValueError, TypeError, UnicodeError):
        raise BadCursor("not a cursor this log handed out") from None


class Store:
    """One log database (thread-safe: SQLAlchemy pools connections)."""

    def __init__(self, url: str):
        self.url = url
        if url.startswith("sqlite:"):
            Path(url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
            self.engine = sa.create_engine(url)
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = sa.create_engine(url, pool_pre_ping=True)
        migrate(self.engine)
        self.table = sa.Table(TABLE, sa.MetaData(), autoload_with=self.engine)
        self.columns = [c.name for c in self.table.columns]

    def close(self) -> None:
        self.engine.dispose()

    def insert(self, rows: list) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.insert(self.table), rows)

    def prune(self, older_than: float, max_rows: int) -> int:
        """Delete rows older than `older_than` and, beyond `max_rows`, the oldest; the number deleted."""
        t = self.table
        with self.engine.begin() as conn:
            n = conn.execute(sa.delete(t).where(t.c.ts < older_than)).rowcount
            return n + self._keep_newest(conn, max_rows)

    def _keep_newest(self, conn, keep: int) -> int:
        """Delete all but the newest `keep` rows (rows sharing the cut's time go too); the number deleted."""
        t = self.table
        cutoff = conn.execute(sa.select(t.c.ts).order_by(t.c.ts.desc()).offset(keep).limit(1)).scalar()
        return 0 if cutoff is None else conn.execute(sa.delete(t).where(t.c.ts <= cutoff)).rowcount

    def size(self) -> int:
        """Bytes the log takes: on SQLite the database pages in use ((page_count - freelist_count) x
        page_size, the write-ahead log not counted), on PostgreSQL pg_total_relation_size of the table
        (its heap, TOAST and indexes)."""
        with self.engine.connect() as conn:
            return self._size(conn)

    def _size(self, conn) -> int:
        if conn.dialect.name == "sqlite":
            pragma = conn.exec_driver_sql
            pages = pragma("PRAGMA page_count").scalar() - pragma("PRAGMA freelist_count").scalar()
            return pages * pragma("PRAGMA page_size").scalar()
        return conn.execute(sa.select(sa.func.pg_total_relation_size(sa.cast(TABLE, REGCLASS)))).scalar_one()

    def prune_to_size(self, max_bytes: int) -> int:
        """When the log takes more than `max_bytes`, delete the oldest rows until it takes at most
        SIZE_HEADROOM of that, and give the space back (see `_reclaim`); the number deleted. On
        PostgreSQL one replica at a time does it (another's turn returns 0)."""
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            postgres = conn.dialect.name == "postgresql"
            if postgres and not conn.execute(sa.select(sa.func.pg_try_advisory_lock(_PRUNE_LOCK))).scalar():
                return 0
            try:
                return self._prune_to_size(conn, max_bytes)
            finally:
                if postgres:
                    conn.execute(sa.select(sa.func.pg_advisory_unlock(_PRUNE_LOCK)))

    def _prune_to_size(self, conn, max_bytes: int) -> int:
        deleted = 0
        for _ in range(_SIZE_ROUNDS):
            size = self._size(conn)
            if size <= max_bytes:
                break
            rows = conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one()
            if rows == 0:
                break
            deleted += self._keep_newest(conn, int(rows * SIZE_HEADROOM * max_bytes / size))
            self._reclaim(conn)
        return deleted

    @staticmethod
    def _reclaim(conn) -> None:
        """Return the space of deleted rows to the file system, so that `size` sees it gone: SQLite
        frees its empty pages (a log created in incremental auto-vacuum mode) and truncates the
        write-ahead log; PostgreSQL rewrites the table (VACUUM FULL: writers wait meanwhile)."""
        if conn.dialect.name == "sqlite":
            # executescript steps the pragma to the end (a plain execute frees one page)
            conn.connection.driver_connection.executescript(
                "PRAGMA incremental_vacuum; PRAGMA wal_checkpoint(TRUNCATE);")
        else:
            conn.exec_driver_sql("VACUUM FULL responses")

    def get(self, response_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(self.table).where(self.table.c.id == response_id)).mappings().first()
        return dict(row) if row else None

    def label(self, response_id: str, label: str, note: str | None, now: float) -> dict | None:
        """Set the label of a row; its previous (label, note), or None when there is no such row."""
        t = self.table
        with self.engine.begin() as conn:
            before = conn.execute(sa.select(t.c.label, t.c.note).where(t.c.id == response_id)).first()
            if before is None:
                return None
            conn.execute(sa.update(t).where(t.c.id == response_id).values(label=label, note=note, labelled_ts=now))
        return {"label": before.label, "note": before.note}

    def _where(self, f: Filters) -> list:
        t, out = self.table, []
        if f.since is not None:
            out.append(t.c.ts >= f.since)
        if f.until is not None:
            out.append(t.c.ts < f.until)
        if f.route is not None:
            out.append(t.c.route == f.route)
        if f.quadrant is not None:
            out.append(t.c.quadrant.is_(None) if f.quadrant == "none" else t.c.quadrant == f.quadrant)
        if f.risk_above is not None:
            out.append(t.c.risk > f.risk_above)
        if f.flagged is not None:
            out.append(t.c.flagged.is_(f.flagged))
        if f.labelled is not None:
            out.append(t.c.label.is_not(None) if f.labelled else t.c.label.is_(None))
        return out

    def page(self, f: Filters, limit: int, cursor: str | None = None) -> tuple:
        """(rows newest first, the cursor of the next page or None)."""
        t = self.table
        query = sa.select(t).where(*self._where(f)).order_by(t.c.ts.desc(), t.c.id.desc()).limit(limit + 1)
        if cursor is not None:
            ts, rid = decode_cursor(cursor)
            query = query.where(sa.or_(t.c.ts < ts, sa.and_(t.c.ts == ts, t.c.id < rid)))
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, encode_cursor(rows[-1]) if more else None

    def rows(self, f: Filters, columns: list | None = None, batch: int = 1000):
        """Every matching row, oldest first, read in batches (for summaries and exports)."""
        t = self.table
        cols = [t.c[name] for name in columns] if columns else [t]
        query = sa.select(*cols).where(*self._where(f)).order_by(t.c.ts, t.c.id)
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=batch).execute(query).mappings()
            for row in result:
                yield dict(row)

    def bucket_counts(self, since: float, until: float, bucket_s: float) -> list:
        """The entries of [since, until) counted in SQL per (bucket, quadrant, replica), bucket being
        the index of the `bucket_s` wide slice from `since`: dicts with "bucket", "quadrant",
        "replica", "count", "flagged" and "inside" (how many are flagged / in distribution) out of
        "flagged_known" and "inside_known" (those where it is known), and "latency_sum"."""
        t = self.table
        offset = (t.c.ts - since) / bucket_s  # >= 0 in the window: SQLite's CAST truncates, PostgreSQL's rounds
        whole = sa.func.floor(offset) if self.engine.dialect.name == "postgresql" else offset
        bucket = sa.cast(whole, sa.Integer).label("bucket")
        query = (sa.select(bucket, t.c.quadrant, t.c.replica, sa.func.count().label("count"),
                           sa.func.sum(sa.cast(t.c.flagged, sa.Integer)).label("flagged"),
                           sa.func.count(t.c.flagged).label("flagged_known"),
                           sa.func.sum(sa.cast(t.c.in_distribution, sa.Integer)).label("inside"),
                           sa.func.count(t.c.in_distribution).label("inside_known"),
                           sa.func.sum(t.c.latency_s).label("latency_sum"))
                 .where(*self._where(Filters(since=since, until=until)))
                 .group_by(sa.literal_column("bucket"), t.c.quadrant, t.c.replica))  # by name: one expression
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def newest(self, f: Filters, columns: list, limit: int) -> list:
        """The newest `limit` matching rows (only `columns`), newest first."""
        t = self.table
        query = sa.select(*(t.c[name] for name in columns)).where(*self._where(f))
        query = query.order_by(t.c.ts.desc(), t.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one()
