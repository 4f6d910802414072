-- One round trip for an objection or withdrawal (optout.services): find the purpose, check
-- an idempotency key, lock the subject's state row (or create it, for someone new, already
-- in its final form), chain the new event to the previous one (hashed by demur_event_hash,
-- numbered in the chain and placed in the feed), move the state to it, and write the
-- outbox row of the confirmation mail. Called on its own
-- (autocommit) it is one transaction: the event and its mail row commit together or not
-- at all.
--
-- Expected refusals come back as a status, not as an error, so a caller's transaction
-- stays usable: 'unknown_purpose', 'key_reused' (the key was used for another request)
-- and 'unchanged' (already in that state, or nothing to withdraw).

CREATE OR REPLACE FUNCTION demur_objection_append(
    p_action text, p_subject_id text, p_purpose text, p_source text,
    p_received_at timestamptz, p_effective_at timestamptz, p_recorded_at timestamptz,
    p_uuid uuid, p_receipt_code integer, p_email text, p_reason text,
    p_campaign_id bigint, p_notice_version_id bigint, p_staff_user text, p_idempotency_key text,
    p_mail_kind text, p_mail_to text, p_mail_language text,
    OUT status text, OUT objected boolean, OUT receipt text, OUT received_at timestamptz,
    OUT effective_at timestamptz, OUT event_uuid uuid, OUT outbox_id bigint
) LANGUAGE plpgsql AS $$
DECLARE
    v_purpose_id bigint;
    v_state optout_objectionstate%ROWTYPE;
    v_earlier record;
    v_event_id bigint;
    v_prev text := repeat('0', 64);
    v_hash text;
    v_seq integer := 1;
    v_follow boolean := false;  -- an existing state row moves to the new event
    v_key bigint;
