//! The fleet's one ACME issuer (`placectl certs run`): orders a
//! certificate for every custom domain that has none, renews those past
//! `renew_after`, and stores them sealed in PostgreSQL for every edge.
//!
//! Where it sits: a control-plane worker beside the database, never on an
//! edge. Edges answer the CA's challenges from `acme_challenges` (through
//! their delta stream) and fetch the certificates it stores.
//!
//! Invariants:
//! - One issuer at a time: a session-level PostgreSQL advisory lock is the
//!   lease. A second instance waits; when the holder's session ends (the
//!   process died, the network dropped it) the lock is released and the
//!   waiter takes over, and first requeues the orders the dead holder left
//!   `pending` (only the lease holder runs orders, so they are orphans).
//! - Nothing outside `custom_domains` is ever ordered; a domain removed from
//!   it is never renewed (the work query joins it).
//! - At most `orders_per_minute` orders start in any minute ([`RateCap`]);
//!   a failed hostname backs off exponentially ([`backoff`]) with its
//!   `last_error` kept. Renewal times are jittered ([`renew_after`]), so
//!   certificates issued together are not renewed together, and a restart
//!   meets at most the cap's worth of due work per minute.
//! - The account key and every certificate key are sealed before they are
//!   written; nothing here logs a key or a key authorization.
//!
//! Start at [`Issuer::run`]; the pure parts ([`RateCap`], [`backoff`],
//! [`renew_after`]) are tested on their own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::seal::SealKey;
use super::store::{self, WAKE_CHANNEL};
use crate::table::ChallengeKind;

/// The advisory lock key of the issuer's lease ("edge" "cert" in ASCII).
pub const LEASE_KEY: i64 = 0x6564_6765_6365_7274;
/// How long an order may take before it counts as failed.
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(120);
/// Challenges outlive their order by this much at most.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(600);
/// Orders run at once.
pub const ORDER_CONCURRENCY: usize = 8;
/// Passes start at most this often, however often the issuer is woken.
pub const MIN_PASS_INTERVAL: Duration = Duration::from_millis(250);
/// Longest backoff of a failing hostname.
pub const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone)]
pub struct IssuerOptions {
    pub database_url: String,
    pub acme_directory: String,
    /// The CA's TLS root (a private or test CA).
    pub acme_root: Option<PathBuf>,
    pub contact: Vec<String>,
    pub seal: SealKey,
    pub orders_per_minute: u32,
    pub challenge: ChallengeKind,
    /// Waited between publishing a challenge and telling the CA it is
    /// ready: the delta stream's time to reach every edge.
    pub propagation: Duration,
    /// A pass runs at least this often (and whenever woken).
    pub poll: Duration,
    /// First backoff of a failing hostname (doubling to [`MAX_BACKOFF`]).
    pub retry_base: Duration,
    pub metrics: Arc<super::metrics::IssuerMetrics>,
}

/// At most `per_minute` starts in any sliding minute. Time is passed in.
#[derive(Debug)]
pub struct RateCap {
    per_minute: u32,
    starts: std::collections::VecDeque<u64>,
}

impl RateCap {
    pub fn new(per_minute: u32) -> RateCap {
        RateCap {
            per_minute: per_minute.max(1),
            starts: Default::default(),
        }
    }

    /// Takes a start at `now_ms` if the last minute has room.
    pub fn try_take(&mut self, now_ms: u64) -> bool {
        while self.starts.front().is_some_and(|&t| now_ms.saturating_sub(t) >= 60_000) {
            self.starts.pop_front();
        }
        if self.starts.len() as u32 >= self.per_minute {
            return false;
        }
        self.starts.push_back(now_ms);
        true
    }

    /// Starts left in the current minute at `now_ms`.
    pub fn room(&mut self, now_ms: u64) -> u32 {
        while self.starts.front().is_some_and(|&t| now_ms.saturating_sub(t) >= 60_000) {
            self.starts.pop_front();
        }
        self.per_minute - self.starts.len() as u32
    }
}

/// The wait after the `attempts`-th failure: `base` doubling, capped at
/// [`MAX_BACKOFF`], scaled by `jitter` in [0.5, 1.0).
pub fn backoff(base: Duration, attempts: u32, jitter: f64) -> Duration {
    let raw = base.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    raw.min(MAX_BACKOFF).mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 0.999))
}

