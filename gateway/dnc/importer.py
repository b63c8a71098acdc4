"""Bulk DNC import: millions of numbers in one transaction, all or nothing.

1. The file streams through `gateway.dnc.lines` on its way into COPY: each line is checked
   and normalised to E.164 as it goes by (registry files in whole blocks at C speed), so the
   database receives finished numbers only — one text column, nothing left to normalise. A
   line that is not a number is counted with its line number; any at all aborts the
   transaction: nothing is imported, and the report names the first of them.
2. Where the numbers land depends on the size of the import:
   * Directly into the new registry partition — a large registry import (national/state
     registry, litigators: at least `REBUILD_MIN` numbers and a quarter of the registry
     partition) that is the first list of its source and scope. The COPY writes the final
     rows (the constant columns come from the table's defaults for the duration of the load),
     the partition's other rows are appended, and the unique index is built in one pass;
     that index build is also the duplicate check (a file that repeats a number is then
     de-duplicated in one more pass). The table replaces the partition in the same
     transaction. This is the floor's own recipe — COPY into an unindexed table, then
     CREATE UNIQUE INDEX — with no staging table, no second copy of the rows and no per-row
     work in SQL.
   * Into a temporary staging table, then one INSERT … SELECT adds the distinct numbers not
     yet listed: row by row into the live table in index order (`… WHERE NOT EXISTS … ORDER BY
     number`: sorted input keeps index maintenance near-sequential, and no ON CONFLICT means no
     per-row speculative insertion — imports are serialised by an advisory lock, and an API
     write of the same entry at the same moment makes the import fail whole, to be re-run); or,
     for a large registry import onto a list that already has entries of its source and scope
     (a re-import), into a fresh table holding the partition's rows plus the new ones, indexed
     in one pass and swapped in as above.
   Registry writers wait for a registry rebuild; lookups continue, pausing only for the swap
   at the commit.

Blank lines, lines starting with `#` and a first line without digits (a CSV header) are
skipped. Re-importing the same file changes nothing, so an import can simply be re-run; with
`expires_at`, entries already listed take that expiry too (such an import is always row by
row).
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

from gateway.dnc.lines import LineScan, UnreadableLine, e164_lines
from guardrails.policy import SOURCES

CHUNK = 1 << 20
NO_TIMEOUT = 7 * 86400.0  # a registry-sized import runs for minutes: no command timeout
Progress = Callable[[str, int, int | None], None]  # phase, done, total (None: unknown)

# The staging table of the row-by-row path: finished E.164 numbers, one per line of the file.
_STAGING = "dnc_import_numbers"
_STAGE = f'CREATE TEMP TABLE {_STAGING} (number text COLLATE "C" NOT NULL) ON COMMIT DROP'

# Row by row (small imports, and the managed partition): one statement inserts the distinct
# numbers not listed yet, in index order; numbers already listed (same number, source and
# scope) are left alone, unless the import sets an expiry, which the CTE `expiring` applies.
_INSERT = """
WITH expiring AS (
    UPDATE dnc_entries d SET expires_at = $3
      FROM (SELECT DISTINCT number FROM {staging}) s
     WHERE $3::timestamptz IS NOT NULL
       AND d.number = s.number AND d.source = $2::dnc_source AND {scope}
       AND d.expires_at IS DISTINCT FROM $3
    RETURNING 1
), written AS (
    INSERT INTO dnc_entries (number, tenant_id, source, expires_at, note, origin)
    SELECT s.number, $1::uuid, $2::dnc_source, $3::timestamptz, $4, $5
      FROM (SELECT DISTINCT number FROM {staging}) s
     WHERE NOT EXISTS (
            SELECT 1 FROM dnc_entries d
             WHERE d.number = s.number AND d.source = $2::dnc_source AND {scope})
     ORDER BY s.number
    RETURNING 1
)
SELECT (SELECT count(*) FROM written) AS inserted, (SELECT count(*) FROM expiring) AS updated
"""

# Rebuild (a large import into the registry partition): the partition's rows and the new
# numbers go into a fresh table with no index; the index is then built in one pass — the way a
# bulk load is fast — and the table replaces the partition. Writers of registry entries wait
# (SHARE lock) for the import; readers never do, except for the few milliseconds of the swap.
REGISTRY = "dnc_entries_registry"
REGISTRY_SOURCES = ("national_registry", "state_registry", "litigator")
_NEXT = "dnc_entries_registry_next"
_REBUILD_INSERT = f"""
INSERT INTO {_NEXT}
SELECT * FROM {REGISTRY}
UNION ALL
SELECT s.number, $1::uuid, $2::dnc_source, NULL::timestamptz, $3, $4, NULL::uuid, now()
  FROM (SELECT DISTINCT number FROM {_STAGING}) s
 WHERE NOT EXISTS (
        SELECT 1 FROM {REGISTRY} d
         WHERE d.number = s.number AND d.source = $2::dnc_source AND {{scope}})
