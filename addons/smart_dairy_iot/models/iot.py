"""The `iot` schema that `smart-dairy migrate` creates, as this module uses it.

Odoo and the ingestor share one database: Odoo writes the registry tables of `iot` (it is the master of
the farm registry) and reads the time series and alerts the ingestor writes there.
"""

from dataclasses import dataclass

from odoo.exceptions import UserError
from odoo.tools import SQL

# Everything the module reads or writes; a database migrated by the project has all of them.
REQUIRED_RELATIONS = (
    "iot.farms", "iot.zones", "iot.animals", "iot.devices", "iot.alert_rules", "iot.api_keys", "iot.alerts",
    "iot.sensor_data", "iot.sensor_data_hourly", "iot.sensor_data_daily", "iot.milk_production_daily",
    "iot.device_current_status",
)

# Transaction-level advisory locks: a second run of the same job skips instead of waiting, so two
# overlapping cron runs (or a button press during a cron run) never push or pull the same rows twice.
PUSH_LOCK = 0x5D_0D_00_01
PULL_LOCK = 0x5D_0D_00_02


def missing_relations(cr):
    """The relations of REQUIRED_RELATIONS this database lacks."""
    cr.execute(SQL("SELECT name FROM unnest(%s::text[]) AS name WHERE to_regclass(name) IS NULL",
                   list(REQUIRED_RELATIONS)))
    return [name for (name,) in cr.fetchall()]


def check_iot_schema(env):
    """Raise a UserError that says what to run when the `iot` schema is missing or incomplete."""
    missing = missing_relations(env.cr)
    if not missing:
        return
    what = (env._("it has no `iot` schema") if len(missing) == len(REQUIRED_RELATIONS)
            else env._("its `iot` schema lacks %s", ", ".join(missing)))
    raise UserError(env._(
        "Smart Dairy IoT needs the `iot` schema of the Smart Dairy ingestor in this database (%(db)s), but "
        "%(what)s. Run `smart-dairy migrate` with SMART_DAIRY_DSN pointing at this database, then install or "
        "upgrade the module again.", db=env.cr.dbname, what=what))


def try_lock(cr, key):
    """Take the job's advisory lock for this transaction; False when another transaction holds it."""
    cr.execute(SQL("SELECT pg_try_advisory_xact_lock(%s)", key))
    return cr.fetchone()[0]


def column_exists(cr, table, column):
    cr.execute(SQL("SELECT 1 FROM information_schema.columns WHERE table_schema = 'iot' "
                   "AND table_name = %s AND column_name = %s", table, column))
    return bool(cr.fetchone())


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # the column's SQL type
    # Array columns travel as their text form ('{1,2}'): unnest would flatten an array of arrays.
    # Timestamps travel as naive UTC text, as Odoo stores them, whatever the session's time zone.

    def param_type(self):
        return "text" if self.type.endswith("[]") or self.type == "timestamptz" else self.type

    def select(self):
        if self.type == "timestamptz":
            return SQL("(u.%s::timestamp AT TIME ZONE 'UTC')", SQL.identifier(self.name))
        return SQL("u.%s::%s", SQL.identifier(self.name), SQL(self.type))


