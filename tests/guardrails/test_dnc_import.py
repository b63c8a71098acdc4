"""Bulk DNC import through COPY: all or nothing, rejected lines by number, idempotent."""

from __future__ import annotations

import io
import json

import pytest

from gateway.dnc.importer import ImportFailed, ImportRejected, import_file, import_numbers
from guardrails.checks import _FACTS_SQLS, _facts_query
from tests.helpers import trunkline

GOOD = """phone_number,name
+12025550101,Ann
2025550102
1-202-555-0103
(202) 555-0104

# a comment line
 202.555.0105 ,"Smith, Bob"
202,5550106
+447700900123
+12025550101
"""
EXPECTED = {
    "+12025550101",
    "+12025550102",
    "+12025550103",
    "+12025550104",
    "+12025550105",
    "+12025550106",
    "+447700900123",
}


@pytest.fixture
async def acme(pg_pool):
    return await pg_pool.fetchval(
        "INSERT INTO tenants (id, name) VALUES (gen_random_uuid(), 'acme') RETURNING id"
    )


async def numbers(pg_pool) -> set[str]:
    return {r["number"] for r in await pg_pool.fetch("SELECT number FROM dnc_entries")}


async def test_a_file_with_bad_lines_imports_nothing_and_names_them(pg_pool, acme, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(GOOD + "not a number\n+1202555\n12025550199999\n")
    with pytest.raises(ImportRejected) as caught:
        await import_file(pg_pool, path, source="internal", tenant="acme")
    report = caught.value.report
    assert report.rejected == 3 and report.lines == 11
    assert report.rejected_lines == [
        (12, "not a number"),
        (13, "+1202555"),
        (14, "12025550199999"),
    ]
    assert "line 12: 'not a number'" in str(caught.value) and "nothing was imported" in str(
        caught.value
    )
    assert await pg_pool.fetchval("SELECT count(*) FROM dnc_entries") == 0


async def test_a_good_file_imports_everything_normalised_and_reimport_is_idempotent(
    pg_pool, acme, tmp_path
):
    path = tmp_path / "good.csv"
    path.write_text(GOOD)
    progress = []
    report = await import_file(
        pg_pool,
        path,
        source="national_registry",
        tenant="acme",
        progress=lambda phase, done, total: progress.append((phase, done, total)),
    )
    assert (report.lines, report.inserted, report.updated, report.unchanged) == (8, 7, 0, 1)
    assert await numbers(pg_pool) == EXPECTED
    rows = await pg_pool.fetch("SELECT DISTINCT tenant_id, source::text, origin FROM dnc_entries")
    assert [(r["tenant_id"], r["source"]) for r in rows] == [(acme, "national_registry")]
    assert rows[0]["origin"].startswith("import:")
    assert progress[0][0] == "copy" and progress[0][2] == path.stat().st_size
    assert ("copy", path.stat().st_size, path.stat().st_size) in progress

    again = await import_file(pg_pool, path, source="national_registry", tenant="acme")
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 8)
    assert await pg_pool.fetchval("SELECT count(*) FROM dnc_entries") == 7
    # the same numbers on the global list are separate entries
    glob = await import_file(pg_pool, path, source="national_registry")
    assert glob.inserted == 7
    assert await pg_pool.fetchval("SELECT count(*) FROM dnc_entries WHERE tenant_id IS NULL") == 7


async def test_reimport_with_a_new_expiry_updates_in_place(pg_pool, acme):
    from datetime import UTC, datetime

    async with pg_pool.acquire() as conn:
        first = await import_numbers(
            conn, io.BytesIO(b"2025550101\n2025550102\n"), source="litigator"
        )
        assert first.inserted == 2
        later = datetime(2030, 1, 1, tzinfo=UTC)
        second = await import_numbers(
            conn, io.BytesIO(b"2025550101\n2025550102\n"), source="litigator", expires_at=later
        )
    assert (second.inserted, second.updated) == (0, 2)
    assert {r["expires_at"] for r in await pg_pool.fetch("SELECT expires_at FROM dnc_entries")} == {
        later
    }


async def test_undecodable_bytes_abort_the_import(pg_pool):
    async with pg_pool.acquire() as conn:
        with pytest.raises(ImportFailed, match="nothing was imported"):
            await import_numbers(conn, io.BytesIO(b"2025550101\n\xff\xfe\n"), source="internal")
    assert await pg_pool.fetchval("SELECT count(*) FROM dnc_entries") == 0


async def test_the_lookup_is_one_index_probe(pg_pool):
    lines = "".join(f"+1202{n:07d}\n" for n in range(2_000_000, 2_020_000)).encode()
    async with pg_pool.acquire() as conn:
        report = await import_numbers(conn, io.BytesIO(lines), source="national_registry")
        assert report.inserted == 20_000
        managed = "".join(f"+1303{n:07d}\n" for n in range(2_000_000, 2_005_000)).encode()
        await import_numbers(conn, io.BytesIO(managed), source="internal")
        await conn.execute("ANALYZE dnc_entries")
        # every form of the query (by prior marketing wanted, an email address)
        for wants, email in _FACTS_SQLS:
            to = "x@example.com" if email else "+12022049999"
            sql, args = _facts_query((to, None, None, wants, "x"))
            plan = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
            text = json.dumps(plan)
            # one index probe per partition, no scan (the other subqueries are pruned: $2 NULL)
            assert "Seq Scan" not in text, (wants, email)
            assert text.count('"Index Name"') == 2 and "dnc_entries_registry" in text, (
                wants,
                email,
            )


