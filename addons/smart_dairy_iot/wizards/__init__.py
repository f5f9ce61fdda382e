from . import sd_api_key_wizard, sd_export_wizard
