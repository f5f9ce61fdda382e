from odoo import api, fields, models
from odoo.exceptions import ValidationError

ZONE_TYPES = [
    ("pen", "Pen"),
    ("feeding", "Feeding area"),
    ("resting", "Resting area"),
    ("parlor", "Milking parlour"),
    ("calving", "Calving area"),
    ("pasture", "Pasture"),
    ("other", "Other"),
]


class SdZone(models.Model):
    _name = "sd.zone"
    _description = "Zone of a barn or farm"
    _inherit = ["sd.farm.rules.mixin"]
    _order = "farm_id, barn_id, name"

    name = fields.Char(required=True)
    farm_id = fields.Many2one("sd.farm", required=True, ondelete="cascade", index=True,
                              compute="_compute_farm_id", store=True, readonly=False, precompute=True)
    barn_id = fields.Many2one("sd.barn", ondelete="set null", index=True, domain="[('farm_id', '=', farm_id)]")
    zone_type = fields.Selection(ZONE_TYPES, default="pen")
    active = fields.Boolean(default=True)
    device_ids = fields.One2many("sd.device", "zone_id", string="Devices")

    @api.depends("barn_id")
    def _compute_farm_id(self):
        for zone in self.filtered("barn_id"):
            zone.farm_id = zone.barn_id.farm_id

    @api.constrains("barn_id", "farm_id")
    def _check_barn_farm(self):
        for zone in self:
            if zone.barn_id and zone.barn_id.farm_id != zone.farm_id:
                raise ValidationError(self.env._("Zone %s is in a barn of another farm.", zone.name))

    @api.depends("name", "barn_id.name")
    def _compute_display_name(self):
        for zone in self:
            zone.display_name = f"{zone.barn_id.name} / {zone.name}" if zone.barn_id else zone.name
