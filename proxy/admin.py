"""Budgets at run time: opening the ledger from the config, and the admin commands.

`open_ledger` is what `dpproxy serve` uses: it connects to the ledger database, creates
the schema, syncs the dataset's policy and the config's analysts into it, and returns
the ledger (with the dataset's accountant and group commit) and the answer cache.

The admin commands (`dpproxy analyst|ledger|dataset|cache ...`) change and read the
same rows; running proxies see the changes on their next login or charge. Nothing is
ever deleted from the ledger: analysts are disabled, never removed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any

import asyncpg

from accounting.accountant import Accountant, AccountantKind
from accounting.budget import (
    AnalystBudget,
    DatasetPolicy,
    LedgerConflict,
    budget_rows,
    load_analyst,
    log_admin,
    sync_config,
    sync_dataset,
)
from accounting.cache import AnswerCache
from accounting.ledger import GroupCommit, Ledger, spend_of
from proxy.config import AnalystConfig, Config, ConfigError, load_config


def dataset_policy(config: Config) -> DatasetPolicy:
    """The dataset's accountant and global budget, from the config."""
    assert config.metadata is not None
    p = config.privacy
    return DatasetPolicy(
        dataset=config.metadata.dataset,
        accountant=AccountantKind(p.accountant),
        accounting_delta=p.accounting_delta,
        budget_epsilon=p.global_budget_epsilon,
        budget_delta=p.global_budget_delta,
    )


def _analyst_budget(a: AnalystConfig) -> AnalystBudget:
    return AnalystBudget(
        name=a.name, password=a.password, budget_epsilon=a.budget_epsilon,
        budget_delta=a.budget_delta, max_epsilon_per_query=a.max_epsilon_per_query,
        renewal_period=a.renewal_period, enabled=a.enabled,
    )  # fmt: skip


async def open_ledger(config: Config, sync: bool = True) -> tuple[Ledger, AnswerCache | None]:
    """Connect to the ledger, create its schema, sync the config into it (see module doc)."""
    policy = dataset_policy(config)
    lc = config.ledger
    ledger = await Ledger.connect(
        config.backend.ledger_dsn,
        size=lc.pool_size,
        accountant=Accountant(policy.accountant, Fraction(policy.accounting_delta)),
        group=GroupCommit(lc.group_commit, lc.group_commit_window_us, lc.group_commit_max_batch),
    )
    try:
        cache = AnswerCache(ledger.pool, config.cache.ttl_seconds)
        await cache.ensure_schema()
        if sync:
            async with ledger.pool.acquire() as conn:
                await sync_dataset(conn, policy)
                await sync_config(conn, policy.dataset, [_analyst_budget(a) for a in config.analysts])
    except BaseException:
        await ledger.close()
        raise
    return ledger, (cache if config.cache.enabled else None)


async def lookup_analyst(ledger: Ledger, name: str, dataset: str) -> AnalystConfig | None:
    """The analyst as the ledger holds them now (for logins), in the config's shape."""
    a = await load_analyst(ledger.pool, name, dataset)
    if a is None:
        return None
    # model_construct: the row was validated when written; a budget of 0 is allowed here.
    return AnalystConfig.model_construct(
        name=a.name, password=a.password, budget_epsilon=a.budget_epsilon,
        max_epsilon_per_query=a.max_epsilon_per_query, enabled=a.enabled,
        budget_delta=a.budget_delta, renewal_period=a.renewal_period,
    )  # fmt: skip


# --- admin commands ---------------------------------------------------------------------


class AdminError(Exception):
    """An admin command cannot do what was asked; the message says why."""


def _decimal(text: str, what: str, allow_zero: bool = True) -> Decimal:
    try:
        d = Decimal(text)
    except InvalidOperation as e:
        raise AdminError(f"{what} must be a number, not {text!r}") from e
    if not d.is_finite() or d < 0 or (d == 0 and not allow_zero):
        raise AdminError(f"{what} must be a finite number {'>=' if allow_zero else '>'} 0, not {text}")
    return d


