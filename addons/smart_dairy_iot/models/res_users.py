from odoo import fields, models


class ResUsers(models.Model):
    _inherit = "res.users"

    sd_farm_ids = fields.Many2many("sd.farm", "sd_farm_res_users_rel", "user_id", "farm_id", string="Dairy farms",
                                   help="The farms whose herd, devices and alerts this user sees.")

    def _get_invalidation_fields(self):
        # The farm record rules read the user's farms: their cached domains must follow a change.
        return super()._get_invalidation_fields() | {"sd_farm_ids"}
