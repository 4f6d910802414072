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
        self._demo_campaign()

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
            objection_record(subject_id=f"demo-{number:04d}", source=source, received_at=now - timedelta(days=number))
        objection_withdraw(subject_id="demo-0004", source=Source.WEB_FORM)
        self.stdout.write("Demo data: 4 objections, 1 withdrawal.")

    def _demo_campaign(self) -> None:
        """A small campaign launched and sent at once (tasks run in-process in the quick
        start), so that its mails can be read in the mail folder and their links followed."""
        from campaigns.models import Campaign, Recipient
        from campaigns.services import campaign_launch
        from optout.models import Purpose

        folder = Path(settings.EMAIL_FILE_PATH)
        where = folder / "index.html" if (folder / "index.html").exists() else folder
        if Campaign.objects.filter(name=DEMO_CAMPAIGN).exists():
            self.stdout.write(f"Demo campaign: its mails are in {where}")
            return
        for subject_id, language, country in DEMO_AUDIENCE:
            Recipient.objects.get_or_create(
                subject_id=subject_id,
                defaults={"email": f"{subject_id}@example.org", "language": language, "country": country},
            )
        purpose, _ = Purpose.objects.get_or_create(
            slug="ai-training", defaults={"name": "training and improving AI models"}
        )
        campaign = Campaign.objects.create(
            name=DEMO_CAMPAIGN,
            purpose=purpose,
            controller_name="Example Social Ltd",
            product_name="Example Social",
            training_starts_on=(timezone.now() + timedelta(days=30)).date(),
            dpo_email="dpo@example.org",
            contact_email="privacy@example.org",
            policy_url="https://example.org/privacy",
            languages=sorted({language for _s, language, _c in DEMO_AUDIENCE}),
            send_rate=100,
        )
        created = campaign_launch(campaign_id=campaign.pk)
        status = Campaign.objects.values_list("status", flat=True).get(pk=campaign.pk)
        where = folder / "index.html" if (folder / "index.html").exists() else folder
        self.stdout.write(f"Demo campaign: {created} notice mails ({status}); read them in {where}")


DEMO_CAMPAIGN = "Demo: EU notice of AI training"
# demo-0001 objected before (above): that person gets the "you have already objected" mail.
DEMO_AUDIENCE = [
    ("demo-0001", "en", "IE"),
    ("demo-0101", "en", "IE"),
    ("demo-0102", "de", "DE"),
    ("demo-0103", "fr", "FR"),
    ("demo-0104", "pl", "PL"),
    ("demo-0105", "el", "GR"),
]