_PERIOD_RE = re.compile(r"^(\d+)\s*(s|m|h|d|w)$")


def parse_period(text: str) -> timedelta | None:
    """'30d', '12h', '1w', or 'none' (no renewal)."""
    if text.lower() in ("none", "off", "0"):
        return None
    m = _PERIOD_RE.match(text.strip().lower())
    if not m:
        raise AdminError(f"renewal period must look like 30d, 12h, 1w or none, not {text!r}")
    n, unit = int(m.group(1)), m.group(2)
    return timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days",
                         "w": "weeks"}[unit]: n})  # fmt: skip


def _fmt(x: Any, places: int = 6) -> str:
    if x is None:
        return "-"
    if isinstance(x, Fraction):
        x = Decimal(x.numerator) / Decimal(x.denominator)
    if isinstance(x, Decimal):
        q = x.quantize(Decimal(1).scaleb(-places)).normalize()
        return format(q, "f")
    if isinstance(x, timedelta):
        return str(x)
    if isinstance(x, datetime):
        return x.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(x)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A readable fixed-width table, like psql's aligned output."""
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    out = [" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    out.append("-+-".join("-" * w for w in widths))
    out += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    out.append(f"({len(cells)} row{'s' if len(cells) != 1 else ''})")
    return "\n".join(out)


async def _connect(config: Config) -> tuple[Ledger, str]:
    ledger, _cache = await open_ledger(config, sync=False)
    assert config.metadata is not None
    # The dataset row must exist for budgets to be set before the first `serve`.
    async with ledger.pool.acquire() as conn:
        await sync_dataset(conn, dataset_policy(config))
    return ledger, config.metadata.dataset


async def _admin(args: argparse.Namespace, config: Config) -> str:
    ledger, dataset = await _connect(config)
    try:
        async with ledger.pool.acquire() as conn:
            return await _dispatch(args, conn, dataset)
    finally:
        await ledger.close()


async def _dispatch(args: argparse.Namespace, conn: asyncpg.Connection, dataset: str) -> str:
    cmd = (args.command, getattr(args, "action", None))
    if cmd == ("analyst", "add"):
        return await _analyst_add(args, conn, dataset)
    if cmd == ("analyst", "list"):
        rows = await budget_rows(conn, None, dataset)
        return table(
            ["analyst", "enabled", "budget_eps", "spent_eps", "remaining_eps", "per_query", "renewal", "queries"],
            [(r.analyst, r.enabled, r.budget_epsilon, r.spent_epsilon, r.remaining_epsilon,
              r.max_epsilon_per_query, r.renewal_period, r.queries) for r in rows],
        )  # fmt: skip
    if cmd == ("analyst", "show"):
        rows = await budget_rows(conn, args.name, None)
        if not rows:
            raise AdminError(f'no analyst "{args.name}" (see `dpproxy analyst list`)')
        if args.json:
            return json.dumps([_row_json(r) for r in rows], indent=2)
        return table(
            ["analyst", "dataset", "accountant", "enabled", "budget_eps", "spent_eps",
             "remaining_eps", "budget_delta", "spent_delta", "rho", "per_query", "renewal", "queries"],
            [(r.analyst, r.dataset, r.accountant, r.enabled, r.budget_epsilon, r.spent_epsilon,
              r.remaining_epsilon, r.budget_delta, r.spent_delta, r.spent_rho,
              r.max_epsilon_per_query, r.renewal_period, r.queries) for r in rows],
        )  # fmt: skip
    if cmd == ("analyst", "set-budget"):
        return await _set_budget(args, conn, dataset)
    if cmd in (("analyst", "disable"), ("analyst", "enable")):
        enable = cmd[1] == "enable"
        async with conn.transaction():
            n = await conn.execute(
                "UPDATE dpproxy.analysts SET enabled = $2, managed_by = 'admin', "
                "updated_at = now() WHERE name = $1", args.name, enable,
            )  # fmt: skip
            if n.endswith(" 0"):
                raise AdminError(f'no analyst "{args.name}"')
            await log_admin(conn, cmd[1], args.name, {})
        return f"analyst {args.name} {'enabled' if enable else 'disabled'}"
    if cmd == ("analyst", "passwd"):
        verifier = _read_verifier(args)
        async with conn.transaction():
            n = await conn.execute(
                "UPDATE dpproxy.analysts SET password = $2, managed_by = 'admin', "
                "updated_at = now() WHERE name = $1", args.name, verifier,
            )  # fmt: skip
            if n.endswith(" 0"):
                raise AdminError(f'no analyst "{args.name}"')
            await log_admin(conn, "passwd", args.name, {})
        return f"password of analyst {args.name} changed"
    if args.command == "ledger":
        return await _ledger_show(args, conn)
    if args.command == "dataset":
        return await _dataset_show(args, conn)
    if args.command == "cache":
        v = await conn.fetchval(
            "UPDATE dpproxy.datasets SET cache_epoch = cache_epoch + 1 WHERE dataset = $1 "
            "RETURNING cache_epoch", dataset,
        )  # fmt: skip
        await log_admin(conn, "cache-clear", None, {"dataset": dataset, "epoch": v})
        return f'answer cache of dataset "{dataset}" cleared (epoch {v}); repeats will be charged again'
    raise AdminError(f"unknown command {' '.join(str(c) for c in cmd if c)}")


def _row_json(r: Any) -> dict[str, Any]:
    return {k: (_fmt(v, 12) if isinstance(v, (Fraction, Decimal, timedelta)) else v)
            for k, v in dataclasses.asdict(r).items()}  # fmt: skip


def _read_verifier(args: argparse.Namespace) -> str:
    from proxy.auth.scram import make_verifier

    if getattr(args, "verifier", None):
        if not args.verifier.startswith("SCRAM-SHA-256$"):
            raise AdminError("--verifier must be a SCRAM-SHA-256 verifier (see `dpproxy passwd`)")
        return str(args.verifier)
    pw = sys.stdin.readline().rstrip("\n")
    if not pw:
        raise AdminError("empty password (give it on stdin, or --verifier)")
    return make_verifier(pw)


async def _analyst_add(args: argparse.Namespace, conn: asyncpg.Connection, dataset: str) -> str:
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_$]*$", args.name) or len(args.name) > 63:
        raise AdminError(f"analyst name {args.name!r} must be an identifier (letters, digits, _)")
    budget = _decimal(args.budget_epsilon, "--budget-epsilon")
    cap = _decimal(args.max_epsilon_per_query, "--max-epsilon-per-query", False) if args.max_epsilon_per_query else None
    delta = _decimal(args.budget_delta, "--budget-delta")
    renewal = parse_period(args.renewal) if args.renewal else None
    verifier = _read_verifier(args)
    async with conn.transaction():
        if await conn.fetchval("SELECT 1 FROM dpproxy.analysts WHERE name = $1", args.name):
            raise AdminError(f'analyst "{args.name}" already exists (use set-budget or passwd)')
        await conn.execute(
            "INSERT INTO dpproxy.analysts (name, password, managed_by) VALUES ($1, $2, 'admin')",
            args.name, verifier,
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO dpproxy.budget_spent (analyst, dataset, budget_epsilon, budget_delta, "
            "max_epsilon_per_query, renewal_period) VALUES ($1, $2, $3, $4, $5, $6)",
            args.name, dataset, budget, delta, cap, renewal,
        )  # fmt: skip
        await log_admin(conn, "add", args.name, {"dataset": dataset, "budget_epsilon": budget,
                                                  "max_epsilon_per_query": cap})  # fmt: skip
    return f'analyst {args.name} added with epsilon {budget} on dataset "{dataset}"'


async def _set_budget(args: argparse.Namespace, conn: asyncpg.Connection, dataset: str) -> str:
    sets: dict[str, Any] = {}
    if args.epsilon is not None:
        sets["budget_epsilon"] = _decimal(args.epsilon, "--epsilon")
    if args.delta is not None:
        sets["budget_delta"] = _decimal(args.delta, "--delta")
    if args.max_epsilon_per_query is not None:
        sets["max_epsilon_per_query"] = (
            None if args.max_epsilon_per_query.lower() == "none"
            else _decimal(args.max_epsilon_per_query, "--max-epsilon-per-query", False)
        )  # fmt: skip
    if args.renewal is not None:
        sets["renewal_period"] = parse_period(args.renewal)
    if not sets:
        raise AdminError("nothing to change: give --epsilon, --delta, --max-epsilon-per-query or --renewal")
    async with conn.transaction():
        if not await conn.fetchval("SELECT 1 FROM dpproxy.analysts WHERE name = $1", args.name):
            raise AdminError(f'no analyst "{args.name}"')
        cols = list(sets)
        assign = ", ".join(f"{c} = ${i + 3}" for i, c in enumerate(cols))
        n = await conn.execute(
            f"UPDATE dpproxy.budget_spent SET {assign} WHERE analyst = $1 AND dataset = $2",
            args.name, dataset, *sets.values(),
        )  # fmt: skip
        if n.endswith(" 0"):
            await conn.execute(
                "INSERT INTO dpproxy.budget_spent (analyst, dataset) VALUES ($1, $2)",
                args.name, dataset,
            )  # fmt: skip
            await conn.execute(
                f"UPDATE dpproxy.budget_spent SET {assign} WHERE analyst = $1 AND dataset = $2",
                args.name, dataset, *sets.values(),
            )  # fmt: skip
        await conn.execute(
            "UPDATE dpproxy.analysts SET managed_by = 'admin', updated_at = now() WHERE name = $1",
            args.name,
        )
        await log_admin(conn, "set-budget", args.name, {"dataset": dataset, **sets})
    changed = ", ".join(f"{k} = {_fmt(v)}" for k, v in sets.items())
    return f'analyst {args.name} on dataset "{dataset}": {changed}'


async def _ledger_show(args: argparse.Namespace, conn: asyncpg.Connection) -> str:
    since: datetime | None = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError as e:
            raise AdminError(f"--since must be an ISO date or time such as 2024-05-01, not {args.since!r}") from e
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
    rows = await conn.fetch(
        "SELECT id, at, analyst, dataset, fingerprint, epsilon, delta, rho, mechanisms "
        "FROM dpproxy.charges WHERE ($1::text IS NULL OR analyst = $1) "
        "AND ($2::timestamptz IS NULL OR at >= $2) ORDER BY id LIMIT $3",
        args.analyst, since, args.limit,
    )  # fmt: skip
    if args.json:
        return json.dumps(
            [{"id": r["id"], "at": r["at"].isoformat(), "analyst": r["analyst"],
              "dataset": r["dataset"], "fingerprint": r["fingerprint"],
              "epsilon": str(r["epsilon"]), "delta": str(r["delta"]), "rho": str(r["rho"]),
              "mechanisms": json.loads(r["mechanisms"])} for r in rows], indent=2,
        )  # fmt: skip
    return table(
        ["id", "at (UTC)", "analyst", "dataset", "fingerprint", "epsilon", "delta", "rho", "releases"],
        [(r["id"], r["at"], r["analyst"], r["dataset"], r["fingerprint"][:12], r["epsilon"],
          r["delta"], r["rho"], len(json.loads(r["mechanisms"]))) for r in rows],
    )  # fmt: skip


async def _dataset_show(args: argparse.Namespace, conn: asyncpg.Connection) -> str:
    rows = await conn.fetch("SELECT * FROM dpproxy.datasets ORDER BY dataset")
    out = []
    for r in rows:
        acc = Accountant(AccountantKind(r["accountant"]), Fraction(Decimal(r["accounting_delta"])))
        g = acc.guarantee(spend_of(r))
        budget = r["budget_epsilon"]
        remaining = (Fraction(Decimal(budget)) - g.epsilon) if budget is not None else None
        out.append((r["dataset"], r["accountant"], r["accounting_delta"], budget, g.epsilon,
                    max(Fraction(0), remaining) if remaining is not None else None,
                    g.delta, spend_of(r).rho, r["releases"], r["cache_epoch"]))  # fmt: skip
    if getattr(args, "json", False):
        keys = ["dataset", "accountant", "accounting_delta", "global_budget_epsilon",
                "global_spent_epsilon", "global_remaining_epsilon", "global_spent_delta",
                "global_rho", "releases", "cache_epoch"]  # fmt: skip
        return json.dumps([{k: _fmt(v, 12) if isinstance(v, (Fraction, Decimal)) else v
                            for k, v in zip(keys, o, strict=True)} for o in out], indent=2)  # fmt: skip
    return table(
        ["dataset", "accountant", "delta", "global_budget_eps", "global_spent_eps",
         "global_remaining_eps", "spent_delta", "rho", "releases", "cache_epoch"],
        out,
    )  # fmt: skip


def cmd_admin(args: argparse.Namespace) -> int:
    """Run one admin command (`analyst`, `ledger`, `dataset`, `cache`) against the ledger."""
    try:
        config = load_config(Path(args.config))
        print(asyncio.run(_admin(args, config)))
    except (ConfigError, AdminError, LedgerConflict) as e:
        print(f"dpproxy: {e}", file=sys.stderr)
        return 2
    except (OSError, asyncpg.PostgresError) as e:
        print(f"dpproxy: cannot use the ledger database: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


def add_admin_parsers(sub: Any) -> None:
    """Register the admin commands on the `dpproxy` argument parser."""
    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", required=True, help="path to dpproxy.yaml")
        p.set_defaults(func=cmd_admin)
        return p

    an = sub.add_parser("analyst", help="add, list, show, change or disable analysts")
    asub = an.add_subparsers(dest="action", required=True)
    add = with_config(asub.add_parser("add", help="add an analyst (password read from stdin)"))
    add.add_argument("name")
    add.add_argument("--budget-epsilon", required=True)
    add.add_argument("--budget-delta", default="1e-6")
    add.add_argument("--max-epsilon-per-query", default=None)
    add.add_argument("--renewal", default=None, help="renewal period: 30d, 12h, 1w (default none)")
    add.add_argument("--verifier", default=None, help="a SCRAM verifier instead of a password on stdin")
    with_config(asub.add_parser("list", help="every analyst's budget on the dataset"))
    sh = with_config(asub.add_parser("show", help="one analyst's budgets and spend"))
    sh.add_argument("name")
    sh.add_argument("--json", action="store_true")
    sb = with_config(asub.add_parser("set-budget", help="change an analyst's budget"))
    sb.add_argument("name")
    sb.add_argument("--epsilon", default=None)
    sb.add_argument("--delta", default=None)
    sb.add_argument("--max-epsilon-per-query", default=None, help="a number, or none")
    sb.add_argument("--renewal", default=None, help="30d, 12h, 1w, or none")
    for action in ("disable", "enable"):
        d = with_config(asub.add_parser(action, help=f"{action} an analyst (never deleted)"))
        d.add_argument("name")
    pw = with_config(asub.add_parser("passwd", help="set a password (read from stdin)"))
    pw.add_argument("name")
    pw.add_argument("--verifier", default=None)

    lg = sub.add_parser("ledger", help="the append-only charge log")
    lsub = lg.add_subparsers(dest="action", required=True)
    ls = with_config(lsub.add_parser("show", help="charges, oldest first"))
    ls.add_argument("--analyst", default=None)
    ls.add_argument("--since", default=None, help="ISO date or time (UTC if no zone)")
    ls.add_argument("--limit", type=int, default=10_000)
    ls.add_argument("--json", action="store_true")

    ds = sub.add_parser("dataset", help="datasets, their accountant and global spend")
    dsub = ds.add_subparsers(dest="action", required=True)
    dss = with_config(dsub.add_parser("show", help="global budget and spend per dataset"))
    dss.add_argument("--json", action="store_true")

    ca = sub.add_parser("cache", help="the answer cache")
    csub = ca.add_subparsers(dest="action", required=True)
    with_config(csub.add_parser("clear", help="invalidate every cached answer of the dataset"))
