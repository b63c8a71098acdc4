"""Bulk DNC import: millions of numbers in one transaction, all or nothing.

1. The file's bytes stream into a temporary staging table with COPY (asyncpg
   `copy_to_table`), one row per line with its line number; nothing is parsed in
   Python, so the client costs almost nothing and progress is bytes sent. The
   table's generated column normalises each line as it lands (`dnc_normalize`,
   migration 0006): NULL for a line that is not a phone number.
2. One scan counts those lines. Any at all aborts the transaction: nothing is
   imported, and the report names the first of them by line number.
3. One INSERT … SELECT adds the distinct numbers not yet listed:
   * row by row into the live table, in index order (`… WHERE NOT EXISTS …
     ORDER BY number`: sorted input keeps index maintenance near-sequential, and
     no ON CONFLICT means no per-row speculative insertion — imports are
     serialised by an advisory lock, and an API write of the same entry at the
     same moment makes the import fail whole, to be re-run); or
   * for a large registry import (national/state registry, litigators: at least
     `REBUILD_MIN` numbers and a quarter of the registry partition), into a fresh
     table holding the partition's rows plus the new ones, whose unique index is
     then built in one sorted pass and which replaces the partition in the same
     transaction — the way a bulk load is fast. Registry writers wait for the
     import; lookups continue, pausing only for the swap at the commit.

Blank lines, lines starting with `#` and a first line without digits (a CSV
header) are skipped. Re-importing the same file changes nothing, so an import
can simply be re-run; with `expires_at`, entries already listed take that
expiry too (such an import is always row by row).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO

import asyncpg

from guardrails.policy import SOURCES

CHUNK = 1 << 20
MAX_REPORTED = 20
NO_TIMEOUT = 7 * 86400.0  # a registry-sized import runs for minutes: no command timeout
Progress = Callable[[str, int, int | None], None]  # phase, done, total (None: unknown)

# The staging table normalises as the lines arrive: `number` is a generated column, so COPY
# computes it once per line (NULL: not a phone number) and nothing reads the lines twice.
_STAGE = """
CREATE TEMP TABLE dnc_import_lines (
    line_no bigint GENERATED ALWAYS AS IDENTITY,
    raw     text,
    number  text COLLATE "C" GENERATED ALWAYS AS (dnc_normalize(raw)) STORED
) ON COMMIT DROP
"""

# Lines that are not meant to hold a number: blank, `#` comments, a first line with no digit.
_CONTENT = """raw IS NOT NULL AND btrim(raw) <> '' AND left(btrim(raw), 1) <> '#'
              AND NOT (line_no = 1 AND raw !~ '[0-9]')"""

_VERDICT = f"""
SELECT count(*) AS total, count(*) FILTER (WHERE number IS NULL) AS rejected
  FROM dnc_import_lines WHERE {_CONTENT}
"""

# Row by row (small imports, and the managed partition): one statement inserts the distinct
# numbers not listed yet, in index order; numbers already listed (same number, source and
# scope) are left alone, unless the import sets an expiry, which the CTE `expiring` applies.
_INSERT = """
WITH expiring AS (
    UPDATE dnc_entries d SET expires_at = $3
      FROM (SELECT DISTINCT number FROM dnc_import_lines WHERE number IS NOT NULL) s
     WHERE $3::timestamptz IS NOT NULL
       AND d.number = s.number AND d.source = $2::dnc_source AND {scope}
       AND d.expires_at IS DISTINCT FROM $3
    RETURNING 1
), written AS (
    INSERT INTO dnc_entries (number, tenant_id, source, expires_at, note, origin)
    SELECT s.number, $1::uuid, $2::dnc_source, $3::timestamptz, $4, $5
      FROM (SELECT DISTINCT number FROM dnc_import_lines WHERE number IS NOT NULL) s
     WHERE NOT EXISTS (
            SELECT 1 FROM dnc_entries d
             WHERE d.number = s.number AND d.source = $2::dnc_source AND {scope})
     ORDER BY s.number
    RETURNING 1
)
SELECT (SELECT count(*) FROM written) AS inserted, (SELECT count(*) FROM expiring) AS updated
"""

# Rebuild (a large import into the registry partition): the partition's rows and the new
# numbers go, in one INSERT … SELECT, into a fresh table with no index; the index is then built
# in one sorted pass — the way a bulk load is fast — and the table replaces the partition.
# Writers of registry entries wait (SHARE lock) for the import; readers never do, except for the
# few milliseconds of the swap at the end.
REGISTRY = "dnc_entries_registry"
REGISTRY_SOURCES = ("national_registry", "state_registry", "litigator")
_NEXT = "dnc_entries_registry_next"
_REBUILD_INSERT = f"""
INSERT INTO {_NEXT}
SELECT * FROM {REGISTRY}
UNION ALL
SELECT s.number, $1::uuid, $2::dnc_source, NULL::timestamptz, $3, $4, NULL::uuid, now()
  FROM (SELECT DISTINCT number FROM dnc_import_lines WHERE number IS NOT NULL) s
 WHERE NOT EXISTS (
        SELECT 1 FROM {REGISTRY} d
         WHERE d.number = s.number AND d.source = $2::dnc_source AND {{scope}})
