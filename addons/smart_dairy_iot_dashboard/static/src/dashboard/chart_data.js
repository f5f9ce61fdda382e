// get_data's payload -> Chart.js configurations. Pure functions: each returns the config and a
// `drill(datasetIndex, index)` that names the action behind a clicked point, so the mapping is
// unit-tested without a canvas.
import { _t } from "@web/core/l10n/translation";
import { getColor, hexToRGBA } from "@web/core/colors/colors";
import {
    alertsDayAction,
    animalAction,
    milkDayAction,
    zoneAction,
} from "@smart_dairy_iot_dashboard/dashboard/drilldown";

const { DateTime } = luxon;

export const MILK_COLOR = "#2f80ed";
export const AVERAGE_COLOR = "#1b365d";
export const THI_LEVEL_COLORS = {
    onset: "#f2c94c",
    mild: "#f2994a",
    moderate: "#eb5757",
    severe: "#9b1c1c",
};
export const OUTLIER_COLORS = {
    normal: "#b0b7c3",
    heat: "#d63384",
    rumination_drop: "#dc3545",
    activity_low: "#fd7e14",
};
const THI_LINES = ["mild", "moderate"];

/** The days of the period, oldest first, ending at `today` (YYYY-MM-DD, UTC days). */
export function periodDays(today, days) {
    const end = DateTime.fromISO(today, { zone: "utc" });
    return Array.from({ length: days }, (_, i) => end.minus({ days: days - 1 - i }).toISODate());
}

/** Trailing mean over `window` values, null until a full window exists. */
export function rollingMean(values, window = 7) {
    return values.map((_, i) => {
        if (i + 1 < window) {
            return null;
        }
        const slice = values.slice(i + 1 - window, i + 1);
        return Math.round((slice.reduce((a, b) => a + b, 0) / window) * 10) / 10;
    });
}

function shortDay(day) {
    return DateTime.fromISO(day, { zone: "utc" }).toFormat("dd MMM");
}

const baseOptions = () => ({
    responsive: true,
    maintainAspectRatio: false,
    // No animation: the screen refreshes on a timer and should not flicker each time.
    animation: false,
    interaction: { mode: "nearest", intersect: true },
    plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
});

/** Herd milk per day over the period (missing days count as 0) with its 7-day mean. */
export function milkChart(data) {
    const days = periodDays(data.today, data.days);
    const byDay = Object.fromEntries(data.charts.milk_daily.map((d) => [d.day, d.kg]));
    const kg = days.map((day) => byDay[day] || 0);
    // Today is not over: its bar grows during the day, the mean stops at yesterday.
    const mean = rollingMean(kg.slice(0, -1)).concat([null]);
    return {
        isEmpty: data.charts.milk_daily.length === 0,
        config: {
            type: "bar",
            data: {
                labels: days.map(shortDay),
                datasets: [
                    {
                        type: "line",
                        label: _t("7-day mean"),
                        data: mean,
                        borderColor: AVERAGE_COLOR,
                        backgroundColor: AVERAGE_COLOR,
                        pointRadius: 0,
                        borderWidth: 2,
                        tension: 0.3,
                    },
                    {
                        label: _t("Milk (kg)"),
                        data: kg,
                        backgroundColor: hexToRGBA(MILK_COLOR, 0.75),
                        borderRadius: 3,
                    },
                ],
            },
            options: { ...baseOptions(), interaction: { mode: "index", intersect: false } },
        },
        drill: (datasetIndex, index) => milkDayAction(data, days[index]),
    };
}

