"""Database lifecycle: create the database, detect the storage profile, apply versioned migrations."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import asyncpg

log = logging.getLogger(__name__)

PROFILES = ("postgres", "timescale")
# Any constant works; it only has to be the same for every `migrate` of this project.
MIGRATION_LOCK = 0x5D_A1_27_01
# Failures of the connection rather than of a statement: worth retrying on a fresh connection.
# asyncpg raises InternalClientError when a connection broken mid-operation is used again.
CONNECTION_ERRORS = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError)
# What a background loop logs and retries rather than dying of.
RETRYABLE_ERRORS = (asyncpg.PostgresError, *CONNECTION_ERRORS)
# SQLSTATE classes of errors the data causes, not the moment: data exceptions (22: overflow, division
# by zero), integrity violations (23: no partition for the row, NOT NULL, CHECK) and program limits
# (54: index row too big). They condemn rows or buckets, which are dead-lettered; other errors are
# retried.
DATA_ERROR_CLASSES = ("22", "23", "54")


def caused_by_data(exc: asyncpg.PostgresError) -> bool:
    return (exc.sqlstate or "")[:2] in DATA_ERROR_CLASSES
_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+?)(?:\.(?P<profile>postgres|timescale))?\.sql$")


class MigrationError(RuntimeError):
    """The migrations cannot be applied as they are (bad files, changed history, missing extension)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    files: tuple[Path, ...]

    def sql(self) -> str:
        return "\n".join(p.read_text() for p in self.files)

    def checksum(self) -> str:
        return hashlib.sha256(self.sql().encode()).hexdigest()


@dataclass
class MigrateResult:
    profile: str
    applied: list[str] = field(default_factory=list)
    partitions_created: int = 0


def load_migrations(directory: Path, profile: str) -> list[Migration]:
    """Return the migrations for `profile` in version order: shared file first, then the profile's own."""
    by_version: dict[int, dict[str | None, Path]] = {}
    names: dict[int, str] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _FILE.match(path.name)
        if not m:
            raise MigrationError(f"migration file name not understood: {path.name}")
        version = int(m["version"])
        if names.setdefault(version, m["name"]) != m["name"]:
            raise MigrationError(f"version {version:04d} has two names: {names[version]}, {m['name']}")
        by_version.setdefault(version, {})[m["profile"]] = path
    result = []
    for version in sorted(by_version):
        files = tuple(p for key, p in ((None, by_version[version].get(None)),
                                       (profile, by_version[version].get(profile))) if p is not None)
        result.append(Migration(version, names[version], files))
    return result


def database_name(dsn: str) -> str:
    """Return the database a postgresql:// DSN names."""
    name = unquote(urlsplit(dsn).path.lstrip("/"))
    if not name:
        raise MigrationError(f"the DSN names no database: {dsn}")
    return name


async def drop_database(dsn: str) -> None:
    """Drop the DSN's database if it exists (scratch databases of `bench` and `evaluate`)."""
    admin = await asyncpg.connect(dsn, database="postgres")
    try:
        quoted = await admin.fetchval("SELECT quote_ident($1)", database_name(dsn))
        await admin.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")  # identifier quoted by the server
    finally:
        await admin.close()


async def create_database_if_missing(dsn: str) -> bool:
    """Create the DSN's database when it does not exist; return whether it was created."""
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return False
    name = database_name(dsn)
    admin = await asyncpg.connect(dsn, database="postgres")
    try:
        quoted = await admin.fetchval("SELECT quote_ident($1)", name)
        await admin.execute(f"CREATE DATABASE {quoted}")  # identifier quoted by the server
    except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
        return False  # a concurrent `migrate` made it
    finally:
        await admin.close()
    log.info("created database %s", name)
    return True


async def timescale_available(conn: asyncpg.Connection) -> bool:
    """Whether CREATE EXTENSION timescaledb would work here (installed and preloaded)."""
    installed = await conn.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
    preload = await conn.fetchval("SELECT current_setting('shared_preload_libraries')")
    return bool(installed) and "timescaledb" in preload


async def stored_profile(conn: asyncpg.Connection) -> str | None:
    """Return the profile recorded by an earlier `migrate`, or None on an empty database."""
    if await conn.fetchval("SELECT to_regclass('iot.settings')") is None:
        return None
    return await conn.fetchval("SELECT value FROM iot.settings WHERE key = 'storage_profile'")


async def choose_profile(conn: asyncpg.Connection, requested: str | None) -> str:
    """The recorded profile wins; else the requested one; else timescale where it is available."""
    stored = await stored_profile(conn)
    available = await timescale_available(conn)
    if stored is not None:
        if requested not in (None, "auto", stored):
            raise MigrationError(f"database already uses the {stored} profile; cannot switch to {requested}")
        return stored
    if requested in (None, "auto"):
        return "timescale" if available else "postgres"
    if requested not in PROFILES:
        raise MigrationError(f"unknown storage profile {requested!r}: choose one of {', '.join(PROFILES)}")
    if requested == "timescale" and not available:
        raise MigrationError("storage profile timescale requested, but the server has no TimescaleDB "
                             "(installed and in shared_preload_libraries)")
    return requested


async def migrate(dsn: str, directory: Path, profile: str | None = None) -> MigrateResult:
    """Create the database if needed and apply every pending migration, each once, under a lock."""
    await create_database_if_missing(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        # Session lock: a second `migrate` waits here, then finds nothing left to do.
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        try:
            return await _apply(conn, directory, profile)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    finally:
        await conn.close()


async def _apply(conn: asyncpg.Connection, directory: Path, requested: str | None) -> MigrateResult:
    profile = await choose_profile(conn, requested)
    result = MigrateResult(profile)
    await conn.execute("""
        CREATE SCHEMA IF NOT EXISTS iot;
        CREATE TABLE IF NOT EXISTS iot.schema_migrations (
            version    integer PRIMARY KEY,
            name       text NOT NULL,
            checksum   text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )""")
    if profile == "timescale":
        await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    done = {r["version"]: r for r in await conn.fetch("SELECT version, name, checksum FROM iot.schema_migrations")}
    for migration in load_migrations(directory, profile):
        label = f"{migration.version:04d}_{migration.name}"
        if migration.version in done:
            if done[migration.version]["checksum"] != migration.checksum():
                raise MigrationError(f"migration {label} changed after it was applied; add a new migration instead")
            continue
        async with conn.transaction():
            if migration.files:  # a version may concern only the other profile
                await conn.execute(migration.sql())
            await conn.execute("INSERT INTO iot.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                               migration.version, migration.name, migration.checksum())
            await conn.execute("INSERT INTO iot.settings (key, value) VALUES ('storage_profile', $1) "
                               "ON CONFLICT (key) DO NOTHING", profile)
        result.applied.append(label)
        log.info("applied migration %s (%s profile)", label, profile)
    if profile == "postgres":
        result.partitions_created = await conn.fetchval("SELECT iot.ensure_partitions()")
    return result
