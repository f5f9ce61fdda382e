import { defineMailModels } from "@mail/../tests/mail_test_helpers";
import { beforeEach, describe, expect, test } from "@odoo/hoot";
import { queryAllTexts, queryOne } from "@odoo/hoot-dom";
import { advanceTime, animationFrame } from "@odoo/hoot-mock";
import { contains, makeMockEnv, mockService, mountWithCleanup, onRpc } from "@web/../tests/web_test_helpers";
import { alertsChart, milkChart, outlierChart, periodDays, rollingMean } from "@smart_dairy_iot_dashboard/dashboard/chart_data";
import {
    BUS_NOTIFICATION,
    REFRESH_INTERVAL_MS,
    SmartDairyDashboard,
} from "@smart_dairy_iot_dashboard/dashboard/dashboard";
import { reasonLabel } from "@smart_dairy_iot_dashboard/dashboard/attention_list";

defineMailModels();

/** A get_data answer as the server sends it, for farm 1 on 2026-11-29 with a 7-day period. */
function makeData(overrides = {}) {
    return {
        farms: [
            { id: 1, name: "Green Valley" },
            { id: 2, name: "Hill Top" },
        ],
        farm_id: 1,
        farm_ids: [1],
        period: "7d",
        periods: ["7d", "30d", "90d"],
        days: 7,
        today: "2026-11-29",
        generated_at: "2026-11-29 06:30:00",
        iot_ready: true,
        has_data: true,
        kpis: {
            milk_today_kg: 1234.5,
            milk_avg_7d_kg: 2469,
            milk_vs_avg_pct: 50,
            cows_milked_today: 61,
            avg_yield_per_cow_kg: 20.24,
            alerts_open: { critical: 2, warning: 3, info: 0, total: 5 },
            cows_in_heat: 1,
            heat_animal_ids: [7],
            thi_now: { value: 74.2, level: "mild", zone_id: 3, zone: "Barn 1 / Pen A" },
            devices: { total: 70, offline: 1, low_battery: 2, offline_ids: [11], low_battery_ids: [12, 13] },
        },
        charts: {
            milk_daily: [
                { day: "2026-11-27", kg: 2400, cows: 60, sessions: 120 },
                { day: "2026-11-29", kg: 1234.5, cows: 61, sessions: 61 },
            ],
            thi_zones: [
                {
                    zone_id: 3,
                    name: "Barn 1 / Pen A",
                    now: 74.2,
                    level: "mild",
                    points: [
                        { t: "2026-11-29 04:00:00", thi: 70.1 },
                        { t: "2026-11-29 05:00:00", thi: 74.2 },
                    ],
                },
            ],
            outliers: [
                { animal_id: 7, label: "COW-007", activity_ratio: 2.4, rumination_ratio: 0.95, heat: true },
                { animal_id: 8, label: "COW-008", activity_ratio: 0.9, rumination_ratio: 0.6, rumination_drop: true },
                { animal_id: 9, label: "COW-009", activity_ratio: 1.02, rumination_ratio: 1.01 },
            ],
            alerts_daily: [
                { category: "health", label: "Health", counts: { "2026-11-28": 2, "2026-11-29": 1 } },
                { category: "device", label: "Device", counts: { "2026-11-29": 4 } },
            ],
        },
        alerts: [
            {
                id: 41,
                time: "2026-11-29 05:10:00",
                severity: "critical",
                category: "health",
                category_label: "Health",
                status: "open",
                message: "Fever: 40.1 degC",
                animal_id: 8,
                animal: "COW-008",
                zone: false,
            },
            {
                id: 42,
                time: "2026-11-29 04:00:00",
                severity: "warning",
                category: "device",
                category_label: "Device",
                status: "acknowledged",
                message: "Collar COL-12 offline",
                animal_id: false,
                animal: false,
                zone: false,
            },
        ],
        attention: [
            {
                animal_id: 8,
                label: "COW-008",
                score: 7,
                reasons: [
                    { code: "critical_alert", ratio: null },
                    { code: "rumination_drop", ratio: 0.6 },
                ],
            },
        ],
        attention_total: 1,
        attention_ids: [8],
        thresholds: {
            thi: [
                { value: 89, level: "severe" },
                { value: 79, level: "moderate" },
                { value: 72, level: "mild" },
                { value: 68, level: "onset" },
            ],
        },
        ...overrides,
    };
}

function emptyData() {
    return makeData({
        farms: [{ id: 5, name: "New Farm" }],
        farm_id: false,
        farm_ids: [5],
        has_data: false,
        kpis: {
            milk_today_kg: 0,
            milk_avg_7d_kg: 0,
            milk_vs_avg_pct: null,
            cows_milked_today: 0,
            avg_yield_per_cow_kg: 0,
            alerts_open: { critical: 0, warning: 0, info: 0, total: 0 },
            cows_in_heat: 0,
            heat_animal_ids: [],
            thi_now: false,
            devices: { total: 0, offline: 0, low_battery: 0, offline_ids: [], low_battery_ids: [] },
        },
        charts: { milk_daily: [], thi_zones: [], outliers: [], alerts_daily: [] },
        alerts: [],
        attention: [],
        attention_total: 0,
        attention_ids: [],
    });
}

