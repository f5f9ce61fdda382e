import hashlib
import secrets

from odoo import api, fields, models
from odoo.exceptions import UserError, ValidationError

SCOPES = {"read_write": ["read", "write"], "read": ["read"]}


def hash_key(key):
    """The SHA-256 hex of the whole key, as the ingestor's `apikeys.hash_key` stores it."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key():
    """(prefix, key) in the ingestor's format `sdk_<prefix>_<secret>`: 190 random bits after the prefix."""
    prefix = secrets.token_hex(4)
    return prefix, f"sdk_{prefix}_{secrets.token_urlsafe(24)}"


class SdApiKey(models.Model):
    _name = "sd.api.key"
    _description = "Ingestor API key"
    _inherit = ["sd.farm.rules.mixin"]
    _order = "create_date desc, id desc"

    name = fields.Char(required=True, help="What uses the key, e.g. 'Parlour gateway'.")
    key_prefix = fields.Char(required=True, readonly=True, index=True,
                             help="The clear part of the key (sdk_<prefix>_...), to recognise it.")
    key_hash = fields.Char(required=True, readonly=True, groups="base.group_system")
    farm_ids = fields.Many2many("sd.farm", string="Farms", required=True,
                                help="The key can only send and read data of these farms.")
    scope = fields.Selection([("read_write", "Send and read data"), ("read", "Read data only")],
                             default="read_write", required=True)
    revoked_at = fields.Datetime(readonly=True)
    state = fields.Selection([("active", "Active"), ("revoked", "Revoked")], compute="_compute_state", store=True)

    _prefix_unique = models.Constraint("UNIQUE(key_prefix)", "Key prefixes must be unique.")

    @api.depends("revoked_at")
    def _compute_state(self):
        for key in self:
            key.state = "revoked" if key.revoked_at else "active"

    @api.constrains("farm_ids")
    def _check_farm_ids(self):
        if any(not key.farm_ids for key in self):
            raise ValidationError(self.env._("An API key needs at least one farm."))

    @api.ondelete(at_uninstall=False)
    def _unlink_except_issued(self):
        # The ingestor may have authenticated devices with it: a revoked key stays listed, with its date.
        raise UserError(self.env._("API keys cannot be deleted: revoke them instead."))

    @api.model
    def _scopes(self, scope):
        """The ingestor's scopes for a scope of this model."""
        return SCOPES[scope]

    @api.model
    def _generate(self, name, farms, scope="read_write"):
        """Create a key and return (record, clear key); the clear key is never stored."""
        prefix, key = new_key()
        record = self.create({"name": name, "farm_ids": [fields.Command.set(farms.ids)], "scope": scope,
                              "key_prefix": prefix, "key_hash": hash_key(key)})
        return record, key

    def action_revoke(self):
        self.filtered(lambda k: not k.revoked_at).write({"revoked_at": fields.Datetime.now()})
