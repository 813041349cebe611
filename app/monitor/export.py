"""Log entries as the API shows them, and exported to JSON Lines, CSV or Parquet (pyarrow)."""

import csv
import json
from pathlib import Path

from ..storage import atomic_path
from .summary import iso

FORMATS = ("jsonl", "csv", "parquet")


def present(row: dict) -> dict:
    """A stored row as /monitor/responses and the export give it: `response_id`, ISO `time`, the rest."""
    out = {"response_id": row["id"], "time": iso(row["ts"])}
    out.update((k, v) for k, v in row.items() if k != "id")
    return out


def flat(row: dict) -> dict:
    """One level (CSV, Parquet): `scores` become `score_<name>` columns."""
    out = {k: v for k, v in row.items() if k != "scores"}
    out.update((f"score_{k}", v) for k, v in (row.get("scores") or {}).items())
    return out


def _jsonl(rows, f) -> int:
    n = 0
    for row in rows:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        n += 1
    return n


def _csv(rows, f) -> int:
    rows = [flat(r) for r in rows]
    fields = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return len(rows)


def export(rows, fmt: str, out: Path | None) -> int:
    """Write the presented `rows` to `out` (atomically: a partial file never replaces it) or, for
    jsonl and csv, to stdout when `out` is None; the number written."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    if out is None:
        if fmt == "parquet":
            raise ValueError("parquet needs --out")
        import sys

        return (_jsonl if fmt == "jsonl" else _csv)(rows, sys.stdout)
    with atomic_path(out) as tmp:
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist([flat(r) for r in rows])
            pq.write_table(table, tmp)
            return table.num_rows
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            return (_jsonl if fmt == "jsonl" else _csv)(rows, f)
