-- The hash of a ledger event: the one definition every writer uses (demur_objection_append
-- for the pages, the API and staff entry; the bulk import's statement in optout.services).
-- optout.ledger.event_hash computes the same digest in Python for verify_ledger; a test
-- keeps the two equal.
--
-- One expression, so PostgreSQL inlines it into the importing INSERT: a NULL field is
-- '~', anything else its length, ':' and the text; timestamps are always 27 characters.
-- STABLE, not IMMUTABLE, because to_char is.

CREATE OR REPLACE FUNCTION demur_event_hash(
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