/// When to renew a certificate valid from `not_before` to `not_after` (Unix
/// s): at two thirds of its life, moved by up to ±1/12 of the life by
/// `jitter` in [0, 1) — certificates issued in one hour spread over days.
pub fn renew_after(not_before: i64, not_after: i64, jitter: f64) -> i64 {
    let life = (not_after - not_before).max(0) as f64;
    let at = not_before as f64 + life * 2.0 / 3.0 + life / 12.0 * (2.0 * jitter.clamp(0.0, 1.0) - 1.0);
    at as i64
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// A uniform number in [0, 1) from the OS (jitter only).
fn jitter() -> f64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Why an order or a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("{0}")]
    Order(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// One due hostname.
#[derive(Debug, Clone)]
struct Work {
    hostname: String,
    renewal: bool,
}

/// The due work, new names first, at most `limit`.
async fn due(client: &Client, limit: i64) -> Result<Vec<Work>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT d.hostname, c.hostname IS NOT NULL
               FROM custom_domains d
               LEFT JOIN certificates c ON c.hostname = d.hostname
               LEFT JOIN cert_orders o ON o.hostname = d.hostname
              WHERE (c.hostname IS NULL OR c.renew_after <= now())
                AND (o.hostname IS NULL OR o.state = 'valid' OR o.next_try_at <= now())
              ORDER BY c.hostname IS NOT NULL, coalesce(c.renew_after, o.next_try_at)
              LIMIT $1",
            &[&limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Work {
            hostname: r.get(0),
            renewal: r.get(1),
        })
        .collect())
}

/// Orders in flight: a pass starts new ones beside them (a slow order
/// never holds up a new domain), never a second one for a hostname.
struct Orders {
    cap: RateCap,
    /// Each task returns its hostname.
    running: tokio::task::JoinSet<String>,
    in_flight: std::collections::HashSet<String>,
}

/// The issuer. See the module docs.
pub struct Issuer {
    opts: IssuerOptions,
}

impl Issuer {
    pub fn new(opts: IssuerOptions) -> Issuer {
        Issuer { opts }
    }

