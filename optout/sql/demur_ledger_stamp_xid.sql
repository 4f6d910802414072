-- Every event carries the id of the transaction that wrote it, which the change feed pages
-- on (optout.selectors). The column's default fills it in; the trigger demur_ledger_stamp_xid
-- calls this only for a row that arrives with another value (NULL or forged), so an insert
-- normally pays no PL/pgSQL call.

CREATE OR REPLACE FUNCTION demur_ledger_stamp_xid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.xid := pg_current_xact_id()::text::bigint;
    RETURN NEW;
END
$$;