let answer;
beforeEach(() => {
    answer = makeData();
});

async function mountDashboard() {
    onRpc("sd.dashboard", "get_data", ({ args }) => {
        expect.step(`get_data ${JSON.stringify(args)}`);
        return answer;
    });
    await mountWithCleanup(SmartDairyDashboard, { props: { action: { context: {} } } });
    await animationFrame();
}

function mockDoAction() {
    mockService("action", {
        doAction(action) {
            expect.step(`${action.res_model} ${JSON.stringify(action.domain || action.res_id)}`);
        },
    });
}

describe.current.tags("desktop");

describe("dashboard screen", () => {
    test("renders the KPI cards from one get_data call", async () => {
        await mountDashboard();
        expect.verifySteps(['get_data [false,"30d"]']);
        expect(".o_sd_kpi").toHaveCount(7);
        expect(".o_sd_kpi[data-kpi=milk_today] .o_sd_kpi_number").toHaveText("1,234.5");
        expect(".o_sd_kpi[data-kpi=cows_milked] .o_sd_kpi_number").toHaveText("61");
        expect(".o_sd_kpi[data-kpi=alerts_open] .o_sd_kpi_number").toHaveText("5");
        expect(".o_sd_kpi[data-kpi=thi_now] .o_sd_kpi_number").toHaveText("74.2");
        expect(".o_sd_kpi[data-kpi=thi_now]").toHaveClass("o_sd_tone_warning");
        expect(".o_sd_kpi[data-kpi=alerts_open]").toHaveClass("o_sd_tone_danger");
        expect(queryAllTexts(".o_sd_kpi[data-kpi=alerts_open] .o_sd_chip")).toEqual([
            "2 critical",
            "3 warning",
            "0 info",
        ]);
        expect(".o_sd_chart canvas").toHaveCount(4);
        expect(".o_sd_alert_row").toHaveCount(2);
        expect(".o_sd_attention_row").toHaveCount(1);
        expect(queryAllTexts(".o_sd_attention_row .o_sd_reason")).toEqual(["Critical alert", "Rumination -40%"]);
    });

    test("cards, chips and rows drill down to the filtered records", async () => {
        mockDoAction();
        await mountDashboard();
        expect.verifySteps(['get_data [false,"30d"]']);
        await contains(".o_sd_kpi[data-kpi=alerts_open]").click();
        expect.verifySteps(['sd.alert [["farm_id","in",[1]],["status","=","open"]]']);
        await contains(".o_sd_kpi[data-kpi=alerts_open] .o_sd_chip[data-chip=critical]").click();
        expect.verifySteps([
            'sd.alert [["farm_id","in",[1]],["status","=","open"],["severity","=","critical"]]',
        ]);
        await contains(".o_sd_kpi[data-kpi=milk_today]").click();
        expect.verifySteps(['sd.report.milk.daily [["farm_id","in",[1]],["date","=","2026-11-29"]]']);
        await contains(".o_sd_kpi[data-kpi=devices] .o_sd_chip[data-chip=low_battery]").click();
        expect.verifySteps(['sd.device [["id","in",[12,13]]]']);
        await contains(".o_sd_kpi[data-kpi=cows_in_heat]").click();
        expect.verifySteps(['sd.animal [["id","in",[7]]]']);
        await contains(".o_sd_attention_row[data-animal-id='8']").click();
        expect.verifySteps(["sd.animal 8"]);
        await contains(".o_sd_alert_row[data-alert-id='41'] .o_sd_alert_open").click();
        expect.verifySteps(["sd.alert 41"]);
    });

    test("a farm with no data shows empty states, not errors", async () => {
        answer = emptyData();
        await mountDashboard();
        expect.verifySteps(['get_data [false,"30d"]']);
        expect(".o_sd_no_data").toHaveCount(1);
        expect(".o_sd_farm_select").toHaveCount(0);
        expect(".o_sd_farm_name").toHaveText("New Farm");
        expect(".o_sd_kpi").toHaveCount(7);
        expect(".o_sd_kpi[data-kpi=thi_now] .o_sd_kpi_number").toHaveText("—");
        expect(".o_sd_chart canvas").toHaveCount(0);
        expect(".o_sd_chart_empty").toHaveCount(4);
        expect(".o_sd_alerts .o_sd_empty").toHaveCount(1);
        expect(".o_sd_attention .o_sd_empty").toHaveText("No cow data yet.");
    });

    test("a user without farms is told so", async () => {
        answer = makeData({ farms: [], farm_ids: [], has_data: false });
        await mountDashboard();
        expect.verifySteps(['get_data [false,"30d"]']);
        expect(".o_sd_no_farm").toHaveCount(1);
        expect(".o_sd_kpi").toHaveCount(0);
    });

    test("acknowledge and resolve act in place and reload", async () => {
        onRpc("sd.alert", "action_acknowledge", ({ args }) => {
            expect.step(`acknowledge ${args[0]}`);
            return true;
        });
        onRpc("sd.alert", "action_resolve", ({ args }) => {
            expect.step(`resolve ${args[0]}`);
            return true;
        });
        await mountDashboard();
        expect.verifySteps(['get_data [false,"30d"]']);
        // Only an open alert can be acknowledged; any unresolved one can be resolved.
        expect(".o_sd_alert_row[data-alert-id='42'] .o_sd_ack").toHaveCount(0);
        await contains(".o_sd_alert_row[data-alert-id='41'] .o_sd_ack").click();
        await expect.waitForSteps(["acknowledge 41", 'get_data [false,"30d"]']);
        await contains(".o_sd_alert_row[data-alert-id='42'] .o_sd_resolve").click();
        await expect.waitForSteps(["resolve 42", 'get_data [false,"30d"]']);
    });

    test("new alerts of the farm over the bus, and the timer, refresh the screen", async () => {
        const listeners = {};
        mockService("bus_service", {
            subscribe(type, callback) {
                listeners[type] = callback;
            },
            unsubscribe(type) {
                delete listeners[type];
            },
        });
        await mountDashboard();
        expect.verifySteps(['get_data [false,"30d"]']);
        listeners[BUS_NOTIFICATION]({ farm_ids: [2] }); // another farm than the one shown
        await animationFrame();
        expect.verifySteps([]);
        listeners[BUS_NOTIFICATION]({ farm_ids: [1] });
        await expect.waitForSteps(['get_data [false,"30d"]']);
        await advanceTime(REFRESH_INTERVAL_MS);
        await expect.waitForSteps(['get_data [false,"30d"]']);
    });

    test("farm and period selectors reload with their values", async () => {
        await mountDashboard();
        expect.verifySteps(['get_data [false,"30d"]']);
        await contains(".o_sd_farm_select").select("2");
        await expect.waitForSteps(['get_data [2,"30d"]']);
        await contains(".o_sd_period button[data-period='7d']").click();
        await expect.waitForSteps(['get_data [2,"7d"]']);
        expect(queryOne(".o_sd_period button[data-period='7d']")).toHaveClass("btn-primary");
    });
});

