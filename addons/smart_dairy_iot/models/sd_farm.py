from odoo import api, fields, models
from odoo.addons.base.models.res_partner import _tz_get
from odoo.exceptions import UserError


class SdFarm(models.Model):
    _name = "sd.farm"
    _description = "Dairy farm"
    _inherit = ["sd.farm.rules.mixin"]
    _order = "name"

    name = fields.Char(required=True)
    code = fields.Char(help="Short code used on device labels, e.g. FARM01.")
    timezone = fields.Selection(_tz_get, default="UTC", required=True)
    active = fields.Boolean(default=True)
    barn_ids = fields.One2many("sd.barn", "farm_id", string="Barns")
    zone_ids = fields.One2many("sd.zone", "farm_id", string="Zones")
    animal_ids = fields.One2many("sd.animal", "farm_id", string="Animals")
    device_ids = fields.One2many("sd.device", "farm_id", string="Devices")
    animal_count = fields.Integer(compute="_compute_counts")
    device_count = fields.Integer(compute="_compute_counts")
    open_alert_count = fields.Integer(compute="_compute_counts")

    _code_unique = models.Constraint("UNIQUE(code)", "Another farm already uses this code.")

    def _compute_counts(self):
        counts = {}
        for model, field in (("sd.animal", "animal_count"), ("sd.device", "device_count")):
            counts[field] = dict(self.env[model]._read_group([("farm_id", "in", self.ids)], ["farm_id"], ["__count"]))
        alerts = dict(self.env["sd.alert"]._read_group(
            [("farm_id", "in", self.ids), ("status", "!=", "resolved")], ["farm_id"], ["__count"]))
        for farm in self:
            farm.animal_count = counts["animal_count"].get(farm, 0)
            farm.device_count = counts["device_count"].get(farm, 0)
            farm.open_alert_count = alerts.get(farm, 0)

    @api.model_create_multi
    def create(self, vals_list):
        farms = super().create(vals_list)
        # The creator must see the farm they just made: record rules show a user only their farms.
        if not self.env.su:
            self.env.user.sudo().sd_farm_ids = [fields.Command.link(f.id) for f in farms]
        return farms

    @api.ondelete(at_uninstall=False)
    def _unlink_except_api_keys(self):
        # The ingestor requires every key to name a farm; a key left without one could not be pushed.
        keys = self.env["sd.api.key"].sudo().search([("farm_ids", "in", self.ids)])
        if keys:
            raise UserError(self.env._("Farms used by API keys (%s) cannot be deleted: archive them instead.",
                                       ", ".join(keys.mapped("name"))))

    def _action_open(self, model, name):
        return {
            "type": "ir.actions.act_window",
            "name": name,
            "res_model": model,
            "view_mode": "list,form",
            "domain": [("farm_id", "in", self.ids)],
            "context": {"default_farm_id": self[:1].id},
        }

    def action_open_animals(self):
        return self._action_open("sd.animal", self.env._("Animals"))

    def action_open_devices(self):
        return self._action_open("sd.device", self.env._("Devices"))

    def action_open_alerts(self):
        action = self._action_open("sd.alert", self.env._("Alerts"))
        action["context"]["search_default_filter_not_resolved"] = 1
        return action

    @api.model
    def action_push_now(self):
        return self.env["sd.iot.sync"].action_push_now()
