-- edgeplane placement schema (docs/contract.md §3). The control plane owns writes;
-- edges read. Every change to a placement table is recorded in
-- placement_changes by a trigger and announced with NOTIFY edgeplane_placement.
--
-- Versions: each recorded change takes the next value of the single row in
-- placement_version. That row lock is held until commit, so writers of
-- placement data serialise and versions become visible in order with no
-- gaps (a rolled-back transaction rolls its versions back too). An edge that
-- sees a gap has therefore missed data (e.g. pruned changes) and reloads.

CREATE TABLE regions (
    name      text PRIMARY KEY,
    edge_addr text NOT NULL
);

CREATE TABLE clusters (
    name   text PRIMARY KEY,
    region text NOT NULL REFERENCES regions(name),
    state  text NOT NULL CHECK (state IN ('active', 'draining')),
    weight int  NOT NULL DEFAULT 100 CHECK (weight >= 0)
);

CREATE TABLE vms (
    id           text PRIMARY KEY,
    cluster      text NOT NULL REFERENCES clusters(name),
    addr         text NOT NULL,
    metrics_addr text,
    state        text NOT NULL CHECK (state IN ('active', 'draining', 'down'))
);
CREATE INDEX vms_cluster ON vms(cluster);

CREATE TABLE repls (
    id          text PRIMARY KEY,
    slug        text NOT NULL UNIQUE,
    owner       text,
    region      text NOT NULL REFERENCES regions(name),
    cluster     text REFERENCES clusters(name),
    transfer_to text REFERENCES clusters(name)
);
CREATE INDEX repls_region ON repls(region);

-- At most one container per repl: the primary key is the repl.
CREATE TABLE containers (
    repl_id    text PRIMARY KEY REFERENCES repls(id) ON DELETE CASCADE,
    vm_id      text NOT NULL REFERENCES vms(id),
    started_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX containers_vm ON containers(vm_id);

CREATE TABLE custom_domains (
    hostname text PRIMARY KEY,
    repl_id  text NOT NULL REFERENCES repls(id) ON DELETE CASCADE
);
CREATE INDEX custom_domains_repl ON custom_domains(repl_id);

CREATE TABLE tombstones (
    repl_id      text NOT NULL REFERENCES repls(id) ON DELETE CASCADE,
    from_cluster text NOT NULL REFERENCES clusters(name),
    to_cluster   text NOT NULL REFERENCES clusters(name),
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (repl_id, from_cluster)
);
CREATE INDEX tombstones_from ON tombstones(from_cluster);

CREATE TABLE placement_version (
    id      int PRIMARY KEY CHECK (id = 1),
    version bigint NOT NULL
);
INSERT INTO placement_version VALUES (1, 0);

-- op: 'I' insert, 'U' update, 'D' delete, '*' reload everything (bulk import).
-- row: the new row (the old one for 'D'); old: the old row of an update.
-- txid groups the changes of one transaction: an edge never publishes part
-- of a transaction.
CREATE TABLE placement_changes (
    version    bigserial PRIMARY KEY,
    txid       bigint NOT NULL DEFAULT txid_current(),
    tbl        text NOT NULL,
    op         text NOT NULL CHECK (op IN ('I', 'U', 'D', '*')),
    row        jsonb,
    old        jsonb,
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE FUNCTION edgeplane_next_version() RETURNS bigint LANGUAGE sql AS $$
    UPDATE placement_version SET version = version + 1 WHERE id = 1 RETURNING version
$$;

CREATE FUNCTION edgeplane_record_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO placement_changes (version, tbl, op, row)
        VALUES (edgeplane_next_version(), TG_TABLE_NAME, 'D', to_jsonb(OLD));
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO placement_changes (version, tbl, op, row, old)
        VALUES (edgeplane_next_version(), TG_TABLE_NAME, 'U', to_jsonb(NEW), to_jsonb(OLD));
    ELSE
        INSERT INTO placement_changes (version, tbl, op, row)
        VALUES (edgeplane_next_version(), TG_TABLE_NAME, 'I', to_jsonb(NEW));
    END IF;
    -- One notification per transaction: identical payloads are folded.
    PERFORM pg_notify('edgeplane_placement', '');
    RETURN NULL;
END
$$;

-- Tells every edge to do a full reload (after a bulk import with triggers off).
CREATE FUNCTION edgeplane_request_reload() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE v bigint;
BEGIN
    v := edgeplane_next_version();
    INSERT INTO placement_changes (version, tbl, op) VALUES (v, '*', '*');
    PERFORM pg_notify('edgeplane_placement', '');
    RETURN v;
END
$$;

CREATE TRIGGER regions_changes AFTER INSERT OR UPDATE OR DELETE ON regions
    FOR EACH ROW EXECUTE FUNCTION edgeplane_record_change();
CREATE TRIGGER clusters_changes AFTER INSERT OR UPDATE OR DELETE ON clusters
    FOR EACH ROW EXECUTE FUNCTION edgeplane_record_change();
CREATE TRIGGER vms_changes AFTER INSERT OR UPDATE OR DELETE ON vms
    FOR EACH ROW EXECUTE FUNCTION edgeplane_record_change();
CREATE TRIGGER repls_changes AFTER INSERT OR UPDATE OR DELETE ON repls
    FOR EACH ROW EXECUTE FUNCTION edgeplane_record_change();
CREATE TRIGGER containers_changes AFTER INSERT OR UPDATE OR DELETE ON containers
    FOR EACH ROW EXECUTE FUNCTION edgeplane_record_change();
CREATE TRIGGER custom_domains_changes AFTER INSERT OR UPDATE OR DELETE ON custom_domains
    FOR EACH ROW EXECUTE FUNCTION edgeplane_record_change();
CREATE TRIGGER tombstones_changes AFTER INSERT OR UPDATE OR DELETE ON tombstones
    FOR EACH ROW EXECUTE FUNCTION edgeplane_record_change();
