"""get_data against hand-computed figures from aggregate rows written by the tests."""

import json
from datetime import timedelta

from odoo.exceptions import AccessError, UserError
from odoo.tests import tagged

from ..models.sd_alert import BUS_NOTIFICATION
from ..models.sd_dashboard import ACTIVITY, AIR_TEMPERATURE, HUMIDITY, RUMINATION
from .common import DashboardCase


@tagged("post_install", "-at_install")
class TestDashboardData(DashboardCase):
    def test_milk_today_against_the_7_day_average(self):
        c1, c2, c3 = self.cows
        for days_ago in range(1, 8):
            self.milk(c1, days_ago, 20)
            self.milk(c2, days_ago, 20)
            self.milk(c3, days_ago, 5 if days_ago == 3 else 20)
        self.milk(c1, 10, 20)  # in the 30-day chart, not in the average
        self.milk(c1, 0, 22)
        self.milk(c2, 0, 18, sessions=1)
        self.milk(self.cow_b, 0, 100)  # another farm

        data = self.get_data(self.farm_a)
        kpis = data["kpis"]
        # Herd per day: 60 on six days and 45 on one -> 405 / 7 = 57.857
        self.assertEqual(kpis["milk_today_kg"], 40.0)
        self.assertEqual(kpis["milk_avg_7d_kg"], 57.9)
        self.assertEqual(kpis["milk_vs_avg_pct"], 69.1)  # 100 * 40 / 57.857
        self.assertEqual(kpis["cows_milked_today"], 2)
        self.assertEqual(kpis["avg_yield_per_cow_kg"], 20.0)
        daily = data["charts"]["milk_daily"]
        self.assertEqual(len(daily), 9)
        self.assertEqual(daily[0], {"day": (self.today - timedelta(days=10)).strftime("%Y-%m-%d"),
                                    "kg": 20.0, "cows": 1, "sessions": 2})
        self.assertEqual(daily[-1], {"day": data["today"], "kg": 40.0, "cows": 2, "sessions": 3})
        self.assertEqual(next(d for d in daily if d["kg"] == 45.0)["day"],
                         (self.today - timedelta(days=3)).strftime("%Y-%m-%d"))

        week = self.get_data(self.farm_a, "7d")
        self.assertEqual([d["day"] for d in week["charts"]["milk_daily"]],
                         [(self.today - timedelta(days=n)).strftime("%Y-%m-%d") for n in range(6, -1, -1)])
        self.assertEqual(week["kpis"]["milk_avg_7d_kg"], 57.9)

    def test_milk_drop_against_the_cow_own_average(self):
        c1, c2, _c3 = self.cows
        for days_ago in range(2, 9):
            self.milk(c1, days_ago, 30)
            self.milk(c2, days_ago, 30)
        self.milk(c1, 1, 21)  # 70 % of her average: flagged
        self.milk(c2, 1, 27)  # 90 %: not flagged
        data = self.get_data(self.farm_a)
        self.assertEqual(data["attention"], [{
            "animal_id": c1.id, "label": "TA-1", "score": 2,
            "reasons": [{"code": "milk_drop", "ratio": 0.7}],
        }])

    def test_heat_rumination_and_activity_against_the_cow_own_baseline(self):
        c1, c2, _c3 = self.cows
        col1, col2, _col3 = self.collars
        for days_ago in range(2, 9):  # the 7 days before yesterday
            self.daily(col1, ACTIVITY, days_ago, 50)
            self.daily(col1, RUMINATION, days_ago, 500)
            self.daily(col2, ACTIVITY, days_ago, 50)
            self.daily(col2, RUMINATION, days_ago, 500)
        self.daily(col1, ACTIVITY, 1, 1000)  # yesterday: not part of the baseline
        for hours_ago in range(24):
            self.hourly(col1, ACTIVITY, hours_ago, 120 if hours_ago < 4 else 50)
            self.hourly(col1, RUMINATION, hours_ago, 500)
            self.hourly(col2, ACTIVITY, hours_ago, 20)
            self.hourly(col2, RUMINATION, hours_ago, 300)
        self.hourly(col1, ACTIVITY, 30, 1000)  # older than 24 h: ignored

        data = self.get_data(self.farm_a)
        cows = {c["animal_id"]: c for c in data["charts"]["outliers"]}
        self.assertEqual(set(cows), {c1.id, c2.id})
        # c1: (4 x 120 + 20 x 50) / 24 = 61.67 against 50, four hours at >= 2 x 50
        self.assertEqual(cows[c1.id]["activity"], 61.7)
        self.assertEqual(cows[c1.id]["activity_ratio"], 1.233)
        self.assertEqual(cows[c1.id]["heat_hours"], 4)
        self.assertTrue(cows[c1.id]["heat"])
        self.assertEqual(cows[c1.id]["rumination_ratio"], 1.0)
        # c2: rumination 300 / 500, activity 20 / 50
        self.assertEqual(cows[c2.id]["rumination_ratio"], 0.6)
        self.assertEqual(cows[c2.id]["activity_ratio"], 0.4)
        self.assertTrue(cows[c2.id]["rumination_drop"])
        self.assertTrue(cows[c2.id]["activity_low"])
        self.assertFalse(cows[c2.id]["heat"])

        self.assertEqual(data["kpis"]["cows_in_heat"], 1)
        self.assertEqual(data["kpis"]["heat_animal_ids"], [c1.id])
        self.assertEqual([(r["label"], [x["code"] for x in r["reasons"]]) for r in data["attention"]],
                         [("TA-2", ["rumination_drop", "activity_low"]), ("TA-1", ["heat"])])
        self.assertEqual(data["attention_ids"], [c2.id, c1.id])

    def test_thi_per_zone_from_hourly_temperature_and_humidity(self):
        self.hourly(self.env_a1, AIR_TEMPERATURE, 1, 30)
        self.hourly(self.env_a1, HUMIDITY, 1, 70)  # (54 + 32) - (0.55 - 0.385) (54 - 26) = 81.38
        self.hourly(self.env_a1, AIR_TEMPERATURE, 30, 20)
        self.hourly(self.env_a1, HUMIDITY, 30, 40)  # 68 - 0.33 x 10 = 64.7
        self.hourly(self.env_a1, AIR_TEMPERATURE, 2, 35)  # no humidity that hour: no THI
        self.hourly(self.env_a1, AIR_TEMPERATURE, 8 * 24, 30)
        self.hourly(self.env_a1, HUMIDITY, 8 * 24, 70)  # older than 7 days
        self.hourly(self.env_a2, AIR_TEMPERATURE, 5, 25)
        self.hourly(self.env_a2, HUMIDITY, 5, 60)  # 77 - 0.22 x 19 = 72.82, but 5 hours old

        data = self.get_data(self.farm_a)
        zones = data["charts"]["thi_zones"]
        self.assertEqual([z["name"] for z in zones], ["Pen 1", "Pen 2"])
        self.assertEqual([p["thi"] for p in zones[0]["points"]], [64.7, 81.4])
        self.assertEqual((zones[0]["now"], zones[0]["level"]), (81.4, "moderate"))
        self.assertEqual([p["thi"] for p in zones[1]["points"]], [72.8])
        self.assertEqual((zones[1]["now"], zones[1]["level"]), (None, False))
        self.assertEqual(data["kpis"]["thi_now"], {"value": 81.4, "level": "moderate",
                                                   "zone_id": self.zone_a1.id, "zone": "Pen 1"})

    def test_devices_offline_or_on_low_battery(self):
        col1, col2, _col3 = self.collars
        self.device_state(col1, 1, 80)  # online
        self.device_state(col2, 120, 15)  # silent for 24 intervals: offline, and low
        self.device_state(self.env_a1, 10, 50)  # late (degraded), not offline
        self.device_state(self.collar_b, 600, 5)  # another farm
        devices = self.get_data(self.farm_a)["kpis"]["devices"]
        self.assertEqual(devices, {"total": 3, "offline": 1, "low_battery": 1,
                                   "offline_ids": [col2.id], "low_battery_ids": [col2.id]})

    def test_alerts_by_severity_list_and_days(self):
        c1, _c2, c3 = self.cows
        critical = self.alert(self.farm_a, "critical", "health", animal=c1, hours_ago=1)
        device = self.alert(self.farm_a, "warning", "device", hours_ago=2)
        heat = self.alert(self.farm_a, "warning", "reproduction", animal=c3, hours_ago=3)
        acked = self.alert(self.farm_a, "info", "environment", status="acknowledged", days_ago=1)
        self.alert(self.farm_a, "warning", "feeding", status="resolved", days_ago=2)
        self.alert(self.farm_b, "critical", "health", animal=self.cow_b)

        data = self.get_data(self.farm_a, "7d")
        self.assertEqual(data["kpis"]["alerts_open"], {"critical": 1, "warning": 2, "info": 0, "total": 3})
        self.assertEqual([a["id"] for a in data["alerts"]], [critical.id, device.id, heat.id, acked.id])
        self.assertEqual(data["alerts"][0]["animal"], "TA-1")
        self.assertEqual(data["alerts"][0]["category_label"], "Health")
        # An unresolved reproduction alert means the cow is in heat even without collar data.
        self.assertEqual(data["kpis"]["heat_animal_ids"], [c3.id])
        self.assertEqual([(r["label"], r["reasons"][0]["code"]) for r in data["attention"]],
                         [("TA-1", "critical_alert"), ("TA-3", "heat")])

        def day(**delta):
            return (self.now - timedelta(**delta)).strftime("%Y-%m-%d")

        expected = {}
        for category, delta in (("device", {"hours": 2}), ("environment", {"days": 1}), ("health", {"hours": 1}),
                                ("feeding", {"days": 2}), ("reproduction", {"hours": 3})):
            expected.setdefault(category, {})[day(**delta)] = 1
        self.assertEqual({s["category"]: s["counts"] for s in data["charts"]["alerts_daily"]}, expected)

    def test_acknowledge_and_resolve_in_place(self):
        alert = self.alert(self.farm_a, "critical", "health", animal=self.cows[0])
        self.assertEqual(self.get_data(user=self.user_a)["kpis"]["alerts_open"]["critical"], 1)

        alert.with_user(self.user_a).action_acknowledge()
        data = self.get_data(user=self.user_a)
        self.assertEqual(data["kpis"]["alerts_open"]["critical"], 0)
        self.assertEqual([(a["id"], a["status"]) for a in data["alerts"]], [(alert.id, "acknowledged")])

        alert.with_user(self.user_a).action_resolve()
        self.assertEqual(self.get_data(user=self.user_a)["alerts"], [])
        self.assertEqual(self._dashboard_notifications(), [[self.farm_a.id], [self.farm_a.id]])

    def test_pulled_alerts_notify_open_dashboards(self):
        self.env["sd.alert"]._upsert_from_iot([{
            "alert_id": "test-pull-1", "time": self.now.replace(tzinfo=None), "rule_code": "fever",
            "farm_id": self.farm_a.id, "severity": "critical", "category": "health", "source_type": "animal",
            "source_id": str(self.cows[0].id), "animal_id": self.cows[0].id, "zone_id": None,
            "message": "Fever", "details": {}, "status": "open",
        }])
        self.assertEqual(self._dashboard_notifications(), [[self.farm_a.id]])
        self.assertEqual(self.get_data(self.farm_a)["kpis"]["alerts_open"]["critical"], 1)

    def _dashboard_notifications(self):
        values = self.env.cr.precommit.data.get("bus.bus.values", [])
        messages = [json.loads(v["message"]) for v in values]
        return [m["payload"]["farm_ids"] for m in messages if m["type"] == BUS_NOTIFICATION]


