import functools

from odoo import models
from odoo.exceptions import AccessError

OPERATIONS_REFUSED = ("create", "write", "unlink")


class SdFarmRulesMixin(models.AbstractModel):
    """Per-farm record rules that hold for the values a write leaves, not only for those it replaces.

    Odoo checks record rules before a write, on the record as it was, and after a create. Without a
    second look, a user could move a record of their farm into a farm they do not have by writing its
    farm_id (or its barn, whose farm a zone follows). The models with per-farm rules inherit this
    mixin: after a user's write, the rules for writing (security/sd_rules.xml) are checked again on
    the new values, and a refusal says which farms the user has.
    """

    _name = "sd.farm.rules.mixin"
    _description = "Per-farm record rules, checked after writes too"

    def write(self, vals):
        result = super().write(vals)
        # Cheap: the rules' domain is cached and evaluated on the records in memory (none for the superuser).
        self.check_access("write")
        return result

    def _check_access(self, operation):
        result = super()._check_access(operation)
        if (result is None or operation not in OPERATIONS_REFUSED
                or not self.env["ir.model.access"].check(self._name, operation, raise_exception=False)):
            return result  # allowed, a read, or refused by the access rights (Odoo's message says so)
        forbidden = result[0]
        return forbidden, functools.partial(self._sd_farm_access_error, operation, forbidden)

    def _sd_farm_access_error(self, operation, forbidden):
        return AccessError(self._sd_farm_access_message(operation, forbidden))

    def _sd_farm_access_message(self, operation, forbidden):
        """The message of a refusal by the farm rules (`forbidden`: the records refused)."""
        farms = self.env.user.sudo().sd_farm_ids
        names = forbidden[:5].sudo().mapped("display_name")
        return self.env._(
            "%(model)s %(records)s: not on one of your farms (%(farms)s). You can create, change and delete only "
            "the records of your farms, and cannot move them to a farm that is not yours.",
            model=self.env["ir.model"]._get(self._name).name or self._name,
            records=", ".join(str(name) for name in names) + (", ..." if len(forbidden) > 5 else ""),
            farms=", ".join(farms.mapped("display_name")) or self.env._("none"),
        )
