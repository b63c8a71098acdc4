"""Adding prospects: normalise while the rows stream by, COPY them, merge set-based.

Both ways in — a JSON list (`POST /v1/campaigns/{id}/prospects`) and a CSV file
(`trunkline campaigns import`) — become rows of one temporary staging table through COPY,
then ONE statement merges them: distinct numbers only, not already in the campaign (ON
CONFLICT DO NOTHING on (campaign, number)), each pre-scrubbed against the DNC and opt-out
entries that the guardrail chain's suppression check reads (tenant + global, unexpired,
`guardrails.policy.MARKETING_ONLY` sources only for marketing) and stored `suppressed` with
the chain's own deny code as the reason. The chain still runs at every dial: a number listed
after the import is refused then.

Numbers: the DNC reader's line rules (`gateway.dnc.lines.normalize`: "(415) 555-0123",
"4155550123", "+1 415…" → E.164) first, then phonenumbers' validity (gateway/core/phone.py)
— cached per NANP exchange (+1 NPA NXX), since validity and time zones are decided there and
a list of 100,000 rows holds a few thousand exchanges: the whole file costs a few thousand
phonenumbers calls, not 100,000.

CSV: the number is the column named `number` (case-insensitive), else the first column; a
first line with no digit in its number column is the header, and every other column becomes a
template variable named by it (without a header: `c2`, `c3`, …); `state` and `zip` columns
are also kept as such. The csv module reads the file through a text wrapper (newline='', as
RFC 4180 wants), so a quoted field may hold line breaks; a row is reported by the file line it
starts on. The parsing runs in a thread, a batch of rows at a time: no read blocks the loop.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

import asyncpg
import phonenumbers
from phonenumbers import timezone as pn_timezone

from gateway.core.phone import normalize_e164
from gateway.dnc.lines import normalize as dnc_normalize
from guardrails.policy import MARKETING_ONLY

MAX_REJECTS = 100
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (surrogateescape)
_UNKNOWN_ZONE = "Etc/Unknown"

_STAGING = "campaign_import"
_STAGE = f"""
CREATE TEMP TABLE {_STAGING} (
    idx integer NOT NULL, number text COLLATE "C" NOT NULL, variables text NOT NULL,
    state text, zip text, zones text[] NOT NULL
) ON COMMIT DROP
"""
_COLUMNS = ["idx", "number", "variables", "state", "zip", "zones"]

# One statement: distinct numbers, pre-scrubbed, merged; counts of what was written.
_MERGE = f"""
WITH s AS (
    SELECT DISTINCT ON (number) * FROM {_STAGING} ORDER BY number, idx
), ins AS (
    INSERT INTO campaign_prospects (campaign_id, number, variables, state, zip, zones, status, reason)
    SELECT $1, s.number, s.variables::jsonb, s.state, s.zip, s.zones,
           CASE WHEN sup.reason IS NULL THEN 'pending' ELSE 'suppressed' END, sup.reason
      FROM s LEFT JOIN LATERAL (
            SELECT CASE WHEN bool_or(d.source = 'consumer_opt_out') THEN 'opted_out'
                        ELSE 'dnc_listed' END AS reason
              FROM dnc_entries d
             WHERE d.number = s.number AND (d.tenant_id IS NULL OR d.tenant_id = $2)
               AND (d.expires_at IS NULL OR d.expires_at > now())
               AND ($3 = 'marketing' OR d.source::text <> ALL ($4::text[]))
            HAVING count(*) > 0) sup ON true
     ORDER BY s.idx
    ON CONFLICT (campaign_id, number) DO NOTHING
    RETURNING status
)
SELECT count(*) FILTER (WHERE status = 'pending') AS added,
       count(*) FILTER (WHERE status = 'suppressed') AS suppressed
  FROM ins