BEGIN
    SELECT id INTO v_purpose_id FROM optout_purpose WHERE slug = p_purpose;
    IF v_purpose_id IS NULL THEN
        status := 'unknown_purpose';
        RETURN;
    END IF;

    IF p_idempotency_key IS NOT NULL THEN
        SELECT e.subject_id, e.action INTO v_earlier FROM optout_objectionevent e
        WHERE e.purpose_id = v_purpose_id AND e.idempotency_key = p_idempotency_key;
        IF FOUND THEN
            IF v_earlier.subject_id <> p_subject_id OR v_earlier.action <> p_action THEN
                status := 'key_reused';
                RETURN;
            END IF;
            -- A retry: answer with the subject's current state, write nothing.
            SELECT * INTO v_state FROM optout_objectionstate
            WHERE subject_id = p_subject_id AND purpose_id = v_purpose_id;
            status := 'unchanged';
            objected := coalesce(v_state.objected, false);
            receipt := coalesce(v_state.receipt, '');
            received_at := v_state.received_at;
            effective_at := v_state.effective_at;
            RETURN;
        END IF;
    END IF;

    -- A link names the campaign and notice version it came from; one deleted since
    -- then is left out rather than refusing the objection.
    IF p_campaign_id IS NOT NULL AND NOT EXISTS (SELECT FROM campaigns_campaign WHERE id = p_campaign_id) THEN
        p_campaign_id := NULL;
    END IF;
    IF p_notice_version_id IS NOT NULL
       AND NOT EXISTS (SELECT FROM campaigns_noticeversion WHERE id = p_notice_version_id) THEN
        p_notice_version_id := NULL;
    END IF;

    IF p_action = 'objected' THEN
        -- Someone new: the state row goes in as it will stay (last_event_id names the
        -- event inserted below; verify_ledger checks every state's pointer), and holds
        -- back anyone else objecting for them until this commits. The first of a chain
        -- takes its feed position from this transaction (demur_ledger_epoch).
        v_key := (SELECT e.base FROM demur_ledger_epoch() e) + pg_current_xact_id()::text::bigint;
        v_event_id := nextval(pg_get_serial_sequence('optout_objectionevent', 'id'));
        receipt := demur_receipt(v_event_id, p_receipt_code);
        v_hash := demur_event_hash(
            v_prev, p_uuid, p_subject_id, p_purpose, p_action, p_source, p_received_at, p_effective_at,
            p_recorded_at, p_receipt_code, p_email, p_reason, p_campaign_id, p_notice_version_id,
            p_staff_user, p_idempotency_key);
        INSERT INTO optout_objectionstate
            (subject_id, purpose_id, objected, source, received_at, effective_at, receipt,
             last_event_id, head_hash, seq, feed_key, updated_at)
        VALUES (p_subject_id, v_purpose_id, true, p_source, p_received_at, p_effective_at,
                demur_objection_append.receipt, v_event_id, v_hash, v_seq, v_key, p_recorded_at)
        ON CONFLICT (subject_id, purpose_id) DO NOTHING
        RETURNING * INTO v_state;
    END IF;

    IF v_state.id IS NULL THEN
        -- Someone with a state row: under its lock, chain to their last event.
        SELECT * INTO v_state FROM optout_objectionstate
        WHERE subject_id = p_subject_id AND purpose_id = v_purpose_id
        FOR UPDATE;
        IF v_state.id IS NULL OR v_state.objected = (p_action = 'objected') THEN
            status := 'unchanged';
            objected := coalesce(v_state.objected, false);
            receipt := coalesce(v_state.receipt, '');
            received_at := v_state.received_at;
            effective_at := v_state.effective_at;
            RETURN;
        END IF;
        -- Numbered under the lock, so that one subject's events rise with their chain
        -- (verify_ledger walks it in id order); an id taken above is left unused. This
        -- transaction may have its id from before it waited for the lock, lower than
        -- the previous event's: the feed position never falls below the predecessor's,
        -- so the feed, in (feed_key, id) order, delivers a chain in its own order.
        v_seq := v_state.seq + 1;
        v_follow := true;
        v_key := greatest((SELECT e.base FROM demur_ledger_epoch() e) + pg_current_xact_id()::text::bigint,
                          v_state.feed_key);
        v_event_id := nextval(pg_get_serial_sequence('optout_objectionevent', 'id'));
        receipt := demur_receipt(v_event_id, p_receipt_code);
        v_prev := coalesce(nullif(v_state.head_hash, ''), v_prev);
        v_hash := demur_event_hash(
            v_prev, p_uuid, p_subject_id, p_purpose, p_action, p_source, p_received_at, p_effective_at,
            p_recorded_at, p_receipt_code, p_email, p_reason, p_campaign_id, p_notice_version_id,
            p_staff_user, p_idempotency_key);
    END IF;

    INSERT INTO optout_objectionevent
        (id, uuid, subject_id, email, purpose_id, action, source, reason, campaign_id,
         notice_version_id, staff_user, received_at, effective_at, recorded_at, receipt_code,
         idempotency_key, prev_hash, hash, seq, feed_key)
    VALUES
        (v_event_id, p_uuid, p_subject_id, p_email, v_purpose_id, p_action, p_source, p_reason,
         p_campaign_id, p_notice_version_id, p_staff_user, p_received_at, p_effective_at,
         p_recorded_at, p_receipt_code, p_idempotency_key, v_prev, v_hash, v_seq, v_key);

    IF v_follow THEN
        -- The state follows its new event (demur_state_guard checks that it does).
        UPDATE optout_objectionstate
        SET objected = (p_action = 'objected'), source = p_source, received_at = p_received_at,
            effective_at = p_effective_at, receipt = demur_objection_append.receipt,
            last_event_id = v_event_id, head_hash = v_hash, seq = v_seq, feed_key = v_key,
            updated_at = p_recorded_at
        WHERE id = v_state.id;
    END IF;

    IF p_mail_to <> '' THEN
        -- The body is rendered by the worker that sends it (optout.outbox).
        INSERT INTO optout_outboxmessage
            ("kind", "status", "to", "language", "subject", "body_text", "body_html", "event_id",
             "attempts", "last_error", "created_at")
        VALUES (p_mail_kind, 'pending', p_mail_to, p_mail_language, '', '', '', v_event_id, 0, '', p_recorded_at)
        RETURNING id INTO outbox_id;
    END IF;

    status := 'created';
    objected := p_action = 'objected';
    received_at := p_received_at;
    effective_at := p_effective_at;
    event_uuid := p_uuid;
END
$$;
