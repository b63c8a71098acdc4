"""The `trunkline` command. Exit codes: 0 ok, 2 bad usage or configuration, 1 runtime failure.

Each command imports what it needs when it runs: the daemon (the whole app, ~1 s of CPU)
only for `run` and `dev`, so `--help`, `check-config` and the operator's short commands start
in a fraction of that. Keep new imports here cheap, and heavy ones inside the command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from gateway import db, opscli
from gateway.core.errors import Problem
from gateway.devservices import DevServiceError
from gateway.logs import configure_logging, get_logger
from gateway.ops import reach
from gateway.settings import ConfigError, Settings, _mask_password, load_settings

log = get_logger("trunkline")
EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.daemon import run_daemon, serve

    run_daemon(serve(settings, args.role))
    return EXIT_OK


def _cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    from gateway import devcli

    return devcli.cmd_dev(args, settings)


def _cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    url = reach.database_url(settings)
    try:
        applied = asyncio.run(db.migrate(url))
    except OSError as exc:
        raise reach.Unreachable(
            f"cannot reach PostgreSQL at {_mask_password(url)} ({exc}): "
            + reach.fix(settings, "database", "TRUNKLINE_DATABASE__URL")
        ) from None
    if applied:
        for m in applied:
            print(f"applied {m.version:04d}_{m.name}")
    else:
        print("database is up to date")
    return EXIT_OK


def _cmd_tenants_create(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.tenants.service import create_tenant, set_stripe_customer

    async def work(pool: Any) -> Any:
        async with pool.acquire() as conn, conn.transaction():
            tenant_id = await create_tenant(conn, args.name)
            if args.stripe_customer:
                await set_stripe_customer(conn, args.name, args.stripe_customer)
            return tenant_id

    tenant_id = reach.run(settings, work)
    billed = f", billed to Stripe customer {args.stripe_customer}" if args.stripe_customer else ""
    print(f"created tenant {args.name} ({tenant_id}){billed}")
    return EXIT_OK


def _cmd_tenants_update(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.tenants.service import set_stripe_customer

    if args.stripe_customer is None and not args.no_stripe_customer:
        print(
            "error: nothing to change (--stripe-customer or --no-stripe-customer)", file=sys.stderr
        )
        return EXIT_USAGE
    customer = None if args.no_stripe_customer else args.stripe_customer
    reach.run(settings, lambda pool: set_stripe_customer(pool, args.name, customer))
    if customer is None:
        print(f"tenant {args.name}: usage no longer exported to Stripe")
    else:
        print(f"tenant {args.name}: usage billed to Stripe customer {customer}")
    return EXIT_OK


def _print_key(issued: Any) -> None:
    print(f"API key for tenant {issued.tenant} (key id {issued.key_id}); it is shown only once:")
    print(f"  {issued.token}")
    print(f"  scopes: {' '.join(issued.scopes)}")


def _cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.tenants.service import create_key

    scopes = [s for s in (args.scopes or "").replace(",", " ").split() if s] or None
    try:
        issued = reach.run(settings, lambda pool: create_key(pool, args.tenant, scopes, args.name))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _print_key(issued)
    return EXIT_OK


def _cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.tenants.service import revoke_key

    reach.run(settings, lambda pool: revoke_key(pool, args.key_id))
    print(f"revoked {args.key_id}")
    return EXIT_OK


def _cmd_dnc_import(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import datetime

    from gateway.dnc.importer import ImportFailed, ImportRejected, ProgressBar, import_file

    expires_at = None
    if args.expires_at:
        try:
            expires_at = datetime.fromisoformat(args.expires_at)
        except ValueError:
            print(
                f"error: --expires-at {args.expires_at!r} is not an ISO 8601 time", file=sys.stderr
            )
            return EXIT_USAGE
        if expires_at.tzinfo is None:
            print(
                "error: --expires-at needs a time zone (e.g. 2027-01-01T00:00:00Z)", file=sys.stderr
            )
            return EXIT_USAGE
    if args.file != "-" and not os.path.isfile(args.file):
        print(f"error: no such file: {args.file}", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = reach.run(
            settings,
            lambda pool: import_file(
                pool,
                args.file,
                source=args.source,
                tenant=args.tenant,
                expires_at=expires_at,
                note=args.note,
                progress=None if args.quiet else ProgressBar(sys.stderr),
            ),
        )
    except ImportRejected as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except ImportFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    scope = f"tenant {args.tenant}" if args.tenant else "the global list"
    print(
        f"imported {report.lines} numbers into {scope} as {args.source} in {report.seconds:.1f} s "
        f"({report.rate:,.0f}/s): {report.inserted} new, {report.updated} updated, "
        f"{report.unchanged} already listed or repeated"
    )
    return EXIT_OK


def _cmd_campaigns_import(args: argparse.Namespace, settings: Settings) -> int:
    import uuid

    from gateway.campaigns.service import ImportFailed, import_file
    from gateway.dnc.importer import ProgressBar

    try:
        campaign_id = uuid.UUID(args.campaign_id)
    except ValueError:
        print(f"error: {args.campaign_id!r} is not a campaign id", file=sys.stderr)
        return EXIT_USAGE
    if not os.path.isfile(args.file):
        print(f"error: no such file: {args.file}", file=sys.stderr)
        return EXIT_USAGE
    bar = None if args.quiet else ProgressBar(sys.stderr)
    try:
        report = reach.run(
            settings, lambda pool: import_file(pool, campaign_id, args.file, progress=bar)
        )
    except ImportFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    if bar is not None and bar.tty:
        sys.stderr.write("\n")
    print(
        f"imported {report.received} rows: {report.added} added, {report.duplicates} "
        f"duplicates, {report.suppressed} suppressed (DNC or opted out), "
        f"{report.rejected} rejected"
    )
    for line, value, why in report.rejects:
        print(f"  line {line}: {value!r}: {why}")
    if report.rejected > len(report.rejects):
        print(f"  … and {report.rejected - len(report.rejects)} more")
    return EXIT_OK


def _cmd_check_config(args: argparse.Namespace, settings: Settings) -> int:
    print(json.dumps(settings.redacted(), indent=2))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trunkline",
        description="Trunkline telephony gateway daemon.",
        epilog="Configuration: defaults < TOML file (--config or TRUNKLINE_CONFIG) < TRUNKLINE_* environment.",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="TOML configuration file (default: $TRUNKLINE_CONFIG)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, func: Callable[..., int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    roles = ("api", "worker", "all")
    p = add("run", "Serve the API and/or run background workers.", _cmd_run)
    p.add_argument(
        "--role",
        choices=roles,
        default="all",
        help="api: HTTP only; worker: background jobs only; all: both (default)",
    )
    add(
        "migrate",
        "Apply pending database migrations (safe to run from many processes at once).",
        _cmd_migrate,
    )
    add(
        "check-config",
        "Print the effective configuration with secrets redacted.",
        _cmd_check_config,
    )
    p = add(
        "dev",
        "Zero-setup mode: private PostgreSQL/Redis when no URL is set, a dev key, then serve.",
        _cmd_dev,
    )
    p.add_argument("--role", choices=roles, default="all", help="as for run (default: all)")

    tenants = sub.add_parser("tenants", help="Manage tenants.", description="Manage tenants.")
    tsub = tenants.add_subparsers(dest="tenants_command", required=True, metavar="ACTION")
    p = tsub.add_parser("create", help="Create a tenant.", description="Create a tenant.")
    p.add_argument("name", help="lowercase name: letters, digits, '-' and '_'")
    p.add_argument(
        "--stripe-customer", metavar="CUS_ID", help="bill its usage to this Stripe customer"
    )
    p.set_defaults(func=_cmd_tenants_create)
    p = tsub.add_parser(
        "update",
        help="Change a tenant's Stripe customer.",
        description="Set (or clear) the Stripe customer the tenant's usage is exported to as "
        "meter events (billing.stripe).",
    )
    p.add_argument("name", help="the tenant's name")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--stripe-customer", metavar="CUS_ID", help="bill usage to this customer")
    who.add_argument(
        "--no-stripe-customer", action="store_true", help="stop exporting the tenant's usage"
    )
    p.set_defaults(func=_cmd_tenants_update)

    keys = sub.add_parser("keys", help="Manage API keys.", description="Manage API keys.")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p = ksub.add_parser(
        "create",
        help="Create an API key (printed once).",
        description="Create an API key; it is printed once and stored only as a hash.",
    )
    p.add_argument("--tenant", required=True, help="tenant name")
    p.add_argument(
        "--scopes", help="comma- or space-separated scopes (default: all except admin); '*' for all"
    )
    p.add_argument("--name", default="", help="a label for the key")
    p.set_defaults(func=_cmd_keys_create)
    p = ksub.add_parser(
        "revoke", help="Revoke an API key at once.", description="Revoke an API key at once."
    )
    p.add_argument("key_id", help="the key id (or the whole key)")
    p.set_defaults(func=_cmd_keys_revoke)
    p = ksub.add_parser(
        "list",
        help="List API keys (never a secret).",
        description="List API keys, newest first: id, tenant, name, state, scopes.",
    )
    p.add_argument("--tenant", help="only this tenant's keys")
    p.set_defaults(func=opscli.cmd_keys_list)
    opscli.add_commands(sub, tsub)

    dnc = sub.add_parser(
        "dnc", help="Manage do-not-contact lists.", description="Manage do-not-contact lists."
    )
    dsub = dnc.add_subparsers(dest="dnc_command", required=True, metavar="ACTION")
    p = dsub.add_parser(
        "import",
        help="Bulk-import numbers (all or nothing).",
        description="Import a plain list (one number per line) or a CSV whose first field is the "
        "number — millions of lines through PostgreSQL COPY, in one transaction: a line that is "
        "not a phone number is reported with its line number and nothing is imported. "
        "Re-importing a file changes nothing.",
    )
    p.add_argument("file", help="the file ('-' for stdin)")
    p.add_argument(
        "--source",
        required=True,
        choices=(
            "internal",
            "national_registry",
            "state_registry",
            "litigator",
            "consumer_opt_out",
        ),
        help="national_registry/state_registry block marketing only; the others every purpose",
    )
    p.add_argument("--tenant", help="tenant name (default: the global list, for every tenant)")
    p.add_argument(
        "--expires-at",
        help="ISO 8601 time the entries stop applying, also for numbers already listed "
        "(default: new entries never expire, listed ones keep theirs)",
    )
    p.add_argument("--note", help="a note stored with every entry")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=_cmd_dnc_import)

    camp = sub.add_parser(
        "campaigns", help="Manage outbound campaigns.", description="Manage outbound campaigns."
    )
    csub = camp.add_subparsers(dest="campaigns_command", required=True, metavar="ACTION")
    p = csub.add_parser(
        "import",
        help="Add prospects to a campaign from a CSV file (progress bar on stderr).",
        description="The number is the column named 'number', else the first; a header line "
        "names the other columns, which become template variables ('state' and 'zip' are kept "
        "as such). Numbers are normalised to E.164; duplicates are dropped; DNC-listed and "
        "opted-out numbers are stored as suppressed; bad lines are reported by line number.",
    )
    p.add_argument("campaign_id", help="the campaign's id")
    p.add_argument("file", help="the CSV file")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=_cmd_campaigns_import)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log.level, settings.log.format)
    if args.command != "dev":  # `dev` starts its own servers; every other command may use them
        reach.use_dev_services(settings)
    try:
        return args.func(args, settings)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except Problem as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return EXIT_RUNTIME
    except reach.Unreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except (DevServiceError, db.MigrationError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception:
        log.exception("fatal error")
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
