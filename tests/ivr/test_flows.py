"""Flow upload: versions, reads, and a 422 naming the node for each kind of bad flow."""

from __future__ import annotations

import asyncpg
import pytest

from gateway.resources import RESOURCES
from tests.helpers import auth
from tests.ivr.conftest import main_menu


async def test_upload_versions_list_and_get(ivr, client):
    # main-menu loops menu → invalid → menu: accepted, the caller is asked each time round
    first = await ivr.upload(main_menu())
    assert first["version"] == 1 and first["name"] == "main-menu"
    assert first["signing_secret"].startswith("whsec_")
    changed = main_menu()
    changed["nodes"]["goodbye"]["say"] = "Bye now."
    second = await ivr.upload(changed)
    assert second["version"] == 2 and second["id"] != first["id"]
    assert second["signing_secret"] == first["signing_secret"]  # one secret per name

    listed = await ivr.request("GET", "/v1/ivr/flows", 200)
    assert [(f["name"], f["version"], f["versions"]) for f in listed["data"]] == [
        ("main-menu", 2, 2)
    ]
    assert listed["next_cursor"] is None
    for name in ("b-flow", "a-flow"):
        await ivr.upload(main_menu(name=name))
    page = await ivr.request("GET", "/v1/ivr/flows?limit=2", 200)
    assert [f["name"] for f in page["data"]] == ["a-flow", "b-flow"] and page["next_cursor"]
    rest = await ivr.request("GET", f"/v1/ivr/flows?limit=2&cursor={page['next_cursor']}", 200)
    assert [f["name"] for f in rest["data"]] == ["main-menu"] and rest["next_cursor"] is None
    latest = await ivr.request("GET", "/v1/ivr/flows/main-menu", 200)
    assert latest["version"] == 2 and latest["document"]["nodes"]["goodbye"]["say"] == "Bye now."
    old = await ivr.request("GET", "/v1/ivr/flows/main-menu?version=1", 200)
    # a version past PostgreSQL's integer is a 422, not a 500
    await ivr.request("GET", "/v1/ivr/flows/main-menu?version=2147483648", 422)
    assert old["document"]["nodes"]["goodbye"]["say"] == "Goodbye."
    # a version is immutable: the database refuses to change it
    with pytest.raises(asyncpg.RaiseError, match="immutable"):
        await client.app[RESOURCES].db.execute(
            "UPDATE ivr_flows SET document = '{}' WHERE id = $1::uuid", first["id"]
        )
    for name in ("nope", "%00", "j%F1%BA%B2%8B", "main-menu%0A"):  # never a 500
        missing = await ivr.request("GET", f"/v1/ivr/flows/{name}", 404)
        assert missing["code"] == "ivr_flow_not_found"


async def test_another_tenant_sees_none_of_it(ivr, client, make_key):
    await ivr.upload(main_menu())
    other = await make_key("globex")
    resp = await client.get("/v1/ivr/flows/main-menu", headers=auth(other))
    assert resp.status == 404
    resp = await client.get("/v1/ivr/flows", headers=auth(other))
    assert (await resp.json())["data"] == []


BAD = {
    # a branch that names no node
    "unknown branch": (
        lambda f: f["nodes"]["menu"]["on"].update({"3": "sales"}),
        "flow_unknown_node",
        "menu",
        "'sales'",
    ),
    "unknown start": (
        lambda f: f.update({"start": "hello"}),
        "flow_unknown_node",
        "hello",
        "start",
    ),
    "unknown next": (
        lambda f: f["nodes"]["greet"].update({"next": "mneu"}),
        "flow_unknown_node",
        "greet",
        "'mneu'",
    ),
    # a node nothing leads to
    "unreachable": (
        lambda f: f["nodes"].update({"orphan": {"say": "Nobody hears this."}}),
        "flow_unreachable_node",
        "orphan",
        "cannot be reached",
    ),
    # greet → count → greet … with no gather on the way
    "loop without input": (
        lambda f: f["nodes"].update(
            {
                "greet": {"say": "Hello.", "next": "count"},
                "count": {
                    "condition": {"test": {"var": "n", "exists": True}},
                    "true": "menu",
                    "false": "greet",
                },
            }
        ),
        "flow_loop_without_input",
        "count",
        "takes no input",
    ),
    "node of no kind": (
        lambda f: f["nodes"].update({"greet": {"speak": "Hi", "next": "menu"}}),
        "flow_node_kind",
        "nodes.greet",
        "exactly one of",
    ),
    "node of two kinds": (
        lambda f: f["nodes"].update({"greet": {"say": "Hi", "play": "https://a.example/x.wav"}}),
        "flow_node_kind",
        "nodes.greet",
        "exactly one of",
    ),
    "node that is not an object": (
        lambda f: f["nodes"].update({"greet": "Hello."}),
        "flow_node_kind",
        "nodes.greet",
        "exactly one of",
    ),
    "business hours with an offset": (
        lambda f: f["nodes"].update(
            {
                "greet": {
                    "condition": {
                        "business_hours": {
                            "time_zone": "UTC",
                            "open": "09:00+02:00",
                            "close": "17:00",
                        }
                    },
                    "true": "menu",
                    "false": "goodbye",
                }
            }
        ),
        "validation_error",
        "nodes.greet",
        "without an offset",
    ),
    # a bridge passes no guardrail: only to agents.bridge_hosts, never the trunk
    "bridge to the trunk": (
        lambda f: f["nodes"].update({"agent": {"bridge_to": "sip:+12125550143@carrier"}}),
        "bridge_target_not_allowed",
        "agent",
        "agents.bridge_hosts",
    ),
    # a caller id must be the tenant's own number
    "transfer from a number not yours": (
        lambda f: f["nodes"].update(
            {"agent": {"transfer": {"to": "+12125550143", "from": "+12125550100"}}}
        ),
        "transfer_from_not_yours",
        "agent",
        "not one of your numbers",
    ),
    "bad field in a node": (
        lambda f: f["nodes"]["menu"]["gather"].update({"timeout": 0}),
        "validation_error",
        "nodes.menu",
        "timeout",
    ),
}


async def test_each_bad_flow_gets_422_naming_the_node(ivr):
    """One app for every case (each is one request): the suite stays quick."""
    for case, (change, code, node, words) in BAD.items():
        flow = main_menu()
        change(flow)
        problem = await ivr.upload(flow, expect=422)
        assert problem["code"] == code, (case, problem)
        assert node in problem["detail"], (case, problem)
        assert words in problem["detail"], (case, problem)
        if code.startswith("flow_") and code != "flow_node_kind":
            assert problem["node"] == node, (case, problem)
            assert problem["errors"][0]["node"] == node, (case, problem)
    listed = await ivr.request("GET", "/v1/ivr/flows", 200)
    assert listed["data"] == []  # nothing stored
