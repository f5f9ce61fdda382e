from odoo.tests import tagged

from .common import SmartDairyCase

VIEWS = {
    "sd.farm": ["list", "form", "search"],
    "sd.barn": ["list", "form", "search"],
    "sd.zone": ["list", "form", "search"],
    "sd.animal": ["list", "form", "search"],
    "sd.device": ["list", "form", "search"],
    "sd.api.key": ["list", "form", "search"],
    "sd.alert.rule": ["list", "form", "search"],
    "sd.alert": ["list", "form", "search", "pivot", "graph"],
    "sd.report.reading.hourly": ["list", "search", "pivot", "graph"],
    "sd.report.reading.daily": ["list", "search", "pivot", "graph"],
    "sd.report.milk.daily": ["list", "search", "pivot", "graph"],
    "sd.report.device.status": ["list", "search", "pivot", "graph"],
    "sd.export.wizard": ["form"],
    "sd.api.key.wizard": ["form"],
}


@tagged("post_install", "-at_install")
class TestViews(SmartDairyCase):
    def test_every_view_loads_for_a_farm_user(self):
        for model, types in VIEWS.items():
            user = self.manager_a if model in ("sd.api.key", "sd.api.key.wizard") else self.user_a
            result = self.env[model].with_user(user).get_views([(False, t) for t in types])
            self.assertEqual(set(result["views"]), set(types), model)

    def test_list_views_read_for_a_farm_user(self):
        # What the web client does when it opens each list: search_read of the list's fields.
        self.sync._push_registry()
        for model, types in VIEWS.items():
            if "list" not in types:
                continue
            user = self.manager_a if model == "sd.api.key" else self.user_a
            records = self.env[model].with_user(user)
            fields_ = records.get_views([(False, "list")])["models"][model]["fields"]
            names = [name for name in fields_ if name in records._fields]
            records.search_read([], names, limit=80)

    def test_menus_and_actions_resolve(self):
        root = self.env.ref("smart_dairy_iot.menu_dairy_root")
        self.assertEqual(root.name, "Dairy")
        menus = self.env["ir.ui.menu"].with_user(self.user_a).search([("id", "child_of", root.id)])
        self.assertIn(self.env.ref("smart_dairy_iot.menu_dairy_alerts"), menus)
        self.assertNotIn(self.env.ref("smart_dairy_iot.menu_dairy_api_keys"), menus._filter_visible_menus())

    def test_smart_buttons_open_actions(self):
        animal = self.farm_a.animal_ids[0]
        for method in ("action_open_milk", "action_open_alerts", "action_open_readings"):
            action = getattr(animal, method)()
            self.env[action["res_model"]].search(action["domain"])
        device = self.farm_a.device_ids[0]
        for method in ("action_open_alerts", "action_open_readings"):
            action = getattr(device, method)()
            self.env[action["res_model"]].search(action["domain"])
