from odoo import api, fields, models
from odoo.exceptions import AccessError
from odoo.tools import SQL

from .iot import column_exists
from .sd_alert_rule import CATEGORIES, SEVERITIES

ALERT_STATUSES = [("open", "Open"), ("acknowledged", "Acknowledged"), ("resolved", "Resolved")]
# What an alert is, where it comes from and where it stands: set by the pull from iot.alerts and by the
# Acknowledge and Resolve actions, never written by a user (the assignee, chatter and activities are).
PROTECTED_FIELDS = frozenset({
    "alert_id", "time", "rule_code", "rule_id", "farm_id", "zone_id", "animal_id", "device_id", "severity",
    "category", "source_type", "source_id", "message", "details", "status", "acknowledged_by_id",
    "acknowledged_at", "resolved_at",
})


class SdAlert(models.Model):
    _name = "sd.alert"
    _description = "Herd or device alert"
    _inherit = ["mail.thread", "mail.activity.mixin", "sd.farm.rules.mixin"]
    _order = "time desc, id desc"
    _rec_name = "message"

    alert_id = fields.Char("Alert ID", required=True, readonly=True, index=True, copy=False)
    time = fields.Datetime("Raised at", required=True, readonly=True, index=True)
    rule_code = fields.Char(readonly=True)
    rule_id = fields.Many2one("sd.alert.rule", compute="_compute_rule_id", store=True, index=True)
    farm_id = fields.Many2one("sd.farm", readonly=True, index=True, ondelete="cascade")
    zone_id = fields.Many2one("sd.zone", readonly=True, ondelete="set null")
    animal_id = fields.Many2one("sd.animal", readonly=True, index=True, ondelete="set null")
    device_id = fields.Many2one("sd.device", readonly=True, index=True, ondelete="set null")
    severity = fields.Selection(SEVERITIES, required=True, readonly=True)
    category = fields.Selection(CATEGORIES, readonly=True)
    source_type = fields.Char(readonly=True)
    source_id = fields.Char(readonly=True)
    message = fields.Char(required=True, readonly=True)
    details = fields.Json("Raw details", readonly=True)
    status = fields.Selection(ALERT_STATUSES, default="open", required=True, readonly=True, tracking=True, index=True)
    user_id = fields.Many2one("res.users", string="Assigned to", tracking=True)
    acknowledged_by_id = fields.Many2one("res.users", readonly=True)
    acknowledged_at = fields.Datetime(readonly=True)
    resolved_at = fields.Datetime(readonly=True)
    details_text = fields.Text("Details", compute="_compute_details_text")

    _alert_id_unique = models.Constraint("UNIQUE(alert_id)", "This alert was already pulled.")

    @api.depends("rule_code")
    def _compute_rule_id(self):
        rules = self.env["sd.alert.rule"].with_context(active_test=False).search(
            [("code", "in", list(set(self.mapped("rule_code"))))])
        by_code = {rule.code: rule for rule in rules}
        for alert in self:
            alert.rule_id = by_code.get(alert.rule_code, False)

    def _compute_details_text(self):
        for alert in self:
            details = alert.details or {}
            alert.details_text = "\n".join(f"{key}: {value}" for key, value in sorted(details.items())) \
                if isinstance(details, dict) else str(details)

    def write(self, vals):
        if not self.env.su and (protected := PROTECTED_FIELDS & vals.keys()):
            raise AccessError(self.env._(
                "%(fields)s of an alert come from the ingestor and cannot be changed: acknowledge or resolve the "
                "alert with its buttons.",
                fields=", ".join(sorted(self._fields[name]._description_string(self.env) for name in protected))))
        return super().write(vals)

    def action_acknowledge(self):
        self.check_access("write")  # alerts of the user's farms only
        todo = self.filtered(lambda a: a.status == "open")
        # As superuser (the status is not writable by users); env.uid stays the user, who is tracked as author.
        todo.sudo().write({"status": "acknowledged", "acknowledged_by_id": self.env.uid,
                           "acknowledged_at": fields.Datetime.now()})
        todo._write_back_status("acknowledged")
        return True

    def action_resolve(self):
        self.check_access("write")
        todo = self.filtered(lambda a: a.status != "resolved")
        todo.sudo().write({"status": "resolved", "resolved_at": fields.Datetime.now()})
        todo._write_back_status("resolved")
        return True

    def _write_back_status(self, status):
        """Tell the ingestor: it stops re-raising a resolved episode and the dashboard sees it at once."""
        if not self:
            return
        cr = self.env.cr
        resolved_at = SQL("")
        # Migration 0007 adds iot.alerts.resolved_at; older schemas only have the status.
        if status == "resolved" and column_exists(cr, "alerts", "resolved_at"):
            resolved_at = SQL(", resolved_at = coalesce(resolved_at, now())")
        cr.execute(SQL("UPDATE iot.alerts SET status = %s, updated_at = now()%s "
                       "WHERE alert_id = ANY(%s) AND status IS DISTINCT FROM %s",
                       status, resolved_at, self.mapped("alert_id"), status))

    @api.model
    def _upsert_from_iot(self, rows):
        """Create or update alerts from rows of iot.alerts (dicts), matching by alert_id."""
        alerts = self.with_context(mail_create_nolog=True, mail_notrack=True)
        existing = {a.alert_id: a for a in self.search([("alert_id", "in", [r["alert_id"] for r in rows])])}
        refs = self._iot_references(rows)
        new = {}
        for row in rows:
            alert = existing.get(row["alert_id"])
            if alert:
                alert._apply_iot_status(row["status"])
            else:
                new[row["alert_id"]] = self._vals_from_iot(row, refs)  # a page may hold an alert twice
        return alerts.create(list(new.values()))

    def _apply_iot_status(self, status):
        # Status changes made by the ingestor (auto-resolve) are tracked in the chatter.
        if self.status != status:
            vals = {"status": status}
            if status == "resolved" and not self.resolved_at:
                vals["resolved_at"] = fields.Datetime.now()
            self.write(vals)

    @api.model
    def _iot_references(self, rows):
        """The Odoo records that rows refer to, by id (farm, zone, animal) or device uid, that exist."""
        def existing(model, ids):
            return set(self.env[model].with_context(active_test=False).browse(
                {i for i in ids if i}).exists().ids)

        uids = {r["source_id"] for r in rows if r["source_type"] == "device"}
        devices = self.env["sd.device"].with_context(active_test=False).search([("device_uid", "in", list(uids))])
        return {
            "farm": existing("sd.farm", (r["farm_id"] for r in rows)),
            "zone": existing("sd.zone", (r["zone_id"] for r in rows)),
            "animal": existing("sd.animal", (r["animal_id"] for r in rows)),
            "device": {d.device_uid: d.id for d in devices},
        }

    @api.model
    def _vals_from_iot(self, row, refs):
        category = row["category"] if row["category"] in dict(CATEGORIES) else "other"
        device = refs["device"].get(row["source_id"]) if row["source_type"] == "device" else False
        return {
            "alert_id": row["alert_id"], "time": row["time"], "rule_code": row["rule_code"],
            "farm_id": row["farm_id"] if row["farm_id"] in refs["farm"] else False,
            "zone_id": row["zone_id"] if row["zone_id"] in refs["zone"] else False,
            "animal_id": row["animal_id"] if row["animal_id"] in refs["animal"] else False,
            "device_id": device or False, "category": category,
            "severity": row["severity"] if row["severity"] in dict(SEVERITIES) else "warning",
            "source_type": row["source_type"], "source_id": row["source_id"], "message": row["message"],
            "details": row["details"], "status": row["status"],
            "resolved_at": fields.Datetime.now() if row["status"] == "resolved" else False,
        }

    @api.model
    def action_pull_now(self):
        return self.env["sd.iot.sync"].action_pull_now()
