import { registry } from "@web/core/registry";

// Run by tests/test_dashboard_ui.py on a farm with one open critical alert of cow TOUR-1: the
// dashboard renders its cards, the alert card opens the alert list, the breadcrumb brings the
// dashboard back, and the cow on the attention list opens her form.
registry.category("web_tour.tours").add("smart_dairy_dashboard_tour", {
    steps: () => [
        {
            content: "The KPI cards render",
            trigger: ".o_sd_dashboard .o_sd_kpi[data-kpi=milk_today] .o_sd_kpi_number",
        },
        {
            content: "Every card is there",
            trigger: ".o_sd_kpis:has(.o_sd_kpi[data-kpi=devices]):has(.o_sd_kpi[data-kpi=thi_now])",
        },
        {
            content: "The open alert is counted",
            trigger: ".o_sd_kpi[data-kpi=alerts_open].o_sd_tone_danger",
        },
        {
            content: "The alert card drills down to the open alerts",
            trigger: ".o_sd_kpi[data-kpi=alerts_open]",
            run: "click",
        },
        {
            content: "The alert list shows the farm's alert",
            trigger: ".o_list_view .o_data_row:contains(Tour fever)",
        },
        {
            content: "Back to the dashboard",
            trigger: ".o_breadcrumb .breadcrumb-item a:contains(Dairy Dashboard)",
            run: "click",
        },
        {
            content: "The cow with the critical alert needs attention",
            trigger: ".o_sd_attention_row:contains(TOUR-1)",
            run: "click",
        },
        {
            content: "Her form opens",
            trigger: ".o_form_view:contains(TOUR-1)",
        },
    ],
});
