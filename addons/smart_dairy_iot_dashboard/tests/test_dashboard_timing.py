"""get_data over a farm of 1,000 cows with 90 days of aggregates must answer well within a page load."""

import logging
import statistics
import time

from odoo.tests import tagged
from odoo.tools import SQL

from ..models.sd_dashboard import ACTIVITY, AIR_TEMPERATURE, HUMIDITY, RUMINATION
from .common import DashboardCase

_logger = logging.getLogger(__name__)

COWS = 1000
DAYS = 90
ZONES = 8
# What the devices report (ingestor/simulator.py); the dashboard reads the first two of each.
COLLAR_METRICS = [ACTIVITY, RUMINATION, "eating_minutes", "resting_minutes", "body_temperature_c"]
ZONE_METRICS = [AIR_TEMPERATURE, HUMIDITY, "nh3_ppm", "co2_ppm", "pressure_hpa"]
BOUND_S = 2.0

# Per aggregate: which metrics over how long. Every row get_data can read exists at full density:
# milk and the two collar metrics it reads daily for all 90 days, zone climate hourly for 90 days,
# every collar metric for the windows it reads (baseline days, last 24 h). Rows it can never read
# (90 days of hourly rows of every collar: 10.8 M rows, minutes of setup) are left out: the
# aggregates are read by (farm_id, bucket) range, so they would not change the plans.
DAILY_FILL = [(COLLAR_METRICS[:2], DAYS), (COLLAR_METRICS[2:], 10)]
HOURLY_FILL = [(COLLAR_METRICS, 26)]
ZONE_FILL = [(ZONE_METRICS[:2], DAYS * 24), (ZONE_METRICS[2:], 8 * 24)]


