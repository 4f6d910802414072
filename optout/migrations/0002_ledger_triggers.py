"""PostgreSQL enforces what the ledger promises, so no code path (ORM, raw SQL, a shell)
can quietly rewrite history: UPDATE, DELETE and TRUNCATE of objection events raise, and
every insert is stamped with its transaction id for the change feed."""

from django.db import migrations

FORWARD = """
CREATE FUNCTION demur_ledger_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the objection ledger is append-only: % on % is not allowed', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE FUNCTION demur_ledger_stamp_xid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.xid := pg_current_xact_id()::text::bigint;
    RETURN NEW;
END
$$;

CREATE TRIGGER demur_ledger_no_update_delete
    BEFORE UPDATE OR DELETE ON optout_objectionevent
    FOR EACH ROW EXECUTE FUNCTION demur_ledger_reject_change();

CREATE TRIGGER demur_ledger_no_truncate
    BEFORE TRUNCATE ON optout_objectionevent
    FOR EACH STATEMENT EXECUTE FUNCTION demur_ledger_reject_change();

CREATE TRIGGER demur_ledger_stamp_xid
    BEFORE INSERT ON optout_objectionevent
    FOR EACH ROW EXECUTE FUNCTION demur_ledger_stamp_xid();
"""

BACKWARD = """
DROP TRIGGER demur_ledger_stamp_xid ON optout_objectionevent;
DROP TRIGGER demur_ledger_no_truncate ON optout_objectionevent;
DROP TRIGGER demur_ledger_no_update_delete ON optout_objectionevent;
DROP FUNCTION demur_ledger_stamp_xid();
DROP FUNCTION demur_ledger_reject_change();
"""


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD, params=None)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARD, params=None)


class Migration(migrations.Migration):
    dependencies = [("optout", "0001_initial")]
    operations = [migrations.RunPython(forward, backward)]
