"""Built-in alert rules remember the definition shipped with them (sd.alert.rule.shipped_definition).

A rule imported before this version cannot say which definition it took. Every farm took the ones the
ingestor's migration 0007 seeded (0011 changed five of them later and added lameness and stuck_sensor),
so each built-in rule of those codes remembers its 0007 definition: one still equal to it was not
tuned, and the next push takes what iot holds now; one that differs was tuned here, and is kept with
a note in its chatter. Built-in rules of later codes remember their own definition (imported at most
days ago, not tuned). A farm whose rules were imported after 0011 counts as having tuned the rules 0011
changed: later shipped definitions of those reach it as notes, not silently.
"""

from odoo import SUPERUSER_ID, api
from odoo.addons.smart_dairy_iot.models.sd_alert_rule import canonical


def _rule(name, device_type, category, severity, combine, conditions, duration_s, suppression_s, max_per_hour):
    return {"name": name, "device_type": device_type, "category": category, "severity": severity,
            "combine": combine, "duration_s": duration_s, "suppression_s": suppression_s,
            "max_per_hour": max_per_hour, "auto_resolve": True,
            "conditions": [{"signal": signal, "metric": metric, "op": op, "value": float(value)}
                           for signal, metric, op, value in conditions]}


# timescale/0007_builtin_alert_rules.sql, as Odoo holds it (tests/test_builtin_rules.py compares them).
SHIPPED_0007 = {
    "heat_stress": _rule("Heat stress (THI)", "env_sensor", "heat_stress", "warning", "and",
                         [("thi", None, ">=", 72)], 1800, 21600, 20),
    "oestrus": _rule("Cow in heat (activity rise)", None, "reproduction", "info", "and",
                     [("ratio", "activity_index", ">=", 1.8)], 1800, 259200, 20),
    "fever": _rule("Fever", None, "health", "critical", "and",
                   [("value", "body_temperature_c", ">=", 39.5)], 1800, 43200, 20),
    "rumination_drop": _rule("Rumination drop", None, "health", "warning", "or",
                             [("ratio", "rumination_minutes", "<=", 0.75),
                              ("value", "rumination_minutes", "<", 300)], 7200, 43200, 20),
    "mastitis": _rule("Mastitis risk", None, "mastitis", "critical", "or",
                      [("ratio", "conductivity_ms", ">=", 1.25), ("value", "somatic_cell_count", ">=", 200000),
                       ("value", "blood_detected", ">=", 1)], 0, 86400, 20),
    "mastitis_yield": _rule("Mastitis risk (conductivity and yield)", None, "mastitis", "warning", "and",
                            [("ratio", "conductivity_ms", ">=", 1.15), ("ratio", "yield_kg", "<=", 0.9)],
                            0, 86400, 20),
    "yield_drop": _rule("Milk yield drop", None, "production", "warning", "and",
                        [("ratio", "yield_kg", "<=", 0.88)], 39600, 86400, 20),
    "device_offline": _rule("Device offline", None, "device", "warning", "and",
                            [("missed_intervals", None, ">=", 4)], 0, 21600, 50),
    "low_battery": _rule("Low battery", None, "device", "info", "and", [("battery", None, "<=", 20)], 0, 86400, 50),
    "weak_signal": _rule("Weak signal", None, "device", "info", "and",
                         [("signal_strength", None, "<=", -100)], 3600, 86400, 50),
    "anomaly": _rule("Unusual reading", None, "anomaly", "info", "or",
                     [("zscore", "*", ">=", 5), ("zscore", "*", "<=", -5)], 0, 21600, 10),
}


def migrate(cr, version):
    env = api.Environment(cr, SUPERUSER_ID, {})
    rules = env["sd.alert.rule"].with_context(active_test=False).search(
        [("builtin", "=", True), ("shipped_definition", "=", False)])
    for rule in rules:
        rule.shipped_definition = canonical(SHIPPED_0007.get(rule.code) or rule._definition())