/** THI per zone and hour over 7 days, with the mild and moderate thresholds as dashed lines. */
export function thiChart(data) {
    const zones = data.charts.thi_zones;
    const times = [...new Set(zones.flatMap((z) => z.points.map((p) => p.t)))].sort();
    const labels = times.map((t) =>
        DateTime.fromSQL(t, { zone: "utc" }).toLocal().toFormat("ccc HH:mm")
    );
    const datasets = zones.map((zone, i) => {
        const byTime = Object.fromEntries(zone.points.map((p) => [p.t, p.thi]));
        const color = getColor(i, "light");
        return {
            label: zone.name,
            data: times.map((t) => byTime[t] ?? null),
            borderColor: color,
            backgroundColor: color,
            pointRadius: 0,
            pointHitRadius: 6,
            borderWidth: 2,
            spanGaps: false,
        };
    });
    for (const level of THI_LINES) {
        const threshold = data.thresholds.thi.find((t) => t.level === level);
        if (threshold) {
            datasets.push({
                label: `${level === "mild" ? _t("Mild stress") : _t("Moderate stress")} (${threshold.value})`,
                data: times.map(() => threshold.value),
                borderColor: THI_LEVEL_COLORS[level],
                borderDash: [6, 4],
                borderWidth: 1,
                pointRadius: 0,
                pointHitRadius: 0,
                fill: false,
            });
        }
    }
    return {
        isEmpty: zones.length === 0,
        config: {
            type: "line",
            data: { labels, datasets },
            options: {
                ...baseOptions(),
                scales: { x: { ticks: { maxTicksLimit: 8, autoSkip: true } } },
            },
        },
        drill: (datasetIndex) => (zones[datasetIndex] ? zoneAction(zones[datasetIndex].zone_id) : null),
    };
}

/** The flag that colours a cow's point: the most urgent one she has. */
export function outlierKind(cow) {
    if (cow.rumination_drop) {
        return "rumination_drop";
    }
    if (cow.activity_low) {
        return "activity_low";
    }
    if (cow.heat) {
        return "heat";
    }
    return "normal";
}

function outlierLabels() {
    return {
        normal: _t("Normal"),
        heat: _t("In heat"),
        rumination_drop: _t("Rumination drop"),
        activity_low: _t("Low activity"),
    };
}

/** Each cow: activity (x) and rumination (y) of the last 24 h as a share of her own baseline. */
export function outlierChart(data) {
    const kinds = ["normal", "heat", "activity_low", "rumination_drop"];
    const groups = Object.fromEntries(kinds.map((k) => [k, []]));
    for (const cow of data.charts.outliers) {
        groups[outlierKind(cow)].push(cow);
    }
    const used = kinds.filter((k) => groups[k].length);
    const labels = outlierLabels();
    return {
        isEmpty: data.charts.outliers.length === 0,
        config: {
            type: "scatter",
            data: {
                datasets: used.map((kind) => ({
                    label: labels[kind],
                    data: groups[kind].map((cow) => ({
                        x: Math.round(cow.activity_ratio * 100),
                        y: Math.round(cow.rumination_ratio * 100),
                    })),
                    backgroundColor: hexToRGBA(OUTLIER_COLORS[kind], kind === "normal" ? 0.45 : 0.9),
                    pointRadius: kind === "normal" ? 3 : 5,
                    pointHoverRadius: 7,
                })),
            },
            options: {
                ...baseOptions(),
                scales: {
                    x: { title: { display: true, text: _t("Activity, % of her normal") } },
                    y: { title: { display: true, text: _t("Rumination, % of her normal") } },
                },
                plugins: {
                    ...baseOptions().plugins,
                    tooltip: {
                        callbacks: {
                            label: (ctx) =>
                                `${groups[used[ctx.datasetIndex]][ctx.dataIndex].label}: ${_t(
                                    "activity"
                                )} ${ctx.parsed.x} %, ${_t("rumination")} ${ctx.parsed.y} %`,
                        },
                    },
                },
            },
        },
        drill: (datasetIndex, index) => {
            const cow = groups[used[datasetIndex]]?.[index];
            return cow ? animalAction(cow.animal_id) : null;
        },
    };
}

/** Alerts per day of the period, stacked by category. */
export function alertsChart(data) {
    const days = periodDays(data.today, data.days);
    const series = data.charts.alerts_daily;
    return {
        isEmpty: series.length === 0,
        config: {
            type: "bar",
            data: {
                labels: days.map(shortDay),
                datasets: series.map((s, i) => ({
                    label: s.label,
                    data: days.map((day) => s.counts[day] || 0),
                    backgroundColor: getColor(i + 3, "light"),
                    borderRadius: 2,
                })),
            },
            options: {
                ...baseOptions(),
                scales: { x: { stacked: true }, y: { stacked: true, ticks: { precision: 0 } } },
            },
        },
        drill: (datasetIndex, index) =>
            series[datasetIndex] ? alertsDayAction(data, days[index], series[datasetIndex].category) : null,
    };
}
