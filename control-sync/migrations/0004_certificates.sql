-- Certificates for custom domains, issued by the fleet (docs/contract.md §3,
-- "Certificates"; docs/certificates.md).
--
-- certificates: one row per hostname (an exact custom domain, or
--   '*.<suffix>' for a hosting suffix's wildcard). The private key is sealed
--   with the fleet certificate key (XChaCha20-Poly1305, bound to the
--   hostname); the database never holds it in the clear. `revision` grows
--   on every write (a sequence, set by a trigger): an edge's cached copy is
--   current when its revision is the index's.
-- cert_orders: the issuer's work queue and memory of failures, one row per
--   hostname it has tried (state, attempts, when to try again, last error).
-- acme_challenges: what edges answer for the CA, HTTP-01 on
--   /.well-known/acme-challenge/<token> and TLS-ALPN-01 on ALPN acme-tls/1.
--   A key authorization is public (the CA reads it over plain HTTP).
-- acme_account: the issuer's ACME account credentials, sealed.
--
-- Delta stream: a certificate change is recorded in placement_changes with
-- the hostname and revision only (never the PEM or the key): edges fetch
-- the certificate when a handshake needs it. Challenges are recorded whole.
-- cert_orders and acme_account are the issuer's alone and not recorded.

CREATE SEQUENCE certificates_revision;

CREATE TABLE certificates (
    hostname    text PRIMARY KEY,
    chain_pem   text NOT NULL,
    key_sealed  bytea NOT NULL,
    not_before  timestamptz,
    not_after   timestamptz NOT NULL,
    renew_after timestamptz,
    source      text NOT NULL CHECK (source IN ('acme', 'uploaded')),
    revision    bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX certificates_renew_after ON certificates(renew_after);

CREATE TABLE cert_orders (
    hostname    text PRIMARY KEY,
    state       text NOT NULL CHECK (state IN ('pending', 'valid', 'failed')),
    kind        text NOT NULL DEFAULT 'new' CHECK (kind IN ('new', 'renewal')),
    attempts    int NOT NULL DEFAULT 0,
    next_try_at timestamptz NOT NULL DEFAULT now(),
    last_error  text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE acme_challenges (
    token             text PRIMARY KEY,
    key_authorization text NOT NULL,
    hostname          text NOT NULL,
    kind              text NOT NULL DEFAULT 'http-01' CHECK (kind IN ('http-01', 'tls-alpn-01')),
    expires_at        timestamptz NOT NULL
);
CREATE INDEX acme_challenges_hostname ON acme_challenges(hostname);

CREATE TABLE acme_account (
    directory           text PRIMARY KEY,
    credentials_sealed  bytea NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);

-- A new revision only when what an edge serves changes (the chain or the
-- key): the issuer's bookkeeping (renew_after) sends nothing to edges.
CREATE FUNCTION edgeplane_cert_revision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.chain_pem IS DISTINCT FROM OLD.chain_pem
       OR NEW.key_sealed IS DISTINCT FROM OLD.key_sealed THEN
        NEW.revision := nextval('certificates_revision');
        NEW.updated_at := now();
    ELSE
        NEW.revision := OLD.revision;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER certificates_revision BEFORE INSERT OR UPDATE ON certificates
    FOR EACH ROW EXECUTE FUNCTION edgeplane_cert_revision();

-- The change log's row for a certificate: what an edge's index holds.
CREATE FUNCTION edgeplane_record_cert_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO placement_changes (version, tbl, op, row)
        VALUES (edgeplane_next_version(), 'certificates', 'D',
                jsonb_build_object('hostname', OLD.hostname, 'revision', OLD.revision));
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO placement_changes (version, tbl, op, row, old)
        VALUES (edgeplane_next_version(), 'certificates', 'U',
                jsonb_build_object('hostname', NEW.hostname, 'revision', NEW.revision),
                jsonb_build_object('hostname', OLD.hostname, 'revision', OLD.revision));
    ELSE
        INSERT INTO placement_changes (version, tbl, op, row)
        VALUES (edgeplane_next_version(), 'certificates', 'I',
                jsonb_build_object('hostname', NEW.hostname, 'revision', NEW.revision));
    END IF;
    PERFORM pg_notify('edgeplane_placement', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER certificates_changes AFTER INSERT OR DELETE ON certificates
    FOR EACH ROW EXECUTE FUNCTION edgeplane_record_cert_change();
CREATE TRIGGER certificates_revised AFTER UPDATE ON certificates
    FOR EACH ROW WHEN (OLD.revision IS DISTINCT FROM NEW.revision OR OLD.hostname IS DISTINCT FROM NEW.hostname)
    EXECUTE FUNCTION edgeplane_record_cert_change();
CREATE TRIGGER acme_challenges_changes AFTER INSERT OR UPDATE OR DELETE ON acme_challenges
    FOR EACH ROW EXECUTE FUNCTION edgeplane_record_change();

-- A new custom domain wakes the issuer (placectl certs run) at once; it
-- listens to this channel only, not to every placement change.
CREATE FUNCTION edgeplane_wake_issuer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('edgeplane_certs_wanted', NEW.hostname);
    RETURN NULL;
END
$$;

CREATE TRIGGER custom_domains_wake_issuer AFTER INSERT ON custom_domains
    FOR EACH ROW EXECUTE FUNCTION edgeplane_wake_issuer();
