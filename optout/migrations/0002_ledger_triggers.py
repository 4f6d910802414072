"""PostgreSQL enforces what the ledger promises, so no code path (ORM, raw SQL, a shell)
can quietly rewrite history: UPDATE, DELETE and TRUNCATE of objection events raise, and
every insert is stamped with its transaction id for the change feed.

It also gets the event hash and receipt numbers as SQL functions, so that the bulk
import can write a million chained events in one set-based statement. demur_event_hash
must stay byte-for-byte equal to optout.ledger.event_hash (a test checks). The functions'
current bodies are in optout/sql/ (migration optout/0011)."""

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

-- A time-ordered UUID (version 7, RFC 9562) for bulk imports: Unix milliseconds, a 12-bit
-- counter (so one import's ids rise strictly), and the random bits of a v4 UUID, variant
-- included. One inlinable expression: the importing INSERT evaluates it in place.
CREATE FUNCTION demur_uuid7_at(ms bigint, counter integer, random_uuid uuid) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (lpad(to_hex(ms), 12, '0') || '7' || lpad(to_hex(counter), 3, '0')
            || substr(replace(random_uuid::text, '-', ''), 17, 16))::uuid
$$;

-- The receipt number of an event, as optout.ledger.format_receipt: the id and a 24-bit
-- code as 12 Crockford base32 characters, grouped by four. One inlinable expression.
CREATE FUNCTION demur_receipt(id bigint, code integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> 55) & 31)::integer + 1, 1)
        || substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> 50) & 31)::integer + 1, 1)
        || substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> 45) & 31)::integer + 1, 1)
        || substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> 40) & 31)::integer + 1, 1)
        || '-'
        || substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> 35) & 31)::integer + 1, 1)
        || substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> 30) & 31)::integer + 1, 1)
        || substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> 25) & 31)::integer + 1, 1)
        || substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> 20) & 31)::integer + 1, 1)
        || '-'
        || substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> 15) & 31)::integer + 1, 1)
        || substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> 10) & 31)::integer + 1, 1)
        || substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> 5) & 31)::integer + 1, 1)
        || substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> 0) & 31)::integer + 1, 1)
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
DROP FUNCTION demur_uuid7_at(bigint, integer, uuid);
DROP FUNCTION demur_event_hash(text, uuid, text, text, text, text, timestamptz, timestamptz,
    timestamptz, integer, text, text, bigint, bigint, text, text);

DROP FUNCTION demur_ledger_reject_change();
"""


class Migration(migrations.Migration):
    dependencies = [("optout", "0001_initial")]
    operations = [migrations.RunSQL([FORWARD], [BACKWARD])]