def test_the_cli_imports_with_progress_and_reports_bad_lines(daemon_env, tmp_path):
    good = tmp_path / "registry.txt"
    good.write_text("".join(f"202555{n:04d}\n" for n in range(1000, 1500)))
    proc = trunkline("dnc", "import", str(good), "--source", "national_registry", env=daemon_env)
    assert proc.returncode == 0, proc.stderr
    assert "imported 500 numbers into the global list as national_registry" in proc.stdout
    assert "500 new" in proc.stdout
    assert "copy" in proc.stderr and "100.0%" in proc.stderr  # the progress bar
    again = trunkline("dnc", "import", str(good), "--source", "national_registry", env=daemon_env)
    assert again.returncode == 0 and "0 new, 0 updated, 500 already listed" in again.stdout

    bad = tmp_path / "bad.txt"
    bad.write_text("2025550001\nhello\n2025550002\n")
    proc = trunkline("dnc", "import", str(bad), "--source", "internal", "--quiet", env=daemon_env)
    assert proc.returncode == 1
    assert "line 2: 'hello'" in proc.stderr and "nothing was imported" in proc.stderr


async def test_an_unknown_tenant_is_refused(pg_pool, tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("2025550101\n")
    with pytest.raises(ImportFailed, match="no tenant named 'nobody'"):
        await import_file(pg_pool, path, source="internal", tenant="nobody")


async def test_a_large_registry_import_rebuilds_the_partition(pg_pool, acme):
    """The bulk path: fresh table + one INSERT … SELECT + one index build, swapped in."""
    async with pg_pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO dnc_entries (number, tenant_id, source) VALUES "
            "('+12025550199', NULL, 'litigator'), ('+12025550101', $1, 'national_registry'), "
            "('+12025550102', NULL, 'internal')",
            acme,
        )
        lines = b"+12025550101\n2025550102\n2025550103\n"
        report = await import_numbers(
            conn, io.BytesIO(lines), source="national_registry", rebuild_min=0
        )
        assert report.rebuilt and (report.lines, report.inserted) == (3, 3)
        again = await import_numbers(
            conn, io.BytesIO(lines), source="national_registry", rebuild_min=0
        )
        assert again.rebuilt and again.inserted == 0
        # a rejected file leaves the partition as it was
        with pytest.raises(ImportRejected):
            await import_numbers(
                conn, io.BytesIO(lines + b"oops\n"), source="national_registry", rebuild_min=0
            )
    rows = await pg_pool.fetch(
        "SELECT number, source::text, tenant_id IS NULL AS global FROM dnc_entries ORDER BY 1, 2, 3"
    )
    assert [tuple(r) for r in rows] == [
        ("+12025550101", "national_registry", False),  # the tenant's own entry survived
        ("+12025550101", "national_registry", True),
        ("+12025550102", "internal", True),  # the other partition is untouched
        ("+12025550102", "national_registry", True),
        ("+12025550103", "national_registry", True),
        ("+12025550199", "litigator", True),
    ]
    # the swapped-in partition has the unique index, the constraints and the tenant cascade
    with pytest.raises(Exception, match="duplicate key"):
        await pg_pool.execute(
            "INSERT INTO dnc_entries (number, tenant_id, source) VALUES ('+12025550103', NULL, 'national_registry')"
        )
    with pytest.raises(Exception, match="foreign key"):
        await pg_pool.execute(
            "INSERT INTO dnc_entries (number, tenant_id, source) VALUES ('+12025550104', gen_random_uuid(), 'litigator')"
        )
    await pg_pool.execute("DELETE FROM tenants WHERE id = $1", acme)
    assert (
        await pg_pool.fetchval("SELECT count(*) FROM dnc_entries WHERE tenant_id IS NOT NULL") == 0
    )
    fks = await pg_pool.fetchval(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'dnc_entries_registry'::regclass AND contype = 'f'"
    )
    assert fks == 1


async def leftovers(conn) -> set[str]:
    """Tables and indexes an import made and should have renamed or dropped."""
    rows = await conn.fetch("SELECT relname FROM pg_class WHERE relname LIKE 'dnc_entries%next%'")
    return {r["relname"] for r in rows}


