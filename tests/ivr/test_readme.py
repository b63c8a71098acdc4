"""The README's IVR section works as printed: the flow it uploads gets the printed answer, and
the simulation prints the transcript it really returns (a printed "…" stands for any value)."""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def section() -> str:
    text = README.read_text()
    start = text.index("\n## IVR\n")
    return text[start : text.index("\n## ", start + 1)]


def posts(block: str) -> list[tuple[str, dict, int, str]]:
    """(path, body, printed status, printed answer) of each `curl -X POST … -d '{…}'`."""
    out = []
    for m in re.finditer(r"curl -X POST localhost:8080(\S+) .*?-d '(\{.*?\})'\n", block, re.S):
        printed = re.search(r"# (\d{3}) (.*)", block[m.end() :])
        assert printed, m.group(0)[:60]
        body = json.loads(re.sub(r"\s*\n\s*", " ", m.group(2)))
        out.append((m.group(1), body, int(printed.group(1)), printed.group(2)))
    return out


def like(printed: Any, actual: Any) -> bool:
    if printed == "…":
        return True
    if isinstance(printed, dict):
        return (
            isinstance(actual, dict)
            and printed.keys() == actual.keys()
            and all(like(v, actual[k]) for k, v in printed.items())
        )
    return printed == actual


async def test_ivr_section_answers_as_printed(ivr):
    sh = re.findall(r"```sh\n(.*?)```", section(), re.S)[0]
    (upload, simulate) = posts(sh)
    made = await ivr.request("POST", upload[0], upload[2], upload[1])
    assert (made["name"], made["version"]) == ("main-menu", 1)
    assert '"version": 1' in upload[3] and made["signing_secret"].startswith("whsec_")

    got = await ivr.request("POST", simulate[0], simulate[2], simulate[1])
    head = simulate[3]
    for field in ("status", "end_reason", "inputs_left"):
        assert f'"{field}": {json.dumps(got[field])}' in head, (field, got[field])
    printed = [
        json.loads(line)
        for line in re.findall(r"^#   (\{.*\})$", sh[sh.index(simulate[3]) :], re.M)
    ]
    assert len(printed) == len(got["transcript"]), got["transcript"]
    for p, actual in zip(printed, got["transcript"], strict=True):
        assert like(p, actual), (p, actual)

    session = await ivr.request("GET", f"/v1/ivr/sessions/{got['id']}", 200)
    assert session["status"] == "ended"
    listed = await ivr.request("GET", "/v1/ivr/flows", 200)
    assert listed["data"][0]["name"] == "main-menu"
    assert (await ivr.request("GET", "/v1/ivr/flows/main-menu?version=1", 200))["version"] == 1


async def test_did_binding_answers_as_printed(ivr, client):
    from gateway.resources import RESOURCES

    sh = re.findall(r"```sh\n(.*?)```", section(), re.S)[1]
    m = re.search(r"curl -X PUT localhost:8080(\S+) .*?-d '(\{.*?\})'\n# (\d{3}) (.*)", sh, re.S)
    assert m, sh
    (upload,) = posts(re.findall(r"```sh\n(.*?)```", section(), re.S)[0])[:1]
    await ivr.request("POST", upload[0], 201, upload[1])
    await client.app[RESOURCES].db.execute(
        "INSERT INTO dids (number, tenant_id, provider, capabilities)"
        " SELECT '+14155550100', tenant_id, 'asterisk:main', '{voice}' FROM ivr_flows LIMIT 1"
    )
    got = await ivr.request("PUT", m.group(1), int(m.group(3)), json.loads(m.group(2)))
    assert got == json.loads(m.group(4))
    assert "AGI(agi:async)" in section()
