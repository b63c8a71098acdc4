"""The README's Campaigns section works as printed: its curl bodies get the answers printed
under them, its CSV imports, and the campaign then dials on the sandbox."""

from __future__ import annotations

import json
import pathlib
import re

from gateway.campaigns.service import import_file
from tests.helpers import eventually

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def section() -> str:
    text = README.read_text()
    start = text.index("\n## Campaigns\n")
    return text[start : text.index("\n## ", start + 1)]


def bodies(block: str) -> list[tuple[str, dict, int, str]]:
    """(path, body, printed status, printed answer) of each `curl -X POST … -d '{…}'`."""
    out = []
    for m in re.finditer(r"curl -X POST localhost:8080(\S+) .*?-d '(\{.*?\})'", block, re.S):
        printed = re.search(r"# (\d{3}) (\{.*)", block[m.end() :])
        assert printed, m.group(0)[:60]
        body = json.loads(re.sub(r"\s*\n\s*", " ", m.group(2)))
        out.append((m.group(1), body, int(printed.group(1)), printed.group(2)))
    return out


async def test_campaigns_section_answers_as_printed(campaigns, tmp_path):
    text = section()
    sh = re.findall(r"```sh\n(.*?)```", text, re.S)[0]
    (create, add) = bodies(sh)
    made = await campaigns.request("POST", create[0], create[2], create[1])
    assert made["status"] == "draft" and made["prospects"] == {"total": 0}
    assert '"status": "draft"' in create[3]
    path = add[0].replace("<id>", made["id"])
    got = await campaigns.request("POST", path, add[2], add[1])
    assert got == json.loads(add[3])

    csv = re.findall(r"```csv\n(.*?)```", text, re.S)[0]
    file = tmp_path / "prospects.csv"
    file.write_text(csv)
    report = await import_file(campaigns.db, made["id"], str(file))
    assert (report.received, report.added, report.rejected) == (2, 2, 0)

    started = await campaigns.act(made["id"], "start")
    assert started["status"] == "running"

    async def dialled() -> dict | None:
        counts = (await campaigns.get(made["id"]))["prospects"]
        # +1 212 555 2070 is busy (retried in 10 minutes); the three others answer.
        want = {"total": 4, "done": 3, "retry_scheduled": 1}
        return counts if counts == want else None

    try:
        await eventually(dialled, timeout=30)
    except AssertionError:
        rows = await campaigns.db.fetch(
            "SELECT number, status, reason, attempts FROM campaign_prospects ORDER BY id"
        )
        calls = await campaigns.db.fetch("SELECT to_number, status, error_code FROM calls")
        raise AssertionError(([dict(r) for r in rows], [dict(c) for c in calls])) from None


async def test_predictive_and_dids_block_answers_as_printed(campaigns):
    text = section()
    sh = re.findall(r"```sh\n(.*?)```", text, re.S)[1]
    (predictive, refused) = bodies(sh)
    tenant_id = await campaigns.db.fetchval("SELECT id FROM tenants WHERE name = 'acme'")
    await campaigns.db.execute(  # the caller id fallback must be one of the tenant's numbers
        "INSERT INTO dids (number, tenant_id, provider, capabilities) "
        "VALUES ('+14155550100', $1, 'sandbox', '{voice}')",
        tenant_id,
    )
    made = await campaigns.request("POST", predictive[0], predictive[2], predictive[1])
    assert made["status"] == "draft" and made["config"]["pacing"]["mode"] == "predictive"
    bad = await campaigns.request("POST", refused[0], refused[2], refused[1])
    assert f'"code": "{bad["code"]}"' in refused[3]
    got = await campaigns.get(made["id"])
    assert got["stats"]["dial_ratio"] == 1.0 and got["stats"]["abandon_rate_30d"] is None

    dids = await campaigns.request("GET", "/v1/dids", 200)
    printed = sh[sh.index("# 200 {") :]
    (did,) = dids["data"]
    flat = did | did["health"] | {"next_cursor": dids["next_cursor"]}
    pairs = re.findall(r'"(\w+)": (null|[\d.]+|"[^"]*"|\["[^\]]*\])', printed)
    assert len(pairs) > 10
    for key, value in pairs:
        assert flat[key] == json.loads(value), key
    assert dids["next_cursor"] is None
