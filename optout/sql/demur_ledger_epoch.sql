-- Where this database's change feed stands: the ledger's id, the current epoch and its
-- base. Every writer and every feed read calls it (optout.services, optout.selectors).
--
-- An event's feed position (feed_key) is base + the writing transaction's id, raised to
-- its predecessor's position if that is higher. Transaction ids belong to one
-- PostgreSQL cluster: a restore into another cluster (pg_dump/pg_restore, a logical
-- replica, a move) starts them again near zero, and a point-in-time recovery or a
-- failover to a replica that lagged hands out again ids the lost transactions had.
-- So each epoch belongs to one (cluster, timeline, database): when the row on top does
-- not name where this runs, a new epoch starts, under a lock, with a base that puts
-- every later position above every position the ledger holds and above every horizon
-- the earlier epochs recorded as complete (optout_ledgerepoch.complete_below, advanced
-- by optout.services.ledger_checkpoint, which beat runs every minute). Cursors of an earlier epoch stay
-- good up to its complete_below; beyond it the API answers 410 resync_required.
--
-- On a standby nothing can be written, so it answers with the top row as it stands.

CREATE OR REPLACE FUNCTION demur_ledger_epoch(OUT ledger text, OUT epoch text, OUT base bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_system bigint;
    v_timeline bigint;
    v_database bigint;
    v_top optout_ledgerepoch%ROWTYPE;
    v_xmin bigint;
    v_held bigint;
BEGIN
    SELECT * INTO v_top FROM optout_ledgerepoch ORDER BY id DESC LIMIT 1;
    IF pg_is_in_recovery() THEN
        ledger := v_top.ledger; epoch := v_top.epoch; base := v_top.base;
        RETURN;
    END IF;
    v_system := (SELECT system_identifier FROM pg_control_system());
    -- The timeline being written, as the name of the current WAL file begins.
    v_timeline := ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint;
    v_database := (SELECT oid::bigint FROM pg_database WHERE datname = current_database());
    IF v_top.system_identifier = v_system AND v_top.timeline = v_timeline AND v_top.database_oid = v_database THEN
        ledger := v_top.ledger; epoch := v_top.epoch; base := v_top.base;
        RETURN;
    END IF;

    -- Somewhere new: one caller starts the epoch, the others wait for it here.
    LOCK TABLE optout_ledgerepoch IN EXCLUSIVE MODE;
    SELECT * INTO v_top FROM optout_ledgerepoch ORDER BY id DESC LIMIT 1;
    IF v_top.system_identifier = v_system AND v_top.timeline = v_timeline AND v_top.database_oid = v_database THEN
        ledger := v_top.ledger; epoch := v_top.epoch; base := v_top.base;
        RETURN;
    END IF;
    -- Every transaction that can still write has an id at or above v_xmin, so each of
    -- its positions is at least base + v_xmin: above everything held.
    v_xmin := pg_snapshot_xmin(pg_current_snapshot())::text::bigint;
    v_held := greatest(
        (SELECT max(feed_key) + 1 FROM optout_objectionevent),
        (SELECT max(complete_below) FROM optout_ledgerepoch),
        0);
    ledger := coalesce(v_top.ledger, replace(gen_random_uuid()::text, '-', ''));
    epoch := replace(gen_random_uuid()::text, '-', '');
    base := greatest(coalesce(v_top.base, 0), v_held - v_xmin);
    INSERT INTO optout_ledgerepoch
        (ledger, epoch, system_identifier, timeline, database_oid, base, complete_below, started_at)
    VALUES (ledger, epoch, v_system, v_timeline, v_database, base, base + v_xmin, now());
END
$$;
