"""PostgreSQL enforces what the ledger promises, so no code path (ORM, raw SQL, a shell)
can quietly rewrite history: UPDATE, DELETE and TRUNCATE of objection events raise, and
every insert is stamped with its transaction id for the change feed.

It also gets the event hash and receipt numbers as SQL functions, so that the bulk
import can write a million chained events in one set-based statement. demur_event_hash
must stay byte-for-byte equal to optout.ledger.event_hash (a test checks)."""

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

-- One expression, so PostgreSQL inlines it into the importing INSERT: a NULL field is
-- '~', anything else its length, ':' and the text; timestamps are always 27 characters.
-- STABLE, not IMMUTABLE, because to_char is.
CREATE FUNCTION demur_event_hash(
    prev_hash text, uuid uuid, subject_id text, purpose text, action text, source text,
    received_at timestamptz, effective_at timestamptz, recorded_at timestamptz, receipt_code integer,
    email text, reason text, campaign_id bigint, notice_version_id bigint, staff_user text,
    idempotency_key text
) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT encode(sha256(convert_to(
        'demur-event-v1|'
        || coalesce(length(prev_hash) || ':' || prev_hash, '~')
        || '36:' || uuid::text
        || coalesce(length(subject_id) || ':' || subject_id, '~')
        || coalesce(length(purpose) || ':' || purpose, '~')
        || coalesce(length(action) || ':' || action, '~')
        || coalesce(length(source) || ':' || source, '~')
        || '27:' || to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
        || '27:' || to_char(effective_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
        || '27:' || to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
        || coalesce(length(receipt_code::text) || ':' || receipt_code::text, '~')
        || coalesce(length(email) || ':' || email, '~')
        || coalesce(length(reason) || ':' || reason, '~')
        || coalesce(length(campaign_id::text) || ':' || campaign_id::text, '~')
        || coalesce(length(notice_version_id::text) || ':' || notice_version_id::text, '~')
        || coalesce(length(staff_user) || ':' || staff_user, '~')
        || coalesce(length(idempotency_key) || ':' || idempotency_key, '~'),
        'UTF8')), 'hex')
$$;

-- A time-ordered UUID like optout.ledger.new_event_uuid(): version 7, Unix milliseconds
-- in the first 48 bits, the rest random.
CREATE FUNCTION demur_uuid7() RETURNS uuid LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(
        set_byte(
            overlay(uuid_send(gen_random_uuid())
                    placing substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            6, (get_byte(uuid_send(gen_random_uuid()), 6) & 15) | 112),
        'hex')::uuid
$$;

-- The receipt number of an event, as optout.ledger.format_receipt: the id and a 24-bit
-- code as 12 Crockford base32 characters, grouped by four.
CREATE FUNCTION demur_receipt(id bigint, code integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT string_agg(
               substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> (55 - 5 * i)) & 31)::integer + 1, 1)
               || CASE WHEN i IN (3, 7) THEN '-' ELSE '' END,
               '' ORDER BY i)
    FROM generate_series(0, 11) AS i
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
DROP FUNCTION demur_receipt(bigint, integer);
DROP FUNCTION demur_uuid7();
DROP FUNCTION demur_event_hash(text, uuid, text, text, text, text, timestamptz, timestamptz,
    timestamptz, integer, text, text, bigint, bigint, text, text);

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