    /// Runs until `stop` is notified: connects, waits for the lease, then
    /// makes passes over the due work whenever woken or every `poll`.
    pub async fn run(&self, stop: Arc<Notify>) -> Result<(), IssueError> {
        let (client, mut conn) = tokio_postgres::connect(&self.opts.database_url, NoTls).await?;
        let wake = Arc::new(Notify::new());
        let w = wake.clone();
        let lost = Arc::new(Notify::new());
        let l = lost.clone();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(_)) => w.notify_one(),
                    Ok(_) => {}
                    Err(e) => {
                        log::warn!("certs: database connection: {e}");
                        break;
                    }
                }
            }
            l.notify_one();
        });
        let client = Arc::new(client);
        log::info!("certs: waiting for the issuer lease");
        loop {
            let held: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&LEASE_KEY])
                .await?
                .get(0);
            if held {
                break;
            }
            tokio::select! {
                _ = stop.notified() => return Ok(()),
                _ = lost.notified() => return Err(IssueError::Order("database connection lost".into())),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let requeued = client
            .execute(
                "UPDATE cert_orders SET next_try_at = now() WHERE state = 'pending'",
                &[],
            )
            .await?;
        log::info!("certs: holding the issuer lease ({requeued} orphaned order(s) requeued)");
        self.opts.metrics.lease_held.set(1);
        client.batch_execute(&format!("LISTEN {WAKE_CHANNEL}")).await?;
        let account = self.account(&client).await?;
        let mut orders = Orders {
            cap: RateCap::new(self.opts.orders_per_minute),
            running: tokio::task::JoinSet::new(),
            in_flight: Default::default(),
        };
        loop {
            let started = tokio::time::Instant::now();
            self.pass(&client, &account, &mut orders).await?;
            tokio::select! {
                _ = stop.notified() => return Ok(()),
                _ = lost.notified() => return Err(IssueError::Order("database connection lost".into())),
                _ = wake.notified() => {}
                Some(done) = orders.running.join_next() => {
                    if let Ok(host) = done {
                        orders.in_flight.remove(&host);
                    }
                }
                _ = tokio::time::sleep(self.opts.poll) => {}
            }
            // A burst of wakes (a bulk import of domains) costs one pass
            // per MIN_PASS_INTERVAL, not one per notification.
            tokio::time::sleep_until(started + MIN_PASS_INTERVAL).await;
        }
    }

    /// The ACME account: restored from the database, else created there.
    async fn account(&self, client: &Client) -> Result<Account, IssueError> {
        let o = &self.opts;
        account(client, &o.acme_directory, o.acme_root.as_deref(), &o.contact, &o.seal).await
    }

    /// One pass: clears expired challenges, updates the gauges, then starts
    /// as many due orders as the cap and [`ORDER_CONCURRENCY`] allow.
    async fn pass(&self, client: &Arc<Client>, account: &Account, orders: &mut Orders) -> Result<(), IssueError> {
        client
            .execute("DELETE FROM acme_challenges WHERE expires_at <= now()", &[])
            .await?;
        self.gauges(client).await?;
        let free = ORDER_CONCURRENCY.saturating_sub(orders.running.len()) as u32;
        let room = orders.cap.room(unix_ms()).min(free);
        if room == 0 {
            return Ok(());
        }
        let work = due(client, i64::from(room) + orders.in_flight.len() as i64).await?;
        for w in work {
            if orders.in_flight.contains(&w.hostname) {
                continue;
            }
            if orders.running.len() >= ORDER_CONCURRENCY || !orders.cap.try_take(unix_ms()) {
                break;
            }
            orders.in_flight.insert(w.hostname.clone());
            let (client, account, opts) = (client.clone(), account.clone(), self.opts.clone());
            orders.running.spawn(async move {
                let host = w.hostname.clone();
                one_order(&client, &account, &opts, w).await;
                host
            });
        }
        Ok(())
    }

    /// Expiring certificates and hostnames in backoff, for the gauges.
    async fn gauges(&self, client: &Client) -> Result<(), IssueError> {
        let m = &self.opts.metrics;
        for (within, days) in super::metrics::EXPIRING_WITHIN {
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM certificates c JOIN custom_domains d ON d.hostname = c.hostname
                      WHERE c.not_after < now() + $1::int * interval '1 day'",
                    &[&days],
                )
                .await?
                .get(0);
            m.expiring.with_label_values(&[within]).set(n);
        }
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM cert_orders WHERE state = 'failed' AND next_try_at > now()",
                &[],
            )
            .await?
            .get(0);
        m.backoff_hosts.set(n);
        Ok(())
    }
}

/// The fleet's ACME account at `directory`: restored from `acme_account`
/// (opened with the fleet key), else created at the CA and stored sealed.
pub async fn account(
    client: &Client,
    directory: &str,
    acme_root: Option<&std::path::Path>,
    contact: &[String],
    seal: &SealKey,
) -> Result<Account, IssueError> {
    let builder = || match acme_root {
        Some(root) => Account::builder_with_root(root),
        None => Account::builder(),
    };
    let aad = format!("acme-account {directory}");
    let row = client
        .query_opt(
            "SELECT credentials_sealed FROM acme_account WHERE directory = $1",
            &[&directory],
        )
        .await?;
    if let Some(r) = row {
        let plain = seal
            .open(&aad, r.get(0))
            .map_err(|e| IssueError::Order(format!("the stored ACME account: {e}")))?;
        let creds: AccountCredentials = serde_json::from_slice(&plain)
            .map_err(|e| IssueError::Order(format!("the stored ACME account does not parse: {e}")))?;
        return Ok(builder()?.from_credentials(creds).await?);
    }
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            directory.to_string(),
            None,
        )
        .await?;
    let plain = serde_json::to_vec(&creds).map_err(|e| IssueError::Order(e.to_string()))?;
    client
        .execute(
            "INSERT INTO acme_account (directory, credentials_sealed) VALUES ($1, $2)
             ON CONFLICT (directory) DO NOTHING",
            &[&directory, &seal.seal(&aad, &plain)],
        )
        .await?;
    log::info!("certs: created an ACME account at {directory}");
    Ok(account)
}

