"""Editing and archiving workflows: an edit is a new immutable version that new runs and
triggers use while runs under way finish on theirs; If-Match refuses a stale edit (412) and
of two concurrent ones exactly one wins; an invalid edit is a 422 naming the step and stores
nothing; DELETE archives (no new runs or trigger matches, in-flight runs finish, all stays
readable, twice is the same); another tenant gets 404 and changes nothing."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from gateway.http.pagination import encode_cursor
from gateway.workflows import repo
from gateway.workflows.schemas import WorkflowIn
from tests.helpers import auth
from tests.workflows.conftest import CUSTOMER


def sms(body: str) -> dict[str, Any]:
    return {"send": {"channel": "sms", "to": "{{to}}", "body": body, "purpose": "transactional"}}


def hour_wait(step_id: str = "pause") -> dict[str, Any]:
    return {"id": step_id, "wait": {"duration": "1h"}}


async def put(flows, workflow_id: str, body: dict, status: int, **headers: str) -> Any:
    resp = await flows.client.put(
        f"/v1/workflows/{workflow_id}", json=body, headers=auth(flows.token) | headers
    )
    out = await resp.json()
    assert resp.status == status, out
    if 200 <= status < 300:
        assert resp.headers["ETag"] == f'"{out["version"]}"'
    return out, resp.headers


async def delete(flows, workflow_id: str, status: int, token: str | None = None, **headers: str):
    resp = await flows.client.delete(
        f"/v1/workflows/{workflow_id}", headers=auth(token or flows.token) | headers
    )
    out = await resp.json()
    assert resp.status == status, out
    return out


async def test_a_run_started_before_an_edit_finishes_on_the_old_steps(flows):
    v1 = [sms("v1: hello {{name}}"), hour_wait(), {"id": "bye", **sms("v1: bye")}]
    wf = await flows.define(v1)
    assert wf["version"] == 1
    old = await flows.start(wf["id"], to=CUSTOMER, name="Ana")
    await flows.status(old["id"], "waiting")

    v2 = [sms("v2: hi {{name}}"), hour_wait("rest"), sms("v2: one"), {"id": "end2", **sms("v2")}]
    edited, _ = await put(flows, wf["id"], {"name": "t2", "steps": v2}, 200)
    assert (edited["version"], edited["name"]) == (2, "t2")
    assert edited["steps"][1]["id"] == "rest" and edited["created_at"] == wf["created_at"]
    new = await flows.start(wf["id"], to=CUSTOMER, name="Bo")
    assert (new["workflow_version"], old["workflow_version"]) == (2, 1)
    await flows.status(new["id"], "waiting")

    flows.clock.advance(hours=1, seconds=1)
    old_done = await flows.status(old["id"], "completed")
    new_done = await flows.status(new["id"], "completed")
    assert [m["body"] for m in await flows.sent(old["id"])] == ["v1: hello Ana", "v1: bye"]
    assert [m["body"] for m in await flows.sent(new["id"])] == ["v2: hi Bo", "v2: one", "v2"]
    # Each timeline names its own version's steps.
    assert [s["id"] for s in old_done["timeline"]] == [None, "pause", "bye"]
    assert [s["id"] for s in new_done["timeline"]] == [None, "rest", None, "end2"]
    assert old_done["workflow_version"] == 1 and new_done["workflow_version"] == 2

    # What each version was stays readable: the version list and ?version=.
    versions = await flows.get(f"/v1/workflows/{wf['id']}/versions")
    assert [(v["version"], v["name"]) for v in versions["data"]] == [(2, "t2"), (1, "t")]
    assert versions["data"][1]["steps"] == wf["steps"]
    page = await flows.get(f"/v1/workflows/{wf['id']}/versions?limit=1")
    rest = await flows.get(
        f"/v1/workflows/{wf['id']}/versions?limit=1&cursor={page['next_cursor']}"
    )
    assert [v["version"] for v in page["data"] + rest["data"]] == [2, 1]
    assert rest["next_cursor"] is None
    for forged in (encode_cursor("workflow-versions", [2**40]), page["next_cursor"][:-2]):
        resp = await flows.client.get(
            f"/v1/workflows/{wf['id']}/versions?cursor={forged}", headers=auth(flows.token)
        )
        assert resp.status == 422 and (await resp.json())["code"] == "invalid_cursor"
    past = await flows.get(f"/v1/workflows/{wf['id']}?version=1")
    assert (past["version"], past["steps"], past["name"]) == (1, wf["steps"], "t")
    assert (await flows.get(f"/v1/workflows/{wf['id']}"))["version"] == 2
    resp = await flows.client.get(f"/v1/workflows/{wf['id']}?version=3", headers=auth(flows.token))
    assert resp.status == 404
    assert (await resp.json())["code"] == "workflow_version_not_found"

    # The edit is an event, in its transaction.
    [event] = await flows.db.fetch(
        "SELECT data FROM events WHERE type = 'workflow.updated' AND subject = $1", wf["id"]
    )
    assert (event["data"]["version"], event["data"]["previous_version"]) == (2, 1)


async def test_if_match_refuses_a_stale_edit_and_changes_nothing(flows):
    wf = await flows.define([sms("one")])
    resp = await flows.client.get(f"/v1/workflows/{wf['id']}", headers=auth(flows.token))
    assert resp.headers["ETag"] == '"1"'

    mine, _ = await put(
        flows, wf["id"], {"name": "t", "steps": [sms("mine")]}, 200, **{"If-Match": '"1"'}
    )
    assert mine["version"] == 2
    # A second editor who also read version 1.
    stale, headers = await put(
        flows, wf["id"], {"name": "t", "steps": [sms("theirs")]}, 412, **{"If-Match": '"1"'}
    )
    assert stale["code"] == "workflow_version_mismatch" and stale["current_version"] == 2
    assert headers["ETag"] == '"2"'
    assert headers["Content-Type"].startswith("application/problem+json")
    now = await flows.get(f"/v1/workflows/{wf['id']}")
    assert (now["version"], now["steps"]) == (2, mine["steps"])
    assert len((await flows.get(f"/v1/workflows/{wf['id']}/versions"))["data"]) == 2

    # A weak tag never matches (strong comparison); * and a bare version do.
    weak = {"If-Match": 'W/"2"'}
    await put(flows, wf["id"], {"name": "t", "steps": [sms("weak")]}, 412, **weak)
    star, _ = await put(
        flows, wf["id"], {"name": "t", "steps": [sms("star")]}, 200, **{"If-Match": "*"}
    )
    bare, _ = await put(
        flows, wf["id"], {"name": "t", "steps": [sms("bare")]}, 200, **{"If-Match": '"9", 3'}
    )
    assert (star["version"], bare["version"]) == (3, 4)
    # The same definition again is no new version.
    same, _ = await put(flows, wf["id"], {"name": "t", "steps": [sms("bare")]}, 200)
    assert same["version"] == 4

    # Two editors at once on version 4: exactly one wins, the other is told.
    answers = await asyncio.gather(
        *(
            flows.client.put(
                f"/v1/workflows/{wf['id']}",
                json={"name": "t", "steps": [sms(f"race {n}")]},
                headers=auth(flows.token) | {"If-Match": '"4"'},
            )
            for n in range(4)
        )
    )
    assert sorted(r.status for r in answers) == [200, 412, 412, 412]
    [winner] = [await r.json() for r in answers if r.status == 200]
    now = await flows.get(f"/v1/workflows/{wf['id']}")
    assert (now["version"], now["steps"]) == (5, winner["steps"])


async def test_an_edit_replays_under_its_idempotency_key(flows):
    wf = await flows.define([sms("one")])
    keyed = {"Idempotency-Key": "edit-1"}
    first, _ = await put(flows, wf["id"], {"name": "t", "steps": [sms("two")]}, 200, **keyed)
    await put(flows, wf["id"], {"name": "t", "steps": [sms("three")]}, 200)
    again, headers = await put(flows, wf["id"], {"name": "t", "steps": [sms("two")]}, 200, **keyed)
    assert again == first and headers["Idempotent-Replayed"] == "true"
    assert (await flows.get(f"/v1/workflows/{wf['id']}"))["version"] == 3
    reused, _ = await put(flows, wf["id"], {"name": "t", "steps": [sms("four")]}, 422, **keyed)
    assert reused["code"] == "idempotency_key_reused"


async def test_an_invalid_edit_names_the_step_and_stores_nothing(flows):
    wf = await flows.define([sms("one"), hour_wait()])
    bad = [sms("one"), {"wait": {"until": "message.inbound"}}]  # an event wait needs a timeout
    problem, _ = await put(flows, wf["id"], {"name": "t", "steps": bad}, 422, **{"If-Match": '"1"'})
    assert problem["code"] == "workflow_invalid_step" and problem["step"] == 1, problem
    assert "steps[1]" in problem["detail"]
    structural = [sms("one"), {"wait": {"duration": "soon"}}]
    problem, _ = await put(flows, wf["id"], {"name": "t", "steps": structural}, 422)
    assert problem["detail"].startswith("steps.1."), problem
    unsendable = [{"send": {"channel": "sms", "to": "{{to}}", "purpose": "transactional"}}]
    problem, _ = await put(flows, wf["id"], {"name": "t", "steps": unsendable}, 422)
    assert problem["step"] == 0 and "body or template" in problem["detail"], problem

    now = await flows.get(f"/v1/workflows/{wf['id']}")
    assert (now["version"], now["steps"], now["updated_at"]) == (1, wf["steps"], wf["updated_at"])
    assert [
        v["version"] for v in (await flows.get(f"/v1/workflows/{wf['id']}/versions"))["data"]
    ] == [1]


async def test_an_edit_needs_the_scopes_of_what_it_sends(flows, make_key):
    wf = await flows.define([sms("one")])
    reader = await make_key("acme", ["workflows:read"])
    resp = await flows.client.put(
        f"/v1/workflows/{wf['id']}", json={"name": "t", "steps": [sms("x")]}, headers=auth(reader)
    )
    assert resp.status == 403
    texter = await make_key("acme", ["workflows:write", "workflows:read", "messages:write"])
    call = [{"send": {"channel": "call", "to": CUSTOMER}}]
    resp = await flows.client.put(
        f"/v1/workflows/{wf['id']}", json={"name": "t", "steps": call}, headers=auth(texter)
    )
    assert resp.status == 403
    assert (await flows.get(f"/v1/workflows/{wf['id']}"))["version"] == 1


async def test_delete_archives_stops_new_runs_and_lets_runs_in_flight_finish(flows):
    wf = await flows.define([sms("before"), hour_wait(), sms("after")])
    run = await flows.start(wf["id"], to=CUSTOMER)
    await flows.status(run["id"], "waiting")

    gone = await delete(flows, wf["id"], 200)
    assert gone["archived_at"] is not None and gone["version"] == 1
    again = await delete(flows, wf["id"], 200)
    assert again == gone  # idempotent: the same answer, the first instant kept

    refused = await flows.post(f"/v1/workflows/{wf['id']}/runs", {"variables": {"to": CUSTOMER}})
    assert refused["status"] == 409 and refused["code"] == "workflow_archived", refused
    edit, _ = await put(flows, wf["id"], {"name": "t", "steps": [sms("x")]}, 409)
    assert edit["code"] == "workflow_archived"

    # Readable for audit; listed only when asked for.
    assert (await flows.get(f"/v1/workflows/{wf['id']}"))["archived_at"] == gone["archived_at"]
    assert wf["id"] not in [w["id"] for w in (await flows.get("/v1/workflows"))["data"]]
    listed = await flows.get("/v1/workflows?include_archived=true")
    assert wf["id"] in [w["id"] for w in listed["data"]]

    # The run in flight finishes on its version.
    flows.clock.advance(hours=1, seconds=1)
    done = await flows.status(run["id"], "completed")
    assert [m["body"] for m in await flows.sent(run["id"])] == ["before", "after"]
    assert [r["id"] for r in (await flows.get(f"/v1/workflows/{wf['id']}/runs"))["data"]] == [
        done["id"]
    ]
    assert (
        await flows.db.fetchval(
            "SELECT count(*) FROM events WHERE type = 'workflow.archived' AND subject = $1",
            wf["id"],
        )
        == 1
    )
    # If-Match holds for DELETE too.
    other = await flows.define([sms("x")])
    stale = await delete(flows, other["id"], 412, **{"If-Match": '"7"'})
    assert stale["code"] == "workflow_version_mismatch"
    assert (await flows.get(f"/v1/workflows/{other['id']}"))["archived_at"] is None


async def runs_of(flows, workflow_id: str) -> list[dict[str, Any]]:
    return (await flows.get(f"/v1/workflows/{workflow_id}/runs"))["data"]


async def until_runs(flows, workflow_id: str, count: int) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + 10
    while len(found := await runs_of(flows, workflow_id)) < count:
        assert asyncio.get_running_loop().time() < deadline, f"{len(found)} runs, not {count}"
        await asyncio.sleep(0.05)
    return found


async def test_triggers_use_the_latest_version_and_stop_once_archived(flows):
    trigger = {"event": "message.received"}
    kept = await flows.post(
        "/v1/workflows", {"name": "kept", "trigger": trigger, "steps": [sms("kept v1")]}, 201
    )
    dropped = await flows.post(
        "/v1/workflows", {"name": "dropped", "trigger": trigger, "steps": [sms("dropped")]}, 201
    )
    await flows.reply("first")
    [first] = await until_runs(flows, kept["id"], 1)
    await until_runs(flows, dropped["id"], 1)

    await delete(flows, dropped["id"], 200)
    await put(
        flows, kept["id"], {"name": "kept", "trigger": trigger, "steps": [sms("kept v2")]}, 200
    )
    await flows.reply("second")
    # The kept workflow's run for the second message is the control: the same event, matched
    # in the same transaction, started nothing for the archived one.
    second, _ = await until_runs(flows, kept["id"], 2)
    assert (second["workflow_version"], first["workflow_version"]) == (2, 1)
    await flows.status(second["id"], "completed")
    assert [m["body"] for m in await flows.sent(second["id"])] == ["kept v2"]
    assert len(await runs_of(flows, dropped["id"])) == 1


async def test_another_tenant_can_neither_see_edit_nor_delete_it(flows, make_key):
    wf = await flows.define([sms("mine")])
    other = await make_key("globex")
    body = {"name": "taken", "steps": [sms("theirs")]}
    for if_match in ({}, {"If-Match": '"9"'}, {"If-Match": "*"}):
        resp = await flows.client.put(
            f"/v1/workflows/{wf['id']}", json=body, headers=auth(other) | if_match
        )
        assert resp.status == 404 and (await resp.json())["code"] == "workflow_not_found"
        problem = await delete(flows, wf["id"], 404, token=other, **if_match)
        assert problem["code"] == "workflow_not_found"
    for path in (f"/v1/workflows/{wf['id']}/versions", f"/v1/workflows/{wf['id']}?version=1"):
        resp = await flows.client.get(path, headers=auth(other))
        assert resp.status == 404
    resp = await flows.client.get("/v1/workflows?include_archived=true", headers=auth(other))
    assert (await resp.json())["data"] == []
    now = await flows.get(f"/v1/workflows/{wf['id']}")
    assert (now["version"], now["name"], now["archived_at"]) == (1, "t", None)


async def test_versions_are_immutable_and_no_writer_skips_one(flows):
    """The history is kept by the database, whoever writes: a version row never changes, and
    a workflow's definition never changes without a new version row."""
    wf = await flows.define([sms("one")])
    with pytest.raises(asyncpg.RaiseError, match="immutable"):
        await flows.db.execute(
            "UPDATE workflow_versions SET steps = '[]' WHERE workflow_id = $1::uuid", wf["id"]
        )
    with pytest.raises(asyncpg.RaiseError, match="new version"):
        await flows.db.execute("UPDATE workflows SET name = 'sneaky' WHERE id = $1::uuid", wf["id"])
    past = await flows.get(f"/v1/workflows/{wf['id']}?version=1")
    assert (past["name"], past["steps"]) == ("t", wf["steps"])


