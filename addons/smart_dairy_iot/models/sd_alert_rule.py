import json

from odoo import api, fields, models
from odoo.exceptions import UserError, ValidationError
from odoo.tools import SQL

from .sd_device import DEVICE_TYPES

SEVERITIES = [("info", "Info"), ("warning", "Warning"), ("critical", "Critical")]
SIGNALS = [
    ("value", "Reading value"),
    ("ratio", "Ratio to the animal's own baseline"),
    ("zscore", "Z-score against the rolling baseline"),
    ("average", "Rolling average"),
    ("rate", "Rate of change"),
    ("hour_ratio", "Ratio to the same hours of her previous days"),
    ("hour_zscore", "Z-score against the same hours of her previous days"),
    ("day_ratio", "Day's level against the last weeks' level"),
    ("group_ratio", "Her group's ratio at the same time"),
    ("vs_group", "Her ratio beyond her group's"),
    ("day_vs_group", "Her day's level beyond her group's"),
    ("thi", "Temperature-humidity index (THI)"),
    ("battery", "Battery level"),
    ("signal_strength", "Signal strength"),
    ("missed_intervals", "Missed reporting intervals"),
    ("unchanged_h", "Hours with every reading unchanged (stuck sensor)"),
]
OPERATORS = [(">", ">"), (">=", "≥"), ("<", "<"), ("<=", "≤")]
# The categories of the built-in rules (migration 0007) and of the ingestor's alerts, plus a few more.
CATEGORIES = [
    ("health", "Health"),
    ("mastitis", "Mastitis"),
    ("heat_stress", "Heat stress"),
    ("reproduction", "Reproduction (heat)"),
    ("production", "Milk production"),
    ("feeding", "Feeding / rumination"),
    ("environment", "Environment"),
    ("device", "Device"),
    ("anomaly", "Anomaly"),
    ("other", "Other"),
]