/// Revokes `host`'s stored certificate at the CA (RFC 8555 §7.6), as the
/// account that ordered it. The row stays: the caller removes it.
pub async fn revoke_at_ca(client: &Client, account: &Account, host: &str) -> Result<(), IssueError> {
    let row = store::fetch(client, host)
        .await?
        .ok_or_else(|| IssueError::Order(format!("{host}: no certificate")))?;
    let ders = super::pem::chain_ders(&row.chain_pem).map_err(|source| store::StoreError::Pair {
        host: host.to_string(),
        source,
    })?;
    let leaf = rustls::pki_types::CertificateDer::from(ders[0].clone());
    account
        .revoke(&instant_acme::RevocationRequest {
            certificate: &leaf,
            reason: None,
        })
        .await?;
    Ok(())
}

/// Runs one hostname's order and records how it ended.
async fn one_order(client: &Client, account: &Account, opts: &IssuerOptions, w: Work) {
    let kind = if w.renewal { "renewal" } else { "new" };
    let marked = client
        .execute(
            "INSERT INTO cert_orders (hostname, state, kind, next_try_at, updated_at)
             VALUES ($1, 'pending', $2, now() + $3::float8 * interval '1 second', now())
             ON CONFLICT (hostname) DO UPDATE SET state = 'pending', kind = $2,
                 next_try_at = EXCLUDED.next_try_at, updated_at = now()",
            &[&w.hostname, &kind, &ORDER_TIMEOUT.as_secs_f64()],
        )
        .await;
    if let Err(e) = marked {
        log::warn!("certs: {}: could not mark the order: {e}", w.hostname);
        return;
    }
    let result = tokio::time::timeout(ORDER_TIMEOUT, order(client, account, opts, &w.hostname)).await;
    let result = result.unwrap_or_else(|_| Err(IssueError::Order(format!("no certificate within {ORDER_TIMEOUT:?}"))));
    let _ = client
        .execute("DELETE FROM acme_challenges WHERE hostname = $1", &[&w.hostname])
        .await;
    let outcome = if result.is_ok() { "ok" } else { "failed" };
    opts.metrics.orders.with_label_values(&[kind, outcome]).inc();
    match result {
        Ok(revision) => {
            log::info!("certs: {}: {kind} certificate stored (revision {revision})", w.hostname);
            let _ = client
                .execute(
                    "UPDATE cert_orders SET state = 'valid', attempts = 0, last_error = NULL, updated_at = now()
                      WHERE hostname = $1",
                    &[&w.hostname],
                )
                .await;
        }
        Err(e) => {
            let attempts: i32 = client
                .query_opt("SELECT attempts FROM cert_orders WHERE hostname = $1", &[&w.hostname])
                .await
                .ok()
                .flatten()
                .map(|r| r.get::<_, i32>(0))
                .unwrap_or(0)
                + 1;
            let wait = backoff(opts.retry_base, attempts as u32, jitter());
            log::warn!(
                "certs: {}: {kind} order failed (attempt {attempts}, next in {:.0} s): {e}",
                w.hostname,
                wait.as_secs_f64()
            );
            let _ = client
                .execute(
                    "UPDATE cert_orders SET state = 'failed', attempts = $2, last_error = $3,
                         next_try_at = now() + $4::float8 * interval '1 second', updated_at = now()
                      WHERE hostname = $1",
                    &[&w.hostname, &attempts, &e.to_string(), &wait.as_secs_f64()],
                )
                .await;
        }
    }
}

