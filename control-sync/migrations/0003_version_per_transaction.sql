-- Versions without rewriting the version row per change.
--
-- 0001 took every change's version with an UPDATE of the one
-- placement_version row. Inside one transaction PostgreSQL makes a new
-- version of that row per UPDATE, and each UPDATE walks the chain of the
-- ones before it: quadratic. 30,000 changes (a `placectl move-user` of
-- 10,000 repls) spent about 6 s there, holding the row lock, so every other
-- control-plane writer waited.
--
-- Now a transaction updates the row once, at its first change (taking the
-- lock that serialises writers, as before), numbers the rest from a
-- transaction-local counter, and writes its last version into the row at
-- commit (a deferred constraint trigger queued once, by the first change).
-- What an edge sees does not change: versions are gap-free and commit in
-- order, and placement_version holds the last committed one.
--
-- Subtransactions: a savepoint rolled back takes its changes, its counter
-- steps and (if it held the first change) the row update and the queued
-- trigger with it, so the numbering stays gap-free.

CREATE OR REPLACE FUNCTION edgeplane_next_version() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    tx text := txid_current()::text;
    v bigint;
BEGIN
    IF current_setting('edgeplane.version_tx', true) IS DISTINCT FROM tx THEN
        UPDATE placement_version SET version = version + 1 WHERE id = 1 RETURNING version INTO v;
        PERFORM set_config('edgeplane.version_tx', tx, true);
        PERFORM set_config('edgeplane.version_first', v::text, true);
    ELSE
        v := current_setting('edgeplane.version_last')::bigint + 1;
    END IF;
    PERFORM set_config('edgeplane.version_last', v::text, true);
    RETURN v;
END
$$;

-- The newest version this transaction has taken, else the committed one:
-- what a writer reports before it commits.
CREATE FUNCTION edgeplane_current_version() RETURNS bigint LANGUAGE sql AS $$
    SELECT CASE WHEN current_setting('edgeplane.version_tx', true) = txid_current()::text
                THEN current_setting('edgeplane.version_last')::bigint
                ELSE (SELECT version FROM placement_version WHERE id = 1) END
$$;

CREATE FUNCTION edgeplane_settle_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE placement_version SET version = current_setting('edgeplane.version_last')::bigint
     WHERE id = 1 AND version <> current_setting('edgeplane.version_last')::bigint;
    RETURN NULL;
END
$$;

-- WHEN is evaluated at insert time: only a transaction's first change
-- queues the trigger, which runs once, at commit.
CREATE CONSTRAINT TRIGGER placement_version_settles AFTER INSERT ON placement_changes
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.version::text = current_setting('edgeplane.version_first', true)
          AND current_setting('edgeplane.version_tx', true) = txid_current()::text)
    EXECUTE FUNCTION edgeplane_settle_version();
