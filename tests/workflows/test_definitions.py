"""Defining workflows: what is refused (a 422 naming the step), what a run start checks, the
webhook step's signed POST, variable branches, lists and tenants."""

from __future__ import annotations

from aiohttp import web

from gateway.webhooks import signing
from tests.helpers import auth
from tests.workflows.conftest import CUSTOMER

SMS = {"channel": "sms", "to": "{{to}}", "body": "Hi {{name}}", "purpose": "transactional"}


BAD = [
    ([{"send": {**SMS, "purpose": "sales"}}], 0, "purpose"),
    ([{"send": {"channel": "sms", "to": "{{to}}"}}], 0, "body or template"),
    ([{"send": SMS}, {"send": {**SMS, "to": "12"}}], 1, "to"),
    ([{"send": {"channel": "call", "to": "{{to}}", "ring_timeout": 1}}], 0, "ring_timeout"),
    ([{"wait": {"until": "message.inbound", "timeout": "1d"}}], 0, "earlier message send"),
    ([{"send": SMS}, {"wait": {"until": "message.inbound"}}], 1, "timeout"),
    ([{"send": SMS}, {"branch": {"if": "refused", "then": "nowhere"}}], 1, "no step"),
    ([{"id": "a", "send": SMS}, {"branch": {"if": "refused", "then": "a"}}], 1, "later"),
    ([{"id": "a", "send": SMS}, {"id": "a", "send": SMS}], 1, "taken"),
]


async def test_a_bad_step_is_a_422_naming_it(flows):
    for steps, step, says in BAD:
        problem = await flows.post("/v1/workflows", {"name": "bad", "steps": steps}, 422)
        assert problem["code"] == "workflow_invalid_step", problem
        assert problem["step"] == step
        assert f"steps[{step}]" in problem["detail"] and says in problem["detail"], problem


async def test_structural_errors_name_the_step(flows):
    for steps, where in [
        ([{"send": SMS, "wait": {"duration": "1s"}}], "steps.0"),
        ([{"send": SMS}, {"wait": {"duration": "soon"}}], "steps.1."),
        ([{"branch": {"if": "x"}}], "steps.0."),
    ]:
        problem = await flows.post("/v1/workflows", {"name": "bad", "steps": steps}, 422)
        assert problem["detail"].startswith(where), problem


async def test_a_run_start_renders_every_send_first(flows):
    wf = await flows.define([{"send": SMS}])
    missing = await flows.post(f"/v1/workflows/{wf['id']}/runs", {"variables": {"to": CUSTOMER}})
    assert missing["code"] == "missing_template_variable" and missing["step"] == 0, missing
    bad = await flows.post(
        f"/v1/workflows/{wf['id']}/runs", {"variables": {"to": "nope", "name": "A"}}, 422
    )
    assert bad["step"] == 0 and "to" in bad["detail"]
    assert (await flows.get("/v1/workflow-runs"))["data"] == []


async def test_a_key_needs_the_scopes_of_what_the_workflow_sends(flows, make_key):
    token = await make_key("acme", ["workflows:write", "workflows:read", "messages:write"])
    resp = await flows.client.post(
        "/v1/workflows",
        json={"name": "c", "steps": [{"send": {"channel": "call", "to": CUSTOMER}}]},
        headers=auth(token),
    )
    assert resp.status == 403, await resp.text()


async def test_webhook_step_posts_a_signed_body(flows, aiohttp_server):
    got: list[tuple[dict, bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    wf = await flows.define(
        [
            {"branch": {"if": {"variable": "tier", "equals": "gold"}, "then": "tell"}},
            {"send": SMS},
            {
                "id": "tell",
                "webhook": {
                    "url": f"http://127.0.0.1:{server.port}/hook",
                    "body": {"note": "{{name}} is gold"},
                },
            },
        ]
    )
    assert wf["webhook_secret"].startswith("whsec_")
    run = await flows.start(wf["id"], to=CUSTOMER, name="Ana", tier="gold")
    done = await flows.status(run["id"], "completed")
    assert [(s["kind"], s["outcome"]) for s in done["timeline"]] == [
        ("branch", "then"),
        ("webhook", "delivered"),
    ]
    [(headers, body)] = got
    assert signing.verify(wf["webhook_secret"], body, headers[signing.HEADER])
    assert headers["Idempotency-Key"] == f"workflow:{run['id']}:2"
    assert headers["X-Trace-Id"] == run["trace_id"]
    payload = __import__("json").loads(body)
    assert payload["run_id"] == run["id"] and payload["data"] == {"note": "Ana is gold"}
    assert await flows.sent(run["id"]) == []  # the branch skipped the text


async def test_lists_and_tenants(flows, make_key):
    wf = await flows.define([{"wait": {"duration": "1h"}}])
    runs = [await flows.start(wf["id"]) for _ in range(3)]
    page = await flows.get("/v1/workflow-runs?limit=2")
    assert len(page["data"]) == 2 and page["next_cursor"]
    rest = await flows.get(f"/v1/workflow-runs?limit=2&cursor={page['next_cursor']}")
    seen = [r["id"] for r in page["data"] + rest["data"]]
    assert sorted(seen) == sorted(r["id"] for r in runs) and rest["next_cursor"] is None
    waiting = await flows.get("/v1/workflow-runs?status=waiting")
    assert all(r["status"] in ("waiting",) for r in waiting["data"])
    assert (await flows.get("/v1/workflows"))["data"][0]["id"] == wf["id"]

    other = await make_key("globex")
    for path in (f"/v1/workflows/{wf['id']}", f"/v1/workflow-runs/{runs[0]['id']}"):
        resp = await flows.client.get(path, headers=auth(other))
        assert resp.status == 404
    resp = await flows.client.post(f"/v1/workflow-runs/{runs[0]['id']}/cancel", headers=auth(other))
    assert resp.status == 404
    resp = await flows.client.get("/v1/workflow-runs", headers=auth(other))
    assert (await resp.json())["data"] == []


async def test_a_failing_webhook_step_is_retried_under_the_same_key(flows, aiohttp_server):
    keys: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        keys.append(request.headers["Idempotency-Key"])
        return web.Response(status=503 if len(keys) == 1 else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    wf = await flows.define([{"webhook": {"url": f"http://127.0.0.1:{server.port}/hook"}}])
    run = await flows.start(wf["id"])
    done = await flows.status(run["id"], "completed", timeout=15)
    assert done["timeline"][0]["outcome"] == "delivered"
    assert keys == [f"workflow:{run['id']}:0"] * 2
