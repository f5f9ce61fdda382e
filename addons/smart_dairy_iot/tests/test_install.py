from odoo.exceptions import UserError
from odoo.tests import tagged
from odoo.tools import SQL

from ..models.iot import REQUIRED_RELATIONS, check_iot_schema
from .common import SmartDairyCase


@tagged("post_install", "-at_install")
class TestInstall(SmartDairyCase):
    def test_module_installed_with_crons(self):
        module = self.env["ir.module.module"].search([("name", "=", "smart_dairy_iot")])
        self.assertEqual(module.state, "installed")
        push = self.env.ref("smart_dairy_iot.ir_cron_push_registry")
        pull = self.env.ref("smart_dairy_iot.ir_cron_pull_alerts")
        self.assertEqual((push.interval_number, push.interval_type), (5, "minutes"))
        self.assertEqual((pull.interval_number, pull.interval_type), (1, "minutes"))

    def test_builtin_rules_imported_on_install(self):
        iot_codes = {code for (code,) in self.iot("SELECT code FROM iot.alert_rules WHERE builtin")}
        self.assertTrue(iot_codes, "the migrations seed built-in rules")
        rules = self.env["sd.alert.rule"].with_context(active_test=False).search([("builtin", "=", True)])
        self.assertLessEqual(iot_codes, set(rules.mapped("code")))
        self.assertTrue(all(rule.condition_ids for rule in rules))

    def test_missing_iot_schema_names_the_command(self):
        check_iot_schema(self.env)  # complete here
        with self.env.cr.savepoint(flush=False) as savepoint:
            self.env.cr.execute("ALTER TABLE iot.farms RENAME TO farms_gone")
            with self.assertRaises(UserError) as caught:
                check_iot_schema(self.env)
            savepoint.rollback()
        self.assertIn("smart-dairy migrate", str(caught.exception))
        self.assertIn("iot.farms", str(caught.exception))
        self.assertIn("iot.device_current_status", REQUIRED_RELATIONS)

    def test_report_views_read_the_aggregates(self):
        for model in ("sd.report.reading.hourly", "sd.report.reading.daily", "sd.report.milk.daily",
                      "sd.report.device.status"):
            (definition,) = self.iot_one("SELECT pg_get_viewdef(%s::regclass)", self.env[model]._table)
            words = definition.replace("\n", " ").split()
            self.assertNotIn("iot.sensor_data", words, f"{model} must not read raw readings")
            self.assertNotIn("iot.milk_production_realtime", words, model)

    def test_report_filters_reach_the_aggregates(self):
        # Date ranges filter the timestamptz bucket (indexed), not the naive UTC column shown.
        query = self.env["sd.report.reading.hourly"]._search(
            [("date", ">=", "2026-01-01 00:00:00"), ("farm_id", "in", self.farm_a.ids)])
        where = self.env.cr.mogrify(query.where_clause.code, query.where_clause.params).decode()
        self.assertIn('"bucket" >= (', where)
        self.assertIn("AT TIME ZONE 'UTC'", where)
        self.env.cr.execute(SQL("EXPLAIN %s", query.select()))
        plan = "\n".join(row[0] for row in self.env.cr.fetchall())
        self.assertIn("farm_id", plan)