"""
_IN_REGISTRY = ", ".join(f"'{src}'" for src in REGISTRY_SOURCES)
_REBUILD_SWAP = f"""
ALTER TABLE dnc_entries DETACH PARTITION {REGISTRY};
ALTER TABLE dnc_entries ATTACH PARTITION {_NEXT} FOR VALUES IN ({_IN_REGISTRY});
DROP TABLE {REGISTRY};
ALTER TABLE {_NEXT} RENAME TO {REGISTRY};
ALTER TABLE {REGISTRY} RENAME CONSTRAINT {_NEXT}_source TO {REGISTRY}_source;
ALTER INDEX {_NEXT}_key RENAME TO {REGISTRY}_key;
"""
REBUILD_MIN = 200_000  # below this many numbers, row by row is as fast

# `tenant_id IS NOT DISTINCT FROM $1` cannot use the index: one text per scope instead.
_GLOBAL, _TENANT = "d.tenant_id IS NULL AND $1::uuid IS NULL", "d.tenant_id = $1::uuid"


_REJECTED = f"""
SELECT line_no, raw FROM dnc_import_lines
 WHERE {_CONTENT} AND number IS NULL
 ORDER BY line_no LIMIT {MAX_REPORTED}
"""


@dataclass
class ImportReport:
    source: str
    tenant: str | None
    lines: int = 0  # lines holding a number (blank, comment and header lines excluded)
    inserted: int = 0
    updated: int = 0
    rejected: int = 0
    rejected_lines: list[tuple[int, str]] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    copy_seconds: float = 0.0  # streaming the file into the staging table
    rebuilt: bool = False  # the registry partition was rebuilt (a large import)

    @property
    def unchanged(self) -> int:
        """Numbers already listed as given (a re-import) or repeated within the file."""
        return self.lines - self.inserted - self.updated

    @property
    def rate(self) -> float:
        return self.lines / self.seconds if self.seconds else 0.0


class ImportRejected(Exception):
    """Some lines are not phone numbers; nothing was imported."""

    def __init__(self, report: ImportReport) -> None:
        self.report = report
        shown = "\n".join(f"  line {n}: {raw!r}" for n, raw in report.rejected_lines)
        more = report.rejected - len(report.rejected_lines)
        tail = f"\n  … and {more} more" if more > 0 else ""
        super().__init__(
            f"{report.rejected} of {report.lines} lines are not phone numbers; "
            f"nothing was imported:\n{shown}{tail}"
        )


class ImportFailed(Exception):
    """The database refused the file (e.g. invalid UTF-8); nothing was imported."""


async def _chunks(
    stream: IO[bytes], total: int | None, progress: Progress | None
) -> AsyncIterator[bytes]:
    sent = 0
    while True:
        chunk = await asyncio.to_thread(stream.read, CHUNK)
        if not chunk:
            break
        sent += len(chunk)
        if progress:
            progress("copy", sent, total)
        yield chunk


async def import_numbers(
    conn: asyncpg.Connection,
    stream: IO[bytes],
    *,
    source: str,
    tenant_id: uuid.UUID | None = None,
    tenant: str | None = None,
    expires_at: datetime | None = None,
    note: str | None = None,
    total_bytes: int | None = None,
    progress: Progress | None = None,
    rebuild_min: int = REBUILD_MIN,
) -> ImportReport:
    """Import every number in `stream` (one per line, or CSV with the number first), atomically."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}")
    report = ImportReport(source=source, tenant=tenant, bytes=total_bytes or 0)
    started = time.perf_counter()
    origin = f"import:{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL work_mem = '256MB'")
            # one sort gives both DISTINCT and the index order (a hash would need a second)
            await conn.execute("SET LOCAL enable_hashagg = off")
            # Imports run one at a time: the insert skips numbers already listed, so two
            # overlapping imports at once would collide on the unique index.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('trunkline.dnc_import'))")
            await conn.execute(_STAGE)
            await conn.copy_to_table(
                "dnc_import_lines",
                source=_chunks(stream, total_bytes, progress),
                columns=["raw"],
                format="csv",
                delimiter="\x01",
                quote="\x02",
                timeout=NO_TIMEOUT,
            )
            report.copy_seconds = time.perf_counter() - started
            if progress:
                progress("validate+insert", 0, None)
            verdict = await conn.fetchrow(_VERDICT, timeout=NO_TIMEOUT)
            report.lines, report.rejected = verdict["total"], verdict["rejected"]
            if report.rejected:
                rejected = await conn.fetch(_REJECTED, timeout=NO_TIMEOUT)
                report.rejected_lines = [(r["line_no"], r["raw"]) for r in rejected]
                raise ImportRejected(report)
            scope = _GLOBAL if tenant_id is None else _TENANT
            if await _rebuilds(conn, source, expires_at, report.lines, rebuild_min):
                report.rebuilt = True
                report.inserted = await _rebuild(conn, scope, tenant_id, source, note, origin)
            else:
                row = await conn.fetchrow(
                    _INSERT.format(scope=scope),
                    tenant_id,
                    source,
                    expires_at,
                    note,
                    origin,
                    timeout=NO_TIMEOUT,
                )
                report.inserted, report.updated = row["inserted"], row["updated"]
    except asyncpg.UniqueViolationError as exc:
        raise ImportFailed(
            "an entry of this file was added by someone else during the import; "
            "nothing was imported: run it again"
        ) from exc
    except asyncpg.PostgresError as exc:
        raise ImportFailed(f"the database refused the file; nothing was imported: {exc}") from exc
    report.seconds = time.perf_counter() - started
    return report


