import { Component, onMounted, onWillStart, onWillUnmount, useState } from "@odoo/owl";
import { loadBundle } from "@web/core/assets";
import { browser } from "@web/core/browser/browser";
import { _t } from "@web/core/l10n/translation";
import { deserializeDateTime, formatDateTime } from "@web/core/l10n/dates";
import { registry } from "@web/core/registry";
import { formatFloat } from "@web/core/utils/numbers";
import { useService } from "@web/core/utils/hooks";
import { standardActionServiceProps } from "@web/webclient/actions/action_service";
import { AlertList } from "@smart_dairy_iot_dashboard/dashboard/alert_list";
import { AttentionList } from "@smart_dairy_iot_dashboard/dashboard/attention_list";
import { alertsChart, milkChart, outlierChart, thiChart } from "@smart_dairy_iot_dashboard/dashboard/chart_data";
import { DairyChart } from "@smart_dairy_iot_dashboard/dashboard/dairy_chart";
import {
    alertAction,
    alertsAction,
    animalAction,
    animalsAction,
    devicesAction,
    milkDayAction,
    openAlertsAction,
    zoneAction,
} from "@smart_dairy_iot_dashboard/dashboard/drilldown";
import { KpiCard } from "@smart_dairy_iot_dashboard/dashboard/kpi_card";

// The screen stays open all day in the parlour office: a minute is fresh enough for aggregates,
// and new alerts do not wait for it (they arrive over the bus).
export const REFRESH_INTERVAL_MS = 60000;
// Sent by sd.alert (models/sd_alert.py) when alerts are pulled or change status.
export const BUS_NOTIFICATION = "smart_dairy_iot_dashboard/alerts";

const THI_TONES = { severe: "danger", moderate: "danger", mild: "warning", onset: "info" };

function kg(value) {
    return formatFloat(value, { digits: [false, 1] });
}

export class SmartDairyDashboard extends Component {
    static template = "smart_dairy_iot_dashboard.Dashboard";
    static components = { AlertList, AttentionList, DairyChart, KpiCard };
    static props = { ...standardActionServiceProps };

    setup() {
        this.orm = useService("orm");
        this.actionService = useService("action");
        this.notification = useService("notification");
        this.busService = useService("bus_service");
        const saved = this.props.state || {};
        this.state = useState({
            data: null,
            farmId: saved.farmId || this.props.action.context?.default_farm_id || false,
            period: saved.period || "30d",
            loading: false,
            busyIds: {},
        });
        this.charts = null;
        this.loadSeq = 0;
        this.onBusAlerts = this.onBusAlerts.bind(this);

        onWillStart(() => Promise.all([loadBundle("web.chartjs_lib"), this.load()]));
        onMounted(() => {
            this.timer = browser.setInterval(() => this.load(), REFRESH_INTERVAL_MS);
            this.busService.subscribe(BUS_NOTIFICATION, this.onBusAlerts);
        });
        onWillUnmount(() => {
            browser.clearInterval(this.timer);
            this.busService.unsubscribe(BUS_NOTIFICATION, this.onBusAlerts);
        });
    }

    // ------------------------------------------------------------------------------------------
    // data

    async load() {
        // Timer, bus and user can all ask at once: only the newest answer is shown.
        const seq = ++this.loadSeq;
        this.state.loading = true;
        try {
            const data = await this.orm.call("sd.dashboard", "get_data", [
                this.state.farmId,
                this.state.period,
            ]);
            if (seq !== this.loadSeq) {
                return;
            }
            // Built once per answer, outside the reactive state: a chart redraws only when its
            // config object changes, not on every render.
            this.charts = {
                milk: milkChart(data),
                thi: thiChart(data),
                outliers: outlierChart(data),
                alerts: alertsChart(data),
            };
            this.state.data = data;
        } finally {
            if (seq === this.loadSeq) {
                this.state.loading = false;
            }
        }
    }

    onBusAlerts(payload) {
        const farms = this.state.data?.farm_ids || [];
        if (!payload?.farm_ids || payload.farm_ids.some((id) => farms.includes(id))) {
            this.load();
        }
    }

    async onFarmChange(ev) {
        this.state.farmId = parseInt(ev.target.value) || false;
        this.saveState();
        await this.load();
    }

    async onPeriodChange(period) {
        this.state.period = period;
        this.saveState();
        await this.load();
    }

    saveState() {
        // Coming back from a drill-down (breadcrumb) shows the same farm and period.
        this.props.updateActionState?.({ farmId: this.state.farmId, period: this.state.period });
    }

    // ------------------------------------------------------------------------------------------
    // drill-down and in-place actions

    open(action) {
        if (action) {
            this.actionService.doAction(action);
        }
    }

    async runAlertMethod(alert, method, message) {
        this.state.busyIds[alert.id] = true;
        try {
            await this.orm.call("sd.alert", method, [[alert.id]]);
            this.notification.add(message, { type: "success" });
            await this.load();
        } finally {
            delete this.state.busyIds[alert.id];
        }
    }

    onAcknowledge(alert) {
        return this.runAlertMethod(alert, "action_acknowledge", _t("Alert acknowledged"));
    }

    onResolve(alert) {
        return this.runAlertMethod(alert, "action_resolve", _t("Alert resolved"));
    }

