"""The permission behind the campaign console's launch, pause, resume and cancel buttons
(campaigns.admin_control), granted to "Privacy staff". Privacy viewers do not get it.

A permission row of its own rather than Campaign.Meta.permissions: editing a draft
(change_campaign) and setting a rollout going are separate decisions."""

from django.db import migrations

CODENAME = "control_campaign"
NAME = "Can launch, pause, resume and cancel campaigns"


def forward(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    content_type, _ = ContentType.objects.get_or_create(app_label="campaigns", model="campaign")
    permission, _ = Permission.objects.get_or_create(
        content_type=content_type, codename=CODENAME, defaults={"name": NAME}
    )
    group, _ = Group.objects.get_or_create(name="Privacy staff")
    group.permissions.add(permission)


def backward(apps, schema_editor):
    apps.get_model("auth", "Permission").objects.filter(content_type__app_label="campaigns", codename=CODENAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0011_recipient_roles"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(forward, backward)]
