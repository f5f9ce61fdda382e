import { Component } from "@odoo/owl";
import { _t } from "@web/core/l10n/translation";

/** What a reason code of get_data's attention list says to the farmer. */
export function reasonLabel(reason) {
    const pct = reason.ratio ? Math.round((1 - reason.ratio) * 100) : null;
    switch (reason.code) {
        case "critical_alert":
            return _t("Critical alert");
        case "rumination_drop":
            return _t("Rumination -%s%%", pct);
        case "milk_drop":
            return _t("Milk -%s%%", pct);
        case "activity_low":
            return _t("Activity -%s%%", pct);
        case "heat":
            return _t("In heat");
    }
    return reason.code;
}

/** The cows to look at today, most urgent first. */
export class AttentionList extends Component {
    static template = "smart_dairy_iot_dashboard.AttentionList";
    static props = {
        cows: Array,
        total: Number,
        hasData: Boolean, // a farm with no readings yet is not "all normal"
        onOpen: Function,
        onOpenAll: Function,
    };

    reasonLabel(reason) {
        return reasonLabel(reason);
    }
}
