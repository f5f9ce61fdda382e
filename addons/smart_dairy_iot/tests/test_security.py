import hashlib
from datetime import UTC

from odoo import fields
from odoo.exceptions import AccessError, ValidationError
from odoo.tests import tagged
from odoo.tools import SQL

from .common import SmartDairyCase

FARM_MODELS = ["sd.barn", "sd.zone", "sd.animal", "sd.device", "sd.alert", "sd.report.reading.hourly",
               "sd.report.reading.daily", "sd.report.milk.daily", "sd.report.device.status"]


class FarmDataCase(SmartDairyCase):
    """Both farms pushed to iot, with readings, milk, device states and one open fever alert per cow."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.sync._push_registry()
        # Readings, milk and alerts on both farms, so every report has rows of each.
        cls.env.cr.execute(
            """INSERT INTO iot.sensor_data (time, device_uid, device_type, farm_id, metric_name, metric_value,
                                            animal_id, zone_id)
               SELECT now() - interval '3 hours' + g * interval '30 minutes', device_uid, device_type, farm_id,
                      'temperature_c', 20 + g, animal_id, zone_id
               FROM iot.devices, generate_series(0, 3) g""")
        cls.env.cr.execute(
            """INSERT INTO iot.milk_production_realtime (time, milk_meter_id, animal_id, farm_id, session_id,
                                                         yield_kg)
               SELECT now() - g * interval '12 hours', 'MM-' || farm_id, id, farm_id, 'S-' || id || '-' || g, 14.5
               FROM iot.animals, generate_series(0, 5) g""")
        cls.env.cr.execute(
            """INSERT INTO iot.device_state (device_uid, device_type, farm_id, last_seen, battery_level)
               SELECT device_uid, device_type, farm_id, now(), 80 FROM iot.devices""")
        cls.env.cr.execute(
            """INSERT INTO iot.alerts (time, alert_id, rule_code, farm_id, severity, category, source_type,
                                       source_id, animal_id, message, updated_at)
               SELECT now() - interval '1 hour', 'sec:' || id, 'fever', farm_id, 'warning', 'health', 'animal',
                      code, id, 'fever ' || code, now() - interval '5 minutes'
               FROM iot.animals""")
        cls.sync._pull_alerts()


@tagged("post_install", "-at_install")
class TestFarmRules(FarmDataCase):
    def test_admin_sees_both_farms(self):
        for model in FARM_MODELS:
            farms = self.env[model].search([]).mapped("farm_id")
            self.assertEqual(farms, self.farm_a | self.farm_b, model)

    def test_user_of_farm_a_sees_nothing_of_farm_b(self):
        for model in FARM_MODELS:
            records = self.env[model].with_user(self.user_a).search([])
            self.assertTrue(records, f"{model}: the user sees farm A")
            self.assertEqual(records.mapped("farm_id"), self.farm_a, model)
            self.assertFalse(self.env[model].with_user(self.user_a).search([("farm_id", "=", self.farm_b.id)]))
            groups = self.env[model].with_user(self.user_a)._read_group([], ["farm_id"], ["__count"])
            self.assertEqual([farm for farm, _count in groups], [self.farm_a], model)
        self.assertEqual(self.env["sd.farm"].with_user(self.user_a).search([]), self.farm_a)

    def test_user_cannot_read_records_of_farm_b(self):
        animal_b = self.farm_b.animal_ids[0]
        with self.assertRaises(AccessError):
            animal_b.with_user(self.user_a).ear_tag  # noqa: B018 -- reading is the test
        with self.assertRaises(AccessError):
            self.farm_b.with_user(self.user_a).check_access("read")

    def test_user_reads_but_does_not_configure(self):
        animal = self.farm_a.animal_ids[0].with_user(self.user_a)
        self.assertTrue(animal.ear_tag)
        with self.assertRaises(AccessError):
            animal.name = "renamed"
        with self.assertRaises(AccessError):
            self.env["sd.api.key"].with_user(self.user_a).search([])

    def test_manager_configures_own_farm_only(self):
        manager = self.manager_a
        self.farm_a.animal_ids[0].with_user(manager).name = "Bella"
        with self.assertRaises(AccessError):
            self.farm_b.animal_ids[0].with_user(manager).name = "Stolen"
        farm = self.env["sd.farm"].with_user(manager).create({"name": "Farm C"})
        self.assertIn(farm, manager.sd_farm_ids, "a manager sees the farm they created")

    def test_smart_buttons_count_only_own_data(self):
        animal = self.farm_a.animal_ids[0].with_user(self.user_a)
        self.assertAlmostEqual(animal.milk_week_kg, 6 * 14.5)
        self.assertEqual(animal.open_alert_count, 1)
        device = self.farm_a.device_ids.filtered("animal_id")[0].with_user(self.user_a)
        self.assertEqual(device.live_status, "online")
        self.assertEqual(device.battery_level, 80)
        self.assertIn(device, self.env["sd.device"].with_user(self.user_a).search([("live_status", "=", "online")]))


@tagged("post_install", "-at_install")
class TestRulesHoldAfterWrites(SmartDairyCase):
    """Record rules are checked on what a write leaves: nothing moves to a farm the user does not have."""

    def assert_refused(self, record, vals, exception=AccessError):
        """`record.write(vals)` is refused and changes nothing (its savepoint is rolled back, like the
        request's transaction would be)."""
        before = record.sudo().read(list(vals))[0]
        with self.assertRaises(exception), self.env.cr.savepoint():
            record.write(vals)
        self.assertEqual(record.sudo().read(list(vals))[0], before)

    def test_manager_cannot_move_records_to_another_farm(self):
        manager = self.manager_a
        farm_b = self.farm_b
        animal = self.farm_a.animal_ids[0].with_user(manager)
        self.assert_refused(animal, {"farm_id": farm_b.id})
        sensor = self.farm_a.device_ids.filtered("zone_id")[0].with_user(manager)
        self.assert_refused(sensor, {"farm_id": farm_b.id, "zone_id": False})
        collar = self.farm_a.device_ids.filtered("animal_id")[0].with_user(manager)
        self.assert_refused(collar, {"farm_id": farm_b.id, "animal_id": False})
        barn = self.farm_a.barn_ids[0].with_user(manager)
        self.assert_refused(barn, {"farm_id": farm_b.id})
        zone = self.farm_a.zone_ids[0].with_user(manager)
        self.assert_refused(zone, {"barn_id": False, "farm_id": farm_b.id})
        with self.assertRaises(AccessError) as caught, self.env.cr.savepoint():
            animal.farm_id = farm_b
        self.assertIn("not on one of your farms (Farm A)", str(caught.exception))

    def test_manager_cannot_link_records_of_another_farm(self):
        manager = self.manager_a
        # A zone follows its barn's farm: a barn of farm B would move it there.
        zone = self.farm_a.zone_ids[0].with_user(manager)
        self.assert_refused(zone, {"barn_id": self.farm_b.barn_ids[0].id})
        # The pen of an animal, the animal or zone of a device: of the record's own farm.
        animal = self.farm_a.animal_ids[0].with_user(manager)
        self.assert_refused(animal, {"zone_id": self.farm_b.zone_ids[0].id}, ValidationError)
        collar = self.farm_a.device_ids.filtered("animal_id")[0].with_user(manager)
        self.assert_refused(collar, {"animal_id": self.farm_b.animal_ids[0].id}, ValidationError)
        sensor = self.farm_a.device_ids.filtered("zone_id")[0].with_user(manager)
        self.assert_refused(sensor, {"zone_id": self.farm_b.zone_ids[0].id}, ValidationError)

    def test_manager_moves_records_between_own_farms(self):
        manager = self.manager_a
        farm_c = self.env["sd.farm"].with_user(manager).create({"name": "Farm C", "code": "FC"})
        animal = self.farm_a.animal_ids[0].with_user(manager)
        animal.farm_id = farm_c  # a farm of theirs since they created it (the rules follow at once)
        self.assertEqual(animal.sudo().farm_id, farm_c)
        # An administrator moves anything anywhere.
        other = self.farm_a.animal_ids[1]
        other.with_user(self.env.ref("base.user_admin")).farm_id = self.farm_b
        self.assertEqual(other.farm_id, self.farm_b)


@tagged("post_install", "-at_install")
class TestAlertIdentity(FarmDataCase):
    """What an alert is and where it stands comes from the ingestor; users act on it through its buttons."""

    def alert_of(self, farm):
        return self.env["sd.alert"].search([("farm_id", "=", farm.id)], limit=1)

    def iot_status(self, alert):
        return self.iot_one("SELECT status FROM iot.alerts WHERE alert_id = %s", alert.alert_id)[0]

    def test_user_cannot_rewrite_an_alert(self):
        alert = self.alert_of(self.farm_a)
        other = self.alert_of(self.farm_b)
        mine = alert.with_user(self.user_a)
        for vals in ({"farm_id": self.farm_b.id}, {"alert_id": other.alert_id}, {"status": "resolved"},
                     {"severity": "info"}, {"resolved_at": fields.Datetime.now()}):
            with self.subTest(vals=vals), self.assertRaises(AccessError) as caught, self.env.cr.savepoint():
                mine.write(vals)
        self.assertIn("cannot be changed: acknowledge or resolve the alert", str(caught.exception))
        for user in (self.user_a, self.manager_a):
            with self.assertRaises(AccessError), self.env.cr.savepoint():
                alert.with_user(user).write({"status": "acknowledged", "user_id": user.id})
        alert.invalidate_recordset()
        self.assertEqual((alert.farm_id, alert.status, alert.user_id), (self.farm_a, "open", self.env["res.users"]))
        self.assertEqual((self.iot_status(alert), self.iot_status(other)), ("open", "open"))
        # What a user may change: the assignee (and the chatter, activities).
        mine.user_id = self.user_a
        self.assertEqual(alert.user_id, self.user_a)

    def test_user_cannot_resolve_an_alert_of_another_farm(self):
        # Farm B's alert that the pull has not brought yet: its id is all a user of farm A needs to know.
        self.env.cr.execute(SQL(
            """INSERT INTO iot.alerts (time, alert_id, rule_code, farm_id, severity, category, source_type,
                                       source_id, message)
               VALUES (now(), 'sec:b-not-pulled', 'fever', %s, 'critical', 'health', 'farm', %s, 'fever')""",
            self.farm_b.id, str(self.farm_b.id)))
        mine = self.alert_of(self.farm_a).with_user(self.user_a)
        with self.assertRaises(AccessError), self.env.cr.savepoint():
            mine.write({"alert_id": "sec:b-not-pulled"})
            mine.action_resolve()
        self.assertEqual(self.iot_one("SELECT status FROM iot.alerts WHERE alert_id = 'sec:b-not-pulled'"), ("open",))
        # Nor by its Odoo id.
        other = self.alert_of(self.farm_b)
        for method in ("action_resolve", "action_acknowledge"):
            with self.assertRaises(AccessError), self.env.cr.savepoint():
                getattr(self.env["sd.alert"].with_user(self.user_a).browse(other.id), method)()
        other.invalidate_recordset()
        self.assertEqual((other.status, self.iot_status(other)), ("open", "open"))
        # The buttons work on the user's own alerts, and say so to the ingestor.
        alert = self.alert_of(self.farm_a)
        alert.with_user(self.user_a).action_resolve()
        self.assertEqual((alert.status, self.iot_status(alert)), ("resolved", "resolved"))

    def test_alerts_are_not_created_by_users(self):
        cow = self.farm_a.animal_ids[0]
        for user in (self.user_a, self.manager_a, self.env.ref("base.user_admin")):
            with self.assertRaises(AccessError), self.env.cr.savepoint():
                self.env["sd.alert"].with_user(user).create({
                    "alert_id": f"forged:{user.login}", "time": fields.Datetime.now(), "farm_id": self.farm_a.id,
                    "animal_id": cow.id, "severity": "critical", "message": "forged"})
        self.assertFalse(self.env["sd.alert"].search([("alert_id", "like", "forged:")]))


@tagged("post_install", "-at_install")
class TestGlobalAlertRules(SmartDairyCase):
    """Rules without a farm watch every farm: administrators manage them, managers the rules of their farms."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.fever = cls.env["sd.alert.rule"].search([("code", "=", "fever")])
        cls.admin = cls.env.ref("base.user_admin")

    def rule_vals(self, code, farm):
        return {"code": code, "name": code, "farm_id": farm.id if farm else False, "category": "health",
                "condition_ids": [fields.Command.create({"signal": "value", "metric": "temperature_c",
                                                         "operator": ">", "value": 39.5})]}

    def test_manager_cannot_change_a_rule_of_every_farm(self):
        self.assertFalse(self.fever.farm_id, "the built-in fever rule watches every farm")
        rule = self.fever.with_user(self.manager_a)
        self.assertEqual(rule.name, "Fever", "managers see it")
        for change in (lambda: rule.write({"severity": "info"}), rule.action_archive,
                       lambda: rule.condition_ids[0].write({"value": 45.0}),
                       lambda: rule.write({"farm_id": self.farm_a.id}), rule.unlink):
            with self.assertRaises(AccessError) as caught, self.env.cr.savepoint():
                change()
        self.assertIn("only administrators", str(caught.exception))
        self.fever.invalidate_recordset()
        self.assertEqual((self.fever.active, self.fever.severity, self.fever.farm_id.id),
                         (True, "critical", False))
        with self.assertRaises(AccessError), self.env.cr.savepoint():
            self.env["sd.alert.rule"].with_user(self.manager_a).create(self.rule_vals("every_farm", None))

    def test_manager_manages_rules_of_own_farms_only(self):
        rules = self.env["sd.alert.rule"].with_user(self.manager_a)
        own = rules.create(self.rule_vals("fever_a", self.farm_a))
        own.write({"severity": "critical"})
        own.condition_ids.value = 39.8
        own.action_archive()
        self.assertFalse(own.active)
        # Making it a rule of every farm, or of another farm, is refused like editing one.
        for vals in ({"farm_id": False}, {"farm_id": self.farm_b.id}):
            with self.assertRaises(AccessError), self.env.cr.savepoint():
                own.write(vals)
        with self.assertRaises(AccessError), self.env.cr.savepoint():
            rules.create(self.rule_vals("fever_b", self.farm_b))
        with self.assertRaises(AccessError), self.env.cr.savepoint():
            own.condition_ids.rule_id = self.fever

    def test_admin_changes_a_rule_of_every_farm(self):
        rule = self.fever.with_user(self.admin)
        rule.write({"severity": "warning"})
        rule.condition_ids[0].value = 39.9
        rule.action_archive()
        self.assertEqual((self.fever.active, self.fever.severity), (False, "warning"))
        created = self.env["sd.alert.rule"].with_user(self.admin).create(self.rule_vals("every_farm", None))
        self.assertFalse(created.farm_id)

    def test_rule_scope_is_of_its_farm(self):
        vals = self.rule_vals("pen_b", self.farm_a)
        with self.assertRaises(ValidationError), self.env.cr.savepoint():
            self.env["sd.alert.rule"].create({**vals, "zone_id": self.farm_b.zone_ids[0].id})
        with self.assertRaises(ValidationError), self.env.cr.savepoint():
            self.env["sd.alert.rule"].create({**vals, "farm_id": False, "animal_id": self.farm_b.animal_ids[0].id})
        rule = self.env["sd.alert.rule"].create({**vals, "zone_id": self.farm_a.zone_ids[0].id})
        self.assertEqual(rule.zone_id.farm_id, rule.farm_id)


@tagged("post_install", "-at_install")
class TestApiKeysOfManagers(SmartDairyCase):
    """An IoT manager issues and revokes keys of their farms; iot.api_keys follows in the same transaction."""

    def generate(self, farms, user=None, name="Gateway"):
        wizard = self.env["sd.api.key.wizard"].with_user(user or self.manager_a).create(
            {"name": name, "farm_ids": [fields.Command.set(farms.ids)]})
        key = wizard.action_generate()["params"]["message"].rsplit(" ", 1)[-1]
        return self.env["sd.api.key"].search([("key_prefix", "=", key.split("_", 2)[1])]), key

    def iot_key(self, prefix):
        return self.iot_one("SELECT name, key_hash, farm_ids, scopes, revoked_at FROM iot.api_keys "
                            "WHERE key_prefix = %s", prefix)

    def test_manager_creates_a_key_of_own_farm_at_once_in_iot(self):
        record, key = self.generate(self.farm_a)
        self.assertEqual(record.farm_ids, self.farm_a)
        self.assertEqual(record.create_uid, self.manager_a)
        # No push: the row is there in this transaction.
        self.assertEqual(self.iot_key(record.key_prefix),
                         ("Gateway", hashlib.sha256(key.encode()).hexdigest(), self.farm_a.ids, ["read", "write"],
                          None))

    def test_manager_cannot_create_a_key_of_another_farm(self):
        for farms in (self.farm_b, self.farm_a | self.farm_b):
            with self.assertRaises(AccessError) as caught, self.env.cr.savepoint():
                self.env["sd.api.key"].with_user(self.manager_a)._generate("Stolen", farms)
            self.assertIn("not on one of your farms (Farm A)", str(caught.exception))
            # The form offers their farms only, and refuses another one as well.
            with self.assertRaises(AccessError), self.env.cr.savepoint():
                self.generate(farms, name="Stolen")
        self.assertFalse(self.env["sd.api.key"].search([("name", "=", "Stolen")]))
        self.assertEqual(self.iot_one("SELECT count(*) FROM iot.api_keys WHERE name = 'Stolen'"), (0,))
        with self.assertRaises(AccessError):
            self.generate(self.farm_a, user=self.user_a)

    def test_revoke_reaches_iot_at_once(self):
        record, _key = self.env["sd.api.key"]._generate("Gateway", self.farm_a)
        self.sync._push_registry()
        self.assertIsNone(self.iot_key(record.key_prefix)[4])
        mine = record.with_user(self.manager_a)
        mine.action_revoke()
        self.assertTrue(record.revoked_at)
        revoked_at = self.iot_key(record.key_prefix)[4]
        self.assertIsNotNone(revoked_at, "revoked in iot without waiting for the push")
        self.assertEqual(revoked_at.astimezone(UTC).replace(tzinfo=None), record.revoked_at)

    def test_changes_reach_iot_at_once_within_own_farms(self):
        record, _key = self.generate(self.farm_a)
        mine = record.with_user(self.manager_a)
        mine.write({"name": "Parlour", "scope": "read"})
        self.assertEqual(self.iot_key(record.key_prefix)[0::3], ("Parlour", ["read"]))
        for vals in ({"farm_ids": [fields.Command.link(self.farm_b.id)]}, {"revoked_at": False},
                     {"key_prefix": "deadbeef"}):
            with self.assertRaises(AccessError), self.env.cr.savepoint():
                mine.write(vals)
        self.assertEqual(self.iot_key(record.key_prefix)[2], self.farm_a.ids)
        # A key of another farm is neither seen nor revoked.
        other, _key = self.generate(self.farm_b, user=self.env.ref("base.user_admin"))
        self.assertFalse(self.env["sd.api.key"].with_user(self.manager_a).search([("id", "=", other.id)]))
        with self.assertRaises(AccessError), self.env.cr.savepoint():
            other.with_user(self.manager_a).action_revoke()
        self.assertIsNone(self.iot_key(other.key_prefix)[4])
