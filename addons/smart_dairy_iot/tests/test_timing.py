"""Timings printed as `SD-TIMING ...` lines; the assertions only check the work was done."""

import logging
import time

from odoo import fields
from odoo.tests import tagged
from odoo.tools import SQL

from .common import SmartDairyCase

_logger = logging.getLogger(__name__)
RAW_ROWS = 1_000_000


def timing(line):
    _logger.info("SD-TIMING %s", line)


@tagged("post_install", "-at_install", "sd_timing")
class TestTiming(SmartDairyCase):
    def test_push_of_5000_animals(self):
        farm = self.env["sd.farm"].create({"name": "Big farm", "code": "BIG"})
        self.env["sd.animal"].create([{"ear_tag": f"COW-{i:05d}", "farm_id": farm.id, "lactation_number": 1 + i % 5,
                                       "calving_date": fields.Date.today()} for i in range(5000)])
        self.env.flush_all()
        began = time.perf_counter()
        changed = self.sync._push_registry()
        seconds = time.perf_counter() - began
        timing(f"registry push of 5,000 animals: {seconds:.2f} s")
        self.assertEqual(self.iot_one("SELECT count(*) FROM iot.animals WHERE farm_id = %s", farm.id), (5000,))
        self.assertGreaterEqual(changed["animals"], 5000)
        began = time.perf_counter()
        self.assertEqual(sum(self.sync._push_registry().values()), 0)
        timing(f"registry push of 5,000 unchanged animals: {time.perf_counter() - began:.2f} s")

    def test_export_of_a_million_raw_rows(self):
        device_count = 20
        self.env.cr.execute(SQL(
            """INSERT INTO iot.sensor_data (time, device_uid, device_type, farm_id, metric_name, metric_value)
               SELECT date_trunc('hour', now()) - interval '2 days' + (g / %s) * interval '1 second',
                      'COL-T-' || (g %% %s), 'collar', %s, 'activity_index', g %% 1000
               FROM generate_series(0, %s - 1) g""",
            device_count, device_count, self.farm_a.id, RAW_ROWS))
        self.env.cr.execute("SELECT (date_trunc('hour', now()) - interval '3 days') AT TIME ZONE 'UTC', "
                            "now() AT TIME ZONE 'UTC'")
        start, end = self.env.cr.fetchone()
        wizard = self.env["sd.export.wizard"].create({"farm_id": self.farm_a.id, "granularity": "raw",
                                                      "file_format": "csv", "date_from": start, "date_to": end})
        began = time.perf_counter()
        size = lines = 0
        for chunk in wizard._iter_file(self.env.cr):
            size += len(chunk)
            lines += chunk.count(b"\n")
        seconds = time.perf_counter() - began
        timing(f"export of {RAW_ROWS:,} raw rows to CSV: {seconds:.2f} s ({size / 1e6:.0f} MB, "
               f"{RAW_ROWS / seconds:,.0f} rows/s)")
        self.assertEqual(lines, RAW_ROWS + 1)
