from .models.iot import check_iot_schema


def pre_init_hook(env):
    """Refuse to install on a database whose `iot` schema was not created by `smart-dairy migrate`."""
    check_iot_schema(env)


def post_init_hook(env):
    """Bring the rules the migrations seeded in `iot.alert_rules` into Odoo, where they are edited."""
    env["sd.alert.rule"]._import_from_iot()
