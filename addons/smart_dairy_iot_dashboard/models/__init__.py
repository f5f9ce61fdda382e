from . import sd_alert, sd_dashboard  # noqa: F401