@tagged("post_install", "-at_install")
class TestDashboardAccess(DashboardCase):
    def test_a_user_of_farm_a_gets_nothing_of_farm_b(self):
        self.milk(self.cows[0], 0, 10)
        self.milk(self.cow_b, 0, 100)
        self.alert(self.farm_a, "warning", "health", animal=self.cows[0])
        self.alert(self.farm_b, "critical", "health", animal=self.cow_b)
        self.device_state(self.collar_b, 600, 5)

        data = self.get_data(user=self.user_a)
        self.assertEqual(data["farms"], [{"id": self.farm_a.id, "name": "Farm A"}])
        self.assertEqual(data["farm_ids"], [self.farm_a.id])
        self.assertEqual(data["kpis"]["milk_today_kg"], 10.0)
        self.assertEqual(data["kpis"]["alerts_open"], {"critical": 0, "warning": 1, "info": 0, "total": 1})
        self.assertEqual(data["kpis"]["devices"]["total"], 0)
        self.assertEqual([a["animal"] for a in data["alerts"]], ["TA-1"])
        with self.assertRaises(AccessError):
            self.get_data(self.farm_b, user=self.user_a)

        data_b = self.get_data(user=self.user_b)
        self.assertEqual(data_b["kpis"]["milk_today_kg"], 100.0)
        self.assertEqual(data_b["kpis"]["alerts_open"]["critical"], 1)
        self.assertEqual(data_b["kpis"]["devices"]["offline_ids"], [self.collar_b.id])

    def test_an_empty_farm_works(self):
        data = self.get_data(self.farm_empty)
        self.assertTrue(data["iot_ready"])
        self.assertFalse(data["has_data"])
        self.assertEqual(data["farm_ids"], [self.farm_empty.id])
        self.assertEqual(data["kpis"]["milk_today_kg"], 0.0)
        self.assertIsNone(data["kpis"]["milk_vs_avg_pct"])
        self.assertEqual(data["kpis"]["cows_milked_today"], 0)
        self.assertEqual(data["kpis"]["alerts_open"]["total"], 0)
        self.assertFalse(data["kpis"]["thi_now"])
        self.assertEqual(data["kpis"]["devices"]["total"], 0)
        self.assertEqual(data["charts"], {"milk_daily": [], "thi_zones": [], "outliers": [], "alerts_daily": []})
        self.assertEqual((data["alerts"], data["attention"]), ([], []))

    def test_an_unknown_period_is_refused(self):
        with self.assertRaises(UserError):
            self.get_data(self.farm_a, "1y")
