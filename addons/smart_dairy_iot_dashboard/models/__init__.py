from . import sd_alert, sd_dashboard
