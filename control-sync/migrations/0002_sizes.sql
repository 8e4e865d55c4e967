-- Size-aware placement (docs/contract.md §3, §4): machines of one cluster
-- may differ in size, and some repls need more than the usual container.
-- Both columns get defaults, so every existing row stays valid (a VM holds
-- 100 units, a repl needs 1) and writers that do not know the columns keep
-- working. The change-log triggers record the new columns with the rest of
-- the row (to_jsonb(NEW)); an edge that predates them ignores them.

ALTER TABLE vms ADD COLUMN capacity int NOT NULL DEFAULT 100
    CONSTRAINT vms_capacity_positive CHECK (capacity > 0);

ALTER TABLE repls ADD COLUMN size int NOT NULL DEFAULT 1
    CONSTRAINT repls_size_positive CHECK (size > 0);

-- move-user selects every repl of one owner.
CREATE INDEX repls_owner ON repls(owner);
