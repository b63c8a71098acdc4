"""The README's Workflows section works as printed: its curl bodies get the answers printed
under them, and the run it starts waits, then ends as the section says."""

from __future__ import annotations

import json
import pathlib
import re

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
