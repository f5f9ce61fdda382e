// Every card, chart point and row of the dashboard opens the Odoo records behind it. The actions
// are built here, from the ids and days get_data returned, so the screen and its tests share them.
import { _t } from "@web/core/l10n/translation";

function farmDomain(data) {
    return [["farm_id", "in", data.farm_ids]];
}

export function listAction(name, resModel, domain, context = {}) {
    return {
        type: "ir.actions.act_window",
        name,
        res_model: resModel,
        domain,
        context,
        views: [
            [false, "list"],
            [false, "form"],
        ],
        target: "current",
    };
}

export function formAction(resModel, resId) {
    return {
        type: "ir.actions.act_window",
        res_model: resModel,
        res_id: resId,
        views: [[false, "form"]],
        target: "current",
    };
}

/** Milk per cow of one day (YYYY-MM-DD), as the milk report lists it. */
export function milkDayAction(data, day) {
    return listAction(_t("Milk of %s", day), "sd.report.milk.daily", [
        ...farmDomain(data),
        ["date", "=", day],
    ]);
}

/** Alerts of the farm, narrowed by `domain` (e.g. open critical ones, or one day and category). */
export function alertsAction(data, name, domain = []) {
    return listAction(name, "sd.alert", [...farmDomain(data), ...domain]);
}

export function openAlertsAction(data, severity = null) {
    const domain = [["status", "=", "open"]];
    if (severity) {
        domain.push(["severity", "=", severity]);
    }
    return alertsAction(data, _t("Open alerts"), domain);
}

/** Alerts raised on one UTC day (YYYY-MM-DD) in one category. */
export function alertsDayAction(data, day, category) {
    const next = luxon.DateTime.fromISO(day, { zone: "utc" }).plus({ days: 1 }).toISODate();
    return alertsAction(data, _t("Alerts of %s", day), [
        ["category", "=", category],
        ["time", ">=", `${day} 00:00:00`],
        ["time", "<", `${next} 00:00:00`],
    ]);
}

export function animalsAction(name, animalIds) {
    return listAction(name, "sd.animal", [["id", "in", animalIds]]);
}

export function devicesAction(name, deviceIds) {
    return listAction(name, "sd.device", [["id", "in", deviceIds]]);
}

export function animalAction(animalId) {
    return formAction("sd.animal", animalId);
}

export function alertAction(alertId) {
    return formAction("sd.alert", alertId);
}

export function zoneAction(zoneId) {
    return formAction("sd.zone", zoneId);
}
