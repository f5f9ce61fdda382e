"""The screen in a real browser: the hoot unit tests of static/tests and the drill-down tour."""

from odoo.tests import HttpCase, tagged

from .common import iot_profile

# The hoot suite of this module, as Odoo names it: tests in static/tests/ are suites under "@<module>".
HOOT_SUITE = "@smart_dairy_iot_dashboard"


def hoot_id(name):
    """Hoot's id of a suite or test (the hash web/tests/test_js.py HOOTCommon computes)."""
    value = 0
    for char in name:
        value = ((value << 5) - value + ord(char)) & 0xFFFFFFFF
    return f"{value:08x}"


def unit_test_error_checker(message):
    # Every "[HOOT]" line is reported by the runner itself; anything else logged as an error fails.
    return "[HOOT]" not in message


@tagged("post_install", "-at_install")
class TestDashboardUi(HttpCase):
    def test_hoot_suite(self):
        self.browser_js(
            f"/web/tests?headless&loglevel=2&preset=desktop&timeout=15000&id={hoot_id(HOOT_SUITE)}",
            "", "", login="admin", timeout=1800, success_signal="[HOOT] Test suite succeeded",
            error_checker=unit_test_error_checker)

    def test_dashboard_tour(self):
        if not iot_profile(self.env.cr):
            self.skipTest("the tour needs a database migrated by `smart-dairy migrate`")
        farm = self.env["sd.farm"].create({"name": "Tour Farm", "code": "TOUR"})
        cow = self.env["sd.animal"].create({"ear_tag": "TOUR-1", "farm_id": farm.id})
        self.env["sd.alert"].create({
            "alert_id": "tour-1", "time": "2026-01-01 06:00:00", "rule_code": "tour", "farm_id": farm.id,
            "animal_id": cow.id, "severity": "critical", "category": "health", "status": "open",
            "message": "Tour fever", "source_type": "animal", "source_id": str(cow.id),
        })
        self.start_tour("/odoo/dairy-dashboard", "smart_dairy_dashboard_tour", login="admin")
