"""`trunkline campaigns import`: a 100,000-row CSV with bad lines and duplicates, exact counts."""

from __future__ import annotations

import time

from tests.helpers import trunkline

NPAS = ["212", "312", "415", "617", "713", "305", "206", "303", "404", "503"]


def number(i: int) -> str:
    return f"+1{NPAS[i % 10]}555{i // 10:04d}"


async def test_csv_import_counts_rejects_and_suppression(campaigns, daemon_env, tmp_path):
    c = await campaigns.create(name="csv")
    tenant_id = await campaigns.db.fetchval("SELECT id FROM tenants WHERE name = 'acme'")
    # 40 on the tenant's DNC list, 20 opted out, before the import.
    await campaigns.db.executemany(
        "INSERT INTO dnc_entries (number, tenant_id, source) VALUES ($1, $2, $3)",
        [(number(i), tenant_id, "internal") for i in range(1000, 1040)]
        + [(number(i), tenant_id, "consumer_opt_out") for i in range(2000, 2020)],
    )
    lines = ["Number,first_name,state"]
    for i in range(99_000):
        lines.append(f"{number(i)},Name{i},NY")
        if i % 198 == 0:  # 500 duplicates, written another way
            d = number(i)
            lines.append(f"({d[2:5]}) {d[5:8]}-{d[8:]},Again{i},NY")
        if i % 330 == 0:  # 300 bad lines
            lines.append(f"555-01{i % 10},Bad{i},NY")
        if i % 495 == 0:  # 200 lines that are not rows at all
            lines.append("" if i % 2 else "# a comment")
    path = tmp_path / "prospects.csv"
    path.write_text("\n".join(lines) + "\n")

    started = time.monotonic()
    out = trunkline("campaigns", "import", c["id"], str(path), env=daemon_env, timeout=120)
    took = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == (
        "imported 99800 rows: 98940 added, 500 duplicates, 60 suppressed (DNC or opted out), "
        "300 rejected"
    ), out.stdout
    # line 1 is the header, 2 the first row, 3 its duplicate, 4 the first bad line
    assert "  line 4: '555-010': not a valid phone number" in out.stdout
    assert "copy [" in out.stderr  # the progress bar
    print(f"100k-row import, subprocess included: {took:.1f} s")

    counts = (await campaigns.get(c["id"]))["prospects"]
    assert counts == {"total": 99_000, "pending": 98_940, "suppressed": 60}
    row = await campaigns.db.fetchrow(
        "SELECT variables, state, zones FROM campaign_prospects WHERE number = $1", number(7)
    )
    assert row["variables"] == {"first_name": "Name7"} and row["state"] == "NY"
    assert row["zones"] == ["America/Denver"]  # 303: Denver
    reasons = await campaigns.db.fetch(
        "SELECT reason, count(*) AS n FROM campaign_prospects WHERE status = 'suppressed' "
        "GROUP BY reason ORDER BY reason"
    )
    assert [(r["reason"], r["n"]) for r in reasons] == [("dnc_listed", 40), ("opted_out", 20)]

    # Re-running the file adds nothing: every valid row is now a duplicate.
    again = trunkline("campaigns", "import", c["id"], str(path), "--quiet", env=daemon_env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0].startswith("imported 99800 rows: 0 added, 99500 dup")


async def test_quoted_fields_may_hold_line_breaks(campaigns, tmp_path):
    """RFC 4180: a quoted field spans lines; rows are reported by the line they start on."""
    from gateway.campaigns.service import ImportFailed, import_file

    c = await campaigns.create(name="multiline")
    text = (
        "number,note,first_name\r\n"
        '+12125552001,"Call after 5pm,\r\nask for ""Bo""\r\nthen Cy",Bo\r\n'  # lines 2-4
        "+12125552002,plain,Cy\r\n"  # line 5
        'not a number,"two\nlines",Di\r\n'  # lines 6-7
        "+12125552003,,Ed\r\n"  # line 8
    )
    path = tmp_path / "multi.csv"
    path.write_bytes(text.encode())
    report = await import_file(campaigns.db, c["id"], str(path))
    assert (report.received, report.added, report.rejected) == (4, 3, 1)
    assert [(line, value) for line, value, _ in report.rejects] == [(6, "not a number")]
    row = await campaigns.db.fetchrow(
        "SELECT variables FROM campaign_prospects WHERE number = '+12125552001'"
    )
    assert row["variables"] == {
        "note": 'Call after 5pm,\r\nask for "Bo"\r\nthen Cy',
        "first_name": "Bo",
    }

    # Across the reader's batches, and bytes that are not UTF-8 named by their line.
    many = ["number,first_name"] + [f"+1212555{3000 + i:04d},N{i}" for i in range(2500)]
    many[1200] = '+12125557777,"A\nB"'
    bad = "\n".join(many).encode() + b"\n+12125559999,\xff\xfe\n"
    path.write_bytes(bad)
    other = await campaigns.create(name="bytes")
    try:
        await import_file(campaigns.db, other["id"], str(path))
    except ImportFailed as exc:
        assert "line 2503 is not valid UTF-8" in str(exc), exc
    else:
        raise AssertionError("a line that is not UTF-8 was imported")
    path.write_bytes(bad[: bad.rindex(b"+1212555999")])
    report = await import_file(campaigns.db, other["id"], str(path))
    assert (report.received, report.added) == (2500, 2500)
    got = await campaigns.db.fetchval(
        "SELECT variables FROM campaign_prospects WHERE number = '+12125557777'"
    )
    assert got == {"first_name": "A\nB"}
