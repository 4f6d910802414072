"""Give the two staff roles what the audit log, staff entry, import, export and API-client
admin need. Privacy viewers read; privacy staff operate."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GRANTS = {
    "Privacy staff": [
        "view_auditentry",
        "record_objection",
        "import_objections",
        "export_objections",
        "view_apiclient",
        "add_apiclient",
        "change_apiclient",
    ],
    "Privacy viewer": ["view_auditentry", "view_apiclient"],
}


def forward(apps, schema_editor):
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, codenames in GRANTS.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.add(*Permission.objects.filter(content_type__app_label="optout", codename__in=codenames))


def backward(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, codenames in GRANTS.items():
        group = Group.objects.filter(name=name).first()
        if group:
            group.permissions.remove(*Permission.objects.filter(content_type__app_label="optout", codename__in=codenames))


class Migration(migrations.Migration):
    dependencies = [("optout", "0005_audit_log")]
    operations = [migrations.RunPython(forward, backward)]
