from . import test_dashboard_data, test_dashboard_timing, test_dashboard_ui
