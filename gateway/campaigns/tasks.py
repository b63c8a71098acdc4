"""The campaign dialer as a worker task (see campaigns/dialer.py), wired to the pipelines."""

from __future__ import annotations

from aiohttp import web

from campaigns.callerid import CallerIds
from campaigns.dialer import POOL, Dialer
from campaigns.didhealth import HealthPolicy
from gateway.pipeline.calls import VOICE
from gateway.pipeline.wiring import CHAIN, PIPELINE
from gateway.providers.contracts import ReputationProvider
from gateway.providers.sandbox.lookup import SandboxLookup
from gateway.resources import RESOURCES
from gateway.settings import Settings
from gateway.supervisor import TaskFactory
from guardrails.rules import Rules, load_rules

DIALER = web.AppKey("campaign_dialer", Dialer)


def campaign_tasks(app: web.Application) -> dict[str, TaskFactory]:
    """One dialer per worker process; any number of processes may run one.

    The window is read on the guardrail chain's clock (looked up at each use, so a clock a
    test injects into the chain governs both)."""
    res = app[RESOURCES]
    cfg = res.settings.campaigns
    health = cfg.did_health
    dialer = Dialer(
        db=res.db,
        database_url=res.settings.database_url(),
        calls=app[VOICE].pipeline,
        messages=app[PIPELINE],
        clock=lambda: app[CHAIN].clock(),
        interval=cfg.interval,
        settle_delay=cfg.settle_delay,
        orphan_after=cfg.orphan_after,
        orphan_every=cfg.orphan_every,
        refused_retry=cfg.refused_retry,
        batch=cfg.batch,
        max_claim=cfg.max_claim,
        pool_size=res.settings.pools.sizes.get(POOL, 0),
        dial_lead=cfg.dial_lead,
        caller_ids=CallerIds(res.db, rules=lambda: _rules(app), ttl=cfg.callerid_ttl),
        health=HealthPolicy.from_settings(health),
        health_every=cfg.health_every,
        lookup=_lookup(res.settings),
        lookup_max_age=health.lookup_max_age,
    )
    app[DIALER] = dialer
    return {"campaign-dialer": dialer.run}


def _lookup(settings: Settings) -> ReputationProvider | None:
    """The reputation provider DIDs are looked up with (campaigns.did_health.lookup)."""
    kind = settings.campaigns.did_health.lookup
    if kind == "sandbox":
        return SandboxLookup()
    if kind == "twilio":
        from gateway.providers.twilio.adapter import TwilioMessaging
        from gateway.providers.twilio.lookup import TwilioLookup

        return TwilioLookup(TwilioMessaging.from_settings(settings).config)
    return None


def _rules(app: web.Application) -> Rules:
    """The calling-hours rules the chain was built from (area codes → states and zones)."""
    policy = app[CHAIN].policy
    return policy.rules if policy is not None else load_rules()
