"""A small farm world and helpers that write aggregate rows where the rollups store them.

Each aggregate view of `iot` reads materialized rows below a watermark and aggregates raw rows above
it, on both storage profiles: the postgres profile keeps them in `iot.<rollup>_mat` with the
watermark in `iot.rollups` (timescale/0004_rollups.postgres.sql); TimescaleDB keeps them in the
continuous aggregate's materialization hypertable with the watermark in its catalog. The tests
write aggregate rows straight into those tables and move the watermarks to the far future, so the
views return exactly those rows. All of it happens in the test's transaction and is rolled back.
Times are relative to the transaction's now(), which get_data uses too.
"""

from unittest import SkipTest

from odoo.tests import TransactionCase, new_test_user
from odoo.tools import SQL

BUCKET_ORIGIN = "2000-01-03 00:00:00+00"
ROLLUPS = ("sensor_data_hourly", "sensor_data_daily", "milk_production_daily")


def iot_profile(cr):
    """'postgres' or 'timescale' for a migrated database, None when the iot schema is missing."""
    cr.execute(SQL("SELECT to_regclass('iot.milk_production_daily'), to_regclass('iot.milk_production_daily_mat')"))
    view, mat = cr.fetchone()
    if not view:
        return None
    return "postgres" if mat else "timescale"


def materialized_tables(cr, profile):
    """Open the rollups' materialized rows to the views, in this transaction: {rollup: table SQL}."""
    if profile == "postgres":
        cr.execute(SQL("UPDATE iot.rollups SET watermark = 'infinity' WHERE name = ANY(%s)", list(ROLLUPS)))
        return {name: SQL.identifier("iot", f"{name}_mat") for name in ROLLUPS}
    cr.execute(SQL(
        """SELECT c.user_view_name, h.schema_name, h.table_name, c.mat_hypertable_id
             FROM _timescaledb_catalog.continuous_agg c
             JOIN _timescaledb_catalog.hypertable h ON h.id = c.mat_hypertable_id
            WHERE c.user_view_schema = 'iot' AND c.user_view_name = ANY(%s)""", list(ROLLUPS)))
    tables = {}
    for view, schema, table, mat_id in cr.fetchall():
        cr.execute(SQL(
            """UPDATE _timescaledb_catalog.continuous_aggs_watermark
                  SET watermark = _timescaledb_functions.to_unix_microseconds(now() + interval '100 years')
                WHERE mat_hypertable_id = %s""", mat_id))
        tables[view] = SQL.identifier(schema, table)
    return tables


