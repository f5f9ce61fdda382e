"""Registry push (Odoo -> iot) and alert pull (iot -> Odoo).

Both run from crons and buttons, in the caller's transaction, so the `iot` rows and Odoo's records
commit together. Each takes a transaction-level advisory lock first and skips when another run holds it.
"""

import logging
from datetime import timedelta

from odoo import api, fields, models
from odoo.tools import SQL

from .iot import ALERT_RULES, ANIMALS, API_KEYS, DEVICES, FARMS, PULL_LOCK, PUSH_LOCK, ZONES, try_lock

_logger = logging.getLogger(__name__)

PUSH_WATERMARK = "smart_dairy_iot.push_watermark"
PULL_WATERMARK_TIME = "smart_dairy_iot.pull_watermark_time"
PULL_WATERMARK_ID = "smart_dairy_iot.pull_watermark_alert_id"
PULL_LAG = "smart_dairy_iot.pull_lag_s"
# write_date is the writer's transaction start, not its commit time: a record written by a transaction
# that began before the last push but committed after it has a write_date below the watermark. Each push
# re-reads this much before its watermark; re-pushing an unchanged row changes nothing.
PUSH_OVERLAP = timedelta(minutes=10)
# Same for iot.alerts.updated_at written by the ingestor: rows newer than this are left for the next
# pull, so a row committed late by a concurrent transaction is not skipped.
DEFAULT_PULL_LAG_S = 10
PULL_PAGE = 1000