"""


@dataclass
class AddReport:
    received: int = 0  # rows holding a number (valid or not)
    added: int = 0
    duplicates: int = 0
    suppressed: int = 0
    rejected: int = 0
    rejects: list[tuple[int, str, str]] = field(default_factory=list)  # (index, value, why)

    def reject(self, index: int, value: str, why: str) -> None:
        self.rejected += 1
        if len(self.rejects) < MAX_REJECTS:
            self.rejects.append((index, value, why))


class NumberCheck:
    """E.164 normalisation and time zones, cached per NANP exchange (see the module doc)."""

    def __init__(self) -> None:
        self._exchange: dict[str, tuple[bool, list[str]]] = {}

    def __call__(self, raw: str) -> str | None:
        number = dnc_normalize(raw.strip()) if raw.strip() else None
        if number is None:
            try:
                number = normalize_e164(raw)
            except Exception:  # PydanticCustomError: not a number at all
                return None
        valid, _ = self._facts(number)
        return number if valid else None

    def zones(self, number: str) -> list[str]:
        return self._facts(number)[1]

    def _facts(self, number: str) -> tuple[bool, list[str]]:
        key = number[:8] if number.startswith("+1") else number
        found = self._exchange.get(key)
        if found is None:
            try:
                parsed = phonenumbers.parse(number, None)
            except phonenumbers.NumberParseException:
                found = (False, [])
            else:
                zones = sorted(
                    z for z in pn_timezone.time_zones_for_number(parsed) if z != _UNKNOWN_ZONE
                )
                found = (phonenumbers.is_valid_number(parsed), zones)
            if len(self._exchange) > 200_000:
                self._exchange.clear()
            self._exchange[key] = found
        return found


@dataclass(frozen=True)
class RawProspect:
    index: int  # list position or CSV line number
    number: str
    variables: dict[str, Any]
    state: str | None = None
    zip: str | None = None


async def _records(
    rows: AsyncIterator[RawProspect], check: NumberCheck, report: AddReport
) -> AsyncIterator[tuple[Any, ...]]:
    async for row in rows:
        report.received += 1
        number = check(row.number)
        if number is None:
            report.reject(row.index, row.number, "not a valid phone number")
            continue
        state = row.state.strip().upper() if row.state else None
        if state is not None and (len(state) != 2 or not state.isalpha()):
            report.reject(row.index, row.state or "", "state must be a two-letter code")
            continue
        yield (
            row.index,
            number,
            json.dumps(row.variables),
            state,
            row.zip or None,
            check.zones(number),
        )


async def add_prospects(
    conn: asyncpg.Connection,
    campaign_id: uuid.UUID,
    tenant_id: uuid.UUID,
    purpose: str,
    rows: AsyncIterator[RawProspect],
    *,
    check: NumberCheck | None = None,
) -> AddReport:
    """Stage `rows` through COPY and merge them; call inside the caller's transaction."""
    if not conn.is_in_transaction():
        raise RuntimeError("add_prospects runs inside the caller's transaction")
    report = AddReport()
    await conn.execute(_STAGE)
    await conn.copy_records_to_table(
        _STAGING,
        records=_records(rows, check or NumberCheck(), report),
        columns=_COLUMNS,
        timeout=3600,
    )
    merged = await conn.fetchrow(
        _MERGE, campaign_id, tenant_id, purpose, sorted(MARKETING_ONLY), timeout=3600
    )
    await conn.execute(f"DROP TABLE {_STAGING}")
    report.added, report.suppressed = merged["added"], merged["suppressed"]
    report.duplicates = report.received - report.rejected - report.added - report.suppressed
    return report


async def from_list(items: Iterable[RawProspect]) -> AsyncIterator[RawProspect]:
    for item in items:
        yield item


class CsvRows:
    """Rows of a CSV file (see the module doc for the columns), parsed by the csv module over
    a UTF-8 text wrapper of the binary file, `batch` rows per trip to a thread.

    `unreadable` is set (and reading stops) at a line that is not UTF-8 or a row the csv
    module refuses (an unterminated quote runs past the field size limit): raising inside
    COPY's source would cancel the statement under the caller's transaction. Bytes that are
    not UTF-8 are decoded as surrogates and found per row, so the line reported is exact.
    """

    def __init__(
        self,
        fh: IO[bytes],
        total: int | None = None,
        progress: Callable[[str, int, int | None], None] | None = None,
        *,
        batch: int = 2000,
    ) -> None:
        self.fh = fh
        self.total = total
        self.progress = progress
        self.batch = batch
        self.line_no = 0  # the line the last row read started on
        self.header: list[str] | None = None
        self.number_col = 0
        self.unreadable: str | None = None
        self._text = io.TextIOWrapper(fh, encoding="utf-8", errors="surrogateescape", newline="")
        self._reader = csv.reader(self._text)

    async def __aiter__(self) -> AsyncIterator[RawProspect]:
        while self.unreadable is None:
            rows = await asyncio.to_thread(self._read_batch)
            if self.progress is not None:
                self.progress("copy", self.fh.tell(), self.total)
            if not rows:
                return
            for row in rows:
                yield row

    def _read_batch(self) -> list[RawProspect]:
        """Up to `batch` rows (in a thread: the file is read here)."""
        out: list[RawProspect] = []
        while len(out) < self.batch:
            start = self._reader.line_num + 1
            try:
                fields = next(self._reader)
            except StopIteration:
                break
            except csv.Error as exc:
                self.unreadable = f"line {start}: {exc}"
                break
            self.line_no = start
            if _NOT_UTF8.search("".join(fields)):
                self.unreadable = f"line {start} is not valid UTF-8 text"
                break
            if (
                not fields
                or not any(f.strip() for f in fields)
                or fields[0].lstrip().startswith("#")
            ):
                continue
            if start == 1 and self._is_header(fields):
                continue
            out.append(self._row(fields))
        return out

    def _is_header(self, fields: list[str]) -> bool:
        names = [f.strip().lower() for f in fields]
        if "number" in names:
            self.number_col = names.index("number")
        elif any(c.isdigit() for c in fields[0]):
            return False
        self.header = names
        return True

    def _row(self, fields: list[str]) -> RawProspect:
        names = self.header or ["number" if i == 0 else f"c{i + 1}" for i in range(len(fields))]
        variables: dict[str, Any] = {}
        state = zip_code = None
        for i, value in enumerate(fields):
            if i == self.number_col:
                continue
            name = names[i] if i < len(names) else f"c{i + 1}"
            if name == "state":
                state = value.strip() or None
            elif name == "zip":
                zip_code = value.strip() or None
            elif name:
                variables[name] = value
        number = fields[self.number_col] if self.number_col < len(fields) else ""
        return RawProspect(self.line_no, number, variables, state, zip_code)
