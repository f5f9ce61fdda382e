from odoo import fields, models


class SdBarn(models.Model):
    _name = "sd.barn"
    _description = "Barn"
    _inherit = ["sd.farm.rules.mixin"]
    _order = "farm_id, name"

    name = fields.Char(required=True)
    farm_id = fields.Many2one("sd.farm", required=True, ondelete="cascade", index=True)
    zone_ids = fields.One2many("sd.zone", "barn_id", string="Zones")
    active = fields.Boolean(default=True)
