"""The README's Workflows section works as printed: its curl bodies get the answers printed
under them, and the run it starts waits, then ends as the section says."""

from __future__ import annotations

import json
import pathlib
import re

from tests.helpers import auth
from tests.workflows.conftest import CUSTOMER

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def section() -> str:
    text = README.read_text()
    start = text.index("\n## Workflows\n")
    return text[start : text.index("\n## ", start + 1)]


def printed_after(block: str, at: int) -> tuple[int, str]:
    found = re.search(r"# (\d{3}) (\{.*)", block[at:])
    assert found, block[at : at + 80]
    return int(found.group(1)), found.group(2)


def pairs(printed: str) -> list[tuple[str, str]]:
    """The `"key": "value"` pairs printed with a concrete value (not …)."""
    return [(k, v) for k, v in re.findall(r'"(\w+)": "([^"…]+)"', printed)]


def holds(answer: object, key: str, value: str) -> bool:
    if isinstance(answer, dict):
        return answer.get(key) == value or any(holds(v, key, value) for v in answer.values())
    if isinstance(answer, list):
        return any(holds(v, key, value) for v in answer)
    return False


async def test_workflows_section_answers_as_printed(flows):
    sh = re.findall(r"```sh\n(.*?)```", section(), re.S)[0]
    posts = list(re.finditer(r"curl -X POST localhost:8080(\S+) .*?-d '(\{.*?\})'", sh, re.S))
    (create, start) = posts
    body = json.loads(re.sub(r"\s*\n\s*", " ", create.group(2)))
    status, printed = printed_after(sh, create.end())
    made = await flows.post(create.group(1), body, status)
    assert all(holds(made, k, v) for k, v in pairs(printed)), (printed, made)
    assert made["webhook_secret"].startswith("whsec_")
    assert made["trigger"] == {"event": "call.completed", "agent_calls_only": True}
    assert made["steps"][-1]["send"]["channel"] == "email"

    path = start.group(1).replace("<id>", made["id"])
    variables = json.loads(start.group(2))
    assert variables["variables"]["to"] == CUSTOMER
    status, printed = printed_after(sh, start.end())
    run = await flows.post(path, variables, status)
    assert all(holds(run, k, v) for k, v in pairs(printed)), (printed, run)
    assert run["step"] == 0 and run["trace_id"]

    get = re.search(r"localhost:8080/v1/workflow-runs/<run_id>\n# (\d{3}) (\{.*)", sh)
    assert get
    waiting = await flows.status(run["id"], "waiting")
    assert all(holds(waiting, k, v) for k, v in pairs(get.group(2))), (get.group(2), waiting)
    assert [s["outcome"] for s in waiting["timeline"]] == ["accepted", None]

    cancel = re.search(
        r"curl -X POST localhost:8080/v1/workflow-runs/<run_id>/cancel .*\n# (\d{3})", sh
    )
    assert cancel
    canceled = await flows.post(f"/v1/workflow-runs/{run['id']}/cancel", {}, int(cancel.group(1)))
    assert canceled["status"] == "canceled"
    listed = await flows.get("/v1/workflow-runs?status=canceled")
    assert [r["id"] for r in listed["data"]] == [run["id"]]
    assert (await flows.get(f"/v1/workflows/{made['id']}/runs"))["data"][0]["id"] == run["id"]


def commands(block: str) -> list[tuple[str, str | None]]:
    """Each curl command of a block (its continuation lines joined) and the answer printed
    under it, if any."""
    found = re.finditer(r"^curl .*?(?=^# |^curl |\Z)", block, re.S | re.M)
    out = []
    for match in found:
        printed = re.match(r"# (.*)", block[match.end() :])
        out.append((match.group(0), printed.group(1) if printed else None))
    return out


async def test_editing_section_answers_as_printed(flows):
    """The second block of the section (edit with If-Match, a stale edit, versions, delete,
    a run refused) sent as printed, in order, to the workflow the first block creates."""
    blocks = re.findall(r"```sh\n(.*?)```", section(), re.S)
    create = re.search(
        r"curl -X POST localhost:8080/v1/workflows .*?-d '(\{.*?\})'", blocks[0], re.S
    )
    assert create
    made = await flows.post("/v1/workflows", json.loads(re.sub(r"\s*\n\s*", " ", create[1])), 201)
    seen = []
    for command, printed in commands(blocks[1]):
        method = re.search(r"-X (\w+)", command)
        path = re.search(r'"?localhost:8080([^\s"]+)', command)
        assert path, command
        if_match = re.search(r"-H 'If-Match: ([^']*)'", command)
        body = re.search(r"-d '(\{.*?\})'", command, re.S)
        resp = await flows.client.request(
            method[1] if method else "GET",
            path[1].replace("<id>", made["id"]),
            json=json.loads(re.sub(r"\s*\n\s*", " ", body[1])) if body else None,
            headers=auth(flows.token) | ({"If-Match": if_match[1]} if if_match else {}),
        )
        answer = await resp.json()
        seen.append((method[1] if method else "GET", resp.status))
        assert printed, command
        shown = re.match(r'(\d{3}) (?:ETag: "(\d+)" )?(\{.*)', printed)
        assert shown, printed
        assert resp.status == int(shown[1]), (command, answer)
        if shown[2]:
            assert resp.headers["ETag"] == f'"{shown[2]}"', command
        for key, value in pairs(shown[3]):
            assert holds(answer, key, value), (key, value, answer)
        for key, number in re.findall(r'"(\w+)": (\d+)', shown[3]):
            assert holds(answer, key, int(number)), (key, number, answer)
        for key in re.findall(r'"(\w+)": null', shown[3]):
            assert key in answer and answer[key] is None, (key, answer)
    assert seen == [
        ("GET", 200), ("PUT", 200), ("PUT", 412), ("GET", 200), ("GET", 200), ("DELETE", 200),
        ("POST", 409),
    ]  # fmt: skip
    now = await flows.get(f"/v1/workflows/{made['id']}")
    assert now["version"] == 2 and now["archived_at"] is not None
    assert now["steps"][1]["wait"]["timeout"] == "2d"  # the first edit, not the stale one
