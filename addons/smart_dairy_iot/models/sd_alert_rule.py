import json
import logging

from markupsafe import Markup
from odoo import api, fields, models
from odoo.exceptions import UserError, ValidationError
from odoo.tools import SQL, float_round

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
VALUE_DIGITS = (16, 4)

_logger = logging.getLogger(__name__)


def canonical(definition):
    """A definition (see SdAlertRule._definition) as the text shipped_definition holds and compares."""
    return json.dumps(definition, sort_keys=True)


class SdAlertRule(models.Model):
    _name = "sd.alert.rule"
    _description = "Alert rule"
    _inherit = ["mail.thread", "sd.farm.rules.mixin"]
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
    # What the ingestor's migrations shipped for a built-in rule, when Odoo last took or saw it: while the
    # rule still equals it (not tuned here), Odoo takes the next definition shipped (_follow_shipped).
    shipped_definition = fields.Text(readonly=True, copy=False, groups="base.group_system")

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

    def _conditions(self):
        """The conditions as the ingestor reads them: [{"signal", "metric", "op", "value"}]."""
        return [{"signal": c.signal, "metric": c.metric or None, "op": c.operator, "value": c.value}
                for c in self.condition_ids.sorted("sequence")]

    def _conditions_json(self):
        return json.dumps(self._conditions())

    def _definition(self):
        """What the rule has the ingestor do: the columns pushed to iot but the code, scope, builtin and active."""
        self.ensure_one()
        return {"name": self.name, "device_type": self.device_type or None, "category": self.category,
                "severity": self.severity, "combine": self.combine, "conditions": self._conditions(),
                "duration_s": self.duration_s, "suppression_s": self.suppression_s,
                "max_per_hour": self.max_per_hour, "auto_resolve": self.auto_resolve}

    @api.model
    def _import_from_iot(self, builtin_only=False):
        """Create the rules of `iot.alert_rules` that Odoo does not know yet (by code); return them.

        The migrations seed the built-in detectors there; once imported they are edited here and
        pushed back. After install only built-in ones are imported: a rule deleted in Odoo stays in iot,
        inactive, and must not come back. Built-in rules Odoo knows follow what later migrations ship
        there (_follow_shipped).
        """
        rules = self.with_context(active_test=False).search([])
        by_code = {rule.code: rule for rule in rules}
        self.env.cr.execute(SQL(
            """SELECT code, name, farm_id, zone_id, animal_id, device_type, category, severity, combine,
                      conditions, duration_s, suppression_s, max_per_hour, auto_resolve, builtin, active
               FROM iot.alert_rules WHERE builtin OR NOT %s ORDER BY id""", builtin_only))
        rows = self.env.cr.dictfetchall()
        for row in rows:
            rule = by_code.get(row["code"])
            if rule and rule.builtin and row["builtin"]:
                rule._follow_shipped(row)
        vals_list = [self._vals_from_iot(row) for row in rows if row["code"] not in by_code]
        return self.with_context(active_test=False).create(vals_list) if vals_list else self.browse()

    def _follow_shipped(self, row):
        """Take iot's definition of this built-in rule when a migration shipped a new one there.

        iot's row holds what Odoo pushed last, what a migration shipped, or (briefly) the definition Odoo
        already took. A new definition is taken when the rule still equals the one it last took: nobody
        tuned it here. A tuned rule is kept, and pushed over iot's row as before (the write of
        shipped_definition makes even an incremental push send it); its chatter says what was shipped.
        """
        self.ensure_one()
        definition, ours = self._definition_from_iot(row), self._definition()
        shipped, own = canonical(definition), canonical(ours)
        if shipped in (own, self.shipped_definition):
            return
        changes = Markup().join(Markup("<li>%s: %s</li>") % (
            self._fields["condition_ids" if key == "conditions" else key]._description_string(self.env),
            self._describe(key, value, definition["combine"]),
        ) for key, value in definition.items() if value != ours[key])
        tuned = own != self.shipped_definition
        if not tuned:
            self.write({**self._vals_from_definition(definition, replace=True), "shipped_definition": shipped})
            message = self.env._("This built-in rule now follows the definition shipped with the platform:")
        else:
            self.shipped_definition = shipped
            message = self.env._("A newer definition of this built-in rule was shipped with the platform. This "
                                 "rule was tuned here, so the tuned version stays in force; to adopt the new "
                                 "definition, change the rule to:")
        self.message_post(body=Markup("<p>%s</p><ul>%s</ul>") % (message, changes), subtype_xmlid="mail.mt_note")
        _logger.info("built-in alert rule %s: %s", self.code,
                     "tuned here, kept; new shipped definition noted" if tuned else "took the new shipped definition")

    def _describe(self, key, value, combine):
        """A definition's value as a farm manager reads it."""
        if key == "conditions":
            signals = dict(self.env["sd.alert.rule.condition"]._fields["signal"]._description_selection(self.env))
            return f" {combine} ".join(
                " ".join(filter(None, (signals[c["signal"]], c["metric"] and f"({c['metric']})", c["op"],
                                       f"{c['value']:g}"))) for c in value)
        if self._fields[key].type == "selection":
            return dict(self._fields[key]._description_selection(self.env)).get(value, value or "-")
        return str(value)

    @api.model
    def _definition_from_iot(self, row):
        """The definition of an `iot.alert_rules` row as Odoo holds it (values it does not know replaced)."""
        conditions = row["conditions"] if isinstance(row["conditions"], list) else json.loads(row["conditions"])
        valid = dict(SIGNALS), dict(OPERATORS), dict(CATEGORIES), dict(DEVICE_TYPES)
        return {
            "name": row["name"],
            "device_type": row["device_type"] if row["device_type"] in valid[3] else None,
            "category": row["category"] if row["category"] in valid[2] else "other",
            "severity": row["severity"], "combine": row["combine"],
            "conditions": [{
                "signal": c["signal"] if c["signal"] in valid[0] else "value", "metric": c.get("metric") or None,
                "op": c["op"] if c["op"] in valid[1] else ">",
                "value": float_round(float(c["value"]), precision_digits=VALUE_DIGITS[1]),
            } for c in conditions],
            "duration_s": row["duration_s"], "suppression_s": row["suppression_s"],
            "max_per_hour": row["max_per_hour"], "auto_resolve": row["auto_resolve"],
        }

    @api.model
    def _vals_from_definition(self, definition, replace=False):
        """Values that give a rule `definition`; `replace`: instead of its current conditions."""
        vals = {**definition, "device_type": definition["device_type"] or False}
        vals["condition_ids"] = ([fields.Command.clear()] if replace else []) + [fields.Command.create({
            "sequence": i, "signal": c["signal"], "metric": c["metric"] or False, "operator": c["op"],
            "value": c["value"],
        }) for i, c in enumerate(vals.pop("conditions"))]
        return vals

    def _vals_from_iot(self, row):
        def existing(model, record_id):
            return record_id if record_id and self.env[model].browse(record_id).exists() else False

        zone, animal = existing("sd.zone", row["zone_id"]), existing("sd.animal", row["animal_id"])
        # A rule limited to a zone or an animal watches that one's farm, and is a rule of that farm here.
        farm = (self.env["sd.zone"].browse(zone).farm_id.id or self.env["sd.animal"].browse(animal).farm_id.id
                or existing("sd.farm", row["farm_id"]))
        definition = self._definition_from_iot(row)
        return {
            **self._vals_from_definition(definition),
            "code": row["code"], "farm_id": farm, "zone_id": zone, "animal_id": animal,
            "builtin": row["builtin"], "active": row["active"],
            "shipped_definition": canonical(definition) if row["builtin"] else False,
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
    value = fields.Float(required=True, digits=VALUE_DIGITS)

    def _sd_farm_access_message(self, operation, forbidden):
        if any(not condition.rule_id.farm_id for condition in forbidden.sudo()):
            return self.env["sd.alert.rule"]._sd_farm_access_message(operation, forbidden.sudo().rule_id)
        return super()._sd_farm_access_message(operation, forbidden)
