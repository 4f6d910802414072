from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from optout.models import ObjectionEvent, Source
from optout.services import objection_record, objection_withdraw


class Command(BaseCommand):
    help = "Quick start: a staff login and a little demo data. Safe to run again."

    def handle(self, *args, **options):
        self._staff_login()
        self._demo_objections()

    def _staff_login(self) -> None:
        User = get_user_model()
        login_file = Path(settings.VAR_DIR) / "quickstart-login.txt"
        if User.objects.filter(username="admin").exists() and login_file.exists():
            self.stdout.write(f"Staff login: {login_file.read_text().strip()}  (admin at /admin/)")
            return
        password = secrets.token_urlsafe(12)
        user, _ = User.objects.get_or_create(username="admin", defaults={"email": "admin@localhost"})
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        user.groups.add(Group.objects.get(name="Privacy staff"))
        login_file.parent.mkdir(parents=True, exist_ok=True)
        login_file.write_text(f"admin / {password}\n")
        login_file.chmod(0o600)
        self.stdout.write(f"Staff login: admin / {password}  (kept in {login_file}; admin at /admin/)")

    @transaction.atomic
    def _demo_objections(self) -> None:
        if ObjectionEvent.objects.filter(subject_id__startswith="demo-").exists():
            return
        now = timezone.now()
        for number, source in enumerate([Source.EMAIL_LINK, Source.IN_APP, Source.WEB_FORM, Source.GPC], 1):
            objection_record(
                subject_id=f"demo-{number:04d}", source=source, received_at=now - timedelta(days=number)
            )
        objection_withdraw(subject_id="demo-0004", source=Source.WEB_FORM)
        self.stdout.write("Demo data: 4 objections, 1 withdrawal.")
