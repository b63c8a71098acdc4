"""Flows run end to end on the sandbox transport (POST /v1/ivr/simulate): every node type,
the webhook node against a real local HTTP server (signed request, timeout → on_error, an
answer that sets variables and names the next node), a transfer refused by the guardrail
chain (DNC) taking the fallback, and the session in Redis (TTL) then summarised in PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from aiohttp import web

from gateway.ivr.service import flow_row
from gateway.ivr.wiring import RUNNER
from gateway.resources import RESOURCES
from gateway.webhooks import signing
from ivr.engine import CallerHangup
from ivr.sessions import DEFAULT_TTL, SessionConflict
from tests.ivr.conftest import (
    assert_refused_by_dnc,
    assert_transferred,
    entered,
    main_menu,
)


class TenantServer:
    """The tenant's webhook endpoint: records requests, answers what the test scripted."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.answers: dict[str, Any] = {}  # path → JSON answer, or ("sleep", s) / ("status", n)
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((dict(request.headers), body))
        answer = self.answers.get(request.path, {})
        if isinstance(answer, tuple) and answer[0] == "sleep":
            await asyncio.sleep(answer[1])
            return web.json_response({})
        if isinstance(answer, tuple) and answer[0] == "status":
            return web.Response(status=answer[1])
        return web.json_response(answer)


async def tenant_server(aiohttp_server) -> TenantServer:
    srv = TenantServer()
    app = web.Application()
    app.router.add_post("/{tail:.*}", srv.handle)
    server = await aiohttp_server(app)
    srv.url = str(server.make_url(""))
    return srv


async def events_of(client, subject: str) -> list[tuple[str, dict]]:
    rows = await client.app[RESOURCES].db.fetch(
        "SELECT type, data FROM events WHERE subject = $1 ORDER BY id", subject
    )
    return [(r["type"], r["data"]) for r in rows]


async def test_the_issue_example_with_a_signed_webhook_that_sets_variables(
    ivr, client, aiohttp_server
):
    srv = await tenant_server(aiohttp_server)
    flow = main_menu()
    flow["nodes"]["billing"] = {
        "webhook": {"url": f"{srv.url}/ivr/billing", "timeout": 2},
        "next": "goodbye",
        "on_error": "goodbye",
        "branches": ["balance"],
    }
    flow["nodes"]["balance"] = {"say": "Your balance is {{balance}} dollars.", "next": "goodbye"}
    made = await ivr.upload(flow)
    srv.answers["/ivr/billing"] = {"set": {"balance": "12.50"}, "next": "balance"}

    out = await ivr.simulate("main-menu", ["9", "", "1"], to="+14155550100")

    assert entered(out["transcript"]) == [
        "greet", "menu", "menu", "menu", "billing", "balance", "goodbye"
    ]  # fmt: skip
    said = [e["say"] for e in out["transcript"] if e.get("say")]
    assert said[0] == "Thanks for calling Acme."
    assert said[-2:] == ["Your balance is 12.50 dollars.", "Goodbye."]
    inputs = [(e["input"], e["result"], e["branch"]) for e in out["transcript"] if "input" in e]
    assert inputs == [("9", "invalid", "menu"), ("", "no_input", "menu"), ("1", "match", "billing")]
    assert out["status"] == "ended" and out["end_reason"] == "hangup"
    assert out["variables"] == {"balance": "12.50"} and out["inputs_left"] == 0

    # the request was signed with the flow's secret and carried the session
    ((headers, body),) = srv.requests
    assert signing.verify(made["signing_secret"], body, headers[signing.HEADER])
    assert not signing.verify("whsec_other", body, headers[signing.HEADER])
    payload = json.loads(body)
    assert payload["digits"] == "1" and payload["from"] == "+14155550123"
    assert payload["node"] == "billing" and payload["session_id"] == out["id"]

    # the summary and the events
    got = await ivr.request("GET", f"/v1/ivr/sessions/{out['id']}", 200)
    assert got["status"] == "ended" and got["transcript"] == out["transcript"]
    kinds = [t for t, _ in await events_of(client, out["id"])]
    assert kinds[0] == "ivr.started" and kinds[-1] == "ivr.ended"
    assert kinds.count("ivr.input") == 4  # three entries and the webhook's answer
    assert kinds.count("ivr.node") == 7


