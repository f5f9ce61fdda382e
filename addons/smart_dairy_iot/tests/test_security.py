from odoo.exceptions import AccessError
from odoo.tests import tagged

from .common import SmartDairyCase

FARM_MODELS = ["sd.barn", "sd.zone", "sd.animal", "sd.device", "sd.alert", "sd.report.reading.hourly",
               "sd.report.reading.daily", "sd.report.milk.daily", "sd.report.device.status"]


@tagged("post_install", "-at_install")
class TestFarmRules(SmartDairyCase):
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
