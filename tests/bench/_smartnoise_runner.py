"""SmartNoise SQL side of the accuracy benchmark (runs in SmartNoise's own virtualenv).

smartnoise-sql 1.0.x pins opendp < 0.15 while dpproxy needs 0.16, so the two cannot
share an environment: accuracy.py starts this script with the other interpreter and
exchanges JSON on stdin/stdout.

Input: {"dsn", "metadata" (SmartNoise YAML text), "queries": [[name, sql]], "trials"}.
Output: {name: {"epsilon_per_mechanism", "cost", "trials": [[row, ...], ...]}}.
"""

from __future__ import annotations

import json
import sys
import tempfile


def main() -> None:
    """Run every query `trials` times at a total epsilon of 1 per query."""
    import psycopg2

    job = json.load(sys.stdin)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(job["metadata"])
        meta_path = f.name
    conn = psycopg2.connect(job["dsn"])
    out = {}
    for name, sql in job["queries"]:
        try:
            out[name] = _run(conn, meta_path, sql, job["trials"])
        except Exception as e:  # noqa: BLE001 - report SmartNoise's refusal and go on
            conn.rollback()
            out[name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    json.dump(out, sys.stdout)


def _run(conn: object, meta_path: str, sql: str, trials: int) -> dict[str, object]:
    import snsql
    from snsql import Privacy

    if True:
        # SmartNoise charges epsilon per mechanism; find how many it uses, then scale so
        # the whole query costs epsilon 1 (basic composition), like dpproxy's queries.
        probe = snsql.from_connection(conn, privacy=Privacy(epsilon=1.0, delta=1e-7),
                                      metadata=meta_path, engine="postgres")  # fmt: skip
        cost, _ = probe.get_privacy_cost(sql)
        eps = 1.0 / cost
        reader = snsql.from_connection(conn, privacy=Privacy(epsilon=eps, delta=1e-7),
                                       metadata=meta_path, engine="postgres")  # fmt: skip
        results = []
        for _ in range(trials):
            rows = reader.execute(sql)
            results.append([list(map(_plain, r)) for r in rows[1:]])
        return {"epsilon_per_mechanism": eps, "cost": cost, "trials": results}


def _plain(v: object) -> object:
    if v is None or isinstance(v, (int, float, str)):
        return v
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(v)


if __name__ == "__main__":
    main()
