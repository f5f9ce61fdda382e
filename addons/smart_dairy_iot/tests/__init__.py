from . import (
    test_alert_pull,
    test_builtin_rules,
    test_export,
    test_install,
    test_registry_push,
    test_security,
    test_timing,
    test_tour,
    test_views,
)
