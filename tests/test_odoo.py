"""The Odoo 19 modules' own tests (addons/*/tests), run by a real Odoo 19 on the real PostgreSQL.

Odoo is found at $ODOO_PATH or /opt/odoo19 (the tree in src/, its venv in venv/). Without it these
tests are skipped, loudly. With it: a fresh database migrated by the project's migrations, the modules
installed with their tests, then upgraded; and an install on a database without the `iot` schema,
which must fail naming `smart-dairy migrate`.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ingestor import storage

from .conftest import ADMIN_DSN, MIGRATIONS, _admin, _timescale_available, drop_database, dsn_for

ROOT = Path(__file__).resolve().parent.parent
ADDONS = ROOT / "addons"
ODOO = Path(os.environ.get("ODOO_PATH", "/opt/odoo19"))
ODOO_BIN, ODOO_PYTHON = ODOO / "src" / "odoo-bin", ODOO / "venv" / "bin" / "python"
DB_USER = os.environ.get("SMART_DAIRY_ODOO_DB_USER", "root")  # Odoo 19 refuses the role `postgres`
TIMEOUT = 1800  # install + every test (assets are built for the HTTP tests) takes ~3 minutes here
SUMMARY = re.compile(r"(\d+) failed, (\d+) error\(s\) of (\d+) tests")
LOG_ERROR = re.compile(r"^\S+ \S+ \d+ (ERROR|CRITICAL) ")
MODULES = sorted(p.parent.name for p in ADDONS.glob("*/__manifest__.py"))

pytestmark = [
    pytest.mark.odoo,
    pytest.mark.skipif(not (ODOO_BIN.is_file() and ODOO_PYTHON.is_file()),
                       reason=f"Odoo 19 not found at {ODOO} (set ODOO_PATH to a tree with src/odoo-bin and "
                              f"venv/bin/python): the Odoo module tests were NOT run, {', '.join(MODULES)} "
                              "NOT tested"),
]


def _free_port() -> int:
    # Odoo needs a port for its HTTP tests; 8069 may belong to a running Odoo.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_env() -> dict[str, str]:
    parts = urlsplit(ADMIN_DSN)
    env = {k: v for k, v in os.environ.items() if k not in ("PGUSER", "PGDATABASE", "PGPASSWORD")}
    env.update(PGHOST=parts.hostname or "127.0.0.1", PGPORT=str(parts.port or 5432), PGUSER=DB_USER)
    return env


def run_odoo(db: str, log: Path, data_dir: Path, *args: str) -> tuple[int, str]:
    """Run odoo-bin on `db` with `args`, logging to `log`; return its exit code and log text."""
    env = _pg_env()
    command = [str(ODOO_PYTHON), str(ODOO_BIN), "--db_host", env["PGHOST"], "--db_port", env["PGPORT"],
               "--db_user", DB_USER, "-d", db, "--data-dir", str(data_dir),
               "--addons-path", f"{ODOO / 'src' / 'addons'},{ODOO / 'src' / 'odoo' / 'addons'},{ADDONS}",
               "--http-interface", "127.0.0.1", "--http-port", str(_free_port()), "--stop-after-init",
               "--log-level", "info", *args]
    with log.open("w") as out:
        result = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=TIMEOUT,
                                check=False)
    return result.returncode, log.read_text(errors="replace")


def errors_in(text: str) -> list[str]:
    """ERROR/CRITICAL log lines and tracebacks: the run must have none."""
    lines = text.splitlines()
    found = [line for line in lines if LOG_ERROR.match(line)]
    found += [f"Traceback at log line {i + 1}: {lines[i + 1][:200] if i + 1 < len(lines) else ''}"
              for i, line in enumerate(lines) if line.startswith("Traceback")]
    return found


async def _create_database(name: str) -> None:
    await _admin(f'CREATE DATABASE "{name}"')  # a uuid-based name: nothing to quote


@pytest.fixture(scope="module")
def odoo_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A database migrated by `smart-dairy migrate`'s code (timescale profile where available); dropped after."""
    name = f"sdo_{uuid.uuid4().hex[:12]}"
    profile = "timescale" if asyncio.run(_timescale_available()) else "postgres"
    try:
        asyncio.run(storage.migrate(dsn_for(name), MIGRATIONS, profile))
        yield name, tmp_path_factory.mktemp("odoo")
    finally:
        asyncio.run(drop_database(name))


@pytest.fixture(scope="module")
def installed(odoo_db: tuple[str, Path]) -> tuple[str, Path, str]:
    db, work = odoo_db
    code, text = run_odoo(db, work / "install.log", work / "data", "-i", ",".join(MODULES), "--test-enable",
                          "--test-tags", ",".join(f"/{m}" for m in MODULES))
    return db, work, text if code == 0 else f"exit code {code}\n{text}"


def test_odoo_modules_install_and_pass_their_tests(installed: tuple[str, Path, str]) -> None:
    db, work, text = installed
    summaries = SUMMARY.findall(text)
    print(f"\nOdoo 19 on database {db}: modules {', '.join(MODULES)}; log {work / 'install.log'}")
    shown = set()
    for line in text.splitlines():
        if "SD-TIMING" in line:
            line = line[line.index("SD-TIMING"):].strip()
        elif not SUMMARY.search(line):
            continue
        if line not in shown:
            shown.add(line)
            print(line)
    assert not text.startswith("exit code"), text[-5000:]
    assert summaries, "no test summary in the log: the module tests did not run\n" + text[-5000:]
    failed, errors, total = map(int, summaries[-1])
    assert (failed, errors) == (0, 0), "\n".join(errors_in(text))[-5000:]
    assert total >= 20, f"only {total} Odoo tests ran"
    assert errors_in(text) == []


def test_odoo_modules_upgrade(installed: tuple[str, Path, str]) -> None:
    db, work, _ = installed
    code, text = run_odoo(db, work / "upgrade.log", work / "data", "-u", ",".join(MODULES))
    assert code == 0, text[-5000:]
    assert errors_in(text) == [], "\n".join(errors_in(text))
    assert "Modules loaded." in text


def test_install_without_iot_schema_names_the_migration(tmp_path: Path) -> None:
    name = f"sdo_noiot_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_create_database(name))
        code, text = run_odoo(name, tmp_path / "noiot.log", tmp_path / "data", "-i", "smart_dairy_iot")
    finally:
        asyncio.run(drop_database(name))
    assert code != 0, "the install must fail without the iot schema"
    assert "smart-dairy migrate" in text, text[-3000:]