"""
_IN_REGISTRY = ", ".join(f"'{src}'" for src in REGISTRY_SOURCES)
_CREATE_NEXT = f"""
CREATE TABLE {{name}} (LIKE dnc_entries INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
ALTER TABLE {{name}} ADD CONSTRAINT {_NEXT}_source CHECK (source IN ({_IN_REGISTRY}));
"""
# Added once the rows are in: one validating scan instead of an RI trigger event per row.
_NEXT_FK = f"""
ALTER TABLE {_NEXT} ADD CONSTRAINT {_NEXT}_tenant_id_fkey FOREIGN KEY (tenant_id)
    REFERENCES tenants (id) ON DELETE CASCADE
"""
_NEXT_KEY = (
    f"CREATE UNIQUE INDEX {_NEXT}_key ON {_NEXT} (number, source, tenant_id) NULLS NOT DISTINCT"
)
# Direct load: what every row of the import shares comes from column defaults, so the COPY
# carries the number alone (format: %L quotes the values, the note is the operator's text).
_LOAD_DEFAULTS = f"""
SELECT format('ALTER TABLE {_NEXT} ALTER source SET DEFAULT %L, ALTER tenant_id SET DEFAULT %L,
               ALTER note SET DEFAULT %L, ALTER origin SET DEFAULT %L', $1::text, $2::text,
               $3::text, $4::text)
"""
# ... and afterwards the partition gets the parent's defaults back.
_PARENT_DEFAULTS = f"""
SELECT 'ALTER TABLE {_NEXT} ' || string_agg(format('ALTER %I %s', a.attname,
           coalesce('SET DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), 'DROP DEFAULT')), ', ')
  FROM pg_attribute a
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attrelid = 'dnc_entries'::regclass AND a.attname IN ('source', 'tenant_id', 'note', 'origin')
"""
# The parent's partial index for GET /v1/dnc (migration 0017) is built here under our name:
# ATTACH would otherwise build it itself and name it after the `_next` table. It holds only
# tenants' entries, so for a global list it is a scan that indexes nothing.
_REBUILD_SWAP = f"""
CREATE INDEX {_NEXT}_tenant_created ON {_NEXT} (tenant_id, created_at DESC, number DESC, source DESC)
    WHERE tenant_id IS NOT NULL;
ALTER TABLE dnc_entries DETACH PARTITION {REGISTRY};
ALTER TABLE dnc_entries ATTACH PARTITION {_NEXT} FOR VALUES IN ({_IN_REGISTRY});
DROP TABLE {REGISTRY};
ALTER TABLE {_NEXT} RENAME TO {REGISTRY};
ALTER TABLE {REGISTRY} RENAME CONSTRAINT {_NEXT}_source TO {REGISTRY}_source;
ALTER INDEX {_NEXT}_key RENAME TO {REGISTRY}_key;
ALTER INDEX {_NEXT}_tenant_created RENAME TO {REGISTRY}_tenant_created;
"""
REBUILD_MIN = 200_000  # below this many numbers, row by row is as fast
# The index build's sort memory, for the length of the transaction. (1 GB, enough to sort 10
# million keys in memory, measured no faster than 512 MB here: the build is CPU-bound.)
_INDEX_MEMORY = "SET LOCAL maintenance_work_mem = '512MB'"
_LINE_BYTES = 12  # to judge an import's size from its file's: "+1NXXNXXXXXX\n" is 13

# `tenant_id IS NOT DISTINCT FROM $1` cannot use the index: one text per scope instead.
_GLOBAL, _TENANT = "d.tenant_id IS NULL AND $1::uuid IS NULL", "d.tenant_id = $1::uuid"


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
    copy_seconds: float = 0.0  # streaming the file into the database
    rebuilt: bool = False  # the registry partition was rebuilt (a large import)
    direct: bool = False  # ... with the file's rows copied straight into the new partition

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
    """The file could not be read, or the database refused it; nothing was imported."""


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


async def _numbers(
    stream: IO[bytes], total: int | None, progress: Progress | None, scan: LineScan
) -> AsyncIterator[bytes]:
    """The file's numbers as COPY text; an unreadable line ends the stream (see `scan`)."""
    try:
        async for block in e164_lines(_chunks(stream, total, progress), scan):
            yield block
    except UnreadableLine as exc:
        # Refused once COPY has ended (`_take_scan`): an exception raised inside COPY's
        # source would make asyncpg cancel the statement under the transaction.
        scan.unreadable = exc


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
    target = _Target(
        source=source,
        tenant_id=tenant_id,
        scope=_GLOBAL if tenant_id is None else _TENANT,
        expires_at=expires_at,
        note=note,
        origin=f"import:{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
        rebuild_min=rebuild_min,
    )
    scan = LineScan()
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL work_mem = '256MB'")
            # one sort gives both DISTINCT and the index order (a hash would need a second)
            await conn.execute("SET LOCAL enable_hashagg = off")
            # Imports run one at a time: the insert skips numbers already listed, so two
            # overlapping imports at once would collide on the unique index.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('trunkline.dnc_import'))")
            estimate = None if total_bytes is None else total_bytes // _LINE_BYTES
            direct = await _loads_directly(conn, target, estimate)
            if direct:
                await _create_load_table(conn, target)
            else:
                await conn.execute(_STAGE)
            status = await conn.copy_to_table(
                _NEXT if direct else _STAGING,
                source=_numbers(stream, total_bytes, progress, scan),
                columns=["number"],
                timeout=NO_TIMEOUT,
            )
            report.copy_seconds = time.perf_counter() - started
            _take_scan(report, scan)
            if progress:
                progress("insert", 0, None)
            if direct:
                await _apply_direct(conn, report, target, copied=int(status.split()[-1]))
            else:
                await _apply_staged(conn, report, target)
    except asyncpg.UniqueViolationError as exc:
        raise ImportFailed(
            "an entry of this file was added by someone else during the import; "
            "nothing was imported: run it again"
        ) from exc
    except asyncpg.PostgresError as exc:
        raise ImportFailed(f"the database refused the file; nothing was imported: {exc}") from exc
    report.seconds = time.perf_counter() - started
    return report


@dataclass(frozen=True)
class _Target:
    """Where an import's numbers go, and what every one of its entries shares."""

    source: str
    tenant_id: uuid.UUID | None
    scope: str  # the SQL condition selecting entries of this scope (_GLOBAL or _TENANT)
    expires_at: datetime | None
    note: str | None
    origin: str
    rebuild_min: int


def _take_scan(report: ImportReport, scan: LineScan) -> None:
    """Copy the file's totals into the report; refuse the file if any line was bad."""
    report.lines, report.rejected = scan.lines, scan.rejected
    report.rejected_lines = scan.rejected_lines
    if scan.unreadable is not None:
        raise ImportFailed(f"{scan.unreadable}; nothing was imported")
    if report.rejected:
        raise ImportRejected(report)


async def _existing_registry_rows(conn: asyncpg.Connection) -> int:
    return await conn.fetchval(
        "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = $1::regclass", REGISTRY
    )


async def _rebuilds(conn: asyncpg.Connection, target: _Target, numbers: int) -> bool:
    """Rebuild the registry partition when the import is large next to it (and sets no expiry)."""
    if (
        target.source not in REGISTRY_SOURCES
        or target.expires_at is not None
        or numbers < target.rebuild_min
    ):
        return False
    return numbers * 4 >= await _existing_registry_rows(conn)


async def _loads_directly(conn: asyncpg.Connection, target: _Target, estimate: int | None) -> bool:
    """Should the file's rows be copied straight into a new registry partition?

    Yes for a rebuild-sized import (judged from the file's size) that is the first list of its
    source and scope: then no number of the file can already be listed, and the only duplicates
    the unique index build can meet are the file's own. A re-import takes the staged path,
    whose anti-join leaves what is listed alone. Registry writers wait from here to the commit.
    """
    if estimate is None or not await _rebuilds(conn, target, estimate):
        return False
    await conn.execute(f"LOCK TABLE {REGISTRY} IN SHARE MODE")
    listed = await conn.fetchval(
        f"SELECT EXISTS (SELECT 1 FROM {REGISTRY} d WHERE d.source = $2::dnc_source AND "
        f"{target.scope})",
        target.tenant_id,
        target.source,
        timeout=NO_TIMEOUT,
    )
    return not listed


async def _create_load_table(conn: asyncpg.Connection, target: _Target) -> None:
    """The new partition, with the import's shared values as defaults for the COPY."""
    await conn.execute(_CREATE_NEXT.format(name=_NEXT))
    tenant = None if target.tenant_id is None else str(target.tenant_id)
    ddl = await conn.fetchval(_LOAD_DEFAULTS, target.source, tenant, target.note, target.origin)
    await conn.execute(ddl)


async def _apply_staged(conn: asyncpg.Connection, report: ImportReport, target: _Target) -> None:
    """From the staging table: a rebuild of the registry partition, or row by row."""
    if await _rebuilds(conn, target, report.lines):
        report.rebuilt = True
        report.inserted = await _rebuild(conn, target)
        return
    await _insert_rows(conn, report, target, _STAGING)


async def _insert_rows(
    conn: asyncpg.Connection, report: ImportReport, target: _Target, staging: str
) -> None:
    """Merge `staging` into the target list row by row (inserted and updated counted)."""
    row = await conn.fetchrow(
        _INSERT.format(scope=target.scope, staging=staging),
        target.tenant_id,
        target.source,
        target.expires_at,
        target.note,
        target.origin,
        timeout=NO_TIMEOUT,
    )
    report.inserted, report.updated = row["inserted"], row["updated"]


async def _apply_direct(
    conn: asyncpg.Connection, report: ImportReport, target: _Target, copied: int
) -> None:
    """The rows are in the new partition: add the old ones, index it, swap it in.

    (Judged large from its file's size, the import may hold fewer numbers than a rebuild
    needs; the loaded table then serves as the staging table of the row-by-row insert.)
    """
    if not await _rebuilds(conn, target, report.lines):
        await _insert_rows(conn, report, target, _NEXT)
        await conn.execute(f"DROP TABLE {_NEXT}")
        return
    report.rebuilt = report.direct = True
    await conn.execute(await conn.fetchval(_PARENT_DEFAULTS))
    status = await conn.execute(f"INSERT INTO {_NEXT} SELECT * FROM {REGISTRY}", timeout=NO_TIMEOUT)
    kept = int(status.split()[-1])
    await conn.execute(_NEXT_FK, timeout=NO_TIMEOUT)
    await conn.execute(_INDEX_MEMORY)
    try:
        async with conn.transaction():  # a savepoint: a failed index build leaves the rows
            await conn.execute(_NEXT_KEY, timeout=NO_TIMEOUT)
        report.inserted = copied
    except asyncpg.UniqueViolationError:  # the file repeats a number: keep one of each
        report.inserted = await _deduplicate_next(conn) - kept
        await conn.execute(_NEXT_KEY, timeout=NO_TIMEOUT)
    await conn.execute(_REBUILD_SWAP, timeout=NO_TIMEOUT)


async def _deduplicate_next(conn: asyncpg.Connection) -> int:
    """Replace the loaded table by a copy with one row per key; returns the rows kept.

    Only rows of this import can share a key (see `_loads_directly`), and those are equal.
    """
    dups = f"{_NEXT}_dups"
    await conn.execute(f"ALTER TABLE {_NEXT} RENAME TO {dups}")
    await conn.execute(_CREATE_NEXT.format(name=_NEXT))
    status = await conn.execute(
        f"INSERT INTO {_NEXT} SELECT DISTINCT ON (number, source, tenant_id) * FROM {dups} "
        "ORDER BY number, source, tenant_id",
        timeout=NO_TIMEOUT,
    )
    await conn.execute(f"DROP TABLE {dups}")
    await conn.execute(_NEXT_FK, timeout=NO_TIMEOUT)
    return int(status.split()[-1])


async def _rebuild(conn: asyncpg.Connection, target: _Target) -> int:
    """The registry partition's rows plus the staged numbers not listed yet, into a new table."""
    await conn.execute(f"LOCK TABLE {REGISTRY} IN SHARE MODE")
    before = await conn.fetchval(f"SELECT count(*) FROM {REGISTRY}", timeout=NO_TIMEOUT)
    await conn.execute(_CREATE_NEXT.format(name=_NEXT))
    status = await conn.execute(
        _REBUILD_INSERT.format(scope=target.scope),
        target.tenant_id,
        target.source,
        target.note,
        target.origin,
        timeout=NO_TIMEOUT,
    )
    await conn.execute(_NEXT_FK, timeout=NO_TIMEOUT)
    await conn.execute(_INDEX_MEMORY)
    await conn.execute(_NEXT_KEY, timeout=NO_TIMEOUT)
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
            self.stream.write(f"{phase}: adding the numbers and indexing them …\n")
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