@tagged("post_install", "-at_install", "sd_timing")
class TestDashboardTiming(DashboardCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.farm = cls.env["sd.farm"].create({"name": "Big Farm", "code": "TBIG"})
        cls.big_zones = cls.env["sd.zone"].create([
            {"name": f"Zone {z}", "farm_id": cls.farm.id} for z in range(ZONES)])
        animals = cls.env["sd.animal"].create([
            {"ear_tag": f"BIG-{i:05d}", "farm_id": cls.farm.id} for i in range(COWS)])
        cls.env["sd.device"].create(
            [{"device_uid": f"T-BIG-COL-{i:05d}", "device_type": "collar", "farm_id": cls.farm.id,
              "animal_id": a.id} for i, a in enumerate(animals)]
            + [{"device_uid": f"T-BIG-ENV-{z:02d}", "device_type": "env_sensor", "farm_id": cls.farm.id,
                "zone_id": zone.id} for z, zone in enumerate(cls.big_zones)])
        cls.env.flush_all()
        started = time.perf_counter()
        cls._fill(animals)
        _logger.info("dashboard timing fixture: %.1f s", time.perf_counter() - started)

    @classmethod
    def _fill(cls, animals):
        cr = cls.env.cr
        common = {"farm": cls.farm.id, "today": cls.today, "hour": cls.this_hour, "n": COWS}
        # Milk: two milkings a day, a per-cow level and a weekly wave.
        cr.execute(SQL(
            """INSERT INTO %(table)s
                   (bucket, animal_id, farm_id, total_yield_kg, avg_yield_per_session, milking_count,
                    avg_conductivity, avg_scc, max_mastitis_risk, avg_fat, avg_protein)
               SELECT %(today)s - make_interval(days => d), (%(ids)s::int[])[c + 1], %(farm)s,
                      20 + (c %% 13) + 3 * sin(d / 3.0), 10 + (c %% 13) / 2.0, 2, 5.0, 150000, 0.1, 4.0, 3.3
                 FROM generate_series(0, %(days)s - 1) d, generate_series(0, %(n)s - 1) c""",
            table=cls.mat["milk_production_daily"], ids=animals.ids, days=DAYS, **common))
        # Collars, daily: a per-cow level.
        for metrics, days in DAILY_FILL:
            cr.execute(SQL(
                """INSERT INTO %(table)s
                       (bucket, device_uid, device_type, farm_id, metric_name, avg_value, min_value, max_value,
                        stddev_value, sample_count, median_value, error_count)
                   SELECT %(today)s - make_interval(days => d), 'T-BIG-COL-' || lpad(c::text, 5, '0'), 'collar',
                          %(farm)s, m, v, v - 5, v + 5, 2, 288, v, 0
                     FROM generate_series(0, %(days)s - 1) d, generate_series(0, %(n)s - 1) c,
                          unnest(%(metrics)s::text[]) m,
                          LATERAL (SELECT 50 + (c %% 17) + (m = 'rumination_minutes')::int * 450 AS v) v""",
                table=cls.mat["sensor_data_daily"], metrics=metrics, days=days, **common))
        # Collars, hourly, with a diurnal cycle; every 40th cow in heat for the last 8 hours, every
        # 50th ruminating less for the last day.
        for metrics, hours in HOURLY_FILL:
            cr.execute(SQL(
                """INSERT INTO %(table)s
                       (bucket, device_uid, device_type, farm_id, metric_name, avg_value, min_value, max_value,
                        stddev_value, sample_count, median_value, p95_value, valid_count)
                   SELECT %(hour)s - make_interval(hours => h), 'T-BIG-COL-' || lpad(c::text, 5, '0'), 'collar',
                          %(farm)s, m, v, v - 5, v + 5, 2, 12, v, v + 4, 12
                     FROM generate_series(0, %(hours)s - 1) h, generate_series(0, %(n)s - 1) c,
                          unnest(%(metrics)s::text[]) m,
                          LATERAL (SELECT CASE
                              WHEN m = 'activity_index' AND c %% 40 = 0 AND h < 8 THEN 160
                              WHEN m = 'rumination_minutes' AND c %% 50 = 0 AND h < 24 THEN 300
                              ELSE 50 + (c %% 17) + 20 * sin(h / 24.0 * 2 * pi())
                                   + (m = 'rumination_minutes')::int * 450 END AS v) v""",
                table=cls.mat["sensor_data_hourly"], metrics=metrics, hours=hours, **common))
        # Zones, hourly.
        for metrics, hours in ZONE_FILL:
            cr.execute(SQL(
                """INSERT INTO %(table)s
                       (bucket, device_uid, device_type, farm_id, metric_name, avg_value, min_value, max_value,
                        stddev_value, sample_count, median_value, p95_value, valid_count)
                   SELECT %(hour)s - make_interval(hours => h), 'T-BIG-ENV-' || lpad(z::text, 2, '0'), 'env_sensor',
                          %(farm)s, m, v, v - 1, v + 1, 0.5, 12, v, v + 1, 12
                     FROM generate_series(0, %(hours)s - 1) h, generate_series(0, %(zones)s - 1) z,
                          unnest(%(metrics)s::text[]) m,
                          LATERAL (SELECT CASE m WHEN 'temperature_c' THEN 18 + z + 6 * sin(h / 24.0 * 2 * pi())
                                                 WHEN 'humidity_percent' THEN 65 + 10 * cos(h / 24.0 * 2 * pi())
                                                 ELSE 100 END AS v) v""",
                table=cls.mat["sensor_data_hourly"], metrics=metrics, hours=hours, zones=ZONES, **common))
        # Device status: every 97th device silent for 10 minutes, batteries from 10 to 99 %.
        cr.execute(SQL(
            """INSERT INTO iot.device_state (device_uid, device_type, farm_id, last_seen, battery_level)
               SELECT device_uid, device_type, %(farm)s,
                      now() - make_interval(mins => CASE WHEN id %% 97 = 0 THEN 600 ELSE 1 END), 10 + id %% 90
                 FROM sd_device WHERE farm_id = %(farm)s""", **common))
        # Alerts: 30 a day for 90 days, those of the last two days still open.
        cr.execute(SQL(
            """INSERT INTO sd_alert (alert_id, time, rule_code, farm_id, animal_id, severity, category, message,
                                     status, source_type, source_id)
               SELECT 'T-BIG-' || d || '-' || k,
                      (%(today)s - make_interval(days => d, mins => k * 40)) AT TIME ZONE 'UTC',
                      'test', %(farm)s, (%(ids)s::int[])[1 + (d * 31 + k) %% %(n)s],
                      (ARRAY['info', 'warning', 'critical'])[1 + k %% 3],
                      (ARRAY['health', 'reproduction', 'feeding', 'device', 'environment'])[1 + k %% 5],
                      'alert ' || k, CASE WHEN d < 2 THEN 'open' ELSE 'resolved' END, 'animal', 'x'
                 FROM generate_series(0, %(days)s - 1) d, generate_series(0, 29) k""",
            ids=animals.ids, days=DAYS, **common))
        # Statistics as a farm in service has them (autovacuum would have analyzed these tables).
        cr.execute(SQL("ANALYZE %s, %s, %s, iot.device_state, sd_alert, sd_device, sd_animal",
                       cls.mat["milk_production_daily"], cls.mat["sensor_data_daily"], cls.mat["sensor_data_hourly"]))

    def test_get_data_1000_cows_90_days(self):
        dashboard = self.env["sd.dashboard"]
        data = dashboard.get_data(self.farm.id, "90d")  # warm-up: caches, plans
        self.assertEqual(data["kpis"]["cows_milked_today"], COWS)
        self.assertEqual(len(data["charts"]["milk_daily"]), DAYS)
        self.assertEqual(len(data["charts"]["outliers"]), COWS)
        self.assertEqual(len(data["charts"]["thi_zones"]), ZONES)
        # every 40th cow from her collar, plus those with an open reproduction alert
        self.assertGreaterEqual(data["kpis"]["cows_in_heat"], len(range(0, COWS, 40)))
        timings = []
        for _ in range(3):
            self.env.invalidate_all()
            started = time.perf_counter()
            dashboard.get_data(self.farm.id, "90d")
            timings.append(time.perf_counter() - started)
        # The best of three: what the query costs, not what other processes on the machine cost it.
        elapsed = min(timings)
        line = (f"SD-TIMING dashboard get_data, {COWS:,} cows, {DAYS} days: {elapsed * 1000:.0f} ms "
                f"(best of 3; median {statistics.median(timings) * 1000:.0f} ms)")
        print(line)  # the project's test run collects SD-TIMING lines from stdout
        _logger.info(line)
        self.assertLess(elapsed, BOUND_S)