async def test_a_first_large_registry_list_is_copied_straight_into_the_new_partition(pg_pool, acme):
    """The fast path: COPY into the new partition, one index build, swapped in."""
    async with pg_pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO dnc_entries (number, tenant_id, source) VALUES "
            "('+12025550199', NULL, 'litigator'), ('+12025550101', $1, 'national_registry'), "
            "('+12025550102', NULL, 'internal')",
            acme,
        )
        lines = b"phone\n+12025550101\n2025550102\n(202) 555-0103\n"
        report = await import_numbers(
            conn,
            io.BytesIO(lines),
            source="national_registry",
            note="FTC 2026-05",
            total_bytes=len(lines) * 100_000,  # as large as a registry file, as far as it knows
            rebuild_min=0,
        )
        assert report.direct and report.rebuilt
        assert (report.lines, report.inserted, report.unchanged) == (3, 3, 0)
        assert await leftovers(conn) == set()
        # the partition's defaults are the parent's again (only the COPY used the import's)
        await conn.execute(
            "INSERT INTO dnc_entries_registry (number, source) VALUES ('+12025550188', 'litigator')"
        )
    rows = await pg_pool.fetch(
        "SELECT number, source::text, tenant_id IS NULL AS global, note, origin FROM dnc_entries "
        "ORDER BY 1, 2, 3"
    )
    imported = [tuple(r)[:3] for r in rows if r["origin"].startswith("import:")]
    assert imported == [
        ("+12025550101", "national_registry", True),
        ("+12025550102", "national_registry", True),
        ("+12025550103", "national_registry", True),
    ]
    assert {r["note"] for r in rows if r["origin"].startswith("import:")} == {"FTC 2026-05"}
    assert [tuple(r)[:3] for r in rows if not r["origin"].startswith("import:")] == [
        ("+12025550101", "national_registry", False),  # the tenant's own entry survived
        ("+12025550102", "internal", True),
        ("+12025550188", "litigator", True),
        ("+12025550199", "litigator", True),
    ]
    assert {r["origin"] for r in rows if r["number"] == "+12025550188"} == {"api"}
    with pytest.raises(Exception, match="duplicate key"):
        await pg_pool.execute(
            "INSERT INTO dnc_entries (number, tenant_id, source) VALUES ('+12025550103', NULL, 'national_registry')"
        )
    await pg_pool.execute("DELETE FROM tenants WHERE id = $1", acme)
    assert (
        await pg_pool.fetchval("SELECT count(*) FROM dnc_entries WHERE tenant_id IS NOT NULL") == 0
    )


async def test_a_direct_load_that_repeats_numbers_keeps_one_of_each(pg_pool, acme):
    lines = b"+12025550101\n2025550101\n2025550102\n202,5550102\n2025550103\n"
    async with pg_pool.acquire() as conn:
        report = await import_numbers(
            conn,
            io.BytesIO(lines),
            source="state_registry",
            tenant_id=acme,
            tenant="acme",
            total_bytes=len(lines) * 100_000,
            rebuild_min=0,
        )
        assert report.direct
        assert (report.lines, report.inserted, report.unchanged) == (5, 3, 2)
        assert await leftovers(conn) == set()
    rows = await pg_pool.fetch("SELECT number, tenant_id FROM dnc_entries ORDER BY 1")
    assert [(r["number"], r["tenant_id"]) for r in rows] == [
        ("+12025550101", acme),
        ("+12025550102", acme),
        ("+12025550103", acme),
    ]


async def test_a_reimport_onto_a_listed_registry_takes_the_staged_path(pg_pool):
    lines = b"2025550101\n2025550102\n"
    async with pg_pool.acquire() as conn:
        kw = {"source": "national_registry", "total_bytes": 10**7, "rebuild_min": 0}
        first = await import_numbers(conn, io.BytesIO(lines), **kw)
        again = await import_numbers(conn, io.BytesIO(lines + b"2025550103\n"), **kw)
    assert first.direct and not again.direct and again.rebuilt
    assert (again.inserted, again.unchanged) == (1, 2)
    assert await pg_pool.fetchval("SELECT count(*) FROM dnc_entries") == 3


async def test_a_direct_load_smaller_than_it_looked_is_inserted_row_by_row(pg_pool):
    """Judged large from its size (long comment lines), the file holds two numbers."""
    lines = b"#" + b"x" * 5000 + b"\n2025550101\n2025550102\n"
    async with pg_pool.acquire() as conn:
        report = await import_numbers(
            conn, io.BytesIO(lines), source="litigator", total_bytes=len(lines), rebuild_min=100
        )
        assert not report.direct and not report.rebuilt and report.inserted == 2
        assert await leftovers(conn) == set()


async def test_a_rejected_direct_load_leaves_everything_as_it_was(pg_pool):
    async with pg_pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO dnc_entries (number, source) VALUES ('+12025550199', 'litigator')"
        )
        oid = await conn.fetchval("SELECT 'dnc_entries_registry'::regclass::oid")
        with pytest.raises(ImportRejected) as caught:
            await import_numbers(
                conn,
                io.BytesIO(b"2025550101\nnope\n2025550102\n"),
                source="national_registry",
                total_bytes=10**7,
                rebuild_min=0,
            )
        assert caught.value.report.rejected_lines == [(2, "nope")]
        assert await conn.fetchval("SELECT 'dnc_entries_registry'::regclass::oid") == oid
        assert await leftovers(conn) == set()
    assert [r["number"] for r in await pg_pool.fetch("SELECT number FROM dnc_entries")] == [
        "+12025550199"
    ]
