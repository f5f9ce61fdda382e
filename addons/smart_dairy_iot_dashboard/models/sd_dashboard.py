"""The dashboard's one data call: everything the screen shows, computed in SQL over the aggregates.

It reads the same `iot` aggregates as smart_dairy_iot's reporting models (sd.report.*), directly
rather than through their views, so that the farm filter reaches the aggregates' (farm_id, bucket)
indexes (an `= ANY(farms)` on a joined farm column would not), and maps devices to cows and zones
through Odoo's own registry (sd.device), the master that iot.devices is pushed from. The farms are
those the user's record rules let the ORM find; alerts go through the ORM.
"""

from datetime import timedelta

from odoo import api, models
from odoo.exceptions import AccessError, UserError
from odoo.tools import SQL

PERIODS = {"7d": 7, "30d": 30, "90d": 90}
DEFAULT_PERIOD = "30d"

# Buckets are aligned like TimescaleDB's time_bucket (timescale/0004_rollups.postgres.sql): days are
# UTC days counted from this origin, so "today" here is the same bucket the rollups write.
BUCKET_ORIGIN = "2000-01-03 00:00:00+00"

ACTIVITY = "activity_index"
RUMINATION = "rumination_minutes"
AIR_TEMPERATURE = "temperature_c"
HUMIDITY = "humidity_percent"

# THI classes, highest first: 68 is where high-producing cows start to lose milk (Zimbelman et al.
# 2009); 72 mild, 79 moderate, 89 severe heat stress (Armstrong 1994). Same table as the ingestor.
THI_LEVELS = ((89.0, "severe"), (79.0, "moderate"), (72.0, "mild"), (68.0, "onset"))
THI_DAYS = 7
# A zone whose newest complete reading hour is older than this has no "now" (sensor down).
THI_NOW_MAX_AGE = timedelta(hours=3)

# A cow is judged against her own baseline: the mean of her daily aggregates over BASELINE_DAYS
# full days ending before yesterday, so the last-24-hours window never overlaps it.
BASELINE_DAYS = 7
RECENT_WINDOW = timedelta(hours=24)
# Oestrus: activity two to four times baseline for 8-18 h (seed 000 section 3.1). Several hours
# at twice the baseline, not one, so a single noisy hour is not called a heat.
HEAT_ACTIVITY_RATIO = 2.0
HEAT_MIN_HOURS = 3
# Sick cows ruminate 30-50 % less (seed 000 section 3.1): flag from 30 % down.
RUMINATION_DROP_RATIO = 0.7
# Half the usual movement: lameness or illness.
ACTIVITY_LOW_RATIO = 0.5
# Mastitis costs 10-20 % of yield (seed 000 section 3.1): flag yesterday's milk 20 % under her average.
MILK_DROP_RATIO = 0.8
LOW_BATTERY_PERCENT = 20

# Alert categories that mean a cow is in heat, whichever detector raised them.
HEAT_ALERT_CATEGORIES = ("reproduction",)
SEVERITIES = ("critical", "warning", "info")
ALERT_LIST_LIMIT = 20
ATTENTION_LIMIT = 25
# Why a cow is on the attention list, most urgent first; the score orders the list.
REASON_SCORES = {"critical_alert": 4, "rumination_drop": 3, "milk_drop": 2, "activity_low": 2, "heat": 1}

IOT_RELATIONS = ("iot.milk_production_daily", "iot.sensor_data_hourly", "iot.sensor_data_daily",
                 "iot.device_current_status")


def thi_level(value):
    """The heat-stress class of a THI value, False below the onset threshold."""
    return next((name for threshold, name in THI_LEVELS if value >= threshold), False)


def _day(dt):
    return dt.strftime("%Y-%m-%d")


def _ratio(value, base):
    return round(value / base, 3) if value is not None and base else None


