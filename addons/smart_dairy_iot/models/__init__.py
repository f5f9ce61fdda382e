from . import sd_farm_rules_mixin  # first: the models below inherit it
from . import (
    iot_sync,
    res_users,
    sd_alert,
    sd_alert_rule,
    sd_animal,
    sd_api_key,
    sd_barn,
    sd_device,
    sd_farm,
    sd_zone,
)
from . import sd_report  # last: its SQL views join the tables of the models above
