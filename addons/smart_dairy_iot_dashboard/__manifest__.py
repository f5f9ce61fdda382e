{
    "name": "Smart Dairy IoT Dashboard",
    "summary": "The farm at a glance, live: milk, alerts, heat stress, cows and devices on one screen",
    "version": "19.0.1.0.0",
    "category": "Agriculture",
    "license": "LGPL-3",
    "author": "Smart Dairy",
    "website": "https://github.com/smart-dairy/smart-dairy-iot",
    "depends": ["smart_dairy_iot", "bus", "web"],
    "data": [
        "views/sd_dashboard_views.xml",
    ],
    "assets": {
        "web.assets_backend": [
            "smart_dairy_iot_dashboard/static/src/**/*",
        ],
        "web.assets_unit_tests": [
            "smart_dairy_iot_dashboard/static/tests/**/*.test.js",
        ],
        "web.assets_tests": [
            "smart_dairy_iot_dashboard/static/tests/tours/**/*",
        ],
    },
    "installable": True,
}
