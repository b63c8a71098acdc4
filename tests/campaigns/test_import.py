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
