"""Feed positions that respect each person's chain and survive a restore.

- Each event gets `seq`, its place in its chain, and `feed_key`, its position in the
  change feed; the feed index moves from (xid, id) to (feed_key, id). Existing events
  are numbered in id order (the order of their chains) and placed at their xid, raised
  to the highest xid before them in their chain, so no chain comes out of order; a
  cursor of an earlier release, a transaction id, still reads as a position here.
- The state row keeps its last event's seq and feed_key, which the next event continues.
- optout_ledgerepoch and demur_ledger_epoch(), which starts the first epoch here.

The events are rewritten once, with the append-only trigger off for this transaction
only (ALTER TABLE takes its lock until the commit, so no other writer sees it off).
"""

from django.db import migrations, models

from optout.sql import function_sql

BACKFILL = """
ALTER TABLE optout_objectionevent DISABLE TRIGGER demur_ledger_no_update_delete;
UPDATE optout_objectionevent e SET seq = r.seq, feed_key = r.feed_key
FROM (
    SELECT id, row_number() OVER chain AS seq, max(coalesce(xid, 0)) OVER chain AS feed_key
    FROM optout_objectionevent
    WINDOW chain AS (PARTITION BY subject_id, purpose_id ORDER BY id ROWS UNBOUNDED PRECEDING)
) r
WHERE e.id = r.id;
ALTER TABLE optout_objectionevent ENABLE TRIGGER demur_ledger_no_update_delete;
UPDATE optout_objectionstate s SET seq = e.seq, feed_key = e.feed_key
FROM optout_objectionevent e WHERE e.id = s.last_event_id;
"""


class Migration(migrations.Migration):
    dependencies = [("optout", "0011_sql_files")]

    operations = [
        migrations.CreateModel(
            name="LedgerEpoch",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("ledger", models.CharField(editable=False, max_length=32, verbose_name="ledger")),
                ("epoch", models.CharField(editable=False, max_length=32, unique=True, verbose_name="epoch")),
                (
                    "system_identifier",
                    models.BigIntegerField(editable=False, verbose_name="cluster system identifier"),
                ),
                ("timeline", models.BigIntegerField(editable=False, verbose_name="timeline")),
                ("database_oid", models.BigIntegerField(editable=False, verbose_name="database OID")),
                ("base", models.BigIntegerField(editable=False, verbose_name="base")),
                ("complete_below", models.BigIntegerField(editable=False, verbose_name="complete below")),
                ("started_at", models.DateTimeField(editable=False, verbose_name="started at")),
            ],
            options={"verbose_name": "ledger epoch", "verbose_name_plural": "ledger epochs"},
        ),
        migrations.AddField(
            model_name="objectionevent",
            name="seq",
            field=models.PositiveIntegerField(editable=False, null=True, verbose_name="place in the chain"),
        ),
        migrations.AddField(
            model_name="objectionevent",
            name="feed_key",
            field=models.BigIntegerField(editable=False, null=True, verbose_name="feed position"),
        ),
        migrations.AddField(
            model_name="objectionstate",
            name="seq",
            field=models.PositiveIntegerField(db_default=0, editable=False, verbose_name="events in the chain"),
        ),
        migrations.AddField(
            model_name="objectionstate",
            name="feed_key",
            field=models.BigIntegerField(
                db_default=0, editable=False, verbose_name="feed position of the last event"
            ),
        ),
        migrations.RunSQL([BACKFILL], reverse_sql=migrations.RunSQL.noop),
        migrations.AlterField(
            model_name="objectionevent",
            name="seq",
            field=models.PositiveIntegerField(editable=False, verbose_name="place in the chain"),
        ),
        migrations.AlterField(
            model_name="objectionevent",
            name="feed_key",
            field=models.BigIntegerField(editable=False, verbose_name="feed position"),
        ),
        migrations.RemoveIndex(model_name="objectionevent", name="optout_event_feed"),
        migrations.AddIndex(
            model_name="objectionevent",
            index=models.Index(fields=["feed_key", "id"], name="optout_event_feed"),
        ),
        migrations.RunSQL(
            [function_sql("demur_ledger_epoch"), function_sql("demur_objection_append")],
            reverse_sql=["DROP FUNCTION demur_ledger_epoch()"],
        ),
        # The first epoch: where the ledger is now.
        migrations.RunSQL(["SELECT demur_ledger_epoch()"], reverse_sql=migrations.RunSQL.noop),
    ]
