"""One-shot provisioning for the compose demo (runs in the loader container)."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

import yaml

from proxy.provision import AnalystSpec, provision


def dsn_for(db: str, user: str | None = None, password: str | None = None) -> str:
    """URI for the postgres service."""
    user = user or "postgres"
    password = password if password is not None else os.environ["PGPASSWORD"]
    return f"postgresql://{quote(user)}:{quote(password)}@{os.environ['PGHOST']}:5432/{db}"


def main() -> None:
    """Load data, write /config/dpproxy.yaml listening on all interfaces."""
    analyst = AnalystSpec("analyst", os.environ["ANALYST_PASSWORD"], Decimal(10), Decimal(2))
    path = provision(dsn_for, Path("/config"), float(os.environ.get("SCALE", "0.1")),
                     [analyst], 6432, print)  # fmt: skip
    cfg = yaml.safe_load(path.read_text())
    cfg["listen"]["host"] = "0.0.0.0"
    # /metrics for Prometheus and /health for the container healthcheck (issue #8).
    cfg["observability"] = {"metrics_host": "0.0.0.0", "metrics_port": 9187, "log_format": "json"}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    path.chmod(0o644)


if __name__ == "__main__":
    main()