class SdIotSync(models.AbstractModel):
    _name = "sd.iot.sync"
    _description = "Synchronisation between Odoo and the iot schema"

    # ----- entry points -----

    @api.model
    def _cron_push_registry(self):
        return self.sudo()._push_registry()

    @api.model
    def _cron_pull_alerts(self):
        return self.sudo()._pull_alerts()

    # ----- registry push -----

    @api.model
    def _push_registry(self, full=False):
        """Push what changed since the watermark (everything when `full`); return changed rows per table,
        or None when another push holds the lock."""
        cr = self.env.cr
        if not try_lock(cr, PUSH_LOCK):
            _logger.info("registry push skipped: another push is running")
            return None
        params = self.env["ir.config_parameter"].sudo()
        watermark = params.get_param(PUSH_WATERMARK)
        since = None if full or not watermark else fields.Datetime.to_datetime(watermark) - PUSH_OVERLAP
        started = cr.now()
        # Built-in rules that later migrations seed or change in iot reach Odoo before rules are pushed.
        self.env["sd.alert.rule"]._import_from_iot(builtin_only=True)
        self.env.flush_all()
        changed = {
            "farms": self._push(FARMS, self._farm_rows(since), self._all("sd.farm", "id")),
            "zones": self._push(ZONES, self._zone_rows(since), self._all("sd.zone", "id")),
            "animals": self._push_animals(since),
            "devices": self._push(DEVICES, self._device_rows(since), self._all("sd.device", "device_uid")),
            "alert_rules": self._push(ALERT_RULES, self._rule_rows(since), self._all("sd.alert.rule", "code")),
            # Keys made with `smart-dairy apikey create` live only in iot: unknown prefixes are left alone.
            "api_keys": self._push(API_KEYS, self._api_key_rows(since), None),
        }
        params.set_param(PUSH_WATERMARK, fields.Datetime.to_string(started))
        _logger.info("registry push%s: %s", " (full)" if full else "", changed)
        return changed

    def _push(self, table, rows, all_keys):
        """Upsert `rows` into `table`, then deactivate rows whose key is not in `all_keys`; rows changed."""
        cr = self.env.cr
        cr.execute(table.upsert(rows))
        changed = cr.rowcount
        if all_keys is not None:
            cr.execute(table.deactivate_missing(all_keys))
            changed += cr.rowcount
        return changed

    def _all(self, model, field):
        """Every record's key, archived ones included: archived records are pushed as inactive rows."""
        records = self.env[model].with_context(active_test=False).search_fetch([], [field])
        return records.mapped(field)

    def _changed(self, model, since, fields_, extra_domain=None):
        domain = [] if since is None else [("write_date", ">=", since)]
        if since is not None and extra_domain:
            domain = ["|", *domain, *extra_domain]
        return self.env[model].with_context(active_test=False).search_fetch(domain, fields_, order="id")

    def _farm_rows(self, since):
        farms = self._changed("sd.farm", since, ["name", "code", "timezone", "active"])
        return [(f.id, f.name, f.code or None, f.timezone or "UTC", f.active) for f in farms]

    def _zone_rows(self, since):
        # A renamed barn changes the barn_name of its zones.
        zones = self._changed("sd.zone", since, ["farm_id", "barn_id", "name", "zone_type", "active"],
                              [("barn_id.write_date", ">=", since)])
        return [(z.id, z.farm_id.id, z.barn_id.id or None, z.barn_id.name or None, z.name, z.zone_type or None,
                 z.active) for z in zones]

    def _animal_rows(self, since):
        animals = self._changed("sd.animal", since, [
            "farm_id", "ear_tag", "rfid_epc", "name", "breed", "birth_date", "lactation_number", "calving_date",
            "group_name", "status", "active"])
        return [(a.id, a.farm_id.id, a.ear_tag, a.rfid_epc or None, a.name or None, a.breed or None,
                 a.birth_date or None, a.lactation_number, a.calving_date or None, a.group_name or None, a.status,
                 a.active) for a in animals]

    def _push_animals(self, since):
        rows = self._animal_rows(since)
        # iot.animals is also unique on (farm_id, code): a row of a deleted or re-tagged animal may still
        # hold an ear tag that another animal now has. Rename that stale row out of the way first.
        ids, farms, codes = ([r[i] for r in rows] for i in (0, 1, 2))
        self.env.cr.execute(SQL(
            """UPDATE iot.animals a SET code = a.code || '~' || a.id, active = false, updated_at = now()
               FROM unnest(%s::int[], %s::int[], %s::text[]) AS n(id, farm_id, code)
               WHERE a.farm_id = n.farm_id AND a.code = n.code AND a.id <> n.id""", ids, farms, codes))
        return self.env.cr.rowcount + self._push(ANIMALS, rows, self._all("sd.animal", "id"))

    def _device_rows(self, since):
        devices = self._changed("sd.device", since, [
            "device_uid", "farm_id", "device_type", "animal_id", "zone_id", "calibration_offset",
            "calibration_gain", "expected_interval_s", "firmware", "status", "active"])
        return [(d.device_uid, d.farm_id.id, d.device_type, d.animal_id.id or None, d.zone_id.id or None,
                 d.calibration_offset, d.calibration_gain, d.expected_interval_s, d.firmware or None, d.status,
                 d.active) for d in devices]

    def _rule_rows(self, since):
        rules = self._changed("sd.alert.rule", since, [
            "code", "name", "farm_id", "zone_id", "animal_id", "device_type", "category", "severity", "combine",
            "duration_s", "suppression_s", "max_per_hour", "auto_resolve", "builtin", "active"],
            [("condition_ids.write_date", ">=", since)])
        return [(r.code, r.name, r.farm_id.id or None, r.zone_id.id or None, r.animal_id.id or None,
                 r.device_type or None, r.category, r.severity, r.combine, r._conditions_json(), r.duration_s,
                 r.suppression_s, r.max_per_hour, r.auto_resolve, r.builtin, r.active) for r in rules]

    def _api_key_rows(self, since):
        # Changes made in Odoo reach iot at once (sd.api.key._write_to_iot); the push catches up on the rest.
        return self._changed("sd.api.key", since, ["key_prefix", "name", "key_hash", "farm_ids", "scope",
                                                   "revoked_at"])._iot_rows()

    # ----- alert pull -----

    @api.model
    def _pull_alerts(self, page_size=PULL_PAGE):
        """Pull alerts created or changed in iot since the watermark; return how many, or None when
        another pull holds the lock."""
        cr = self.env.cr
        if not try_lock(cr, PULL_LOCK):
            _logger.info("alert pull skipped: another pull is running")
            return None
        params = self.env["ir.config_parameter"].sudo()
        after = (params.get_param(PULL_WATERMARK_TIME, "-infinity"), params.get_param(PULL_WATERMARK_ID, ""))
        lag = int(params.get_param(PULL_LAG, DEFAULT_PULL_LAG_S))
        pulled = 0
        while True:
            cr.execute(SQL(
                """SELECT alert_id, time AT TIME ZONE 'UTC' AS time, rule_code, farm_id, severity, category,
                          source_type, source_id, animal_id, zone_id, message, details, status,
                          updated_at::text AS updated_at
                   FROM iot.alerts
                   WHERE (updated_at, alert_id) > (%s::timestamptz, %s)
                     AND updated_at <= now() - make_interval(secs => %s)
                   ORDER BY updated_at, alert_id
                   LIMIT %s""", after[0], after[1], lag, page_size))
            rows = cr.dictfetchall()
            if not rows:
                break
            self.env["sd.alert"]._upsert_from_iot(rows)
            pulled += len(rows)
            after = (rows[-1]["updated_at"], rows[-1]["alert_id"])
            if len(rows) < page_size:
                break
        params.set_param(PULL_WATERMARK_TIME, after[0])
        params.set_param(PULL_WATERMARK_ID, after[1])
        if pulled:
            _logger.info("alert pull: %d alerts created or updated", pulled)
        return pulled

    @api.model
    def action_push_now(self):
        self.env["sd.alert.rule"].check_access("write")
        changed = self.sudo()._push_registry(full=True)
        message = (self.env._("Another synchronisation is running; try again in a minute.") if changed is None
                   else self.env._("Registry pushed to the ingestor: %s rows changed.", sum(changed.values())))
        return _notify(self.env, message)

    @api.model
    def action_pull_now(self):
        pulled = self.sudo()._pull_alerts()
        message = (self.env._("Another pull is running; try again in a minute.") if pulled is None
                   else self.env._("%s alerts pulled from the ingestor.", pulled))
        return _notify(self.env, message)


def _notify(env, message):
    return {"type": "ir.actions.client", "tag": "display_notification",
            "params": {"message": message, "type": "info", "sticky": False,
                       "next": {"type": "ir.actions.client", "tag": "soft_reload"}}}