    // ------------------------------------------------------------------------------------------
    // view model

    get periodLabels() {
        return { "7d": _t("7 days"), "30d": _t("30 days"), "90d": _t("90 days") };
    }

    get updatedAt() {
        const at = this.state.data?.generated_at;
        return at ? formatDateTime(deserializeDateTime(at)) : "";
    }

    get kpiCards() {
        const data = this.state.data;
        const k = data.kpis;
        const open = k.alerts_open;
        const devices = k.devices;
        const thi = k.thi_now;
        const pct = k.milk_vs_avg_pct;
        const todayMilk = () => this.open(milkDayAction(data, data.today));
        return [
            {
                name: "milk_today",
                title: _t("Milk today"),
                value: kg(k.milk_today_kg),
                unit: "kg",
                icon: "fa-tint",
                tone: "info",
                progress: pct === null ? undefined : pct,
                subtitle: k.milk_avg_7d_kg
                    ? _t("%(pct)s% of the 7-day average (%(avg)s kg/day)", {
                          pct: Math.round(pct),
                          avg: kg(k.milk_avg_7d_kg),
                      })
                    : _t("No 7-day average yet"),
                onClick: todayMilk,
            },
            {
                name: "cows_milked",
                title: _t("Cows milked"),
                value: String(k.cows_milked_today),
                icon: "fa-users",
                tone: "muted",
                subtitle: _t("today, so far"),
                onClick: todayMilk,
            },
            {
                name: "yield_per_cow",
                title: _t("Yield per cow"),
                value: kg(k.avg_yield_per_cow_kg),
                unit: "kg",
                icon: "fa-balance-scale",
                tone: "muted",
                subtitle: _t("average of the cows milked today"),
                onClick: todayMilk,
            },
            {
                name: "alerts_open",
                title: _t("Open alerts"),
                value: String(open.total),
                icon: "fa-bell",
                tone: open.critical ? "danger" : open.warning ? "warning" : "ok",
                chips: ["critical", "warning", "info"].map((severity) => ({
                    key: severity,
                    label: { critical: _t("critical"), warning: _t("warning"), info: _t("info") }[severity],
                    value: String(open[severity]),
                    tone: open[severity] ? { critical: "danger", warning: "warning", info: "info" }[severity] : "muted",
                    onClick: () => this.open(openAlertsAction(data, severity)),
                })),
                onClick: () => this.open(openAlertsAction(data)),
            },
            {
                name: "cows_in_heat",
                title: _t("Cows in heat"),
                value: String(k.cows_in_heat),
                icon: "fa-heartbeat",
                tone: k.cows_in_heat ? "heat" : "muted",
                subtitle: _t("activity or oestrus alert, last 24 h"),
                onClick: k.heat_animal_ids.length
                    ? () => this.open(animalsAction(_t("Cows in heat"), k.heat_animal_ids))
                    : undefined,
            },
            {
                name: "thi_now",
                title: _t("Heat stress (THI)"),
                value: thi ? formatFloat(thi.value, { digits: [false, 1] }) : "—",
                icon: "fa-thermometer-half",
                tone: thi ? THI_TONES[thi.level] || "ok" : "muted",
                subtitle: thi
                    ? `${this.thiLevelLabel(thi.level)} · ${thi.zone}`
                    : _t("No climate reading in the last 3 hours"),
                onClick: thi ? () => this.open(zoneAction(thi.zone_id)) : undefined,
            },
            {
                name: "devices",
                title: _t("Devices"),
                value: String(devices.offline + devices.low_battery),
                icon: "fa-microchip",
                tone: devices.offline ? "danger" : devices.low_battery ? "warning" : "ok",
                subtitle: _t("need a look, of %s", devices.total),
                chips: [
                    {
                        key: "offline",
                        label: _t("offline"),
                        value: String(devices.offline),
                        tone: devices.offline ? "danger" : "muted",
                        onClick: () => this.open(devicesAction(_t("Devices offline"), devices.offline_ids)),
                    },
                    {
                        key: "low_battery",
                        label: _t("low battery"),
                        value: String(devices.low_battery),
                        tone: devices.low_battery ? "warning" : "muted",
                        onClick: () =>
                            this.open(devicesAction(_t("Devices on low battery"), devices.low_battery_ids)),
                    },
                ],
                onClick: () =>
                    this.open(
                        devicesAction(_t("Devices offline or on low battery"), [
                            ...new Set([...devices.offline_ids, ...devices.low_battery_ids]),
                        ])
                    ),
            },
        ];
    }

    thiLevelLabel(level) {
        return (
            {
                severe: _t("Severe stress"),
                moderate: _t("Moderate stress"),
                mild: _t("Mild stress"),
                onset: _t("Stress onset"),
            }[level] || _t("Comfortable")
        );
    }

    openAlert(alert) {
        this.open(alertAction(alert.id));
    }

    openCow(cow) {
        this.open(animalAction(cow.animal_id));
    }

    openAllAlerts() {
        this.open(
            alertsAction(this.state.data, _t("Alerts to handle"), [["status", "in", ["open", "acknowledged"]]])
        );
    }

    openAttention() {
        this.open(animalsAction(_t("Cows needing attention"), this.state.data.attention_ids));
    }
}

registry.category("actions").add("smart_dairy_dashboard", SmartDairyDashboard);
