import { Component } from "@odoo/owl";
import { _t } from "@web/core/l10n/translation";
import { deserializeDateTime, formatDateTime } from "@web/core/l10n/dates";

/** The unresolved alerts, newest first, acknowledged or resolved where they are shown. */
export class AlertList extends Component {
    static template = "smart_dairy_iot_dashboard.AlertList";
    static props = {
        alerts: Array,
        total: Number,
        busyIds: Object, // alert id -> true while its button's call runs
        onOpen: Function,
        onOpenAll: Function,
        onAcknowledge: Function,
        onResolve: Function,
    };

    formatTime(value) {
        return value ? formatDateTime(deserializeDateTime(value)) : "";
    }

    severityLabel(severity) {
        return { critical: _t("Critical"), warning: _t("Warning"), info: _t("Info") }[severity] || severity;
    }
}
