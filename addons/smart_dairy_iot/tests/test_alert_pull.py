from odoo.tests import tagged
from odoo.tools import SQL

from ..models.iot import PULL_LOCK
from .common import SmartDairyCase


@tagged("post_install", "-at_install")
class TestAlertPull(SmartDairyCase):
    def add_alert(self, alert_id, *, animal=None, device=None, farm=None, status="open", age_minutes=5,
                  severity="warning"):
        """An alert as the ingestor writes it, updated `age_minutes` ago (older than the pull's lag)."""
        farm = farm or (animal or device).farm_id
        source_type, source_id = ("device", device.device_uid) if device else ("animal", animal.ear_tag)
        self.env.cr.execute(SQL(
            """INSERT INTO iot.alerts (time, alert_id, rule_code, farm_id, severity, category, source_type,
                                       source_id, animal_id, zone_id, message, details, status, updated_at)
               VALUES (now() - interval '1 hour', %s, 'fever', %s, %s, 'health', %s, %s, %s, %s, %s,
                       '{"value": 39.9}', %s, now() - make_interval(mins => %s))""",
            alert_id, farm.id, severity, source_type, source_id, animal.id if animal else None,
            device.zone_id.id if device else None, f"alert {alert_id}", status, age_minutes))

    def alert(self, alert_id):
        return self.env["sd.alert"].search([("alert_id", "=", alert_id)])

    def test_pull_creates_linked_alerts(self):
        cow = self.farm_a.animal_ids[0]
        sensor = self.farm_b.device_ids.filtered("zone_id")[0]
        self.add_alert("t:cow", animal=cow, severity="critical")
        self.add_alert("t:sensor", device=sensor)
        self.assertEqual(self.sync._pull_alerts(), 2)
        alert = self.alert("t:cow")
        self.assertEqual((alert.farm_id, alert.animal_id, alert.severity, alert.status, alert.details),
                         (self.farm_a, cow, "critical", "open", {"value": 39.9}))
        self.assertEqual(alert.rule_id.code, "fever")
        alert = self.alert("t:sensor")
        self.assertEqual((alert.device_id, alert.zone_id, alert.farm_id), (sensor, sensor.zone_id, self.farm_b))
        self.assertEqual(self.sync._pull_alerts(), 0, "nothing new")

    def test_recent_rows_wait_for_the_next_pull(self):
        self.add_alert("t:fresh", animal=self.farm_a.animal_ids[0], age_minutes=0)
        self.assertEqual(self.sync._pull_alerts(), 0)

    def test_pull_pages_through_the_watermark(self):
        cows = self.farm_a.animal_ids
        for i in range(7):
            self.add_alert(f"t:page{i}", animal=cows[i % len(cows)], age_minutes=10 + i)
        self.assertEqual(self.sync._pull_alerts(page_size=3), 7)
        self.assertEqual(len(self.env["sd.alert"].search([("alert_id", "like", "t:page")])), 7)
        self.assertEqual(self.sync._pull_alerts(page_size=3), 0)

    def test_status_changes_flow_both_ways(self):
        cow = self.farm_a.animal_ids[0]
        self.add_alert("t:a", animal=cow)
        self.add_alert("t:b", animal=cow)
        self.sync._pull_alerts()
        first, second = self.alert("t:a"), self.alert("t:b")
        first.with_user(self.user_a).action_acknowledge()
        self.assertEqual((first.status, first.acknowledged_by_id), ("acknowledged", self.user_a))
        self.assertEqual(self.iot_one("SELECT status, updated_at = now() FROM iot.alerts WHERE alert_id = 't:a'"),
                         ("acknowledged", True))
        first.with_user(self.user_a).action_resolve()
        self.assertEqual(self.iot_one("SELECT status, resolved_at IS NOT NULL FROM iot.alerts "
                                      "WHERE alert_id = 't:a'"), ("resolved", True))
        # The ingestor resolves the other one (its conditions cleared): the pull brings the status.
        self.env.cr.execute("UPDATE iot.alerts SET status = 'resolved', updated_at = now() - interval '1 minute' "
                            "WHERE alert_id = 't:b'")
        self.assertEqual(self.sync._pull_alerts(), 1)
        self.assertEqual(second.status, "resolved")
        self.assertTrue(second.resolved_at)

    def test_pull_skips_while_another_pull_runs(self):
        self.add_alert("t:lock", animal=self.farm_a.animal_ids[0])
        other = self.other_connection()
        try:
            other.execute(SQL("SELECT pg_advisory_xact_lock(%s)", PULL_LOCK))
            self.assertIsNone(self.sync._cron_pull_alerts())
            self.assertFalse(self.alert("t:lock"))
        finally:
            other.rollback()
            other.close()
        self.assertEqual(self.sync._cron_pull_alerts(), 1)

    def test_alerts_have_chatter_and_activities(self):
        self.add_alert("t:chat", animal=self.farm_a.animal_ids[0])
        self.sync._pull_alerts()
        alert = self.alert("t:chat").with_user(self.user_a)
        alert.message_post(body="Vet called")
        alert.activity_schedule("mail.mail_activity_data_todo", user_id=self.user_a.id, summary="Check the cow")
        self.assertEqual(len(alert.activity_ids), 1)
        alert.user_id = self.user_a
        self.assertEqual(alert.user_id, self.user_a)
