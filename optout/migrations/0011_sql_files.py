"""The ledger's SQL functions, loaded from their files under optout/sql/ (each a CREATE OR
REPLACE of the body the earlier migrations wrote), where a reviewer reads the current
form of each in one place. demur_uuid7_at goes: the import assembles its uuids in its own
statement and nothing else called it."""

from django.db import migrations

from optout.sql import function_sql

# The functions there were when this migration was written (optout/0012 adds one).
FUNCTIONS = (
    "demur_ledger_reject_change",
    "demur_ledger_stamp_xid",
    "demur_event_hash",
    "demur_receipt",
    "demur_objection_append",
)

# Only to undo the DROP: the function as migration optout/0002 created it.
UUID7_AT = """
CREATE FUNCTION demur_uuid7_at(ms bigint, counter integer, random_uuid uuid) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (lpad(to_hex(ms), 12, '0') || '7' || lpad(to_hex(counter), 3, '0')
            || substr(replace(random_uuid::text, '-', ''), 17, 16))::uuid
$$;
"""


class Migration(migrations.Migration):
    dependencies = [("optout", "0010_audit_key_changed")]

    operations = [
        migrations.RunSQL([function_sql(name) for name in FUNCTIONS], reverse_sql=migrations.RunSQL.noop),
        migrations.RunSQL(["DROP FUNCTION demur_uuid7_at(bigint, integer, uuid)"], reverse_sql=[UUID7_AT]),
    ]
