from odoo import fields, models


class SdApiKeyWizard(models.TransientModel):
    _name = "sd.api.key.wizard"
    _description = "New ingestor API key"

    name = fields.Char(required=True, help="What will use the key, e.g. 'Parlour gateway'.")
    farm_ids = fields.Many2many("sd.farm", string="Farms", required=True)
    scope = fields.Selection([("read_write", "Send and read data"), ("read", "Read data only")],
                             default="read_write", required=True)

    def action_generate(self):
        """Create the key and show it once, in a notification that stays until closed: only its hash is kept."""
        self.ensure_one()
        record, key = self.env["sd.api.key"]._generate(self.name, self.farm_ids, self.scope)
        return {
            "type": "ir.actions.client",
            "tag": "display_notification",
            "params": {
                "title": self.env._("API key %s created", record.name),
                "message": self.env._("Copy it now, it will not be shown again: %s", key),
                "type": "warning",
                "sticky": True,
                "next": {"type": "ir.actions.act_window_close"},
            },
        }
