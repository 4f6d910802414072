from __future__ import annotations

import datetime as dt

from campaigns.models import Campaign
from optout.models import Purpose


def make_campaign(purpose: Purpose, **overrides) -> Campaign:
    values = {
        "name": "EU AI training 2027",
        "purpose": purpose,
        "controller_name": "Example Social Ltd",
        "product_name": "Demur Social",
        "training_starts_on": dt.date(2027, 1, 27),
        "dpo_email": "dpo@example.com",
        "contact_email": "privacy@example.com",
        "policy_url": "https://example.com/privacy?from=notice&v=2",
    }
    values.update(overrides)
    return Campaign.objects.create(**values)