class SdAlertRule(models.Model):
    _name = "sd.alert.rule"
    _description = "Alert rule"
    _inherit = ["sd.farm.rules.mixin"]
    _order = "builtin desc, category, code"

    code = fields.Char(required=True, help="Stable identifier, stored on every alert the rule raises.")
    name = fields.Char(required=True)
    description = fields.Text()
    farm_id = fields.Many2one("sd.farm", ondelete="cascade", index=True, help="Empty: every farm.")
    zone_id = fields.Many2one("sd.zone", ondelete="cascade", domain="[('farm_id', '=', farm_id)]")
    animal_id = fields.Many2one("sd.animal", ondelete="cascade", domain="[('farm_id', '=', farm_id)]")
    device_type = fields.Selection(DEVICE_TYPES, help="Only readings of this kind of device. Empty: any.")
    category = fields.Selection(CATEGORIES, required=True, default="health")
    severity = fields.Selection(SEVERITIES, required=True, default="warning")
    combine = fields.Selection([("and", "All conditions"), ("or", "Any condition")], required=True, default="and")
    condition_ids = fields.One2many("sd.alert.rule.condition", "rule_id", string="Conditions", copy=True)
    duration_s = fields.Integer("Holds for (s)", default=0, help="Raise only once the conditions held this long.")
    suppression_s = fields.Integer("Quiet period (s)", default=3600,
                                   help="After an alert resolves, no new one for the same source within this time.")
    max_per_hour = fields.Integer("Max alerts per hour", default=10)
    auto_resolve = fields.Boolean(default=True, help="Resolve the alert when the conditions no longer hold.")
    builtin = fields.Boolean(readonly=True, help="Shipped with the platform: it can be tuned or archived, not deleted.")
    active = fields.Boolean(default=True)

    _code_unique = models.Constraint("UNIQUE(code)", "Another rule has this code.")
    _durations_positive = models.Constraint(
        "CHECK(duration_s >= 0 AND suppression_s >= 0 AND max_per_hour > 0)",
        "Durations cannot be negative and at least one alert per hour must be allowed.")

    @api.constrains("condition_ids", "active")
    def _check_conditions(self):
        for rule in self:
            if rule.active and not rule.condition_ids:
                raise ValidationError(self.env._("Rule %s needs at least one condition.", rule.code))

    @api.constrains("farm_id", "zone_id", "animal_id")
    def _check_scope_farm(self):
        for rule in self:
            if (rule.zone_id and rule.zone_id.farm_id != rule.farm_id) or (
                    rule.animal_id and rule.animal_id.farm_id != rule.farm_id):
                raise ValidationError(self.env._("Rule %s is limited to a zone or animal of another farm than its own.",
                                                 rule.code))

    def _sd_farm_access_message(self, operation, forbidden):
        if any(not rule.farm_id for rule in forbidden.sudo()):
            return self.env._("Rules for every farm (no farm set) apply to all farms: only administrators create, "
                              "change, archive or delete them. You can manage the rules of your own farms.")
        return super()._sd_farm_access_message(operation, forbidden)

    @api.ondelete(at_uninstall=False)
    def _unlink_except_builtin(self):
        if any(rule.builtin for rule in self):
            raise UserError(self.env._("Built-in rules cannot be deleted: archive them instead."))

    def _conditions_json(self):
        """The conditions as the ingestor reads them: [{"signal", "metric", "op", "value"}]."""
        return json.dumps([{"signal": c.signal, "metric": c.metric or None, "op": c.operator, "value": c.value}
                           for c in self.condition_ids.sorted("sequence")])

    @api.model
    def _import_from_iot(self, builtin_only=False):
        """Create the rules of `iot.alert_rules` that Odoo does not know yet (by code); return them.

        The migrations seed the built-in detectors there; once imported they are edited here and
        pushed back. After install only built-in ones are imported: a rule deleted in Odoo stays in iot,
        inactive, and must not come back.
        """
        known = set(self.with_context(active_test=False).search([]).mapped("code"))
        self.env.cr.execute(SQL(
            """SELECT code, name, farm_id, zone_id, animal_id, device_type, category, severity, combine,
                      conditions, duration_s, suppression_s, max_per_hour, auto_resolve, builtin, active
               FROM iot.alert_rules WHERE NOT (code = ANY(%s)) AND (builtin OR NOT %s) ORDER BY id""",
            list(known), builtin_only))
        vals_list = [self._vals_from_iot(row) for row in self.env.cr.dictfetchall()]
        return self.with_context(active_test=False).create(vals_list) if vals_list else self.browse()

    def _vals_from_iot(self, row):
        def existing(model, record_id):
            return record_id if record_id and self.env[model].browse(record_id).exists() else False

        zone, animal = existing("sd.zone", row["zone_id"]), existing("sd.animal", row["animal_id"])
        # A rule limited to a zone or an animal watches that one's farm, and is a rule of that farm here.
        farm = (self.env["sd.zone"].browse(zone).farm_id.id or self.env["sd.animal"].browse(animal).farm_id.id
                or existing("sd.farm", row["farm_id"]))
        conditions = row["conditions"] if isinstance(row["conditions"], list) else json.loads(row["conditions"])
        valid = dict(SIGNALS), dict(OPERATORS), dict(CATEGORIES), dict(DEVICE_TYPES)
        return {
            "code": row["code"], "name": row["name"],
            "farm_id": farm, "zone_id": zone, "animal_id": animal,
            "device_type": row["device_type"] if row["device_type"] in valid[3] else False,
            "category": row["category"] if row["category"] in valid[2] else "other",
            "severity": row["severity"], "combine": row["combine"],
            "duration_s": row["duration_s"], "suppression_s": row["suppression_s"],
            "max_per_hour": row["max_per_hour"], "auto_resolve": row["auto_resolve"],
            "builtin": row["builtin"], "active": row["active"],
            "condition_ids": [fields.Command.create({
                "sequence": i, "signal": c["signal"] if c["signal"] in valid[0] else "value",
                "metric": c.get("metric") or False, "operator": c["op"] if c["op"] in valid[1] else ">",
                "value": float(c["value"]),
            }) for i, c in enumerate(conditions)],
        }


class SdAlertRuleCondition(models.Model):
    _name = "sd.alert.rule.condition"
    _description = "Condition of an alert rule"
    _inherit = ["sd.farm.rules.mixin"]
    _order = "rule_id, sequence, id"

    rule_id = fields.Many2one("sd.alert.rule", required=True, ondelete="cascade", index=True)
    sequence = fields.Integer(default=10)
    signal = fields.Selection(SIGNALS, required=True, default="value")
    metric = fields.Char(help="Metric name, e.g. temperature_c or activity_index. Empty or * : any metric.")
    operator = fields.Selection(OPERATORS, required=True, default=">")
    value = fields.Float(required=True, digits=(16, 4))

    def _sd_farm_access_message(self, operation, forbidden):
        if any(not condition.rule_id.farm_id for condition in forbidden.sudo()):
            return self.env["sd.alert.rule"]._sd_farm_access_message(operation, forbidden.sudo().rule_id)
        return super()._sd_farm_access_message(operation, forbidden)
