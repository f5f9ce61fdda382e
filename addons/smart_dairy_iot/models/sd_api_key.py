import hashlib
import secrets

from odoo import api, fields, models
from odoo.exceptions import AccessError, UserError, ValidationError

from .iot import API_KEYS, pg_array

SCOPES = {"read_write": ["read", "write"], "read": ["read"]}
# Fields of iot.api_keys: a change reaches the ingestor in the same transaction, not at the next push.
IOT_FIELDS = frozenset({"name", "key_prefix", "key_hash", "farm_ids", "scope", "revoked_at"})
# The key itself and its revocation: set by _generate and action_revoke only.
PROTECTED_FIELDS = frozenset({"key_prefix", "key_hash", "revoked_at"})


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

    @api.model_create_multi
    def create(self, vals_list):
        keys = super().create(vals_list)
        keys._write_to_iot()
        return keys

    def write(self, vals):
        if not self.env.su and (protected := PROTECTED_FIELDS & vals.keys()):
            raise AccessError(self.env._(
                "%(fields)s of an API key cannot be changed: create a new key, or revoke this one.",
                fields=", ".join(sorted(self._fields[name]._description_string(self.env) for name in protected))))
        result = super().write(vals)  # the farm rules are checked on the new farms before iot hears of them
        if IOT_FIELDS & vals.keys():
            self._write_to_iot()
        return result

    @api.model
    def _scopes(self, scope):
        """The ingestor's scopes for a scope of this model."""
        return SCOPES[scope]

    def _iot_rows(self):
        """The keys as rows of iot.api_keys (API_KEYS.columns)."""
        return [(k.key_prefix, k.name, k.key_hash, pg_array(sorted(k.farm_ids.ids)), pg_array(self._scopes(k.scope)),
                 fields.Datetime.to_string(k.revoked_at) if k.revoked_at else None) for k in self.sudo()]

    def _write_to_iot(self):
        """Upsert these keys into iot.api_keys now, in this transaction: a revoked key is refused by the
        ingestor as soon as this commits, without waiting for the registry push."""
        if self:
            self.env.cr.execute(API_KEYS.upsert(self._iot_rows()))

    @api.model
    def _generate(self, name, farms, scope="read_write"):
        """Create a key and return (record, clear key); the clear key is never stored.

        The hash is readable by administrators only, so the record is written as superuser; the user's
        access rights and farm rules are checked on the key created, so a manager makes keys of their own
        farms only.
        """
        self.check_access("create")
        prefix, key = new_key()
        record = self.sudo().create({"name": name, "farm_ids": [fields.Command.set(farms.ids)], "scope": scope,
                                     "key_prefix": prefix, "key_hash": hash_key(key)}).sudo(self.env.su)
        record.check_access("create")  # as Odoo's create does: a refusal rolls the transaction back, iot too
        return record, key

    def action_revoke(self):
        self.check_access("write")
        self.filtered(lambda k: not k.revoked_at).sudo().write({"revoked_at": fields.Datetime.now()})
        return True
