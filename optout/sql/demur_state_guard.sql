-- The current-state table, which the check and the export serve, says only what the
-- ledger says. After every UPDATE statement on optout_objectionstate (the trigger
-- demur_state_guard_update, with the statement's new rows as demur_new_states), each
-- changed row must be what its last event says: that event exists, is the newest of the
-- subject's chain, and the row's answer, dates, source, receipt, hash and positions are
-- its own. Both writers change a state in the same statement as its event (the import)
-- or after it (demur_objection_append), so they pass; a plain
-- `UPDATE ... SET objected = false` is refused. Rows are never deleted or truncated
-- (demur_state_no_delete, demur_state_no_truncate call demur_ledger_reject_change).
-- New rows are not checked here: a subject's first state row is written before its
-- first event (it is the lock that orders writers), and a row without an event serves
-- no answer the ledger does not allow.

CREATE OR REPLACE FUNCTION demur_state_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_subject text;
BEGIN
    SELECT n.subject_id INTO v_subject
    FROM demur_new_states n
    LEFT JOIN optout_objectionevent e ON e.id = n.last_event_id
    WHERE e.id IS NULL
       OR (n.subject_id, n.purpose_id, n.head_hash, n.seq, n.feed_key, n.received_at, n.effective_at, n.source)
          IS DISTINCT FROM (e.subject_id, e.purpose_id, e.hash, e.seq, e.feed_key, e.received_at, e.effective_at, e.source)
       OR n.objected IS DISTINCT FROM (e.action = 'objected')
       OR n.receipt IS DISTINCT FROM demur_receipt(e.id, e.receipt_code)
       OR EXISTS (
           SELECT FROM optout_objectionevent later
           WHERE later.subject_id = n.subject_id AND later.purpose_id = n.purpose_id AND later.id > e.id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'the objection state of % must say what its last event says: change it through the ledger (optout.services)', v_subject
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NULL;
END
$$;