@dataclass(frozen=True)
class IotTable:
    """A registry table of `iot` that Odoo pushes, keyed by `key` (the ON CONFLICT target)."""

    name: str
    key: str
    columns: tuple  # of Column; the first one is the key
    stamped: bool = True  # has an updated_at column, which the ingestor's registry cache watches

    def upsert(self, rows):
        """One INSERT ... ON CONFLICT DO UPDATE of every row, changing only rows that differ.

        `rows` are tuples in the order of `columns`. Sent as one array per column and unnested, so the
        statement is the same whatever the number of rows.
        """
        arrays = [list(values) for values in zip(*rows, strict=True)] if rows else [[] for _ in self.columns]
        table = SQL.identifier("iot", self.name)
        names = [SQL.identifier(c.name) for c in self.columns]
        non_key = [SQL.identifier(c.name) for c in self.columns if c.name != self.key]
        stamp = [SQL("updated_at")] if self.stamped else []
        return SQL(
            """INSERT INTO %(table)s AS t (%(names)s)
               SELECT %(selects)s FROM unnest(%(arrays)s) AS u(%(names_u)s)
               ON CONFLICT (%(key)s) DO UPDATE SET %(sets)s
               WHERE ROW(%(old)s) IS DISTINCT FROM ROW(%(new)s)""",
            table=table,
            names=SQL(", ").join(names + stamp),
            selects=SQL(", ").join([c.select() for c in self.columns] + [SQL("now()")] * len(stamp)),
            arrays=SQL(", ").join(SQL("%s::%s[]", values, SQL(column.param_type()))
                                  for values, column in zip(arrays, self.columns, strict=True)),
            names_u=SQL(", ").join(names),
            key=SQL.identifier(self.key),
            sets=SQL(", ").join([SQL("%s = EXCLUDED.%s", n, n) for n in non_key]
                                + [SQL("updated_at = now()")] * len(stamp)),
            old=SQL(", ").join(SQL("t.%s", n) for n in non_key),
            new=SQL(", ").join(SQL("EXCLUDED.%s", n) for n in non_key),
        )

    def deactivate_missing(self, keys):
        """Deactivate the rows whose key Odoo no longer has (deleted records, renamed devices)."""
        return SQL("UPDATE %s SET active = false, updated_at = now() WHERE active AND NOT (%s = ANY(%s::%s[]))",
                   SQL.identifier("iot", self.name), SQL.identifier(self.key), list(keys),
                   SQL(self.columns[0].type))


def _cols(*spec):
    return tuple(Column(name, type_) for name, type_ in spec)


FARMS = IotTable("farms", "id", _cols(("id", "int"), ("name", "text"), ("code", "text"), ("timezone", "text"),
                                      ("active", "bool")))
ZONES = IotTable("zones", "id", _cols(("id", "int"), ("farm_id", "int"), ("barn_id", "int"), ("barn_name", "text"),
                                      ("name", "text"), ("zone_type", "text"), ("active", "bool")))
ANIMALS = IotTable("animals", "id", _cols(
    ("id", "int"), ("farm_id", "int"), ("code", "text"), ("rfid_epc", "text"), ("name", "text"), ("breed", "text"),
    ("birth_date", "date"), ("lactation_number", "smallint"), ("calving_date", "date"), ("group_name", "text"),
    ("status", "text"), ("active", "bool")))
DEVICES = IotTable("devices", "device_uid", _cols(
    ("device_uid", "text"), ("farm_id", "int"), ("device_type", "text"), ("animal_id", "int"), ("zone_id", "int"),
    ("calibration_offset", "float8"), ("calibration_gain", "float8"), ("expected_interval_s", "int"),
    ("firmware", "text"), ("status", "text"), ("active", "bool")))
ALERT_RULES = IotTable("alert_rules", "code", _cols(
    ("code", "text"), ("name", "text"), ("farm_id", "int"), ("zone_id", "int"), ("animal_id", "int"),
    ("device_type", "text"), ("category", "text"), ("severity", "text"), ("combine", "text"),
    ("conditions", "jsonb"), ("duration_s", "int"), ("suppression_s", "int"), ("max_per_hour", "int"),
    ("auto_resolve", "bool"), ("builtin", "bool"), ("active", "bool")))
API_KEYS = IotTable("api_keys", "key_prefix", _cols(
    ("key_prefix", "text"), ("name", "text"), ("key_hash", "text"), ("farm_ids", "int[]"), ("scopes", "text[]"),
    ("revoked_at", "timestamptz")), stamped=False)


def pg_array(values):
    """The text form of a PostgreSQL array of integers or simple words."""
    return "{" + ",".join(str(v) for v in values) + "}"