class DashboardCase(TransactionCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        profile = iot_profile(cls.env.cr)
        if not profile:
            raise SkipTest("the dashboard's data tests need a database migrated by `smart-dairy migrate`")
        cls.env.cr.execute(SQL(
            "SELECT now(), date_bin('1 day', now(), %s::timestamptz), date_bin('1 hour', now(), %s::timestamptz)",
            BUCKET_ORIGIN, BUCKET_ORIGIN))
        cls.now, cls.today, cls.this_hour = cls.env.cr.fetchone()
        cls.mat = materialized_tables(cls.env.cr, profile)

        Farm = cls.env["sd.farm"]
        cls.farm_a = Farm.create({"name": "Farm A", "code": "TFA"})
        cls.farm_b = Farm.create({"name": "Farm B", "code": "TFB"})
        cls.farm_empty = Farm.create({"name": "Empty Farm", "code": "TFE"})

        cls.zone_a1 = cls.env["sd.zone"].create({"name": "Pen 1", "farm_id": cls.farm_a.id})
        cls.zone_a2 = cls.env["sd.zone"].create({"name": "Pen 2", "farm_id": cls.farm_a.id})
        cls.cows = cls.env["sd.animal"].create([
            {"ear_tag": f"TA-{i}", "farm_id": cls.farm_a.id} for i in range(1, 4)])
        cls.cow_b = cls.env["sd.animal"].create({"ear_tag": "TB-1", "farm_id": cls.farm_b.id})
        Device = cls.env["sd.device"]
        cls.collars = Device.create([
            {"device_uid": f"T-COL-A{i}", "device_type": "collar", "farm_id": cls.farm_a.id, "animal_id": cow.id}
            for i, cow in enumerate(cls.cows, 1)])
        cls.collar_b = Device.create({"device_uid": "T-COL-B1", "device_type": "collar",
                                      "farm_id": cls.farm_b.id, "animal_id": cls.cow_b.id})
        cls.env_a1 = Device.create({"device_uid": "T-ENV-A1", "device_type": "env_sensor",
                                    "farm_id": cls.farm_a.id, "zone_id": cls.zone_a1.id})
        cls.env_a2 = Device.create({"device_uid": "T-ENV-A2", "device_type": "env_sensor",
                                    "farm_id": cls.farm_a.id, "zone_id": cls.zone_a2.id})

        cls.env.flush_all()
        cls._clear_iot(cls.farm_a | cls.farm_b | cls.farm_empty)

        cls.user_a = new_test_user(cls.env, login="sd_dash_user_a", groups="smart_dairy_iot.group_iot_user")
        cls.user_a.sd_farm_ids = cls.farm_a
        cls.user_b = new_test_user(cls.env, login="sd_dash_user_b", groups="smart_dairy_iot.group_iot_user")
        cls.user_b.sd_farm_ids = cls.farm_b

    @classmethod
    def _clear_iot(cls, farms):
        # A database that already served a demo may hold rows of the same farm ids, and a registry
        # push would list the test devices in iot.devices (device status counts them): start clean.
        for table in [*cls.mat.values(), SQL.identifier("iot", "device_state")]:
            cls.env.cr.execute(SQL("DELETE FROM %s WHERE farm_id = ANY(%s)", table, farms.ids))
        cls.env.cr.execute(SQL("DELETE FROM iot.devices WHERE farm_id = ANY(%s)", farms.ids))

    # ----- aggregate rows -----

    def milk(self, cow, days_ago, kg, sessions=2):
        """One cow's milk of one UTC day, `days_ago` days before today."""
        self.env.cr.execute(SQL(
            """INSERT INTO %(table)s
                   (bucket, animal_id, farm_id, total_yield_kg, avg_yield_per_session, milking_count)
               VALUES (%(today)s - make_interval(days => %(d)s), %(animal)s, %(farm)s,
                       %(kg)s, %(kg)s / %(n)s, %(n)s)""",
            table=self.mat["milk_production_daily"], today=self.today, d=days_ago, animal=cow.id,
            farm=cow.farm_id.id, kg=kg, n=sessions))

    def daily(self, device, metric, days_ago, value):
        self.env.cr.execute(SQL(
            """INSERT INTO %(table)s
                   (bucket, device_uid, device_type, farm_id, metric_name, avg_value, min_value, max_value,
                    sample_count)
               VALUES (%(today)s - make_interval(days => %(d)s), %(uid)s, %(type)s, %(farm)s, %(metric)s,
                       %(v)s, %(v)s, %(v)s, 288)""",
            table=self.mat["sensor_data_daily"], today=self.today, d=days_ago, uid=device.device_uid,
            type=device.device_type, farm=device.farm_id.id, metric=metric, v=value))

    def hourly(self, device, metric, hours_ago, value):
        """One hourly bucket `hours_ago` hours before the current hour's bucket."""
        self.env.cr.execute(SQL(
            """INSERT INTO %(table)s
                   (bucket, device_uid, device_type, farm_id, metric_name, avg_value, min_value, max_value,
                    sample_count, valid_count)
               VALUES (%(hour)s - make_interval(hours => %(h)s), %(uid)s, %(type)s, %(farm)s, %(metric)s,
                       %(v)s, %(v)s, %(v)s, 12, 12)""",
            table=self.mat["sensor_data_hourly"], hour=self.this_hour, h=hours_ago, uid=device.device_uid,
            type=device.device_type, farm=device.farm_id.id, metric=metric, v=value))

    def device_state(self, device, minutes_ago, battery):
        self.env.cr.execute(SQL(
            """INSERT INTO iot.device_state (device_uid, device_type, farm_id, last_seen, battery_level)
               VALUES (%s, %s, %s, %s - make_interval(mins => %s), %s)""",
            device.device_uid, device.device_type, device.farm_id.id, self.now, minutes_ago, battery))

    def alert(self, farm, severity, category, status="open", animal=None, days_ago=0, hours_ago=0):
        self.env.cr.execute(SQL("SELECT (%s - make_interval(days => %s, hours => %s)) AT TIME ZONE 'UTC'",
                                self.now, days_ago, hours_ago))
        (time,) = self.env.cr.fetchone()
        return self.env["sd.alert"].create({
            "alert_id": f"test-{farm.id}-{severity}-{category}-{status}-{days_ago}-{hours_ago}-{animal and animal.id}",
            "time": time,
            "rule_code": "test",
            "farm_id": farm.id,
            "animal_id": animal.id if animal else False,
            "severity": severity,
            "category": category,
            "status": status,
            "message": f"{severity} {category}",
            "source_type": "animal" if animal else "farm",
            "source_id": str(animal.id if animal else farm.id),
        })

    def get_data(self, farm=None, period="30d", user=None):
        dashboard = self.env["sd.dashboard"].with_user(user) if user else self.env["sd.dashboard"]
        return dashboard.get_data(farm.id if farm else False, period)
