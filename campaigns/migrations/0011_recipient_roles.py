"""The audience in the admin: privacy staff see recipients and upload them; privacy
viewers see them. Nobody edits or deletes one there (campaigns.admin_audience)."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GRANTS = {
    "Privacy staff": ["view_recipient", "add_recipient"],
    "Privacy viewer": ["view_recipient"],
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
        group.permissions.add(*Permission.objects.filter(content_type__app_label="campaigns", codename__in=codenames))


def backward(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, codenames in GRANTS.items():
        group = Group.objects.filter(name=name).first()
        if group:
            group.permissions.remove(
                *Permission.objects.filter(content_type__app_label="campaigns", codename__in=codenames)
            )


class Migration(migrations.Migration):
    dependencies = [("campaigns", "0010_tracking"), ("optout", "0006_audit_roles")]
    operations = [migrations.RunPython(forward, backward)]
