from datetime import timedelta

from odoo import api, fields, models
from odoo.exceptions import ValidationError

ANIMAL_STATUSES = [
    ("lactating", "Lactating"),
    ("dry", "Dry"),
    ("heifer", "Heifer"),
    ("calf", "Calf"),
    ("sold", "Sold"),
    ("dead", "Dead"),
]


class SdAnimal(models.Model):
    _name = "sd.animal"
    _description = "Animal"
    _inherit = ["sd.farm.rules.mixin"]
    _order = "farm_id, ear_tag"
    _rec_names_search = ["ear_tag", "name", "rfid_epc"]

    ear_tag = fields.Char(required=True, index=True,
                          help="The code devices send for this animal, e.g. COW-12345.")
    name = fields.Char()
    farm_id = fields.Many2one("sd.farm", required=True, ondelete="cascade", index=True)
    rfid_epc = fields.Char("RFID EPC", index="btree_not_null")
    breed = fields.Char()
    birth_date = fields.Date()
    lactation_number = fields.Integer(default=0)
    calving_date = fields.Date("Last calving")
    days_in_milk = fields.Integer(compute="_compute_days_in_milk",
                                  help="Days since the last calving, while the cow is lactating.")
    group_name = fields.Char("Group / pen")
    zone_id = fields.Many2one("sd.zone", string="Pen", domain="[('farm_id', '=', farm_id)]", ondelete="set null")
    status = fields.Selection(ANIMAL_STATUSES, default="lactating", required=True)
    active = fields.Boolean(default=True)
    device_ids = fields.One2many("sd.device", "animal_id", string="Devices")
    milk_week_kg = fields.Float("Milk this week (kg)", compute="_compute_milk_week", digits=(16, 1))
    open_alert_count = fields.Integer(compute="_compute_open_alert_count")

    _ear_tag_unique = models.Constraint("UNIQUE(farm_id, ear_tag)", "Another animal of this farm has this ear tag.")
    _rfid_unique = models.Constraint("UNIQUE(rfid_epc)", "Another animal has this RFID tag.")
    _lactation_positive = models.Constraint("CHECK(lactation_number >= 0)", "The lactation number cannot be negative.")

    @api.depends("ear_tag", "name")
    def _compute_display_name(self):
        for animal in self:
            animal.display_name = f"{animal.ear_tag} {animal.name}" if animal.name else animal.ear_tag

    @api.depends("calving_date", "status")
    def _compute_days_in_milk(self):
        today = fields.Date.context_today(self)
        for animal in self:
            lactating = animal.status == "lactating" and animal.calving_date
            animal.days_in_milk = (today - animal.calving_date).days if lactating else 0

    def _compute_milk_week(self):
        since = fields.Date.context_today(self) - timedelta(days=6)
        totals = dict(self.env["sd.report.milk.daily"]._read_group(
            [("animal_id", "in", self.ids), ("date", ">=", since)], ["animal_id"], ["yield_kg:sum"]))
        for animal in self:
            animal.milk_week_kg = totals.get(animal, 0.0)

    def _compute_open_alert_count(self):
        counts = dict(self.env["sd.alert"]._read_group(
            [("animal_id", "in", self.ids), ("status", "!=", "resolved")], ["animal_id"], ["__count"]))
        for animal in self:
            animal.open_alert_count = counts.get(animal, 0)

    @api.constrains("zone_id", "farm_id")
    def _check_zone_farm(self):
        for animal in self:
            if animal.zone_id and animal.zone_id.farm_id != animal.farm_id:
                raise ValidationError(self.env._("The pen of %s is on another farm.", animal.ear_tag))

    @api.constrains("birth_date", "calving_date")
    def _check_dates(self):
        for animal in self:
            if animal.birth_date and animal.calving_date and animal.calving_date < animal.birth_date:
                raise ValidationError(self.env._("%s calved before it was born.", animal.ear_tag))

    def _action_for_animal(self, model, name, context=None):
        self.ensure_one()
        return {
            "type": "ir.actions.act_window",
            "name": name,
            "res_model": model,
            "view_mode": "list,form" if model == "sd.alert" else "list,graph,pivot",
            "domain": [("animal_id", "=", self.id)],
            "context": dict(context or {}, default_animal_id=self.id),
        }

    def action_open_milk(self):
        return self._action_for_animal("sd.report.milk.daily", self.env._("Milk of %s", self.display_name),
                                       {"search_default_filter_last_7_days": 1})

    def action_open_alerts(self):
        return self._action_for_animal("sd.alert", self.env._("Alerts of %s", self.display_name),
                                       {"search_default_filter_not_resolved": 1})

    def action_open_readings(self):
        return self._action_for_animal("sd.report.reading.hourly", self.env._("Readings of %s", self.display_name),
                                       {"search_default_filter_last_24_hours": 1})