/// The ACME exchange for one hostname; returns the stored revision.
async fn order(client: &Client, account: &Account, opts: &IssuerOptions, host: &str) -> Result<u64, IssueError> {
    let ids = [Identifier::Dns(host.to_string())];
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    let want = match opts.challenge {
        ChallengeKind::Http01 => ChallengeType::Http01,
        ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let expires = (unix_now() + CHALLENGE_TTL.as_secs() as i64) as f64;
    let mut authorizations = order.authorizations();
    while let Some(a) = authorizations.next().await {
        let mut a = a?;
        match a.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(IssueError::Order(format!("authorization is {other:?}"))),
        }
        let mut challenge = a
            .challenge(want.clone())
            .ok_or_else(|| IssueError::Order(format!("the CA offers no {} challenge", opts.challenge.as_str())))?;
        let key_authorization = challenge.key_authorization();
        client
            .execute(
                "INSERT INTO acme_challenges (token, key_authorization, hostname, kind, expires_at)
                 VALUES ($1, $2, $3, $4, to_timestamp($5::float8))
                 ON CONFLICT (token) DO UPDATE SET key_authorization = EXCLUDED.key_authorization",
                &[
                    &challenge.token,
                    &key_authorization.as_str(),
                    &host,
                    &opts.challenge.as_str(),
                    &expires,
                ],
            )
            .await?;
        tokio::time::sleep(opts.propagation).await;
        challenge.set_ready().await?;
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(100))
        .backoff(1.5)
        .timeout(ORDER_TIMEOUT / 2);
    let status = order.poll_ready(&retry).await?;
    if status != OrderStatus::Ready {
        return Err(IssueError::Order(format!(
            "order is {status:?} after the challenge: {}",
            order_problem(&mut order).await
        )));
    }
    let key = rcgen::KeyPair::generate().map_err(|e| IssueError::Order(format!("key: {e}")))?;
    let mut params =
        rcgen::CertificateParams::new(vec![host.to_string()]).map_err(|e| IssueError::Order(format!("CSR: {e}")))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| IssueError::Order(format!("CSR: {e}")))?;
    order.finalize_csr(csr.der()).await?;
    let chain = order.poll_certificate(&retry).await?;
    let key_pem = key.serialize_pem();
    let checked =
        super::pem::check_pair(host, &chain, &key_pem, unix_now()).map_err(|source| store::StoreError::Pair {
            host: host.to_string(),
            source,
        })?;
    let renew = renew_after(checked.not_before, checked.not_after, jitter());
    Ok(store::store(
        client,
        &opts.seal,
        host,
        &chain,
        &key_pem,
        "acme",
        Some(renew),
        unix_now(),
    )
    .await?)
}

/// The CA's reason an order failed: its error, else the first challenge
/// error of a refreshed authorization (bounded: a reason is not worth a
/// stuck order).
async fn order_problem(order: &mut instant_acme::Order) -> String {
    let find = async {
        if let Ok(state) = order.refresh().await {
            if let Some(e) = &state.error {
                return e.to_string();
            }
        }
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut a)) = authorizations.next().await {
            if let Ok(state) = a.refresh().await {
                if let Some(e) = state.challenges.iter().find_map(|c| c.error.as_ref()) {
                    return e.to_string();
                }
            }
        }
        "the CA gave no reason".to_string()
    };
    tokio::time::timeout(Duration::from_secs(10), find)
        .await
        .unwrap_or_else(|_| "the CA gave no reason in 10 s".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_admits_per_minute_and_slides() {
        let mut c = RateCap::new(3);
        assert!(c.try_take(0) && c.try_take(10) && c.try_take(20));
        assert!(!c.try_take(30));
        assert_eq!(c.room(59_999), 0);
        assert!(c.try_take(60_000), "the first start left the window");
        assert!(!c.try_take(60_001));
        assert_eq!(c.room(80_020), 2, "only the start at 60,000 is in the window");
    }

    #[test]
    fn backoff_doubles_to_a_day_with_jitter_below_it() {
        let b = Duration::from_secs(60);
        assert_eq!(backoff(b, 1, 0.0), Duration::from_secs(30));
        assert!(backoff(b, 1, 0.999) < Duration::from_secs(60));
        assert_eq!(backoff(b, 3, 0.0), Duration::from_secs(120));
        assert!(backoff(b, 40, 0.999) <= MAX_BACKOFF);
        assert_eq!(backoff(b, 40, 0.0), MAX_BACKOFF / 2);
    }

    #[test]
    fn renewals_spread_around_two_thirds_of_the_life() {
        let (nb, na) = (0, 90 * 86_400);
        assert_eq!(renew_after(nb, na, 0.5), 60 * 86_400);
        let early = renew_after(nb, na, 0.0);
        let late = renew_after(nb, na, 0.999_999);
        assert!((early - 52 * 86_400).abs() < 86_400, "{early}");
        assert!((late - 67 * 86_400).abs() < 86_400, "{late}");
        // 1,000 certificates issued in one hour: renewals over ~15 days, no
        // minute with more than a handful.
        let mut minutes = std::collections::HashMap::new();
        for i in 0..1000u64 {
            let j = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
            let nb = (i * 3600 / 1000) as i64;
            *minutes.entry(renew_after(nb, nb + na, j) / 60).or_insert(0) += 1;
        }
        assert!(*minutes.values().max().unwrap() <= 3, "{:?}", minutes.values().max());
    }
}