class SdDashboard(models.AbstractModel):
    _name = "sd.dashboard"
    _description = "Dairy dashboard data"

    @api.model
    def get_data(self, farm_id=False, period=DEFAULT_PERIOD):
        """Return everything the dashboard shows for one farm (or all the user's farms) in one call."""
        if period not in PERIODS:
            raise UserError(self.env._("Unknown period %s.", period))
        # The farms this user may see are those the record rules let the ORM find; every SQL query
        # below is restricted to them, so raw SQL never reaches past the rules.
        farms = self.env["sd.farm"].search([])
        if farm_id:
            if farm_id not in farms.ids:
                raise AccessError(self.env._("You are not allowed to see this farm."))
            farm_ids = [farm_id]
        else:
            farm_ids = farms.ids
        return self._dashboard_data(farms, farm_ids, period, farm_id or False)

    # ------------------------------------------------------------------------------------------
    # assembly

    def _dashboard_data(self, farms, farm_ids, period, farm_id):
        days = PERIODS[period]
        self.env.cr.execute(SQL("SELECT now(), date_bin('1 day', now(), %s::timestamptz)", BUCKET_ORIGIN))
        now, today = self.env.cr.fetchone()
        iot_ready = self._iot_ready()
        ctx = {"farm_ids": farm_ids, "now": now, "today": today, "days": days}

        milk = self._milk(ctx) if iot_ready else self._no_milk(ctx)
        cows = self._cow_signals(ctx) if iot_ready else []
        milk_drops = self._milk_drops(ctx) if iot_ready else {}
        thi = self._thi(ctx) if iot_ready else {"zones": [], "now": False}
        devices = self._devices(ctx) if iot_ready else self._no_devices()
        alerts = self._alerts(ctx)

        heat_ids = {c["animal_id"] for c in cows if c["heat"]} | alerts["heat_animal_ids"]
        attention = self._attention(cows, milk_drops, alerts["critical_animal_ids"], heat_ids)
        kpis = {
            **milk["kpis"],
            "alerts_open": alerts["open"],
            "cows_in_heat": len(heat_ids),
            "heat_animal_ids": sorted(heat_ids),
            "thi_now": thi["now"],
            "devices": devices,
        }
        has_data = bool(milk["daily"] or cows or thi["zones"] or devices["total"] or alerts["rows"]
                        or any(alerts["open"].values()))
        return {
            "farms": [{"id": f.id, "name": f.display_name} for f in farms],
            "farm_id": farm_id,
            "farm_ids": farm_ids,
            "period": period,
            "periods": list(PERIODS),
            "days": days,
            "today": _day(today),
            "generated_at": now.strftime("%Y-%m-%d %H:%M:%S"),
            "iot_ready": iot_ready,
            "has_data": has_data,
            "kpis": kpis,
            "charts": {
                "milk_daily": milk["daily"],
                "thi_zones": thi["zones"],
                "outliers": [c for c in cows if c["activity_ratio"] is not None
                             and c["rumination_ratio"] is not None],
                "alerts_daily": alerts["daily"],
            },
            "alerts": alerts["rows"],
            "attention": attention["rows"],
            "attention_total": attention["total"],
            "attention_ids": attention["ids"],
            "thresholds": {
                "thi": [{"value": v, "level": name} for v, name in THI_LEVELS],
                "heat_activity_ratio": HEAT_ACTIVITY_RATIO,
                "rumination_drop_ratio": RUMINATION_DROP_RATIO,
                "activity_low_ratio": ACTIVITY_LOW_RATIO,
                "low_battery_percent": LOW_BATTERY_PERCENT,
            },
        }

    def _iot_ready(self):
        """Whether the ingestor's migrations created the aggregates in this database."""
        self.env.cr.execute(SQL(
            "SELECT bool_and(to_regclass(r) IS NOT NULL) FROM unnest(%s::text[]) r", list(IOT_RELATIONS)))
        return bool(self.env.cr.fetchone()[0])

    # ------------------------------------------------------------------------------------------
    # milk

    def _no_milk(self, ctx):
        return {"daily": [], "kpis": {"milk_today_kg": 0.0, "milk_avg_7d_kg": 0.0, "milk_vs_avg_pct": None,
                                      "cows_milked_today": 0, "avg_yield_per_cow_kg": 0.0}}

    def _milk(self, ctx):
        """Herd milk per day over the period, and today's figures against the 7 days before."""
        # One row per cow and day in the aggregate: count(animal_id) counts cows without the sort a
        # count(DISTINCT) would need.
        today = ctx["today"]
        start = today - timedelta(days=max(ctx["days"] - 1, BASELINE_DAYS))
        self.env.cr.execute(SQL(
            """
            SELECT bucket, sum(total_yield_kg), count(animal_id), sum(milking_count)
              FROM iot.milk_production_daily
             WHERE farm_id = ANY(%(farms)s) AND bucket >= %(start)s AND bucket <= %(today)s
             GROUP BY bucket
             ORDER BY bucket
            """,
            farms=ctx["farm_ids"], start=start, today=today,
        ))
        by_day = {bucket: (kg or 0.0, cows, sessions) for bucket, kg, cows, sessions in self.env.cr.fetchall()}
        period_start = today - timedelta(days=ctx["days"] - 1)
        daily = [{"day": _day(b), "kg": round(kg, 1), "cows": cows, "sessions": int(sessions or 0)}
                 for b, (kg, cows, sessions) in sorted(by_day.items()) if b >= period_start]
        # Average over the days that had milkings: a farm that started last week is not "down".
        previous = [kg for b, (kg, _c, _s) in by_day.items() if today - timedelta(days=BASELINE_DAYS) <= b < today]
        avg_7d = sum(previous) / len(previous) if previous else 0.0
        kg_today, cows_today, _s = by_day.get(today, (0.0, 0, 0))
        return {
            "daily": daily,
            "kpis": {
                "milk_today_kg": round(kg_today, 1),
                "milk_avg_7d_kg": round(avg_7d, 1),
                "milk_vs_avg_pct": round(100.0 * kg_today / avg_7d, 1) if avg_7d else None,
                "cows_milked_today": cows_today,
                "avg_yield_per_cow_kg": round(kg_today / cows_today, 2) if cows_today else 0.0,
            },
        }

    def _milk_drops(self, ctx):
        """Cows whose milk yesterday fell under MILK_DROP_RATIO of their own average: {animal: ratio}."""
        yesterday = ctx["today"] - timedelta(days=1)
        self.env.cr.execute(SQL(
            """
            SELECT animal_id, last_kg / base_kg
              FROM (SELECT animal_id,
                           sum(total_yield_kg) FILTER (WHERE bucket = %(yesterday)s) AS last_kg,
                           sum(total_yield_kg) FILTER (WHERE bucket < %(yesterday)s)
                             / nullif(count(DISTINCT bucket) FILTER (WHERE bucket < %(yesterday)s), 0) AS base_kg
                      FROM iot.milk_production_daily
                     WHERE farm_id = ANY(%(farms)s) AND animal_id IS NOT NULL
                       AND bucket >= %(start)s AND bucket <= %(yesterday)s
                     GROUP BY animal_id) m
             WHERE base_kg > 0 AND last_kg < %(ratio)s * base_kg
            """,
            farms=ctx["farm_ids"], yesterday=yesterday, start=yesterday - timedelta(days=BASELINE_DAYS),
            ratio=MILK_DROP_RATIO,
        ))
        return {animal_id: round(ratio, 3) for animal_id, ratio in self.env.cr.fetchall()}

    # ------------------------------------------------------------------------------------------
    # cows: activity and rumination against their own baseline

    def _cow_signals(self, ctx):
        """Per cow with a collar: last-24-hours activity and rumination as ratios of her baseline."""
        today = ctx["today"]
        base_end = today - timedelta(days=1)
        # Aggregated per collar and metric first (a hash aggregate into a few thousand groups, no
        # sort of the hourly rows), then per cow: a cow wearing two collars counts once.
        self.env.cr.execute(SQL(
            """
            WITH base AS (
                SELECT d.device_uid, d.metric_name, avg(d.avg_value) AS mean
                  FROM iot.sensor_data_daily d
                 WHERE d.farm_id = ANY(%(farms)s) AND d.metric_name IN (%(activity)s, %(rumination)s)
                   AND d.bucket >= %(base_start)s AND d.bucket < %(base_end)s
                 GROUP BY 1, 2
            ), recent AS (
                SELECT h.device_uid, h.metric_name, avg(h.avg_value) AS mean, max(b.mean) AS base,
                       count(*) FILTER (WHERE h.avg_value >= %(heat)s * b.mean) AS high_hours
                  FROM iot.sensor_data_hourly h
                  LEFT JOIN base b ON b.device_uid = h.device_uid AND b.metric_name = h.metric_name
                 WHERE h.farm_id = ANY(%(farms)s) AND h.metric_name IN (%(activity)s, %(rumination)s)
                   AND h.bucket >= %(recent_start)s AND h.bucket <= %(now)s
                 GROUP BY 1, 2
            )
            SELECT c.animal_id,
                   avg(r.mean) FILTER (WHERE r.metric_name = %(activity)s),
                   avg(r.base) FILTER (WHERE r.metric_name = %(activity)s),
                   coalesce(max(r.high_hours) FILTER (WHERE r.metric_name = %(activity)s), 0),
                   avg(r.mean) FILTER (WHERE r.metric_name = %(rumination)s),
                   avg(r.base) FILTER (WHERE r.metric_name = %(rumination)s)
              FROM recent r
              JOIN sd_device c ON c.device_uid = r.device_uid AND c.animal_id IS NOT NULL
             WHERE c.farm_id = ANY(%(farms)s)
             GROUP BY c.animal_id
             ORDER BY c.animal_id
            """,
            farms=ctx["farm_ids"], activity=ACTIVITY, rumination=RUMINATION,
            base_start=base_end - timedelta(days=BASELINE_DAYS), base_end=base_end,
            recent_start=ctx["now"] - RECENT_WINDOW, now=ctx["now"], heat=HEAT_ACTIVITY_RATIO,
        ))
        rows = self.env.cr.fetchall()
        tags = self._animal_labels([r[0] for r in rows])
        cows = []
        for animal_id, act, act_base, heat_hours, rum, rum_base in rows:
            activity_ratio, rumination_ratio = _ratio(act, act_base), _ratio(rum, rum_base)
            cows.append({
                "animal_id": animal_id,
                "label": tags.get(animal_id, str(animal_id)),
                "activity": round(act, 1) if act is not None else None,
                "activity_base": round(act_base, 1) if act_base else None,
                "activity_ratio": activity_ratio,
                "heat_hours": heat_hours,
                "rumination": round(rum, 1) if rum is not None else None,
                "rumination_base": round(rum_base, 1) if rum_base else None,
                "rumination_ratio": rumination_ratio,
                "heat": heat_hours >= HEAT_MIN_HOURS,
                "rumination_drop": rumination_ratio is not None and rumination_ratio <= RUMINATION_DROP_RATIO,
                "activity_low": activity_ratio is not None and activity_ratio <= ACTIVITY_LOW_RATIO,
            })
        return cows

    def _animal_labels(self, animal_ids):
        animals = self.env["sd.animal"].browse(animal_ids).exists()
        return {a.id: a.ear_tag or a.display_name for a in animals}

    def _attention(self, cows, milk_drops, critical_ids, heat_ids):
        """The cows to look at today, most urgent first, each with why."""
        reasons = {}

        def add(animal_id, code, detail=None):
            reasons.setdefault(animal_id, {})[code] = detail

        for cow in cows:
            if cow["rumination_drop"]:
                add(cow["animal_id"], "rumination_drop", cow["rumination_ratio"])
            if cow["activity_low"]:
                add(cow["animal_id"], "activity_low", cow["activity_ratio"])
        for animal_id in heat_ids:
            add(animal_id, "heat")
        for animal_id, ratio in milk_drops.items():
            add(animal_id, "milk_drop", ratio)
        for animal_id in critical_ids:
            add(animal_id, "critical_alert")
        labels = self._animal_labels(list(reasons))
        rows = [{
            "animal_id": animal_id,
            "label": labels.get(animal_id, str(animal_id)),
            "score": sum(REASON_SCORES[code] for code in found),
            "reasons": [{"code": code, "ratio": found[code]}
                        for code in sorted(found, key=lambda c: -REASON_SCORES[c])],
        } for animal_id, found in reasons.items() if animal_id in labels]
        rows.sort(key=lambda r: (-r["score"], r["label"]))
        return {"rows": rows[:ATTENTION_LIMIT], "total": len(rows), "ids": [r["animal_id"] for r in rows]}

    # ------------------------------------------------------------------------------------------
    # climate

    def _thi(self, ctx):
        """THI per zone and hour over THI_DAYS from the zone sensors' hourly temperature and humidity."""
        self.env.cr.execute(SQL(
            "SELECT device_uid, zone_id FROM sd_device "
            "WHERE farm_id = ANY(%s) AND zone_id IS NOT NULL AND animal_id IS NULL", ctx["farm_ids"]))
        sensors = self.env.cr.fetchall()
        # The few zone sensors' uids lead the aggregates' (device_uid, metric_name, bucket) index: a
        # plan that cannot degrade into scanning every collar's rows once per sensor.
        self.env.cr.execute(SQL(
            """
            WITH sensor AS (
                SELECT * FROM unnest(%(uids)s::text[], %(zones)s::int[]) AS s(device_uid, zone_id)
            ), hourly AS (
                SELECT s.zone_id, h.bucket,
                       avg(h.avg_value) FILTER (WHERE h.metric_name = %(temp)s) AS t,
                       avg(h.avg_value) FILTER (WHERE h.metric_name = %(rh)s) AS rh
                  FROM iot.sensor_data_hourly h JOIN sensor s ON s.device_uid = h.device_uid
                 WHERE h.device_uid = ANY(%(uids)s) AND h.metric_name IN (%(temp)s, %(rh)s)
                   AND h.farm_id = ANY(%(farms)s) AND h.bucket >= %(start)s AND h.bucket <= %(now)s
                 GROUP BY 1, 2
            )
            SELECT zone_id, bucket, (1.8 * t + 32) - (0.55 - 0.0055 * rh) * (1.8 * t - 26)
              FROM hourly
             WHERE t IS NOT NULL AND rh IS NOT NULL
             ORDER BY zone_id, bucket
            """,
            uids=[uid for uid, _zone in sensors], zones=[zone for _uid, zone in sensors],
            farms=ctx["farm_ids"], temp=AIR_TEMPERATURE, rh=HUMIDITY,
            start=ctx["now"] - timedelta(days=THI_DAYS), now=ctx["now"],
        ))
        series = {}
        for zone_id, bucket, value in self.env.cr.fetchall():
            series.setdefault(zone_id, []).append((bucket, value))
        zones = self.env["sd.zone"].browse(list(series)).exists()
        names = {z.id: z.display_name for z in zones}
        result, now_best = [], False
        for zone_id, points in series.items():
            if zone_id not in names:
                continue
            last_bucket, last_value = points[-1]
            current = round(last_value, 1) if ctx["now"] - last_bucket <= THI_NOW_MAX_AGE else None
            result.append({
                "zone_id": zone_id,
                "name": names[zone_id],
                "now": current,
                "level": thi_level(current) if current is not None else False,
                "points": [{"t": b.strftime("%Y-%m-%d %H:%M:%S"), "thi": round(v, 1)} for b, v in points],
            })
            if current is not None and (not now_best or current > now_best["value"]):
                now_best = {"value": current, "level": thi_level(current), "zone_id": zone_id,
                            "zone": names[zone_id]}
        result.sort(key=lambda z: z["name"])
        return {"zones": result, "now": now_best}

    # ------------------------------------------------------------------------------------------
    # devices

    def _no_devices(self):
        return {"total": 0, "offline": 0, "low_battery": 0, "offline_ids": [], "low_battery_ids": []}

    def _devices(self, ctx):
        """Devices offline or on low battery, with the Odoo ids to drill down to."""
        self.env.cr.execute(SQL(
            """
            SELECT count(*),
                   count(*) FILTER (WHERE s.status = 'offline'),
                   count(*) FILTER (WHERE s.battery_level < %(low)s),
                   coalesce(array_agg(d.id ORDER BY d.id)
                            FILTER (WHERE s.status = 'offline' AND d.id IS NOT NULL), '{}'),
                   coalesce(array_agg(d.id ORDER BY d.id)
                            FILTER (WHERE s.battery_level < %(low)s AND d.id IS NOT NULL), '{}')
              FROM iot.device_current_status s
              LEFT JOIN sd_device d ON d.device_uid = s.device_uid
             WHERE s.farm_id = ANY(%(farms)s)
            """,
            farms=ctx["farm_ids"], low=LOW_BATTERY_PERCENT,
        ))
        total, offline, low, offline_ids, low_ids = self.env.cr.fetchone()
        return {"total": total, "offline": offline, "low_battery": low,
                "offline_ids": offline_ids, "low_battery_ids": low_ids}

    # ------------------------------------------------------------------------------------------
    # alerts (Odoo records: the ORM applies the record rules)

    def _alerts(self, ctx):
        Alert = self.env["sd.alert"]
        farm_domain = [("farm_id", "in", ctx["farm_ids"])]
        unresolved = farm_domain + [("status", "in", ("open", "acknowledged"))]
        open_counts = dict.fromkeys(SEVERITIES, 0)
        for severity, count in Alert._read_group(farm_domain + [("status", "=", "open")], ["severity"], ["__count"]):
            open_counts[severity] = count
        open_counts["total"] = sum(open_counts[s] for s in SEVERITIES)

        heat_ids, critical_ids = set(), set()
        for animal, category, severity in Alert._read_group(
                unresolved + [("animal_id", "!=", False)], ["animal_id", "category", "severity"]):
            if category in HEAT_ALERT_CATEGORIES:
                heat_ids.add(animal.id)
            if severity == "critical":
                critical_ids.add(animal.id)

        rows = Alert.search(unresolved, order="time desc, id desc", limit=ALERT_LIST_LIMIT)
        categories = dict(Alert._fields["category"]._description_selection(self.env)) \
            if Alert._fields["category"].type == "selection" else {}
        alert_rows = [{
            "id": a.id,
            "time": a.time.strftime("%Y-%m-%d %H:%M:%S") if a.time else False,
            "severity": a.severity,
            "category": a.category,
            "category_label": categories.get(a.category, a.category),
            "status": a.status,
            "message": a.message or "",
            "animal_id": a.animal_id.id,
            "animal": a.animal_id.ear_tag or a.animal_id.display_name if a.animal_id else False,
            "zone": a.zone_id.display_name if a.zone_id else False,
        } for a in rows]

        start = ctx["today"] - timedelta(days=ctx["days"] - 1)
        daily = {}
        # UTC days, like every other day of the screen.
        grouped = Alert.with_context(tz="UTC")._read_group(
            farm_domain + [("time", ">=", start.replace(tzinfo=None))], ["time:day", "category"], ["__count"])
        for day, category, count in grouped:
            daily.setdefault(category, {})[_day(day)] = count
        return {
            "open": open_counts,
            "rows": alert_rows,
            "daily": [{"category": cat, "label": categories.get(cat, cat), "counts": counts}
                      for cat, counts in sorted(daily.items(), key=lambda kv: str(kv[0]))],
            "heat_animal_ids": heat_ids,
            "critical_animal_ids": critical_ids,
        }
