import csv
import io
from unittest.mock import patch

from odoo import fields
from odoo.exceptions import AccessError, UserError
from odoo.tests import HttpCase, tagged
from odoo.tools import SQL

from ..wizards import sd_export_wizard
from ..wizards.sd_export_wizard import AGGREGATE_HEADER, RAW_HEADER
from .common import SmartDairyCase

try:
    import openpyxl
except ImportError:  # read the sheet's XML instead
    openpyxl = None


class ExportCase(SmartDairyCase):
    """Two days of readings every 10 minutes for every device of both farms, two metrics each."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.sync._push_registry()
        cls.env.cr.execute(
            """INSERT INTO iot.sensor_data (time, device_uid, device_type, farm_id, metric_name, metric_value,
                                            animal_id, zone_id)
               SELECT date_trunc('day', now()) - interval '2 days' + g * interval '10 minutes', d.device_uid,
                      d.device_type, d.farm_id, m, (g % 37) * 0.25 + length(d.device_uid) + length(m) / 10.0,
                      d.animal_id, d.zone_id
               FROM iot.devices d, generate_series(0, 287) g, unnest(ARRAY['temperature_c', 'activity_index']) m""")
        cls.cr.execute("SELECT (date_trunc('day', now()) - interval '2 days') AT TIME ZONE 'UTC', "
                       "date_trunc('day', now()) AT TIME ZONE 'UTC'")
        cls.start, cls.end = cls.cr.fetchone()

    def wizard(self, user=None, **values):
        values = {"farm_id": self.farm_a.id, "date_from": self.start, "date_to": self.end, **values}
        return self.env["sd.export.wizard"].with_user(user or self.user_a).create(values)

    def export_rows(self, wizard):
        data = b"".join(wizard._iter_file(self.env.cr))
        if wizard.file_format == "csv":
            return list(csv.reader(io.StringIO(data.decode())))
        return read_xlsx(data)


def read_xlsx(data):
    """Rows of the first sheet, as strings (numbers as Python prints them)."""
    if openpyxl is not None:
        sheet = openpyxl.load_workbook(io.BytesIO(data), read_only=True).worksheets[0]
        return [["" if v is None else str(v) for v in row] for row in sheet.iter_rows(values_only=True)]
    import re  # noqa: PLC0415
    import zipfile  # noqa: PLC0415
    from xml.etree import ElementTree  # noqa: PLC0415

    ns = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        sheet = ElementTree.fromstring(archive.read("xl/worksheets/sheet1.xml"))
        shared = []
        if "xl/sharedStrings.xml" in archive.namelist():
            shared = ["".join(t.text or "" for t in si.iter(f"{{{ns['m']}}}t"))
                      for si in ElementTree.fromstring(archive.read("xl/sharedStrings.xml")).findall("m:si", ns)]
    rows = []
    for row in sheet.iter(f"{{{ns['m']}}}row"):
        cells = {}
        for cell in row.findall("m:c", ns):
            column = re.match(r"[A-Z]+", cell.get("r")).group()
            value = cell.find("m:v", ns)
            inline = cell.find("m:is/m:t", ns)
            text = inline.text if inline is not None else (value.text if value is not None else "")
            cells[column] = shared[int(text)] if cell.get("t") == "s" else text
        rows.append([cells.get(chr(65 + i), "") for i in range(max(len(cells), 1))])
    return rows


@tagged("post_install", "-at_install")
class TestExport(ExportCase):
    def expected(self, granularity, farm, metrics=None, animals=None):
        """The aggregate rows as the iot views give them, keyed like the export's rows."""
        tag = {d.device_uid: d.animal_id.ear_tag or "" for d in self.env["sd.device"].search([])}
        if granularity == "raw":
            rows = self.iot(
                """SELECT to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), device_uid, metric_name,
                          metric_value FROM iot.sensor_data
                   WHERE farm_id = %s AND time >= %s::timestamp AT TIME ZONE 'UTC'
                     AND time < %s::timestamp AT TIME ZONE 'UTC'""", farm.id, self.start, self.end)
        else:
            rows = self.iot(SQL(
                """SELECT to_char(bucket AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS'), device_uid, metric_name,
                          avg_value, min_value, max_value, sample_count FROM %s
                   WHERE farm_id = %s AND bucket >= %s::timestamp AT TIME ZONE 'UTC'
                     AND bucket < %s::timestamp AT TIME ZONE 'UTC'""",
                SQL.identifier("iot", f"sensor_data_{granularity}"), farm.id, self.start, self.end))
        selected = []
        for row in rows:
            if metrics and row[2] not in metrics:
                continue
            if animals is not None and tag[row[1]] not in animals:
                continue
            selected.append(row)
        return {(r[0], r[1], r[2]): (tag[r[1]], *r[3:]) for r in selected}

    def check(self, granularity, file_format, metrics=None, animals=None):
        wizard = self.wizard(granularity=granularity, file_format=file_format,
                             metric_names=", ".join(metrics or []),
                             animal_ids=[fields.Command.set(animals.ids)] if animals else [])
        header, *rows = self.export_rows(wizard)
        self.assertEqual(header, RAW_HEADER if granularity == "raw" else AGGREGATE_HEADER)
        expected = self.expected(granularity, self.farm_a, metrics, animals.mapped("ear_tag") if animals else None)
        self.assertEqual(len(rows), len(expected))
        self.assertGreater(len(rows), 0)
        for row in rows:
            self.assertEqual(row[1], str(self.farm_a.id))
            want = expected[(row[0], row[2], row[5])]
            self.assertEqual(row[4], want[0], "animal ear tag")
            if granularity == "raw":
                self.assertAlmostEqual(float(row[6]), want[1], places=9)
            else:
                for got, value in zip(row[6:9], want[1:4], strict=True):
                    self.assertAlmostEqual(float(got), value, places=9)
                self.assertEqual(int(float(row[9])), want[4])
        return rows

    def test_hourly_csv(self):
        rows = self.check("hourly", "csv")
        self.assertEqual(len(rows), 6 * 2 * 48, "6 devices, 2 metrics, 48 hours")

    def test_daily_xlsx(self):
        self.check("daily", "xlsx")

    def test_raw_csv_filtered(self):
        cows = self.farm_a.animal_ids[:2]
        rows = self.check("raw", "csv", metrics=["activity_index"], animals=cows)
        self.assertEqual(len(rows), 2 * 288)

    def test_raw_xlsx(self):
        self.check("raw", "xlsx", metrics=["temperature_c"])

    def test_hourly_xlsx_with_animals(self):
        self.check("hourly", "xlsx", animals=self.farm_a.animal_ids[1:3])

    def test_stream_uses_bounded_batches(self):
        wizard = self.wizard(granularity="raw")
        batches = list(wizard._iter_rows(self.env.cr))
        self.assertEqual(sum(len(b) for b in batches), 6 * 2 * 288)
        self.assertTrue(all(len(b) <= 10_000 for b in batches))

    def test_xlsx_refuses_more_rows_than_a_sheet_holds(self):
        wizard = self.wizard(granularity="raw", file_format="xlsx")
        with patch.object(sd_export_wizard, "XLSX_MAX_ROWS", 100), self.assertRaises(UserError):
            wizard.action_export()
        wizard.file_format = "csv"
        action = wizard.action_export()
        self.assertEqual(action["url"], f"/smart_dairy_iot/export/{wizard.id}")

    def test_user_cannot_export_another_farm(self):
        with self.assertRaises(AccessError):
            self.wizard(farm_id=self.farm_b.id)
        wizard = self.wizard(user=self.env.user, farm_id=self.farm_b.id)
        with self.assertRaises(AccessError):
            wizard.with_user(self.user_a)._check_export_access()


@tagged("post_install", "-at_install")
class TestExportDownload(HttpCase, ExportCase):
    def test_download_streams_csv_for_the_users_farm(self):
        wizard = self.wizard(granularity="hourly", metric_names="temperature_c")
        action = wizard.action_export()
        self.authenticate("sd_user_a", "sd_user_a")
        response = self.url_open(action["url"], timeout=120)
        self.assertEqual(response.status_code, 200)
        self.assertIn("attachment", response.headers["Content-Disposition"])
        header, *rows = list(csv.reader(io.StringIO(response.text)))
        self.assertEqual(header, AGGREGATE_HEADER)
        self.assertEqual(len(rows), 6 * 48)
        self.assertEqual({r[1] for r in rows}, {str(self.farm_a.id)})

    def test_download_of_another_users_wizard_is_refused(self):
        wizard = self.wizard(user=self.env.user, farm_id=self.farm_b.id)
        self.authenticate("sd_user_a", "sd_user_a")
        response = self.url_open(f"/smart_dairy_iot/export/{wizard.id}", timeout=120)
        self.assertNotEqual(response.status_code, 200)
        self.assertNotIn("COL-FB", response.text)
