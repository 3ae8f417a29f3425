"""The dpproxy configuration file: one YAML file, validated with pydantic.

Every field is documented in the README's configuration reference; keep the two in step.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rewriter.metadata import Identifier, Metadata, load_metadata


class ListenConfig(BaseModel):
    """Where dpproxy accepts client connections."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=6432, ge=0, le=65535)
    max_message_bytes: int = Field(default=1 << 20, ge=1024, le=1 << 30)
    tls_cert: Path | None = Field(default=None, description="PEM certificate chain for TLS.")
    tls_key: Path | None = Field(default=None, description="PEM private key for TLS.")
    require_tls: bool = Field(default=False, description="Refuse clients that do not use TLS.")
    workers: int = Field(
        default=1, ge=1, le=64,
        description="Processes accepting on the port (see proxy/workers.py): one process "
        "uses one core; each worker is a replica with its share of the connection limits.",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> ListenConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.require_tls and self.tls_cert is None:
            raise ValueError("require_tls needs tls_cert and tls_key")
        return self


class BackendConfig(BaseModel):
    """The real PostgreSQL: the data database, the ledger and the catalog mirror."""

    model_config = ConfigDict(extra="forbid")

    dsn: str = Field(description="libpq URI of the data database (a role with SELECT only).")
    ledger_dsn: str = Field(description="libpq URI of the ledger database (never exposed).")
    catalog_dsn: str | None = Field(
        default=None, description="libpq URI of the schema-only catalog mirror database."
    )
    pool_size: int = Field(default=8, ge=1, le=1000)
    statement_timeout_ms: int = Field(default=30_000, ge=0)
    max_parallel_workers_per_gather: int | None = Field(
        default=0, ge=0, le=64,
        description="For the bounded SQL's sessions; None keeps the server's setting. "
        "Parallel workers barely speed one bounded query up and cost throughput once "
        "several run at once (measured on 2 cores, 8 clients: 15.7 tps without, 9.9 with).",
    )
    work_mem: str | None = Field(
        default="64MB", pattern=r"^[0-9]+ ?(kB|MB|GB)$",
        description="For the bounded SQL's sessions; None keeps the server's setting. "
        "Contribution bounding aggregates per privacy unit (one hash-table entry per "
        "unit); at PostgreSQL's default 4MB that table spills to disk from ~50k units "
        "(see README: pushdown benchmark with --work-mem 4MB against the default).",
    )

    def session_settings(self) -> dict[str, str]:
        """The settings every data-database session starts with (the bounded SQL's)."""
        # A template's bounded SQL (rewriter/template.py) is a prepared statement of the
        # pool's connections: PostgreSQL's own choice (`auto`: planned with the values
        # five times, then a generic plan if it costs no more) spares most executions
        # their planning, about a tenth of a small aggregate's time. Set explicitly so
        # that a server default of force_custom_plan does not undo it.
        # TimeZone: DATE_TRUNC of a date gives a timestamptz at the session's midnight;
        # the values listed for keys over declared dates are UTC midnights (and answers
        # must not depend on a server's default zone).
        settings = {"statement_timeout": str(self.statement_timeout_ms),
                    "default_transaction_read_only": "on", "plan_cache_mode": "auto",
                    "TimeZone": "UTC"}  # fmt: skip
        if self.max_parallel_workers_per_gather is not None:
            settings["max_parallel_workers_per_gather"] = str(self.max_parallel_workers_per_gather)
        if self.work_mem is not None:
            settings["work_mem"] = self.work_mem.replace(" ", "")
        return settings


class AnalystConfig(BaseModel):
    """One analyst: a SCRAM verifier (never a clear-text password) and a budget."""

    model_config = ConfigDict(extra="forbid")

    name: Identifier
    password: str = Field(description="A SCRAM-SHA-256 verifier, as made by `dpproxy passwd`.")
    budget_epsilon: Decimal = Field(gt=0, description="Total epsilon over the analyst's lifetime.")
    max_epsilon_per_query: Decimal | None = Field(default=None, gt=0)
    enabled: bool = True
    reply_quantum_ms: int | None = Field(
        default=None, ge=0, le=600_000, description="Overrides limits.reply_quantum_ms."
    )
    # Issue #5 (budgets): delta budget (approx accountant) and optional renewal.
    budget_delta: Decimal = Field(default=Decimal("1e-6"), ge=0, lt=1)
    renewal_period: timedelta | None = Field(
        default=None, description="Restart the analyst's budget every period (off by default)."
    )

    @field_validator("password")
    @classmethod
    def _verifier_only(cls, v: str) -> str:
        if not v.startswith("SCRAM-SHA-256$"):
            raise ValueError(
                "must be a SCRAM-SHA-256 verifier (run `dpproxy passwd` to make one); "
                "clear-text passwords are not accepted"
            )
        return v


class LimitsConfig(BaseModel):
    """What one analyst (or everyone together) may make one proxy process do."""

    model_config = ConfigDict(extra="forbid")

    max_connections: int = Field(default=1000, ge=1, description="Client sessions per process.")
    max_connections_per_analyst: int = Field(default=100, ge=1)
    max_concurrent_queries_per_analyst: int = Field(
        default=16, ge=1, description="DP queries of one analyst running at once; more wait."
    )
    idle_session_timeout_s: float = Field(default=0, ge=0, description="0 disables it.")
    idle_in_transaction_timeout_s: float = Field(default=0, ge=0, description="0 disables it.")
    reply_quantum_ms: int = Field(
        default=0, ge=0, le=600_000, description="Pad DP replies to multiples of this (0: off)."
    )


# The smallest per-query epsilon: smaller ones give noise scales past what the noise
# samplers and the NOTICE's error bounds are built for (1e-20 failed in OpenDP), and
# noise over a million times the sensitivity leaves nothing of an answer.
MIN_EPSILON = Decimal("1e-6")
# The smallest positive delta: partition selection's threshold search reads privacy
# maps in floating point, which fail below ~1e-15 (a statement's share of delta can be
# a sixteenth of the session's).
MIN_DELTA = Decimal("1e-12")


class PrivacyConfig(BaseModel):
    """Defaults for the DP path."""

    model_config = ConfigDict(extra="forbid")

    default_epsilon: Decimal = Field(default=Decimal("1.0"), ge=MIN_EPSILON)
    default_delta: Decimal = Field(default=Decimal("1e-7"), ge=0, lt=1)
    # Issue #5 (budgets): the dataset's accountant and global budget (all analysts).
    accountant: Literal["pure", "approx", "zcdp"] = "pure"
    accounting_delta: Decimal = Field(default=Decimal("1e-7"), gt=0, lt=1)
    global_budget_epsilon: Decimal | None = Field(default=None, ge=0)
    global_budget_delta: Decimal | None = Field(default=None, ge=0, lt=1)

    @field_validator("default_delta")
    @classmethod
    def _usable_delta(cls, v: Decimal) -> Decimal:
        if 0 < v < MIN_DELTA:
            raise ValueError(f"a positive default_delta must be at least {MIN_DELTA} (or 0: pure DP)")
        return v


class CacheConfig(BaseModel):
    """The answer cache (issue #5): repeats of a canonical query are free."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    ttl_seconds: float | None = Field(default=None, gt=0)
    shared: bool = False
    data_version: str = ""


class LedgerConfig(BaseModel):
    """The ledger connection and group commit (issue #5)."""

    model_config = ConfigDict(extra="forbid")

    pool_size: int = Field(default=4, ge=1, le=100)
    group_commit: bool = True
    group_commit_window_us: int = Field(default=0, ge=0, le=100_000)
    group_commit_max_batch: int = Field(default=128, ge=1, le=10_000)


class ObservabilityConfig(BaseModel):
    """Metrics, health, logs and the audit log (issue #8, proxy/observe.py)."""

    model_config = ConfigDict(extra="forbid")

    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=None, ge=0, le=65535,
                                     description="HTTP port of /metrics and /health (off when unset).")
    log_format: Literal["text", "json"] = "text"
    log_statements: bool = False  # one line per statement costs ~20% on tiny queries
    audit: bool = True
    audit_sync: bool = False
    audit_flush_ms: int = Field(default=100, ge=0, le=60_000)
    instance: str | None = Field(default=None, description="Replica name in logs and audit (host:pid).")
    health_timeout_ms: int = Field(default=1000, ge=10, le=60_000)


class LifecycleConfig(BaseModel):
    """Graceful shutdown (issue #8, proxy/lifecycle.py)."""

    model_config = ConfigDict(extra="forbid")

    shutdown_timeout_seconds: float = Field(default=30.0, ge=0, le=3600)


class Config(BaseModel):
    """The whole configuration file."""

    model_config = ConfigDict(extra="forbid")

    listen: ListenConfig = ListenConfig()
    backend: BackendConfig
    privacy: PrivacyConfig = PrivacyConfig()
    cache: CacheConfig = CacheConfig()
    ledger: LedgerConfig = LedgerConfig()
    limits: LimitsConfig = LimitsConfig()
    observability: ObservabilityConfig = ObservabilityConfig()  # issue #8
    lifecycle: LifecycleConfig = LifecycleConfig()  # issue #8
    metadata_file: Path = Field(description="Path to the metadata YAML (relative to this file).")
    analysts: list[AnalystConfig] = Field(default_factory=list)
    metadata: Metadata | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _unique_analysts(self) -> Config:
        names = [a.name for a in self.analysts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"analyst listed twice: {', '.join(dupes)}")
        for a in self.analysts:
            if a.max_epsilon_per_query is not None and a.max_epsilon_per_query > a.budget_epsilon:
                raise ValueError(f"analyst {a.name}: max_epsilon_per_query exceeds budget_epsilon")
        return self

    def analyst(self, name: str) -> AnalystConfig | None:
        """The analyst of that name, if declared."""
        for a in self.analysts:
            if a.name == name:
                return a
        return None


class ConfigError(Exception):
    """A configuration file is unreadable or invalid; the message names file, field, problem."""


def _format_validation(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def load_config(path: Path) -> Config:
    """Read, validate and resolve a config file and its metadata file, or raise ConfigError."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read configuration: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the configuration must be a YAML mapping")
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_validation(path, e)) from e
    meta_path = cfg.metadata_file
    if not meta_path.is_absolute():
        meta_path = (path.parent / meta_path).resolve()
    listen = cfg.listen
    if listen.tls_cert is not None and listen.tls_key is not None:
        # TLS files, like the metadata file, are relative to the config file.
        cert = listen.tls_cert if listen.tls_cert.is_absolute() else (path.parent / listen.tls_cert).resolve()
        key = listen.tls_key if listen.tls_key.is_absolute() else (path.parent / listen.tls_key).resolve()
        cfg = cfg.model_copy(update={"listen": listen.model_copy(update={"tls_cert": cert, "tls_key": key})})
        from proxy.tls import load_tls  # a bad certificate must stop start-up with one clear line

        try:
            load_tls(cert, key)
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            raise ConfigError(f"{path}: listen.tls_cert/tls_key: cannot load the certificate: {e}") from e
    try:
        meta = load_metadata(meta_path)
    except ValidationError as e:
        raise ConfigError(_format_validation(meta_path, e)) from e
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return cfg.model_copy(update={"metadata": meta, "metadata_file": meta_path})