async def _rebuilds(
    conn: asyncpg.Connection,
    source: str,
    expires_at: datetime | None,
    numbers: int,
    rebuild_min: int,
) -> bool:
    """Rebuild the registry partition when the import is large next to it (and sets no expiry)."""
    if source not in REGISTRY_SOURCES or expires_at is not None or numbers < rebuild_min:
        return False
    existing = await conn.fetchval(
        "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = $1::regclass", REGISTRY
    )
    return numbers * 4 >= existing


async def _rebuild(
    conn: asyncpg.Connection,
    scope: str,
    tenant_id: uuid.UUID | None,
    source: str,
    note: str | None,
    origin: str,
) -> int:
    await conn.execute(f"LOCK TABLE {REGISTRY} IN SHARE MODE")
    before = await conn.fetchval(f"SELECT count(*) FROM {REGISTRY}", timeout=NO_TIMEOUT)
    await conn.execute(
        f"""
        CREATE TABLE {_NEXT} (LIKE dnc_entries INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
        ALTER TABLE {_NEXT}
            ADD CONSTRAINT {_NEXT}_source CHECK (source IN ({_IN_REGISTRY})),
            ADD CONSTRAINT {_NEXT}_tenant_id_fkey FOREIGN KEY (tenant_id)
                REFERENCES tenants (id) ON DELETE CASCADE;
        """
    )
    status = await conn.execute(
        _REBUILD_INSERT.format(scope=scope), tenant_id, source, note, origin, timeout=NO_TIMEOUT
    )
    await conn.execute("SET LOCAL maintenance_work_mem = '512MB'")
    await conn.execute(
        f"CREATE UNIQUE INDEX {_NEXT}_key ON {_NEXT} (number, source, tenant_id) "
        "NULLS NOT DISTINCT",
        timeout=NO_TIMEOUT,
    )
    await conn.execute(_REBUILD_SWAP, timeout=NO_TIMEOUT)
    return int(status.split()[-1]) - before


async def import_file(
    pool: asyncpg.Pool,
    path: str | Path,
    *,
    source: str,
    tenant: str | None = None,
    expires_at: datetime | None = None,
    note: str | None = None,
    progress: Progress | None = None,
) -> ImportReport:
    """`import_numbers` for a file path ('-' is stdin), into a tenant's list or the global one."""
    async with pool.acquire() as conn:
        tenant_id = None
        if tenant is not None:
            tenant_id = await conn.fetchval("SELECT id FROM tenants WHERE name = $1", tenant)
            if tenant_id is None:
                raise ImportFailed(f"no tenant named {tenant!r}")
        if str(path) == "-":
            return await import_numbers(
                conn,
                sys.stdin.buffer,
                source=source,
                tenant_id=tenant_id,
                tenant=tenant,
                expires_at=expires_at,
                note=note,
                progress=progress,
            )
        fh = await asyncio.to_thread(open, path, "rb")
        try:
            return await import_numbers(
                conn,
                fh,
                source=source,
                tenant_id=tenant_id,
                tenant=tenant,
                expires_at=expires_at,
                note=note,
                total_bytes=os.fstat(fh.fileno()).st_size,
                progress=progress,
            )
        finally:
            fh.close()


class ProgressBar:
    """A progress bar on a terminal (redrawn in place), or a line per 10% when piped."""

    def __init__(self, stream: IO[str] = sys.stderr, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.tty = stream.isatty()
        self.started = time.perf_counter()
        self._last_decile = -1
        self._phase = ""

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        elapsed = max(time.perf_counter() - self.started, 1e-6)
        if phase != self._phase and self._phase == "copy" and self.tty:
            self.stream.write("\n")
        self._phase = phase
        if phase != "copy":
            self.stream.write(f"{phase}: normalising, checking and inserting …\n")
            self.stream.flush()
            return
        mb = done / 1e6
        if total:
            frac = min(1.0, done / total)
            bar = "#" * int(frac * self.width)
            line = f"copy [{bar:<{self.width}}] {frac:6.1%} {mb:8.1f} MB {mb / elapsed:6.1f} MB/s"
            decile = int(frac * 10)
        else:
            line = f"copy {mb:8.1f} MB {mb / elapsed:6.1f} MB/s"
            decile = int(mb // 100)
        if self.tty:
            self.stream.write("\r" + line)
        elif decile != self._last_decile:
            self._last_decile = decile
            self.stream.write(line + "\n")
        self.stream.flush()
