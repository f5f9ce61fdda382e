from odoo import fields
from odoo.tests import HttpCase, tagged

from .common import SmartDairyCase


@tagged("post_install", "-at_install")
class TestTours(HttpCase, SmartDairyCase):
    """The web client, as a farm user clicks through it (Chromium). Timeouts are generous: the suite
    may share the machine with other work, and a slow step is not a failure."""

    def test_alert_is_acknowledged_from_the_web_client(self):
        cow = self.farm_a.animal_ids[0]
        alert = self.env["sd.alert"].create({
            "alert_id": "tour:fever", "time": fields.Datetime.now(), "rule_code": "fever", "farm_id": self.farm_a.id,
            "animal_id": cow.id, "severity": "critical", "category": "health", "source_type": "animal",
            "source_id": cow.ear_tag, "message": f"Tour: fever of {cow.ear_tag}",
        })
        self.start_tour("/odoo/action-smart_dairy_iot.sd_alert_action", "smart_dairy_iot_alert_tour",
                        login="sd_user_a", timeout=180)
        self.assertEqual(alert.status, "acknowledged")
        self.assertEqual(alert.acknowledged_by_id, self.user_a)

    def test_animal_form_smart_buttons(self):
        self.start_tour("/odoo/action-smart_dairy_iot.sd_animal_action", "smart_dairy_iot_animal_tour",
                        login="sd_user_a", timeout=180)
