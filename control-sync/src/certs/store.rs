//! The certificate tables in PostgreSQL (migration 0004): what the issuer
//! and `placectl certs` write and what an edge fetches. Plain queries on a
//! `tokio_postgres::Client`; the private key is sealed before it gets
//! here and stays sealed in every row read.

use tokio_postgres::Client;

use super::pem::{check_pair, PairError};
use super::seal::SealKey;

/// One certificate row as an edge fetches it (the key still sealed).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCert {
    pub hostname: String,
    pub chain_pem: String,
    pub key_sealed: Vec<u8>,
    pub revision: u64,
    /// Unix seconds.
    pub not_after: i64,
}

/// One line of `placectl certs ls`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertListing {
    pub hostname: String,
    pub source: Option<String>,
    pub not_after: Option<String>,
    pub renew_after: Option<String>,
    pub order_state: Option<String>,
    pub attempts: Option<i32>,
    pub next_try_at: Option<String>,
    pub last_error: Option<String>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    #[error("{host}: {source}")]
    Pair { host: String, source: PairError },
    #[error("{0} is not in custom_domains (nor a hosting suffix's wildcard): nothing is stored or ordered for it")]
    NotPermitted(String),
}

/// The certificate of `host`, if the control plane has one.
pub async fn fetch(client: &Client, host: &str) -> Result<Option<StoredCert>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT hostname, chain_pem, key_sealed, revision, extract(epoch FROM not_after)::bigint
               FROM certificates WHERE hostname = $1",
            &[&host],
        )
        .await?;
    Ok(row.map(|r| StoredCert {
        hostname: r.get(0),
        chain_pem: r.get(1),
        key_sealed: r.get(2),
        revision: r.get::<_, i64>(3).max(0) as u64,
        not_after: r.get(4),
    }))
}

/// Whether `host` may have a certificate: a custom domain, or the wildcard
/// of a hosting suffix (a region's `*.` row uploaded by an operator).
pub async fn permitted(client: &Client, host: &str) -> Result<bool, tokio_postgres::Error> {
    if host.starts_with("*.") {
        return Ok(true);
    }
    Ok(client
        .query_opt("SELECT 1 FROM custom_domains WHERE hostname = $1", &[&host])
        .await?
        .is_some())
}

/// Stores a checked pair (an upload, or an issued certificate), the key
/// sealed for its hostname. `renew_after` in Unix seconds (None: never by
/// the issuer, for uploads).
#[allow(clippy::too_many_arguments)]
pub async fn store(
    client: &Client,
    seal: &SealKey,
    host: &str,
    chain_pem: &str,
    key_pem: &str,
    source: &str,
    renew_after: Option<i64>,
    now: i64,
) -> Result<u64, StoreError> {
    let checked = check_pair(host, chain_pem, key_pem, now).map_err(|source| StoreError::Pair {
        host: host.to_string(),
        source,
    })?;
    let sealed = seal.seal(host, key_pem.as_bytes());
    let renew = renew_after.map(|s| s as f64);
    let row = client
        .query_one(
            "INSERT INTO certificates (hostname, chain_pem, key_sealed, not_before, not_after, renew_after, source)
             VALUES ($1, $2, $3, to_timestamp($4::float8), to_timestamp($5::float8), to_timestamp($6::float8), $7)
             ON CONFLICT (hostname) DO UPDATE SET chain_pem = EXCLUDED.chain_pem, key_sealed = EXCLUDED.key_sealed,
                 not_before = EXCLUDED.not_before, not_after = EXCLUDED.not_after,
                 renew_after = EXCLUDED.renew_after, source = EXCLUDED.source
             RETURNING revision",
            &[
                &host,
                &chain_pem,
                &sealed,
                &(checked.not_before as f64),
                &(checked.not_after as f64),
                &renew,
                &source,
            ],
        )
        .await?;
    Ok(row.get::<_, i64>(0).max(0) as u64)
}

/// Removes `host`'s certificate and order (edges drop it from their index
/// with the delta; a domain still in custom_domains is ordered again).
pub async fn revoke(client: &Client, host: &str) -> Result<bool, tokio_postgres::Error> {
    client
        .execute("DELETE FROM cert_orders WHERE hostname = $1", &[&host])
        .await?;
    Ok(client
        .execute("DELETE FROM certificates WHERE hostname = $1", &[&host])
        .await?
        > 0)
}

/// Asks the issuer for `host` now: clears its backoff and wakes it.
pub async fn request(client: &Client, host: &str) -> Result<(), StoreError> {
    if !permitted(client, host).await? || host.starts_with("*.") {
        return Err(StoreError::NotPermitted(host.to_string()));
    }
    client
        .execute(
            "INSERT INTO cert_orders (hostname, state, next_try_at) VALUES ($1, 'failed', now())
             ON CONFLICT (hostname) DO UPDATE SET next_try_at = now(), attempts = 0",
            &[&host],
        )
        .await?;
    wake_issuer(client, host).await?;
    Ok(())
}

/// The channel the issuer listens on; the payload is a hostname.
pub const WAKE_CHANNEL: &str = "edgeplane_certs_wanted";

pub async fn wake_issuer(client: &Client, host: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute("SELECT pg_notify($1, $2)", &[&WAKE_CHANNEL, &host])
        .await?;
    Ok(())
}

/// Every certificate and every order, by hostname.
pub async fn list(client: &Client) -> Result<Vec<CertListing>, tokio_postgres::Error> {
    let ts = |c: &str| format!("to_json({c})#>>'{{}}'");
    let sql = format!(
        "SELECT coalesce(c.hostname, o.hostname), c.source, {}, {}, o.state, o.attempts, {}, o.last_error
           FROM certificates c FULL JOIN cert_orders o ON o.hostname = c.hostname
          ORDER BY 1",
        ts("c.not_after"),
        ts("c.renew_after"),
        ts("o.next_try_at")
    );
    Ok(client
        .query(sql.as_str(), &[])
        .await?
        .iter()
        .map(|r| CertListing {
            hostname: r.get(0),
            source: r.get(1),
            not_after: r.get(2),
            renew_after: r.get(3),
            order_state: r.get(4),
            attempts: r.get(5),
            next_try_at: r.get(6),
            last_error: r.get(7),
        })
        .collect())
}
