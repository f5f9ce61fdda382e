"""The test world: two farms (A and B) with barns, zones, animals and devices, a user and a manager of
farm A. Every test runs in one transaction that is rolled back, `iot` rows included."""

from datetime import timedelta

from odoo import fields
from odoo.sql_db import db_connect
from odoo.tests import TransactionCase, new_test_user
from odoo.tools import SQL


class SmartDairyCase(TransactionCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.env = cls.env(context=dict(cls.env.context, tracking_disable=True))
        cls.sync = cls.env["sd.iot.sync"]
        cls.farm_a = cls._make_farm("Farm A", "FA", cows=4)
        cls.farm_b = cls._make_farm("Farm B", "FB", cows=3)
        cls.user_a = new_test_user(cls.env, login="sd_user_a", groups="smart_dairy_iot.group_iot_user",
                                   sd_farm_ids=[fields.Command.set(cls.farm_a.ids)])
        cls.manager_a = new_test_user(cls.env, login="sd_manager_a", groups="smart_dairy_iot.group_iot_manager",
                                      sd_farm_ids=[fields.Command.set(cls.farm_a.ids)])

    @classmethod
    def _make_farm(cls, name, code, cows):
        farm = cls.env["sd.farm"].create({"name": name, "code": code})
        barn = cls.env["sd.barn"].create({"name": f"{code} barn", "farm_id": farm.id})
        zones = cls.env["sd.zone"].create([{"name": f"{code} pen {i}", "barn_id": barn.id} for i in (1, 2)])
        animals = cls.env["sd.animal"].create([{
            "ear_tag": f"COW-{code}-{i}", "farm_id": farm.id, "rfid_epc": f"E200{code}{i:08d}",
            "calving_date": fields.Date.today() - timedelta(days=30 + i), "lactation_number": 2,
        } for i in range(cows)])
        cls.env["sd.device"].create([{
            "device_uid": f"COL-{code}-{i}", "device_type": "collar", "farm_id": farm.id, "animal_id": a.id,
        } for i, a in enumerate(animals)] + [{
            "device_uid": f"ENV-{code}-{i}", "device_type": "env_sensor", "farm_id": farm.id, "zone_id": z.id,
        } for i, z in enumerate(zones)])
        return farm

    # ----- helpers -----

    def iot(self, query, *args):
        """Rows of a query (text with %s parameters, or SQL) on the test transaction."""
        self.env.flush_all()
        self.env.cr.execute(query if isinstance(query, SQL) else SQL(query, *args))
        return self.env.cr.fetchall()

    def iot_one(self, query, *args):
        rows = self.iot(query, *args)
        return rows[0] if rows else None

    def other_connection(self):
        """A cursor on a connection of its own: a second Odoo worker, for lock contention."""
        return db_connect(self.env.cr.dbname).cursor()