async def test_webhook_timeout_and_error_status_take_on_error(ivr, aiohttp_server):
    srv = await tenant_server(aiohttp_server)
    flow = {
        "name": "hooks",
        "start": "slow",
        "nodes": {
            "slow": {
                "webhook": {"url": f"{srv.url}/slow", "timeout": 0.3},
                "next": "fine",
                "on_error": "broken",
            },
            "broken": {
                "webhook": {"url": f"{srv.url}/broken", "timeout": 2},
                "next": "fine",
                "on_error": "sorry",
            },
            "fine": {"say": "Fine."},
            "sorry": {"say": "Sorry, try later."},
        },
    }
    await ivr.upload(flow)
    srv.answers["/slow"] = ("sleep", 3)
    srv.answers["/broken"] = ("status", 500)
    out = await asyncio.wait_for(ivr.simulate("hooks", []), timeout=10)
    hooks = [(e["node"], e["error"], e["branch"]) for e in out["transcript"] if "webhook" in e]
    assert hooks == [("slow", "timeout", "broken"), ("broken", "http_500", "sorry")]
    assert entered(out["transcript"])[-1] == "sorry" and out["end_reason"] == "flow_end"


async def test_every_node_type_through_simulate(ivr, client):
    flow = {
        "name": "all-nodes",
        "start": "hello",
        "fallback": "sorry",
        "nodes": {
            "hello": {"say": "Hello.", "voice": "alice", "language": "en-US", "next": "music"},
            "music": {"play": "https://cdn.example/hold.wav", "next": "tier"},
            "tier": {"set": {"tier": "gold"}, "next": "open"},
            # the chain's clock is pinned to a Wednesday noon in Los Angeles (tests/conftest.py)
            "open": {
                "condition": {
                    "business_hours": {
                        "time_zone": "America/Los_Angeles",
                        "open": "09:00",
                        "close": "17:00",
                    }
                },
                "true": "gold",
                "false": "closed",
            },
            "closed": {"say": "We are closed.", "then": "hangup"},
            "gold": {
                "condition": {"test": {"var": "tier", "eq": "gold"}},
                "true": "account",
                "false": "closed",
            },
            "account": {
                "gather": {"say": "Your account number, then hash.", "variable": "account"},
                "next": "voicemail",
            },
            "voicemail": {"record": {"say": "Leave a message.", "max_length": 60}, "next": "xfer"},
            "xfer": {"transfer": {"to": "+12125550199"}},
            "sorry": {"say": "Nobody is free."},
        },
    }
    await ivr.upload(flow)
    out = await ivr.simulate("all-nodes", ["4711#", "hello, it's me"], to="+14155550100")
    assert entered(out["transcript"]) == [
        "hello", "music", "tier", "open", "gold", "account", "voicemail", "xfer"
    ]  # fmt: skip
    kinds = {e["node"]: e["kind"] for e in out["transcript"] if "kind" in e}
    assert set(kinds.values()) == {
        "say", "play", "set", "condition", "gather", "record", "transfer"
    }  # fmt: skip
    assert out["variables"]["account"] == "4711" and out["variables"]["tier"] == "gold"
    assert out["recordings"][0]["url"].startswith("sandbox://recordings/")
    (xfer,) = [e for e in out["transcript"] if "transfer" in e]
    assert xfer["transfer"] == "transferred" and "not dialled" in xfer["reason"]
    assert out["end_reason"] == "transferred"
    # cleared at accept and at dispatch, then not dialled: a simulation stops there
    await assert_transferred(
        client.app[RESOURCES].db, out["transcript"], "+12125550199", "canceled"
    )

    await ivr.upload(
        {
            "name": "bot",
            "start": "a",
            "nodes": {
                "a": {"say": "Connecting you.", "next": "b"},
                "b": {"agent": {"system_prompt": "Help."}},
            },
        }
    )
    assert (await ivr.simulate("bot", []))["end_reason"] == "agent"
    await ivr.upload(
        {"name": "sip", "start": "b", "nodes": {"b": {"bridge_to": "sip:agent@ultravox"}}}
    )
    assert (await ivr.simulate("sip", []))["end_reason"] == "bridged"
    await ivr.upload({"name": "bye", "start": "h", "nodes": {"h": {"hangup": True}}})
    assert (await ivr.simulate("bye", ["1"]))["inputs_left"] == 1
    # a gather with no scripted input left: the caller hangs up
    await ivr.upload(main_menu())
    quiet = await ivr.simulate("main-menu", [])
    assert quiet["end_reason"] == "inputs_exhausted" and quiet["node"] == "menu"
    assert (await ivr.simulate("nope", [], expect=404))["code"] == "ivr_flow_not_found"


