"""Read-only reporting models: SQL views over the ingestor's aggregates, never over raw readings.

The iot views include readings not yet materialised, and filters on farm, device and time push down
into them. Ids are a hash of each row's key (kept below 2**52 so the web client handles them exactly),
not a row_number() that would make PostgreSQL compute the whole view before filtering it. farm_id is
the aggregate's own column (rows of farms Odoo does not know are left out), so the farm record rules
filter the aggregates themselves.
"""

from odoo import fields, models, tools
from odoo.tools import SQL

from .iot import check_iot_schema
from .sd_device import LIVE_STATUSES

ID_MASK = 2**52 - 1
RANGE_OPERATORS = ("<", "<=", ">", ">=")


class UtcBucket(fields.Datetime):
    """A bucket's start as Odoo shows it (naive UTC, column `date`), filtered on the view's timestamptz
    column `bucket`: a range on `bucket` uses the aggregates' indexes and TimescaleDB's chunk exclusion,
    one on `bucket AT TIME ZONE 'UTC'` would read every bucket of the farm."""

    def _condition_to_sql(self, field_expr, operator, value, model, alias, query):
        if field_expr == self.name and operator in RANGE_OPERATORS and value:
            value = self.convert_to_column(value, model, validate=False)
            return SQL("%s %s (%s::timestamp AT TIME ZONE 'UTC')", SQL.identifier(alias, "bucket"),
                       SQL(operator), value)
        return super()._condition_to_sql(field_expr, operator, value, model, alias, query)


def _create_view(model, query):
    check_iot_schema(model.env)
    tools.drop_view_if_exists(model.env.cr, model._table)
    model.env.cr.execute(SQL("CREATE OR REPLACE VIEW %s AS (%s)", SQL.identifier(model._table), query))


def _reading_view(source):
    return SQL(
        """SELECT hashtextextended(r.device_uid || '|' || r.metric_name || '|'
                                   || extract(epoch FROM r.bucket)::bigint, 0) & %s AS id,
                  r.bucket, r.bucket AT TIME ZONE 'UTC' AS date,
                  r.farm_id, a.id AS animal_id, z.id AS zone_id,
                  r.device_uid, r.device_type, r.metric_name,
                  r.avg_value, r.min_value, r.max_value, r.sample_count
           FROM %s r
           LEFT JOIN iot.devices d ON d.device_uid = r.device_uid
           LEFT JOIN sd_animal a ON a.id = d.animal_id
           LEFT JOIN sd_zone z ON z.id = d.zone_id
           -- farm_id is the aggregate's own column, so the farm record rule filters the aggregate itself
           WHERE EXISTS (SELECT FROM sd_farm f WHERE f.id = r.farm_id)""", ID_MASK, SQL.identifier("iot", source))


class SdReportReadingHourly(models.Model):
    _name = "sd.report.reading.hourly"
    _description = "Herd readings per hour"
    _auto = False
    _order = "date desc, device_uid, metric_name"
    _rec_name = "metric_name"

    date = UtcBucket("Hour", readonly=True)
    farm_id = fields.Many2one("sd.farm", readonly=True)
    animal_id = fields.Many2one("sd.animal", readonly=True)
    zone_id = fields.Many2one("sd.zone", readonly=True)
    device_uid = fields.Char("Device", readonly=True)
    device_type = fields.Char(readonly=True)  # as the device sent it: not only the registry's types
    metric_name = fields.Char("Metric", readonly=True)
    avg_value = fields.Float("Average", readonly=True, aggregator="avg")
    min_value = fields.Float("Minimum", readonly=True, aggregator="min")
    max_value = fields.Float("Maximum", readonly=True, aggregator="max")
    sample_count = fields.Integer("Readings", readonly=True)

    def init(self):
        _create_view(self, _reading_view("sensor_data_hourly"))


class SdReportReadingDaily(models.Model):
    _name = "sd.report.reading.daily"
    _inherit = "sd.report.reading.hourly"
    _description = "Herd readings per day"
    _auto = False

    date = UtcBucket("Day", readonly=True)

    def init(self):
        _create_view(self, _reading_view("sensor_data_daily"))


