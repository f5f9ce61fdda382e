from odoo import api, fields, models
from odoo.exceptions import ValidationError
from odoo.tools import SQL

DEVICE_TYPES = [
    ("collar", "Activity collar"),
    ("env_sensor", "Barn climate sensor"),
    ("milk_meter", "Milk meter"),
    ("rfid_reader", "RFID gate reader"),
    ("bolus", "Rumen bolus"),
    ("water_meter", "Water meter"),
    ("other", "Other"),
]
LIVE_STATUSES = [("online", "Online"), ("degraded", "Late"), ("offline", "Offline")]


class SdDevice(models.Model):
    _name = "sd.device"
    _description = "IoT device"
    _inherit = ["sd.farm.rules.mixin"]
    _order = "farm_id, device_uid"
    _rec_name = "device_uid"
    _rec_names_search = ["device_uid", "name"]

    device_uid = fields.Char("Device ID", required=True, index=True,
                             help="Serial or identifier the device sends, e.g. ENV-FARM01-BARN01-Z01.")
    name = fields.Char("Description")
    device_type = fields.Selection(DEVICE_TYPES, required=True, default="collar")
    farm_id = fields.Many2one("sd.farm", required=True, ondelete="cascade", index=True)
    animal_id = fields.Many2one("sd.animal", domain="[('farm_id', '=', farm_id)]", ondelete="set null", index=True)
    zone_id = fields.Many2one("sd.zone", domain="[('farm_id', '=', farm_id)]", ondelete="set null", index=True)
    calibration_offset = fields.Float(default=0.0, help="Added to every reading after the gain.")
    calibration_gain = fields.Float(default=1.0, help="Every reading is multiplied by it.")
    expected_interval_s = fields.Integer("Reports every (s)", default=300,
                                         help="A device silent for 1.5 times this is late, for 4 times offline.")
    firmware = fields.Char()
    status = fields.Selection([("active", "In service"), ("maintenance", "In maintenance"), ("retired", "Retired")],
                              default="active", required=True)
    active = fields.Boolean(default=True)
    # Read live from iot.device_current_status, which the ingestor keeps current.
    battery_level = fields.Integer("Battery (%)", compute="_compute_live")
    signal_strength = fields.Integer(compute="_compute_live")
    last_seen = fields.Datetime(compute="_compute_live")
    live_status = fields.Selection(LIVE_STATUSES, string="Connection", compute="_compute_live",
                                   search="_search_live_status")
    open_alert_count = fields.Integer(compute="_compute_open_alert_count")

    _device_uid_unique = models.Constraint("UNIQUE(device_uid)", "Another device has this device ID.")
    _interval_positive = models.Constraint("CHECK(expected_interval_s > 0)", "The reporting interval must be positive.")

    def _compute_live(self):
        self.env.cr.execute(SQL(
            """SELECT device_uid, last_seen AT TIME ZONE 'UTC', battery_level, signal_strength, status
               FROM iot.device_current_status WHERE device_uid = ANY(%s)""", self.mapped("device_uid")))
        live = {row[0]: row[1:] for row in self.env.cr.fetchall()}
        for device in self:
            last_seen, battery, signal, status = live.get(device.device_uid, (False, False, False, "offline"))
            device.last_seen = last_seen
            device.battery_level = battery
            device.signal_strength = signal
            device.live_status = status

    def _search_live_status(self, operator, value):
        if operator not in ("=", "in"):
            return NotImplemented
        statuses = [value] if operator == "=" else list(value)
        self.env.cr.execute(SQL("SELECT device_uid FROM iot.device_current_status WHERE status = ANY(%s)", statuses))
        uids = [uid for (uid,) in self.env.cr.fetchall()]
        return [("device_uid", "in", uids)]

    def _compute_open_alert_count(self):
        counts = dict(self.env["sd.alert"]._read_group(
            [("device_id", "in", self.ids), ("status", "!=", "resolved")], ["device_id"], ["__count"]))
        for device in self:
            device.open_alert_count = counts.get(device, 0)

    @api.constrains("farm_id", "animal_id", "zone_id")
    def _check_links_farm(self):
        for device in self:
            if (device.animal_id and device.animal_id.farm_id != device.farm_id) or (
                    device.zone_id and device.zone_id.farm_id != device.farm_id):
                raise ValidationError(self.env._("Device %s is linked to an animal or zone of another farm.",
                                                 device.device_uid))

    @api.constrains("calibration_gain")
    def _check_gain(self):
        if any(device.calibration_gain == 0 for device in self):
            raise ValidationError(self.env._("A calibration gain of 0 would erase every reading."))

    def action_open_alerts(self):
        self.ensure_one()
        return {
            "type": "ir.actions.act_window",
            "name": self.env._("Alerts of %s", self.device_uid),
            "res_model": "sd.alert",
            "view_mode": "list,form",
            "domain": [("device_id", "=", self.id)],
            "context": {"search_default_filter_not_resolved": 1},
        }

    def action_open_readings(self):
        self.ensure_one()
        return {
            "type": "ir.actions.act_window",
            "name": self.env._("Readings of %s", self.device_uid),
            "res_model": "sd.report.reading.hourly",
            "view_mode": "list,graph,pivot",
            "domain": [("device_uid", "=", self.device_uid)],
            "context": {"search_default_filter_last_24_hours": 1},
        }