async def test_a_transfer_to_a_dnc_number_is_refused_and_takes_the_fallback(ivr, client):
    await ivr.upload(
        {
            "name": "xfer",
            "start": "xfer",
            "nodes": {
                "xfer": {"transfer": {"to": "+12125550143"}, "fallback": "sorry"},
                "sorry": {"say": "We cannot connect you.", "then": "hangup"},
            },
        }
    )
    # the tenant's own DNC list (as POST /v1/dnc writes it)
    await client.app[RESOURCES].db.execute(
        "INSERT INTO dnc_entries (number, tenant_id, source)"
        " SELECT '+12125550143', tenant_id, 'internal' FROM ivr_flows LIMIT 1"
    )
    out = await ivr.simulate("xfer", [], to="+14155550100")
    await assert_refused_by_dnc(
        client.app[RESOURCES].db, out["transcript"], "+12125550143", "sorry"
    )
    assert entered(out["transcript"]) == ["xfer", "sorry"] and out["end_reason"] == "hangup"
    events = await events_of(client, out["id"])
    (refused,) = [d for t, d in events if t == "ivr.transfer"]
    assert refused["transfer"] == "refused" and refused["call_id"]


async def test_a_session_lives_in_redis_with_a_ttl_and_is_summarised_when_it_ends(ivr, client):
    made = await ivr.upload(main_menu())
    runner = client.app[RUNNER]
    tenant_id = uuid.UUID(
        str(await client.app[RESOURCES].db.fetchval("SELECT tenant_id FROM ivr_flows"))
    )
    row = await flow_row(runner.db, tenant_id, "main-menu", None)
    first = await runner.start(row, caller="+14155550123", called=None, transport="sandbox")
    session = first.session
    assert session.waiting == "gather" and str(row["id"]) == made["id"]

    redis = client.app[RESOURCES].redis
    key = runner.store.key(session.id)
    ttl = await redis.ttl(key)
    assert 0 < ttl <= DEFAULT_TTL
    live = await ivr.request("GET", f"/v1/ivr/sessions/{session.id}", 200)
    assert live["status"] == "active" and live["node"] == "menu" and live["waiting"] == "gather"
    assert await client.app[RESOURCES].db.fetchval("SELECT count(*) FROM ivr_sessions") == 0

    moved = await runner.feed(session, CallerHangup())
    try:  # a second worker feeding the same (now stale) session is refused
        await runner.feed(session, CallerHangup("late"))
    except SessionConflict:
        pass
    else:
        raise AssertionError("a stale session was stepped twice")
    assert moved.session.ended == "caller_hangup"
    assert await redis.exists(key) == 0
    ended = await ivr.request("GET", f"/v1/ivr/sessions/{session.id}", 200)
    assert ended["status"] == "ended" and ended["end_reason"] == "caller_hangup"
    assert ended["node"] == "menu" and ended["ended_at"] is not None
    row = await client.app[RESOURCES].db.fetchrow(
        "SELECT end_reason, flow_version, steps FROM ivr_sessions WHERE id = $1",
        uuid.UUID(session.id),
    )
    assert dict(row) == {"end_reason": "caller_hangup", "flow_version": 1, "steps": 2}
    events = await events_of(client, session.id)
    assert events[-1][0] == "ivr.ended" and events[-1][1]["reason"] == "caller_hangup"
    assert [t for t, _ in events].count("ivr.ended") == 1
    missing = await ivr.request("GET", f"/v1/ivr/sessions/{uuid.uuid4()}", 404)
    assert missing["code"] == "ivr_session_not_found"