class SdReportMilkDaily(models.Model):
    _name = "sd.report.milk.daily"
    _description = "Milk per cow per day"
    _auto = False
    _order = "date desc, animal_id"
    _rec_name = "animal_id"

    date = fields.Date(readonly=True)
    farm_id = fields.Many2one("sd.farm", readonly=True)
    animal_id = fields.Many2one("sd.animal", readonly=True)
    yield_kg = fields.Float("Milk (kg)", readonly=True, digits=(16, 1))
    yield_7d_avg_kg = fields.Float("7-day average (kg)", readonly=True, digits=(16, 1), aggregator="avg",
                                   help="Average daily milk of the cow over this day and the 6 before.")
    milking_count = fields.Integer("Milkings", readonly=True)
    avg_yield_per_session = fields.Float("Per milking (kg)", readonly=True, digits=(16, 1), aggregator="avg")
    avg_conductivity = fields.Float("Conductivity (mS/cm)", readonly=True, aggregator="avg")
    avg_scc = fields.Float("Somatic cells", readonly=True, aggregator="avg", digits=(16, 0))
    max_mastitis_risk = fields.Float("Mastitis risk", readonly=True, aggregator="max")
    avg_fat = fields.Float("Fat (%)", readonly=True, aggregator="avg")
    avg_protein = fields.Float("Protein (%)", readonly=True, aggregator="avg")

    def init(self):
        # The window is partitioned by animal, so filters on the animal or farm still push down into it.
        _create_view(self, SQL(
            """SELECT hashtextextended(m.farm_id || '|' || coalesce(m.animal_id, 0) || '|'
                                       || extract(epoch FROM m.bucket)::bigint, 0) & %s AS id,
                      (m.bucket AT TIME ZONE 'UTC')::date AS date,
                      m.farm_id, a.id AS animal_id,
                      m.total_yield_kg AS yield_kg,
                      avg(m.total_yield_kg) OVER (PARTITION BY m.farm_id, m.animal_id ORDER BY m.bucket
                                                  RANGE BETWEEN interval '6 days' PRECEDING AND CURRENT ROW)
                          AS yield_7d_avg_kg,
                      m.milking_count, m.avg_yield_per_session, m.avg_conductivity, m.avg_scc,
                      m.max_mastitis_risk, m.avg_fat, m.avg_protein
               FROM iot.milk_production_daily m
               LEFT JOIN sd_animal a ON a.id = m.animal_id
               WHERE EXISTS (SELECT FROM sd_farm f WHERE f.id = m.farm_id)""", ID_MASK))


class SdReportDeviceStatus(models.Model):
    _name = "sd.report.device.status"
    _description = "Device status"
    _auto = False
    _order = "status desc, last_seen"
    _rec_name = "device_uid"

    device_uid = fields.Char("Device", readonly=True)
    device_id = fields.Many2one("sd.device", string="Registered device", readonly=True)
    device_type = fields.Char(readonly=True)
    farm_id = fields.Many2one("sd.farm", readonly=True)
    animal_id = fields.Many2one("sd.animal", readonly=True)
    zone_id = fields.Many2one("sd.zone", readonly=True)
    last_seen = fields.Datetime(readonly=True)
    battery_level = fields.Integer("Battery (%)", readonly=True, aggregator="avg")
    signal_strength = fields.Integer(readonly=True, aggregator="avg")
    status = fields.Selection(LIVE_STATUSES, readonly=True)

    def init(self):
        _create_view(self, SQL(
            """SELECT hashtextextended(s.device_uid, 0) & %s AS id,
                      s.device_uid, dv.id AS device_id, s.device_type,
                      s.farm_id, a.id AS animal_id, z.id AS zone_id,
                      s.last_seen AT TIME ZONE 'UTC' AS last_seen, s.battery_level, s.signal_strength, s.status
               FROM iot.device_current_status s
               LEFT JOIN sd_device dv ON dv.device_uid = s.device_uid
               LEFT JOIN sd_animal a ON a.id = s.animal_id
               LEFT JOIN sd_zone z ON z.id = s.zone_id
               WHERE EXISTS (SELECT FROM sd_farm f WHERE f.id = s.farm_id)""", ID_MASK))
