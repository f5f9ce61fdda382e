import { registry } from "@web/core/registry";

// A farm user handles an alert from the list: open it, acknowledge it.
registry.category("web_tour.tours").add("smart_dairy_iot_alert_tour", {
    steps: () => [
        {
            content: "Open the fever alert from the list of alerts to handle",
            trigger: ".o_data_row td:contains('Tour: fever')",
            run: "click",
        },
        {
            content: "Acknowledge it",
            trigger: ".o_form_view button[name='action_acknowledge']",
            run: "click",
        },
        {
            content: "The status bar says so",
            trigger: ".o_form_view .o_statusbar_status .o_arrow_button_current:contains('Acknowledged')",
        },
        {
            content: "Acknowledge is no longer offered",
            trigger: ".o_form_view:not(:has(button[name='action_acknowledge']))",
        },
    ],
});

// The cow's form shows her milk, alerts and readings; the readings button opens them.
registry.category("web_tour.tours").add("smart_dairy_iot_animal_tour", {
    steps: () => [
        {
            content: "Open the cow",
            trigger: ".o_data_row td:contains('COW-FA-0')",
            run: "click",
        },
        {
            content: "Her milk of the last 7 days",
            trigger: ".oe_stat_button:contains('kg milk, 7 days')",
        },
        {
            content: "Her open alerts",
            trigger: ".oe_stat_button:contains('Open alerts')",
        },
        {
            content: "Open her last readings",
            trigger: ".oe_stat_button:contains('Last readings')",
            run: "click",
        },
        {
            content: "The readings of this cow are listed",
            trigger: ".o_breadcrumb:contains('Readings of COW-FA-0')",
        },
    ],
});
