"""Export of readings (raw, hourly or daily) as CSV or XLSX, streamed from a server-side cursor."""

import csv
import io
import os
import tempfile
from datetime import timedelta

from odoo import api, fields, models
from odoo.exceptions import UserError, ValidationError
from odoo.tools import SQL

FETCH_ROWS = 10_000  # rows per FETCH from the server-side cursor: memory stays flat whatever the range
XLSX_MAX_ROWS = 1_048_575  # a worksheet holds 1,048,576 rows, the header included
RAW_HEADER = ["time_utc", "farm_id", "device_uid", "device_type", "animal", "metric_name", "metric_value",
              "metric_unit", "data_quality"]
AGGREGATE_HEADER = ["bucket_utc", "farm_id", "device_uid", "device_type", "animal", "metric_name", "avg_value",
                    "min_value", "max_value", "sample_count"]
SOURCES = {"hourly": "sensor_data_hourly", "daily": "sensor_data_daily"}


class SdExportWizard(models.TransientModel):
    _name = "sd.export.wizard"
    _description = "Export readings"
    _inherit = ["sd.farm.rules.mixin"]

    farm_id = fields.Many2one("sd.farm", required=True, default=lambda self: self.env.user.sd_farm_ids[:1])
    animal_ids = fields.Many2many("sd.animal", string="Animals", domain="[('farm_id', '=', farm_id)]",
                                  help="Empty: every device of the farm.")
    metric_names = fields.Char("Metrics", help="Comma-separated metric names, e.g. temperature_c, activity_index. "
                                               "Empty: every metric.")
    date_from = fields.Datetime("From", required=True, default=lambda self: fields.Datetime.now() - timedelta(days=7))
    date_to = fields.Datetime("To", required=True, default=fields.Datetime.now)
    granularity = fields.Selection([("raw", "Every reading"), ("hourly", "Hourly averages"),
                                    ("daily", "Daily averages")], required=True, default="hourly")
    file_format = fields.Selection([("csv", "CSV"), ("xlsx", "Excel (XLSX)")], required=True, default="csv")

    @api.constrains("date_from", "date_to")
    def _check_dates(self):
        if any(w.date_from >= w.date_to for w in self):
            raise ValidationError(self.env._("The export range must end after it starts."))

    def _metrics(self):
        return [m.strip() for m in (self.metric_names or "").split(",") if m.strip()]

    def _check_export_access(self):
        """The user's farm record rules decide what can be exported, as in every view."""
        self.ensure_one()
        self.farm_id.check_access("read")
        self.animal_ids.check_access("read")
        if self.animal_ids.farm_id - self.farm_id:
            raise UserError(self.env._("Choose animals of the exported farm only."))

    def _header(self):
        return RAW_HEADER if self.granularity == "raw" else AGGREGATE_HEADER

    def _query(self, select=None):
        """The export's SELECT; `select` replaces its columns (e.g. count(*)). Filters always bind farm_id."""
        self.ensure_one()
        start = SQL("(%s::timestamp AT TIME ZONE 'UTC')", fields.Datetime.to_string(self.date_from))
        end = SQL("(%s::timestamp AT TIME ZONE 'UTC')", fields.Datetime.to_string(self.date_to))
        metrics, animals = self._metrics(), self.animal_ids.ids
        if self.granularity == "raw":
            columns = SQL("""to_char(s.time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), s.farm_id,
                             s.device_uid, s.device_type, a.ear_tag, s.metric_name, s.metric_value, s.metric_unit,
                             s.data_quality""")
            return SQL(
                """SELECT %s FROM iot.sensor_data s LEFT JOIN sd_animal a ON a.id = s.animal_id
                   WHERE s.farm_id = %s AND s.time >= %s AND s.time < %s %s %s %s""",
                select or columns, self.farm_id.id, start, end,
                SQL("AND s.metric_name = ANY(%s)", metrics) if metrics else SQL(),
                SQL("AND s.animal_id = ANY(%s)", animals) if animals else SQL(),
                # The unique index is (device_uid, metric_name, time): rows come out in its order, unsorted.
                SQL() if select else SQL("ORDER BY s.device_uid, s.metric_name, s.time"))
        columns = SQL("""to_char(r.bucket AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS'), r.farm_id, r.device_uid,
                         r.device_type, a.ear_tag, r.metric_name, r.avg_value, r.min_value, r.max_value,
                         r.sample_count""")
        return SQL(
            """SELECT %s FROM %s r
               LEFT JOIN iot.devices d ON d.device_uid = r.device_uid
               LEFT JOIN sd_animal a ON a.id = d.animal_id
               WHERE r.farm_id = %s AND r.bucket >= %s AND r.bucket < %s %s %s %s""",
            select or columns, SQL.identifier("iot", SOURCES[self.granularity]), self.farm_id.id, start, end,
            SQL("AND r.metric_name = ANY(%s)", metrics) if metrics else SQL(),
            SQL("AND d.animal_id = ANY(%s)", animals) if animals else SQL(),
            SQL() if select else SQL("ORDER BY r.device_uid, r.metric_name, r.bucket"))

    def _count(self):
        self.env.cr.execute(self._query(SQL("count(*)")))
        return self.env.cr.fetchone()[0]

    def _iter_rows(self, cr):
        """Yield lists of rows, FETCH_ROWS at a time, from a server-side cursor over the export query."""
        name = SQL.identifier(f"sd_export_{self.id}")
        cr.execute(SQL("DECLARE %s NO SCROLL CURSOR FOR %s", name, self._query()))
        try:
            while True:
                cr.execute(SQL("FETCH FORWARD %s FROM %s", FETCH_ROWS, name))
                rows = cr.fetchall()
                if not rows:
                    return
                yield rows
        finally:
            cr.execute(SQL("CLOSE %s", name))

    def _iter_csv(self, cr):
        """Yield the CSV file as encoded chunks, one per fetched batch."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self._header())
        for rows in self._iter_rows(cr):
            writer.writerows(rows)
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
        if buffer.tell():
            yield buffer.getvalue().encode()

    def _iter_xlsx(self, cr, chunk_size=1 << 20):
        """Yield the XLSX file in chunks. xlsxwriter's constant_memory mode writes each row to disk as it
        comes, so only the current batch is in memory."""
        import xlsxwriter  # noqa: PLC0415 -- an Odoo requirement, imported where it is used

        fd, path = tempfile.mkstemp(suffix=".xlsx")
        os.close(fd)
        try:
            workbook = xlsxwriter.Workbook(path, {"constant_memory": True, "strings_to_numbers": False})
            sheet = workbook.add_worksheet(self.granularity)
            sheet.write_row(0, 0, self._header())
            row_index = 1
            for rows in self._iter_rows(cr):
                for row in rows:
                    sheet.write_row(row_index, 0, row)
                    row_index += 1
            workbook.close()
            with open(path, "rb") as file:
                while chunk := file.read(chunk_size):
                    yield chunk
        finally:
            os.unlink(path)

    def _iter_file(self, cr):
        return self._iter_xlsx(cr) if self.file_format == "xlsx" else self._iter_csv(cr)

    def _filename(self):
        start, end = (fields.Date.to_string(d.date()) for d in (self.date_from, self.date_to))
        farm = self.farm_id.code or f"farm{self.farm_id.id}"
        return f"{farm}_{self.granularity}_{start}_{end}.{self.file_format}"

    def action_export(self):
        self.ensure_one()
        self._check_export_access()
        if self.file_format == "xlsx" and self._count() > XLSX_MAX_ROWS:
            raise UserError(self.env._("This range has more rows than an Excel sheet holds (%s): export it as CSV "
                                       "or choose hourly or daily averages.", f"{XLSX_MAX_ROWS:,}"))
        return {"type": "ir.actions.act_url", "url": f"/smart_dairy_iot/export/{self.id}", "target": "self"}
