"""Built-in rules follow what the ingestor's migrations ship in iot.alert_rules, unless the farm tuned them."""

import json
from pathlib import Path

from odoo.modules.module import get_module_path, load_script
from odoo.tests import tagged
from odoo.tools import SQL

from ..models.sd_alert_rule import canonical
from .common import SmartDairyCase

MODULE = Path(get_module_path("smart_dairy_iot"))
# Pushed columns of a rule, as iot holds them.
COLUMNS = SQL("name, device_type, category, severity, combine, conditions, duration_s, suppression_s, max_per_hour, "
              "auto_resolve, builtin, active, farm_id, zone_id, animal_id")
# What a later migration could ship: fever judged against her own hours too.
NEW_FEVER = [{"signal": "hour_zscore", "metric": "body_temperature_c", "op": ">=", "value": 4.0},
             {"signal": "value", "metric": "body_temperature_c", "op": ">=", "value": 39.7}]


@tagged("post_install", "-at_install")
class TestBuiltinRules(SmartDairyCase):
    def push(self, full=False):
        changed = self.sync._push_registry(full=full)
        self.assertIsNotNone(changed, "the push ran")
        return changed

    def rule(self, code):
        return self.env["sd.alert.rule"].with_context(active_test=False).search([("code", "=", code)])

    def iot_rule(self, code):
        return self.iot_one(SQL("SELECT %s FROM iot.alert_rules WHERE code = %s", COLUMNS, code))

    def iot_definition(self, code):
        self.env.flush_all()
        self.env.cr.execute(SQL("SELECT %s FROM iot.alert_rules WHERE code = %s", COLUMNS, code))
        return self.env["sd.alert.rule"]._definition_from_iot(self.env.cr.dictfetchone())

    def ship(self, code, conditions=None, **columns):
        """What a migration of the ingestor does: change a built-in rule's definition in iot."""
        if conditions is not None:
            columns["conditions"] = json.dumps(conditions)
        self.env.flush_all()
        self.env.cr.execute(SQL("UPDATE iot.alert_rules SET %s, updated_at = now() WHERE code = %s", SQL(", ").join(
            SQL("%s = %s", SQL.identifier(name), value) for name, value in columns.items()), code))

    def age_records(self):
        """Date back every record, so that an incremental push sends only what is written next."""
        for table in ("sd_alert_rule", "sd_alert_rule_condition"):
            self.env.cr.execute(SQL("UPDATE %s SET write_date = write_date - interval '1 day'",
                                    SQL.identifier(table)))
        self.env.invalidate_all()

    def test_untuned_rule_takes_the_shipped_definition(self):
        self.push()
        self.age_records()
        fever = self.rule("fever")
        self.ship("fever", NEW_FEVER, duration_s=3600)
        shipped = self.iot_rule("fever")
        changed = self.push()
        self.assertEqual((fever._conditions(), fever.duration_s), (NEW_FEVER, 3600))
        self.assertEqual(fever.shipped_definition, canonical(fever._definition()))
        self.assertEqual(changed["alert_rules"], 0, "pushed back unchanged")
        self.assertEqual(self.iot_rule("fever"), shipped)
        self.assertIn("now follows the definition shipped", fever.message_ids[0].body)
        self.assertEqual(self.push(full=True)["alert_rules"], 0)
        self.assertEqual(self.iot_rule("fever"), shipped)
        # ... and the next one too.
        self.ship("fever", severity="warning")
        self.push(full=True)
        self.assertEqual(fever.severity, "warning")

    def tuned_rule_keeps_the_farms_version(self, full):
        fever = self.rule("fever")
        fever.condition_ids.value = 40.0  # the farm's vet tuned it
        tuned = fever._definition()
        self.push()
        self.age_records()
        self.ship("fever", NEW_FEVER, duration_s=3600)
        messages = len(fever.message_ids)
        self.push(full=full)
        self.assertEqual(fever._definition(), tuned, "Odoo keeps the farm's version")
        self.assertEqual(self.iot_definition("fever"), tuned, "pushed over the shipped one in iot")
        self.assertEqual(len(fever.message_ids), messages + 1)
        note = fever.message_ids[0].body
        self.assertIn("tuned here", note)
        self.assertIn("Holds for (s): 3600", note)
        self.assertIn("Z-score against the same hours of her previous days (body_temperature_c) &gt;= 4", note)
        self.assertEqual(self.push(full=True)["alert_rules"], 0)
        self.assertEqual(len(fever.message_ids), messages + 1, "noted once")
        # Untuned again (set to what was shipped), it follows the next definition shipped.
        fever.write(self.env["sd.alert.rule"]._vals_from_definition(json.loads(fever.shipped_definition), True))
        self.push()
        self.ship("fever", severity="warning")
        self.push()
        self.assertEqual(fever.severity, "warning")

    def test_tuned_rule_keeps_the_farms_version_incremental_push(self):
        self.tuned_rule_keeps_the_farms_version(full=False)

    def test_tuned_rule_keeps_the_farms_version_full_push(self):
        self.tuned_rule_keeps_the_farms_version(full=True)

    def test_new_builtin_rules_import_and_round_trip(self):
        migrated = {code: self.iot_rule(code) for code in ("lameness", "stuck_sensor")}
        self.assertEqual([c["signal"] for c in migrated["lameness"][5]], ["day_vs_group", "day_vs_group"])
        self.assertEqual(migrated["stuck_sensor"][5], [{"signal": "unchanged_h", "metric": None, "op": ">=",
                                                        "value": 6}])
        # A farm that installed the module before migration 0011: Odoo does not know them yet.
        self.env.cr.execute(SQL("DELETE FROM sd_alert_rule WHERE code IN ('lameness', 'stuck_sensor')"))
        self.env.invalidate_all()
        changed = self.push(full=True)
        lameness, stuck = self.rule("lameness"), self.rule("stuck_sensor")
        self.assertEqual(lameness.condition_ids.mapped("signal"), ["day_vs_group", "day_vs_group"])
        self.assertEqual(lameness.condition_ids.mapped("metric"), ["activity_index", "resting_minutes"])
        self.assertEqual((stuck.condition_ids.signal, stuck.condition_ids.metric), ("unchanged_h", False))
        self.assertTrue(lameness.builtin and stuck.builtin)
        self.assertEqual(changed["alert_rules"], 0)
        self.assertEqual({code: self.iot_rule(code) for code in migrated}, migrated)

    def test_rules_imported_before_the_upgrade(self):
        migration = load_script(str(MODULE / "migrations" / "19.0.1.1.0" / "post-migrate.py"), "sd_post_migrate")
        rules = self.env["sd.alert.rule"].search([("builtin", "=", True)])
        # A farm that installed the module before migration 0011 holds the rules of 0007; its vet tuned
        # yield_drop. Then the ingestor's migration 0011 ran, and this version was installed.
        for code, definition in migration.SHIPPED_0007.items():
            self.rule(code).write(self.env["sd.alert.rule"]._vals_from_definition(definition, replace=True))
        self.rule("yield_drop").condition_ids.value = 0.8
        tuned = self.rule("yield_drop")._definition()
        rules.shipped_definition = False
        migration.migrate(self.env.cr, "19.0.1.0.0")
        self.push(full=True)
        for code in ("oestrus", "rumination_drop", "mastitis_yield", "anomaly", "fever", "lameness"):
            self.assertEqual(self.rule(code)._definition(), self.iot_definition(code), code)
        self.assertEqual(self.rule("anomaly").device_type, "env_sensor")
        self.assertEqual(self.rule("oestrus").condition_ids.mapped("signal"), ["vs_group", "hour_zscore"])
        self.assertEqual(self.rule("yield_drop")._definition(), tuned)
        self.assertEqual(self.iot_definition("yield_drop"), tuned)
        self.assertIn("tuned here", self.rule("yield_drop").message_ids[0].body)

    def test_migration_knows_the_0007_definitions(self):
        sql = MODULE.parent.parent / "timescale" / "0007_builtin_alert_rules.sql"
        if not sql.is_file():
            self.skipTest(f"{sql} not found: the module is not in its repository")
        migration = load_script(str(MODULE / "migrations" / "19.0.1.1.0" / "post-migrate.py"), "sd_post_migrate")
        text = sql.read_text()
        self.env.flush_all()
        self.env.cr.execute(SQL("DELETE FROM iot.alert_rules WHERE builtin"))
        self.env.cr.execute(text[text.index("INSERT INTO iot.alert_rules"):])
        self.env.cr.execute(SQL("SELECT %s, code FROM iot.alert_rules WHERE builtin", COLUMNS))
        seeded = {row["code"]: canonical(self.env["sd.alert.rule"]._definition_from_iot(row))
                  for row in self.env.cr.dictfetchall()}
        self.assertEqual(seeded, {code: canonical(d) for code, d in migration.SHIPPED_0007.items()})
