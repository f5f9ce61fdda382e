import hashlib

from odoo import fields
from odoo.exceptions import AccessError, UserError
from odoo.tests import tagged
from odoo.tools import SQL

from ..models.iot import PUSH_LOCK
from ..models.iot_sync import PUSH_OVERLAP, PUSH_WATERMARK
from .common import SmartDairyCase


@tagged("post_install", "-at_install")
class TestRegistryPush(SmartDairyCase):
    def push(self, full=False):
        changed = self.sync._push_registry(full=full)
        self.assertIsNotNone(changed, "the push ran")
        return changed

    def test_push_writes_every_table_with_odoo_ids(self):
        self.push()
        farm = self.farm_a
        self.assertEqual(self.iot_one("SELECT name, code, active FROM iot.farms WHERE id = %s", farm.id),
                         ("Farm A", "FA", True))
        zone = farm.zone_ids[0]
        self.assertEqual(self.iot_one("SELECT farm_id, barn_id, barn_name, name FROM iot.zones WHERE id = %s", zone.id),
                         (farm.id, zone.barn_id.id, "FA barn", zone.name))
        animal = farm.animal_ids[0]
        self.assertEqual(
            self.iot_one("SELECT id, rfid_epc, lactation_number, calving_date FROM iot.animals "
                         "WHERE farm_id = %s AND code = %s", farm.id, animal.ear_tag),
            (animal.id, animal.rfid_epc, 2, animal.calving_date))
        device = farm.device_ids.filtered("animal_id")[0]
        self.assertEqual(
            self.iot_one("SELECT farm_id, device_type, animal_id, zone_id, calibration_gain, expected_interval_s "
                         "FROM iot.devices WHERE device_uid = %s", device.device_uid),
            (farm.id, "collar", device.animal_id.id, None, 1.0, 300))
        counts = self.iot_one(
            "SELECT (SELECT count(*) FROM iot.animals WHERE farm_id = ANY(%s)), "
            "(SELECT count(*) FROM iot.devices WHERE farm_id = ANY(%s))",
            (self.farm_a | self.farm_b).ids, (self.farm_a | self.farm_b).ids)
        self.assertEqual(counts, (7, 11))

    def test_second_push_changes_nothing(self):
        first = self.push()
        self.assertGreater(sum(first.values()), 0)
        self.assertEqual(sum(self.push().values()), 0, "incremental push of unchanged records")
        self.assertEqual(sum(self.push(full=True).values()), 0, "full push of unchanged records")

    def test_imported_rules_push_back_unchanged(self):
        # Odoo's copy of the seeded rules is exact: pushing it rewrites no rule.
        self.assertEqual(self.push(full=True)["alert_rules"], 0)

    def test_incremental_push_sends_only_changes(self):
        self.push()
        # Everything was written in this test's transaction: age it so only the next edit is recent.
        for table in ("sd_farm", "sd_barn", "sd_zone", "sd_animal", "sd_device", "sd_alert_rule",
                      "sd_alert_rule_condition", "sd_api_key"):
            self.env.cr.execute(SQL("UPDATE %s SET write_date = write_date - interval '1 day'",
                                    SQL.identifier(table)))
        self.env.invalidate_all()
        animal = self.farm_a.animal_ids[0]
        animal.name = "Daisy"
        since = fields.Datetime.to_datetime(self.env["ir.config_parameter"].get_param(PUSH_WATERMARK)) - PUSH_OVERLAP
        self.assertEqual([row[0] for row in self.sync._animal_rows(since)], [animal.id])
        self.assertEqual(self.sync._device_rows(since), [])
        changed = self.push()
        self.assertEqual(changed["animals"], 1)
        self.assertEqual(self.iot_one("SELECT name FROM iot.animals WHERE id = %s", animal.id), ("Daisy",))

    def test_archive_delete_and_rename_deactivate(self):
        self.push()
        archived, deleted = self.farm_a.animal_ids[:2]
        device = self.farm_b.device_ids.filtered("zone_id")[0]
        old_uid = device.device_uid
        archived.action_archive()
        deleted_id = deleted.id
        deleted.device_ids.unlink()
        deleted.unlink()
        device.device_uid = "ENV-FB-RENAMED"
        self.push()
        self.assertEqual(self.iot_one("SELECT active FROM iot.animals WHERE id = %s", archived.id), (False,))
        self.assertEqual(self.iot_one("SELECT active FROM iot.animals WHERE id = %s", deleted_id), (False,))
        self.assertEqual(self.iot_one("SELECT active FROM iot.devices WHERE device_uid = %s", old_uid), (False,))
        self.assertEqual(self.iot_one("SELECT active FROM iot.devices WHERE device_uid = %s", "ENV-FB-RENAMED"),
                         (True,))

    def test_ear_tag_reused_after_delete(self):
        self.push()
        animal = self.farm_a.animal_ids[0]
        tag = animal.ear_tag
        animal.device_ids.unlink()
        animal.unlink()
        newcomer = self.env["sd.animal"].create({"ear_tag": tag, "farm_id": self.farm_a.id})
        self.push()
        self.assertEqual(self.iot("SELECT id FROM iot.animals WHERE farm_id = %s AND code = %s AND active",
                                  self.farm_a.id, tag), [(newcomer.id,)])

    def test_barn_rename_updates_zones(self):
        self.push()
        barn = self.farm_a.barn_ids
        barn.name = "North barn"
        changed = self.push()
        self.assertEqual(changed["zones"], 2)
        self.assertEqual({r[0] for r in self.iot("SELECT barn_name FROM iot.zones WHERE barn_id = %s", barn.id)},
                         {"North barn"})

    def test_rule_edit_is_pushed_as_jsonb(self):
        rule = self.env["sd.alert.rule"].create({
            "code": "hot_barn", "name": "Hot barn", "farm_id": self.farm_a.id, "category": "environment",
            "severity": "critical", "combine": "or", "duration_s": 600,
            "condition_ids": [fields.Command.create({"signal": "value", "metric": "temperature_c", "operator": ">",
                                                     "value": 30}),
                              fields.Command.create({"signal": "thi", "operator": ">=", "value": 78})],
        })
        self.push()
        row = self.iot_one("SELECT farm_id, severity, combine, duration_s, conditions, builtin, active "
                           "FROM iot.alert_rules WHERE code = 'hot_barn'")
        self.assertEqual(row[:4], (self.farm_a.id, "critical", "or", 600))
        self.assertEqual(row[4], [{"signal": "value", "metric": "temperature_c", "op": ">", "value": 30.0},
                                  {"signal": "thi", "metric": None, "op": ">=", "value": 78.0}])
        self.assertEqual(row[5:], (False, True))
        rule.action_archive()
        self.push()
        self.assertEqual(self.iot_one("SELECT active FROM iot.alert_rules WHERE code = 'hot_barn'"), (False,))

    def test_api_key_in_the_ingestor_format(self):
        wizard = self.env["sd.api.key.wizard"].create({"name": "Gateway", "farm_ids": self.farm_a.ids,
                                                       "scope": "read"})
        action = wizard.action_generate()
        key = action["params"]["message"].rsplit(" ", 1)[-1]
        self.assertRegex(key, r"^sdk_[0-9a-f]{8}_[A-Za-z0-9_-]{32}$")
        record = self.env["sd.api.key"].search([("name", "=", "Gateway")])
        self.assertNotIn(key, str(record.read()), "the clear key is not stored")
        self.push()
        prefix = key.split("_", 2)[1]
        row = self.iot_one("SELECT key_hash, farm_ids, scopes, revoked_at FROM iot.api_keys WHERE key_prefix = %s",
                           prefix)
        self.assertEqual(row, (hashlib.sha256(key.encode()).hexdigest(), self.farm_a.ids, ["read"], None))
        record.action_revoke()
        self.push()
        self.assertIsNotNone(self.iot_one("SELECT revoked_at FROM iot.api_keys WHERE key_prefix = %s", prefix)[0])

    def test_push_skips_while_another_push_runs(self):
        other = self.other_connection()
        try:
            other.execute(SQL("SELECT pg_advisory_xact_lock(%s)", PUSH_LOCK))
            self.assertIsNone(self.sync._cron_push_registry())
            self.assertEqual(self.iot_one("SELECT count(*) FROM iot.farms WHERE id = %s", self.farm_a.id), (0,))
        finally:
            other.rollback()
            other.close()
        self.assertIsNotNone(self.sync._cron_push_registry(), "runs once the lock is free")

    def test_deleted_farm_deactivates_its_registry(self):
        self.push()
        farm = self.farm_b
        farm_id, uids = farm.id, farm.device_ids.mapped("device_uid")
        farm.unlink()
        self.push()
        self.assertEqual(self.iot_one("SELECT active FROM iot.farms WHERE id = %s", farm_id), (False,))
        self.assertEqual(self.iot("SELECT DISTINCT active FROM iot.zones WHERE farm_id = %s", farm_id), [(False,)])
        self.assertEqual(self.iot("SELECT DISTINCT active FROM iot.animals WHERE farm_id = %s", farm_id), [(False,)])
        self.assertEqual(self.iot("SELECT DISTINCT active FROM iot.devices WHERE device_uid = ANY(%s)", uids),
                         [(False,)])

    def test_farm_with_api_keys_cannot_be_deleted(self):
        self.env["sd.api.key"]._generate("Gateway", self.farm_b)
        with self.assertRaises(UserError):
            self.farm_b.unlink()
        with self.assertRaises(UserError):
            self.env["sd.api.key"].search([("name", "=", "Gateway")]).unlink()

    def test_buttons_run_the_sync_for_managers(self):
        action = self.env["sd.farm"].with_user(self.manager_a).action_push_now()
        self.assertEqual(action["tag"], "display_notification")
        self.assertEqual(self.iot_one("SELECT count(*) FROM iot.farms WHERE id = %s", self.farm_b.id), (1,))
        with self.assertRaises(AccessError):
            self.env["sd.farm"].with_user(self.user_a).action_push_now()
        action = self.env["sd.alert"].with_user(self.user_a).action_pull_now()
        self.assertEqual(action["tag"], "display_notification")
