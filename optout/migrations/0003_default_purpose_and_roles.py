"""The default purpose every flow uses, and the two staff roles.

Purpose names are stored as English msgids and translated when shown; gettext_noop
puts them in the catalogs."""

from django.contrib.auth.management import create_permissions
from django.db import migrations
from django.utils.translation import gettext_noop

AI_TRAINING = {
    "slug": "ai-training",
    "name": gettext_noop("training and improving AI models"),
    "description": gettext_noop(
        "Using your public posts, photos and their captions, and comments, and your "
        "interactions with AI features, to develop and improve AI models."
    ),
}

# What each role may do, as (app_label, model, actions). Nobody gets add, change or
# delete on objection events: the ledger admin is read-only for every user.
ROLES = {
    "Privacy staff": [
        ("optout", "purpose", ["view"]),
        ("optout", "objectionevent", ["view"]),
        ("optout", "objectionstate", ["view"]),
        ("campaigns", "campaign", ["view", "add", "change"]),
        ("campaigns", "noticeversion", ["view"]),
    ],
    "Privacy viewer": [
        ("optout", "purpose", ["view"]),
        ("optout", "objectionevent", ["view"]),
        ("optout", "objectionstate", ["view"]),
        ("campaigns", "campaign", ["view"]),
        ("campaigns", "noticeversion", ["view"]),
    ],
}


def forward(apps, schema_editor):
    Purpose = apps.get_model("optout", "Purpose")
    Purpose.objects.update_or_create(slug=AI_TRAINING["slug"], defaults=AI_TRAINING)

    # Permissions are normally created after all migrations; make sure they exist now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, verbosity=0)
        app_config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, grants in ROLES.items():
        group, _ = Group.objects.get_or_create(name=name)
        for app_label, model, actions in grants:
            codenames = [f"{action}_{model}" for action in actions]
            group.permissions.add(
                *Permission.objects.filter(content_type__app_label=app_label, codename__in=codenames)
            )


def backward(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=ROLES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("optout", "0002_ledger_triggers"),
        ("campaigns", "0002_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(forward, backward)]