async def test_a_trigger_added_by_an_edit_starts_runs_only_for_later_events(flows):
    """The subscriber is held (its cursor locked) while a message arrives and then an edit
    gives a workflow a trigger for it: the older event starts nothing for that workflow, while
    a workflow whose trigger predates it (the control) starts a run from the same event."""
    trigger = {"event": "message.received"}
    control = await flows.post(
        "/v1/workflows", {"name": "control", "trigger": trigger, "steps": [sms("c")]}, 201
    )
    late = await flows.define([sms("late")])
    async with flows.db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT seq FROM event_cursors WHERE name = 'workflows' FOR UPDATE")
        await flows.reply("before the edit")
        edit = {"name": "late", "trigger": trigger, "steps": [sms("late")]}
        assert (await put(flows, late["id"], edit, 200))[0]["version"] == 2
    await until_runs(flows, control["id"], 1)
    assert await runs_of(flows, late["id"]) == []
    await flows.reply("after the edit")
    [run] = await until_runs(flows, late["id"], 1)
    assert run["workflow_version"] == 2 and run["variables"]["body"] == "after the edit"


async def test_a_start_during_an_edit_waits_for_it_and_runs_the_new_version(flows):
    """An edit in flight holds the workflow's row: a run start meanwhile waits (it reads the
    workflow FOR SHARE) and then runs the version the edit made, never the one it replaced."""
    wf = await flows.define([sms("old")])
    async with flows.db.acquire() as conn:
        edit = conn.transaction()
        await edit.start()
        await repo.get_workflow(conn, uuid.UUID(wf["id"]), lock="UPDATE")
        steps = [
            s.model_dump(by_alias=True, exclude_none=True)
            for s in WorkflowIn(name="t", steps=[sms("new")]).steps
        ]
        await repo.update_workflow(conn, uuid.UUID(wf["id"]), name="t", steps=steps, trigger=None)
        start = asyncio.create_task(flows.start(wf["id"], to=CUSTOMER))
        await asyncio.sleep(0.5)
        assert not start.done()
        await edit.commit()
    run = await start
    assert run["workflow_version"] == 2
    await flows.status(run["id"], "completed")
    assert [m["body"] for m in await flows.sent(run["id"])] == ["new"]
