"""`dpproxy metadata init|check|import-smartnoise` against the live TPC-H schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from proxy.metadata_tools import import_smartnoise
from rewriter.metadata import Metadata, load_metadata
from tests.e2e.conftest import Env

REPO = Path(__file__).resolve().parents[2]


def dpproxy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO)  # fmt: skip


def test_init_writes_a_valid_starter_without_reading_rows(env: Env, tmp_path: Path) -> None:
    out = tmp_path / "starter.yaml"
    r = dpproxy("metadata", "init", "--dsn", env.tpch_dsn, "--schema", "public",
                "--dataset", "tpch", "-o", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "never computed from the data" in text
    assert "# foreign keys: o_custkey -> customer.c_custkey" in text
    meta = load_metadata(out)
    assert set(meta.tables) >= {"orders", "customer", "lineitem", "nation"}
    orders = meta.tables["orders"]
    assert orders.columns["o_totalprice"].type.value == "numeric"
    assert orders.columns["o_totalprice"].lower is None, "bounds are left to the admin"
    assert orders.columns["o_orderdate"].date_bounds is None
    assert "type: date}  # TODO: lower/upper dates" in text.split("o_orderdate:")[1].split("\n")[0]
    assert orders.columns["o_orderkey"].nullable is False
    # The starter checks clean against the schema it was made from.
    r = dpproxy("metadata", "check", str(out), "--dsn", env.tpch_dsn)
    assert r.returncode == 0, r.stdout


def test_check_reports_mismatches(env: Env, tmp_path: Path) -> None:
    src = yaml.safe_load((REPO / "proxy" / "examples" / "tpch.yaml").read_text())
    src["tables"]["orders"]["columns"]["o_missing"] = {"type": "integer"}
    src["tables"]["orders"]["columns"]["o_orderdate"] = {"type": "integer"}
    src["tables"]["orders"]["columns"]["o_clerk"] = {"type": "text", "unique": True}  # no key
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(src))
    r = dpproxy("metadata", "check", str(bad), "--dsn", env.tpch_dsn)
    assert r.returncode == 1
    assert "orders.o_missing: column not found" in r.stdout
    assert "orders.o_orderdate: declared integer, live type is date" in r.stdout
    # the rule `dpproxy serve` applies at start-up (proxy/declared_keys.py)
    assert "public.orders.o_clerk is declared unique, but the database has no primary key" in r.stdout
    r = dpproxy("metadata", "check", str(REPO / "proxy" / "examples" / "tpch.yaml"),
                "--config", str(env.config))  # fmt: skip
    assert r.returncode == 0, r.stdout
    # The loader indexes o_custkey; lineitem's hop l_orderkey leads its primary key.
    assert "no index starts with" not in r.stdout, r.stdout


def test_check_warns_of_an_unindexed_privacy_unit(env: Env, tmp_path: Path) -> None:
    src = yaml.safe_load((REPO / "proxy" / "examples" / "tpch.yaml").read_text())
    src["tables"]["orders"]["privacy_unit"] = "o_clerk"
    moved = tmp_path / "clerk.yaml"
    moved.write_text(yaml.safe_dump(src))
    r = dpproxy("metadata", "check", str(moved), "--dsn", env.tpch_dsn)
    assert r.returncode == 0, r.stdout  # advice, not an error
    assert "warning: public.orders.o_clerk: no index starts with this privacy-unit column" in r.stdout


SMARTNOISE = """
PUMS:
  PUMS:
    PUMS:
      max_ids: 1
      row_privacy: false
      censor_dims: false
      pid:
        type: int
        private_id: true
      age:
        type: int
        lower: 0
        upper: 100
      sex:
        type: string
      income:
        type: float
        lower: 0
        upper: 500000
      married:
        type: boolean
"""


def test_import_smartnoise(tmp_path: Path) -> None:
    converted, notes = import_smartnoise(yaml.safe_load(SMARTNOISE))
    meta = Metadata.model_validate(converted)
    t = meta.tables["PUMS"]
    assert t.privacy_unit == "pid" and t.max_rows == 1 and t.schema_ == "PUMS"
    assert t.columns["age"].type.value == "bigint" and t.columns["age"].upper == 100
    assert t.columns["income"].type.value == "float"
    assert any("censor_dims" in n for n in notes)
    src = tmp_path / "pums.yaml"
    src.write_text(SMARTNOISE)
    out = tmp_path / "dp.yaml"
    r = dpproxy("metadata", "import-smartnoise", str(src), "-o", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert load_metadata(out).tables["PUMS"].privacy_unit == "pid"
