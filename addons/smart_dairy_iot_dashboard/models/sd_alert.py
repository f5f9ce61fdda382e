from odoo import api, models

# The notification type the dashboard subscribes to (static/src/dashboard/dashboard.js).
BUS_NOTIFICATION = "smart_dairy_iot_dashboard/alerts"


class SdAlert(models.Model):
    _inherit = "sd.alert"

    @api.model
    def _upsert_from_iot(self, rows):
        alerts = super()._upsert_from_iot(rows)
        # Every pulled row is new or changed: open dashboards of those farms refresh at once
        # instead of waiting for their timer.
        self._sd_dashboard_notify({row["farm_id"] for row in rows})
        return alerts

    def action_acknowledge(self):
        result = super().action_acknowledge()
        self._sd_dashboard_notify(set(self.farm_id.ids))
        return result

    def action_resolve(self):
        result = super().action_resolve()
        self._sd_dashboard_notify(set(self.farm_id.ids))
        return result

    @api.model
    def _sd_dashboard_notify(self, farm_ids):
        """Tell the dashboards of IoT users that alerts of `farm_ids` changed.

        Sent to the IoT User group's channel, which the web client of every member (managers imply
        it) listens to. It carries farm ids only: each dashboard reloads through get_data, which
        applies that user's farm rules, so nothing leaks to users of other farms.
        """
        farm_ids = sorted(f for f in farm_ids if f)
        group = self.env.ref("smart_dairy_iot.group_iot_user", raise_if_not_found=False)
        if farm_ids and group:
            self.env["bus.bus"]._sendone(group, BUS_NOTIFICATION, {"farm_ids": farm_ids})
