"""`dpproxy status`, `dpproxy audit` and `dpproxy explain` (issue #8)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from proxy.config import Config, ConfigError, load_config


class OpsError(Exception):
    """A command cannot do what was asked; the message says why."""


def _load(path: str) -> Config:
    try:
        return load_config(Path(path))
    except ConfigError as e:
        raise OpsError(str(e)) from e


# --- status ------------------------------------------------------------------------------


def _get(url: str, timeout: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - http(s) URL we built
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode()


def _series(samples: dict[str, float], name: str) -> dict[str, float]:
    """The samples of one metric, keyed by their label text."""
    out = {}
    for k, v in samples.items():
        base, _, labels = k.partition("{")
        if base == name:
            out[labels.rstrip("}")] = v
    return out


def _label(labels: str, key: str) -> str:
    for part in labels.split(","):
        k, _, v = part.partition("=")
        if k == key:
            return v.strip('"')
    return ""


def _quantile(samples: dict[str, float], name: str, q: float, where: str = "") -> float | None:
    """A histogram quantile (upper bucket bound, as Prometheus' histogram_quantile bounds it)."""
    buckets: dict[float, float] = {}
    for labels, v in _series(samples, name + "_bucket").items():
        if where and where not in labels:
            continue
        le = _label(labels, "le")
        bound = float("inf") if le == "+Inf" else float(le)
        buckets[bound] = buckets.get(bound, 0.0) + v
    if not buckets:
        return None
    total = buckets.get(float("inf"), 0.0)
    if total == 0:
        return None
    for bound in sorted(buckets):
        if buckets[bound] >= q * total:
            return bound
    return None


def status_text(health_code: int, health: str, metrics: str) -> str:
    """The summary `dpproxy status` prints, from /health and /metrics."""
    from proxy.metrics import parse_exposition

    s = parse_exposition(metrics)
    lines = []
    try:
        h = json.loads(health)
    except ValueError:
        h = {"status": health.strip()}
    backends = ", ".join(f"{k} {v}" for k, v in sorted(h.get("backends", {}).items()))
    lines.append(f"health:       {h.get('status', '?')} (HTTP {health_code}){'; ' + backends if backends else ''}")
    conns = s.get("dpproxy_client_connections")
    lines.append(f"sessions:     {int(conns) if conns is not None else '?'} open, "
                 f"{int(s.get('dpproxy_client_connections_total', 0))} accepted since start")  # fmt: skip
    by_outcome: dict[str, float] = {}
    for labels, v in _series(s, "dpproxy_statements_total").items():
        o = _label(labels, "outcome")
        by_outcome[o] = by_outcome.get(o, 0) + v
    lines.append("statements:   " + (", ".join(f"{int(v)} {k}" for k, v in sorted(by_outcome.items())) or "none"))
    refusals = {_label(k, "sqlstate"): v for k, v in _series(s, "dpproxy_refusals_total").items()}
    if refusals:
        lines.append("refusals:     " + ", ".join(f"{k} x{int(v)}" for k, v in sorted(refusals.items())))
    p50 = _quantile(s, "dpproxy_statement_duration_seconds", 0.5, 'route="dp"')
    p99 = _quantile(s, "dpproxy_statement_duration_seconds", 0.99, 'route="dp"')
    if p50 is not None:
        lines.append(f"DP latency:   p50 <= {p50 * 1000:g} ms, p99 <= {p99 * 1000 if p99 else 0:g} ms")
    lines.append(f"answer cache: hit ratio {s.get('dpproxy_cache_hit_ratio', 0):.2f}")
    pools = _series(s, "dpproxy_backend_pool_connections")
    for pool in ("data", "ledger"):
        busy = pools.get(f'pool="{pool}",state="busy"')
        mx = pools.get(f'pool="{pool}",state="max"')
        if busy is not None and mx is not None:
            lines.append(f"{pool + ' pool:':<14}{int(busy)} busy of {int(mx)}")
    audit_q = s.get("dpproxy_audit_queue")
    if audit_q is not None:
        lines.append(f"audit:        {int(s.get('dpproxy_audit_entries_written_total', 0))} written, "
                     f"{int(audit_q)} queued")  # fmt: skip
    spent = _series(s, "dpproxy_budget_spent_epsilon")
    remaining = _series(s, "dpproxy_budget_remaining_epsilon")
    if spent:
        lines.append("budgets (epsilon spent / remaining):")
        for labels in sorted(spent):
            lines.append(f"  {_label(labels, 'analyst')} on {_label(labels, 'dataset')}: "
                         f"{spent[labels]:g} / {remaining.get(labels, 0):g}")  # fmt: skip
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    """Read /health and /metrics of a running proxy and print a summary."""
    if args.url:
        base = args.url.rstrip("/")
    else:
        cfg = _load(args.config)
        obs = cfg.observability
        if obs.metrics_port is None:
            raise OpsError("observability.metrics_port is not set in the config: the proxy serves "
                           "no /metrics or /health (set it, or pass --url)")  # fmt: skip
        host = "127.0.0.1" if obs.metrics_host in ("0.0.0.0", "::", "") else obs.metrics_host
        base = f"http://{host}:{obs.metrics_port}"
    try:
        code, health = _get(base + "/health", args.timeout)
        _mcode, metrics = _get(base + "/metrics", args.timeout)
    except (urllib.error.URLError, OSError) as e:
        print(f"dpproxy: no proxy answers at {base}: {getattr(e, 'reason', e)}", file=sys.stderr)
        return 1
    print(status_text(code, health, metrics))
    return 0 if code == 200 else 1


# --- audit -------------------------------------------------------------------------------


def parse_since(text: str) -> datetime:
    """An ISO date or time (UTC when no zone is given), or a period back from now (1h, 7d)."""
    from proxy.admin import AdminError, parse_period

    try:
        period = parse_period(text)
    except AdminError:
        period = None
    if period is not None:
        return datetime.now(UTC) - period
    try:
        t = datetime.fromisoformat(text)
    except ValueError as e:
        raise OpsError(f"--since must be an ISO date or time (2024-05-01, 2024-05-01T12:00) "
                       f"or a period back from now (12h, 7d), not {text!r}") from e  # fmt: skip
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


async def _audit_rows(cfg: Config, analyst: str | None, since: datetime | None, limit: int | None) -> list[dict[str, Any]]:
    import asyncpg

    from proxy.audit import read_audit

    conn = await asyncpg.connect(cfg.backend.ledger_dsn)
    try:
        exists = await conn.fetchval("SELECT to_regclass('dpproxy.audit') IS NOT NULL")
        if not exists:
            return []
        return await read_audit(conn, analyst, since, limit)
    finally:
        await conn.close()


def cmd_audit(args: argparse.Namespace) -> int:
    """Print or export the audit log."""
    from proxy.admin import table
    from proxy.audit import to_csv, to_json

    cfg = _load(args.config)
    since = parse_since(args.since) if args.since else None
    rows = asyncio.run(_audit_rows(cfg, args.analyst, since, args.limit))
    if args.format == "csv":
        sys.stdout.write(to_csv(rows))
    elif args.format == "json":
        print(to_json(rows))
    else:
        cols = ("at", "instance", "analyst", "route", "decision", "sqlstate", "epsilon", "statement")
        print(table(cols, [[_short(r, c) for c in cols] for r in rows]))
    return 0


def _short(r: dict[str, Any], c: str) -> Any:
    v = r[c]
    if c == "statement":
        if v is None:
            return f"(unparsed: sha256 {r['statement_hash']}, {r['statement_length']} chars)"
        return v if len(v) <= 80 else v[:77] + "..."
    return v


# --- explain -----------------------------------------------------------------------------


async def explain_lines(cfg: Config, analyst: str, sql: str, epsilon: Decimal | None,
                        delta: Decimal | None) -> list[str]:  # fmt: skip
    """What EXPLAIN prints for `sql` as `analyst` would send it; charges and runs nothing."""
    from accounting.budget import budget_rows
    from accounting.mechanisms import Mechanisms
    from proxy.admin import lookup_analyst, open_ledger
    from proxy.dp import DPEngine
    from proxy.errors import ProxyError
    from rewriter.errors import RewriteError
    from rewriter.parse import parse_one

    assert cfg.metadata is not None
    dataset = cfg.metadata.dataset
    ledger, _cache = await open_ledger(cfg, sync=False)  # read only: the accountant and budgets
    try:
        a = await lookup_analyst(ledger, analyst, dataset)
        if a is None:
            raise OpsError(f'no analyst "{analyst}" with a budget on dataset "{dataset}"')
        cap = a.max_epsilon_per_query
        if epsilon is None:
            epsilon = cfg.privacy.default_epsilon if cap is None else min(cfg.privacy.default_epsilon, cap)
        elif cap is not None and epsilon > cap:
            raise OpsError(f"dp.epsilon {epsilon} is above {analyst}'s per-query limit of {cap}")
        engine = DPEngine(cfg.metadata, Mechanisms(), ledger, None,  # type: ignore[arg-type]
                          default_delta=cfg.privacy.default_delta)  # no data pool: nothing runs
        body = sql.strip().rstrip(";")
        if body.lower().startswith("explain"):
            body = body[len("explain"):].lstrip()
        try:
            explain = getattr(engine, "explain", None)
            if callable(explain):
                # The engine's own EXPLAIN (proxy/dp.py): exactly what the wire prints.
                result = explain("EXPLAIN " + body, epsilon, delta)
                lines = [str(r[0]) for r in result.rows]
            else:
                lines = _fallback_explain(engine, parse_one(body), body, epsilon, delta)
        except (ProxyError, RewriteError) as e:
            hint = f"\nHINT:  {e.hint}" if getattr(e, "hint", None) else ""
            raise OpsError(f"ERROR {e.sqlstate}: {e.message}{hint}") from e
        rows = await budget_rows(ledger.pool, analyst, dataset)
        if rows:
            r = rows[0]
            rem = Decimal(r.remaining_epsilon.numerator) / Decimal(r.remaining_epsilon.denominator)
            lines.append(f"Analyst {analyst}: {_fmt(rem)} epsilon remaining on dataset "
                         f'"{dataset}" (at dp.epsilon {_fmt(epsilon)})')  # fmt: skip
        return lines
    finally:
        await ledger.close()


def _fmt(d: Decimal) -> str:
    return format(d.quantize(Decimal("0.000001")).normalize(), "f")


def _fallback_explain(engine: Any, tree: Any, body: str, epsilon: Decimal, delta: Decimal | None) -> list[str]:
    """EXPLAIN built on DPEngine.plan and the mechanisms, for engines without `explain`."""
    from proxy.dp import _bounds, _cost_text, price

    plan = engine.plan(body, tree)
    noise = engine._noise(plan, epsilon, engine.default_delta if delta is None else delta)
    cost = price(noise)
    acc = engine.ledger.accountant
    own = acc.guarantee(cost).epsilon
    lines = [
        f'DP query on dataset "{plan.dataset}": would cost {_cost_text(own, cost, acc.kind)} '
        "(explain runs nothing and spends nothing)",
    ]
    for n in noise:
        lines.append(f"Primitive {n.label}: {n.mechanism.replace('_', ' ')}, sensitivity "
                     f"{n.sensitivity}, scale {n.scale:g}, epsilon {_fmt(n.epsilon)}")  # fmt: skip
    lines.append(f"95% noise bounds: {_bounds(noise, plan)}")
    lines += [f"Note: {x}" for x in plan.notes]
    lines.append(f"Rewritten SQL: {plan.sql}")
    return lines


def cmd_explain(args: argparse.Namespace) -> int:
    """Print what EXPLAIN prints for a query, without spending budget."""
    cfg = _load(args.config)
    try:
        eps = Decimal(args.epsilon) if args.epsilon is not None else None
        delta = Decimal(args.delta) if args.delta is not None else None
    except InvalidOperation as e:
        raise OpsError("--epsilon and --delta must be numbers") from e
    if eps is not None and (not eps.is_finite() or eps <= 0):
        raise OpsError("--epsilon must be a finite number above 0")
    for line in asyncio.run(explain_lines(cfg, args.analyst, args.sql, eps, delta)):
        print(line)
    return 0


# --- registration ------------------------------------------------------------------------


def _guard(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except OpsError as e:
            print(f"dpproxy: {e}", file=sys.stderr)
            return 2
    return run


def add_ops_parsers(sub: Any) -> None:
    """Register `status`, `audit` and `explain` on the `dpproxy` parser."""
    st = sub.add_parser("status", help="health and a metrics summary of a running proxy")
    g = st.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", help="path to dpproxy.yaml (uses observability.metrics_*)")
    g.add_argument("--url", help="base URL of the proxy's metrics server, e.g. http://host:9187")
    st.add_argument("--timeout", type=float, default=3.0, help="seconds per request (default 3)")
    st.set_defaults(func=_guard(cmd_status))

    au = sub.add_parser("audit", help="print or export the audit log")
    au.add_argument("--config", required=True, help="path to dpproxy.yaml")
    au.add_argument("--analyst", default=None, help="only this analyst")
    au.add_argument("--since", default=None, help="ISO date/time, or a period back from now (12h, 7d)")
    au.add_argument("--format", choices=("table", "csv", "json"), default="table")
    au.add_argument("--limit", type=int, default=None, help="at most this many rows (oldest first)")
    au.set_defaults(func=_guard(cmd_audit))

    ex = sub.add_parser("explain", help="what EXPLAIN prints for a query, without spending budget")
    ex.add_argument("sql", help="the query, as the analyst would send it")
    ex.add_argument("--analyst", required=True, help="whose per-query limit and budget apply")
    ex.add_argument("--config", required=True, help="path to dpproxy.yaml")
    ex.add_argument("--epsilon", default=None, help="dp.epsilon (default: the session default)")
    ex.add_argument("--delta", default=None, help="dp.delta (default: privacy.default_delta)")
    ex.set_defaults(func=_guard(cmd_explain))
