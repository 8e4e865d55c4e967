//! The issuer's metrics (`placectl certs run --metrics-listen ADDR`,
//! docs/contract.md §5): orders by kind and outcome, certificates expiring
//! soon, hostnames in backoff; served as Prometheus text on `/metrics` by a
//! listener small enough to read at a glance (one request per connection).

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The `within` labels of `edgeplane_certs_expiring` and their days.
pub const EXPIRING_WITHIN: [(&str, i32); 3] = [("1d", 1), ("7d", 7), ("14d", 14)];

pub struct IssuerMetrics {
    registry: Registry,
    /// `edgeplane_acme_orders_total{kind,outcome}`.
    pub orders: IntCounterVec,
    /// `edgeplane_certs_expiring{within}`.
    pub expiring: IntGaugeVec,
    /// `edgeplane_acme_backoff_hosts`.
    pub backoff_hosts: IntGauge,
    /// `edgeplane_acme_lease_held`: 1 on the instance that issues.
    pub lease_held: IntGauge,
}

impl std::fmt::Debug for IssuerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IssuerMetrics")
    }
}

impl IssuerMetrics {
    pub fn new() -> Arc<IssuerMetrics> {
        let registry = Registry::new();
        let orders = IntCounterVec::new(
            Opts::new(
                "edgeplane_acme_orders_total",
                "ACME orders finished, by kind (new, renewal) and outcome (ok, failed)",
            ),
            &["kind", "outcome"],
        )
        .expect("metric");
        for k in ["new", "renewal"] {
            for o in ["ok", "failed"] {
                orders.with_label_values(&[k, o]);
            }
        }
        let expiring = IntGaugeVec::new(
            Opts::new(
                "edgeplane_certs_expiring",
                "Certificates of custom domains (still in custom_domains) that expire within 1, 7 and 14 days",
            ),
            &["within"],
        )
        .expect("metric");
        for (w, _) in EXPIRING_WITHIN {
            expiring.with_label_values(&[w]);
        }
        let backoff_hosts = IntGauge::new(
            "edgeplane_acme_backoff_hosts",
            "Hostnames whose last order failed and that wait for their next try",
        )
        .expect("metric");
        let lease_held = IntGauge::new(
            "edgeplane_acme_lease_held",
            "1 when this issuer holds the lease (the one that orders), 0 while it waits",
        )
        .expect("metric");
        for c in [
            Box::new(orders.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(expiring.clone()),
            Box::new(backoff_hosts.clone()),
            Box::new(lease_held.clone()),
        ] {
            registry.register(c).expect("register");
        }
        Arc::new(IssuerMetrics {
            registry,
            orders,
            expiring,
            backoff_hosts,
            lease_held,
        })
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Serves `/metrics` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<IssuerMetrics>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let m = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut n = 0;
            let head = async {
                while n < buf.len() {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return false,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        return true;
                    }
                }
                false
            };
            if !matches!(
                tokio::time::timeout(std::time::Duration::from_secs(5), head).await,
                Ok(true)
            ) {
                return;
            }
            let (status, body) = if buf[..n].starts_with(b"GET /metrics ") {
                ("200 OK", m.render())
            } else {
                ("404 Not Found", b"not found\n".to_vec())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&body).await;
        });
    }
}

/// Binds `addr` (an error names it).
pub async fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
