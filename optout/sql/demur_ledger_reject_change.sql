-- The objection ledger is append-only, inside PostgreSQL: the triggers
-- demur_ledger_no_update_delete (each row) and demur_ledger_no_truncate (each statement) on
-- optout_objectionevent call this, so no code path (ORM, raw SQL, a shell) rewrites history.

CREATE OR REPLACE FUNCTION demur_ledger_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the objection ledger is append-only: % on % is not allowed', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END
$$;