describe("chart data", () => {
    // Labels are translated: translations load with the (mock) environment.
    beforeEach(() => makeMockEnv());

    test("herd milk: every day of the period, missing days as 0, drill to the day", () => {
        const chart = milkChart(makeData());
        const month = milkChart(makeData({ days: 9 }));
        expect(month.config.data.datasets[0].data).toEqual([null, null, null, null, null, null, 342.9, 342.9, null]);
        expect(periodDays("2026-11-29", 3)).toEqual(["2026-11-27", "2026-11-28", "2026-11-29"]);
        const [mean, milk] = chart.config.data.datasets;
        expect(milk.data).toEqual([0, 0, 0, 0, 2400, 0, 1234.5]);
        // the mean stops at yesterday: today's milkings are not all in
        expect(mean.data).toEqual([null, null, null, null, null, null, null]);
        expect(rollingMean([1, 2, 3, 4], 2)).toEqual([null, 1.5, 2.5, 3.5]);
        expect(chart.isEmpty).toBe(false);
        expect(chart.drill(1, 4).domain).toEqual([
            ["farm_id", "in", [1]],
            ["date", "=", "2026-11-27"],
        ]);
    });

    test("outliers: one dataset per flag, ratios in percent, drill to the cow", () => {
        const chart = outlierChart(makeData());
        const datasets = chart.config.data.datasets;
        expect(datasets.map((d) => String(d.label))).toEqual(["Normal", "In heat", "Rumination drop"]);
        expect(datasets[1].data).toEqual([{ x: 240, y: 95 }]);
        expect(datasets[2].data).toEqual([{ x: 90, y: 60 }]);
        expect(chart.drill(2, 0)).toEqual({
            type: "ir.actions.act_window",
            res_model: "sd.animal",
            res_id: 8,
            views: [[false, "form"]],
            target: "current",
        });
    });

    test("alerts per day: stacked by category, drill to the day and category", () => {
        const chart = alertsChart(makeData());
        const datasets = chart.config.data.datasets;
        expect(datasets.map((d) => d.label)).toEqual(["Health", "Device"]);
        expect(datasets[0].data).toEqual([0, 0, 0, 0, 0, 2, 1]);
        expect(datasets[1].data).toEqual([0, 0, 0, 0, 0, 0, 4]);
        expect(chart.drill(1, 6).domain).toEqual([
            ["farm_id", "in", [1]],
            ["category", "=", "device"],
            ["time", ">=", "2026-11-29 00:00:00"],
            ["time", "<", "2026-11-30 00:00:00"],
        ]);
        expect(alertsChart(emptyData()).isEmpty).toBe(true);
    });

    test("attention reasons read as the farmer would say them", () => {
        expect(String(reasonLabel({ code: "milk_drop", ratio: 0.75 }))).toBe("Milk -25%");
        expect(String(reasonLabel({ code: "heat", ratio: null }))).toBe("In heat");
    });
});
