"""The current-state table changes only through the ledger's writers: an UPDATE must
leave each row saying what its last event says (demur_state_guard, optout/sql/), and
rows are never deleted or truncated. demur_objection_append now writes the event before
it moves the state to it. LedgerCheck records the periodic verification."""

import django.utils.timezone
from django.db import migrations, models

from optout.sql import function_sql

FORWARD = """
CREATE TRIGGER demur_state_guard_update
    AFTER UPDATE ON optout_objectionstate
    REFERENCING NEW TABLE AS demur_new_states
    FOR EACH STATEMENT EXECUTE FUNCTION demur_state_guard();
CREATE TRIGGER demur_state_no_delete
    BEFORE DELETE ON optout_objectionstate
    FOR EACH ROW EXECUTE FUNCTION demur_ledger_reject_change();
CREATE TRIGGER demur_state_no_truncate
    BEFORE TRUNCATE ON optout_objectionstate
    FOR EACH STATEMENT EXECUTE FUNCTION demur_ledger_reject_change();
"""

BACKWARD = """
DROP TRIGGER demur_state_no_truncate ON optout_objectionstate;
DROP TRIGGER demur_state_no_delete ON optout_objectionstate;
DROP TRIGGER demur_state_guard_update ON optout_objectionstate;
DROP FUNCTION demur_state_guard();
"""


class Migration(migrations.Migration):
    dependencies = [("optout", "0012_feed_positions")]

    operations = [
        migrations.CreateModel(
            name="LedgerCheck",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "checked_at",
                    models.DateTimeField(default=django.utils.timezone.now, editable=False, verbose_name="checked at"),
                ),
                ("events", models.BigIntegerField(editable=False, verbose_name="events read")),
                ("chains", models.BigIntegerField(editable=False, verbose_name="chains read")),
                ("problems", models.IntegerField(editable=False, verbose_name="problems found")),
                ("first_problem", models.TextField(blank=True, editable=False, verbose_name="first problem")),
                (
                    "first_receipt",
                    models.CharField(
                        blank=True, editable=False, max_length=16, verbose_name="receipt of the first problem"
                    ),
                ),
            ],
            options={
                "verbose_name": "ledger check",
                "verbose_name_plural": "ledger checks",
                "get_latest_by": "checked_at",
            },
        ),
        migrations.RunSQL(
            [function_sql("demur_state_guard"), function_sql("demur_objection_append"), FORWARD], [BACKWARD]
        ),
    ]
