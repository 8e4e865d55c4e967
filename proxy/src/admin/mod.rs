//! The admin listener (docs/contract.md §5): `/metrics`, `/healthz`, `/readyz`,
//! `/debug/route`, `/debug/snapshot`, the balancer (`GET /balancer`: policy,
//! per-cluster mode, subsets and VM health; `POST /balancer/policy?policy=P`:
//! switch the policy at runtime), config reload (`POST /config/reload`,
//! the same as SIGHUP; `GET /debug/config`: the keys in effect and the last
//! reload) and a small status page at `/`.
//!
//! Where it sits: a second Pingora service in the same process, bound to
//! `edge.admin_listen` (loopback by default). When an admin token is
//! configured every path but `/healthz` and `/readyz` needs
//! `Authorization: Bearer <token>`. Start at [`AdminApp::handle`].

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use edgeplane_control_sync::SyncErrorKind;

pub mod reload;
pub mod status_page;
pub mod traffic;

use std::sync::Arc;

use edgeplane_control_sync::shadow::ShadowControl;
use edgeplane_control_sync::table::RoutingTable;

use crate::background::health::HealthHandle;
use crate::balancer::{BalancerView, PlacementLedger};
use crate::clock::now_ms;
use crate::http::access_log::admin_token_matches;
use reload::Reloader;
use status_page::{ClusterModel, LastKnownGoodModel, StatusModel, VmModel};

/// What the admin API reads and changes: the running config and route
/// context, the table, name answers, metrics and recent forwards (shared
/// with the request path), the health samples, the config reloader and the
/// shadow controls.
pub struct AdminApp {
    /// What it shares with the request path.
    pub shared: crate::shared::Shared,
    pub health: HealthHandle,
    pub reloader: Arc<Reloader>,
    /// Shadow mode (`placement.shadow`): the comparison and the runtime
    /// switch of the source served.
    pub shadow: Option<ShadowControl>,
    /// A minute of traffic samples for the status page's traffic card.
    pub traffic: traffic::TrafficSampler,
}

fn resp(status: StatusCode, ctype: &str, body: impl Into<Vec<u8>>) -> Response<Vec<u8>> {
    let body = body.into();
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap()
}

/// A 200 JSON answer, newline-terminated.
fn json(body: serde_json::Value) -> Response<Vec<u8>> {
    resp(StatusCode::OK, "application/json", format!("{body}\n"))
}

/// Decodes `%XX` and `+` in a query value.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(v) => {
                    out.push(v);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| percent_decode(v))
    })
}

impl AdminApp {
    /// Answers one admin request: the token check, then one handler per
    /// path. Every handler is a plain function of the state it reads.
    pub fn handle(&self, method: &str, path: &str, query: &str, authorization: Option<&str>) -> Response<Vec<u8>> {
        let open = matches!(path, "/healthz" | "/readyz");
        if !open && !self.authorized(authorization) {
            return resp(StatusCode::UNAUTHORIZED, "text/plain", "admin token required\n");
        }
        let now = now_ms();
        match path {
            "/healthz" => resp(StatusCode::OK, "text/plain", "ok\n"),
            "/readyz" => self.readyz(),
            "/metrics" => self.metrics(now),
            "/debug/route" => self.debug_route(query, now),
            "/debug/snapshot" => json(self.snapshot_json(now)),
            "/debug/allocations" => {
                let (allocations, bytes) = crate::alloc_count::totals();
                json(serde_json::json!({
                    "counting": crate::alloc_count::enabled(),
                    "allocations": allocations,
                    "bytes": bytes,
                }))
            }
            "/debug/shadow" => json(self.shadow_json()),
            "/debug/config" => json(self.config_json()),
            "/balancer" => json(self.balancer_json(now)),
            "/balancer/policy" => self.set_policy(method, query),
            "/config/reload" => self.reload(method),
            "/placement/primary" => self.switch_primary(method, query, now),
            "/" => resp(
                StatusCode::OK,
                "text/html; charset=utf-8",
                status_page::render(&self.status_model(now)),
            ),
            _ => resp(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        }
    }

    /// No token configured, or the request carries it as a bearer token.
    fn authorized(&self, authorization: Option<&str>) -> bool {
        let cfg = self.shared.cfg.load();
        let token = cfg.security.admin_token.as_deref();
        token.is_none()
            || authorization
                .and_then(|a| a.strip_prefix("Bearer "))
                .is_some_and(|t| admin_token_matches(token, t.as_bytes()))
    }

    fn readyz(&self) -> Response<Vec<u8>> {
        if self.shared.table.is_ready() {
            resp(
                StatusCode::OK,
                "text/plain",
                format!("ready version={}\n", self.shared.table.load().version()),
            )
        } else {
            resp(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "not ready: no placement table yet\n",
            )
        }
    }

    /// `/metrics`: gauges that mirror state are refreshed at scrape time.
    fn metrics(&self, now: u64) -> Response<Vec<u8>> {
        self.shared.metrics.refresh_from(&self.shared.table, now);
        self.shared
            .metrics
            .refresh_balancer(&self.shared.route.load().balancer, &self.health.load(), now);
        match &self.shadow {
            Some(sh) => self.shared.metrics.refresh_shadow(sh),
            // One source, always the one served: alerts tell file-sourced
            // edges (no database to be connected to) by this.
            None => {
                let source = self.shared.cfg.load().placement.source.kind();
                self.shared
                    .metrics
                    .placement_serving
                    .with_label_values(&[source])
                    .set(1);
            }
        }
        resp(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            self.shared.metrics.render(),
        )
    }

    /// `/debug/route?host=&path=`: the decision for a request, explained.
    fn debug_route(&self, query: &str, now: u64) -> Response<Vec<u8>> {
        let Some(host) = query_param(query, "host") else {
            return resp(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "usage: /debug/route?host=HOST&path=PATH\n",
            );
        };
        let path = query_param(query, "path").unwrap_or_else(|| "/".into());
        let table = self.shared.table.load_full();
        resp(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            crate::route::explain(
                &self.shared.route.load(),
                &table,
                &host,
                &path,
                now,
                self.shared.names.as_ref(),
            ),
        )
    }

    /// `/debug/snapshot`: the table in use, its age and the last-known-good file.
    fn snapshot_json(&self, now: u64) -> serde_json::Value {
        let table = self.shared.table.load_full();
        let published = self.shared.table.published_at_ms();
        serde_json::json!({
            "version": table.version(),
            "ready": table.is_loaded(),
            "published_at_ms": published,
            "age_seconds": if published == 0 { 0.0 } else { now.saturating_sub(published) as f64 / 1000.0 },
            "rejected_loads": self.shared.table.rejected(),
            "deltas_applied": self.shared.table.status().deltas(),
            "counts": table.counts(),
            "directory_bytes": table.directory().approx_bytes(),
            "last_known_good": self.last_known_good(now),
        })
    }

    /// `/debug/config`: the file's keys, what needs a restart, the last reload.
    fn config_json(&self) -> serde_json::Value {
        let cfg = self.shared.cfg.load_full();
        serde_json::json!({
            "file": cfg.path.display().to_string(),
            "keys": cfg.file_keys,
            "restart_only": edgeplane_config::reload::restart_only_keys().collect::<Vec<_>>(),
            "last_reload": self.reloader.last(),
        })
    }

    /// `POST /balancer/policy?policy=`: switches the policy at runtime.
    fn set_policy(&self, method: &str, query: &str) -> Response<Vec<u8>> {
        if method != "POST" && method != "PUT" {
            return resp(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "use POST /balancer/policy?policy=least-loaded|p2c|random|round-robin\n",
            );
        }
        let want = query_param(query, "policy").unwrap_or_default();
        match crate::balancer::Policy::parse(&want) {
            Ok(p) => {
                let balancer = self.shared.route.load().balancer.clone();
                let old = balancer.policy();
                balancer.set_policy(p);
                log::warn!(
                    "balancer policy switched from {} to {} via admin API",
                    old.as_str(),
                    p.as_str()
                );
                json(serde_json::json!({"policy": p.as_str(), "previous": old.as_str()}))
            }
            Err(m) => resp(StatusCode::BAD_REQUEST, "text/plain", format!("policy: {m}\n")),
        }
    }

    /// `POST /config/reload`: 200 with the report, or 422 (old config kept).
    fn reload(&self, method: &str) -> Response<Vec<u8>> {
        if method != "POST" {
            return resp(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "use POST /config/reload\n",
            );
        }
        let r = self.reloader.reload("admin");
        let status = if r.ok {
            StatusCode::OK
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        resp(status, "application/json", format!("{}\n", serde_json::json!(r)))
    }

    /// `/debug/shadow`: what the shadow comparison found (totals by field,
    /// the last comparison with samples) and which source is served.
    fn shadow_json(&self) -> serde_json::Value {
        let Some(sh) = &self.shadow else {
            return serde_json::json!({"shadow": null, "note": "placement.shadow is not set"});
        };
        let totals: serde_json::Map<String, serde_json::Value> = sh
            .state
            .totals()
            .iter()
            .map(|(f, n)| (f.to_string(), (*n).into()))
            .collect();
        let last = sh.state.last().map(|(at_ms, c)| {
            let counts: serde_json::Map<String, serde_json::Value> = edgeplane_control_sync::shadow::FIELDS
                .iter()
                .zip(c.counts)
                .map(|(f, n)| (f.to_string(), n.into()))
                .collect();
            serde_json::json!({
                "at_ms": at_ms,
                "primary_version": c.primary_version,
                "shadow_version": c.shadow_version,
                "repls_compared": c.repls_compared,
                "mismatches": c.total(),
                "counts": counts,
                "samples": c.samples,
            })
        });
        serde_json::json!({
            "shadow": sh.state.source,
            "serving": sh.switch.selected(),
            "sources": sh.switch.names(),
            "comparisons": sh.state.comparisons(),
            "mismatches_total": totals,
            "last": last,
        })
    }

    /// `POST /placement/primary?source=NAME`: serve another source's table
    /// from now on (shadow mode only): the quick path back to safety.
    fn switch_primary(&self, method: &str, query: &str, now: u64) -> Response<Vec<u8>> {
        let Some(sh) = &self.shadow else {
            return resp(
                StatusCode::CONFLICT,
                "text/plain",
                "no shadow source: the placement source can only change with a restart\n",
            );
        };
        if method != "POST" && method != "PUT" {
            return resp(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                format!("use POST /placement/primary?source={}\n", sh.switch.names().join("|")),
            );
        }
        let want = query_param(query, "source").unwrap_or_default();
        let previous = sh.switch.selected();
        match sh.switch.select(&want, now) {
            Ok(()) => {
                log::warn!("placement: serving source switched from {previous} to {want} via admin API");
                json(
                    serde_json::json!({"serving": sh.switch.selected(), "previous": previous,
                                        "version": self.shared.table.load().version()}),
                )
            }
            Err(e @ edgeplane_control_sync::switch::SwitchError::Unknown(..)) => {
                resp(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n"))
            }
            Err(e) => resp(StatusCode::CONFLICT, "text/plain", format!("{e}\n")),
        }
    }

    /// The balancer's state: what `/balancer` shows an operator.
    fn balancer_json(&self, now: u64) -> serde_json::Value {
        let e = self;
        let b = e.shared.route.load().balancer.clone();
        let cfg = e.shared.cfg.load();
        let t = e.shared.table.load_full();
        let view = b.view();
        let health = e.health.load();
        let (picks, panic_picks, fallback_picks) = b.pick_counts();
        let mut clusters = Vec::new();
        if t.is_loaded() {
            let local = t.local_region();
            for (i, cl) in t.clusters().filter(|(_, c)| c.region == local) {
                let Some(cv) = view.clusters.get(i as usize) else {
                    continue;
                };
                let vms: Vec<serde_json::Value> = cv
                    .vms
                    .iter()
                    .filter_map(|s| {
                        let vm = t.get_vm(s.vm)?;
                        let h = health.vms.get(&vm.id_hash);
                        let st = cv.standing(s, &b.ledger);
                        Some(serde_json::json!({
                            "id": &*vm.id,
                            "usability": s.usability.as_str(),
                            "member": s.member,
                            "containers": s.containers,
                            "capacity": s.capacity,
                            "units_reserved": st.reserved,
                            "units_source": if s.units_reported { "conman_units_reserved" } else if s.sample_age_ms.is_some() { "containers" } else { "snapshot" },
                            "room": st.room,
                            "not_candidate": st.not_candidate,
                            "cpu": s.cpu,
                            "placed_since_sample": cv.members.iter().chain(cv.spill.iter()).find(|m| m.vm == s.vm)
                                .map(|m| b.ledger.since(m.id_hash, m.mark)),
                            "sample_age_ms": s.sample_age_ms,
                            "scrape_errors_in_a_row": h.map(|h| h.consecutive_errors),
                            "last_error": h.and_then(|h| h.last_error).map(|e| e.as_str()),
                        }))
                    })
                    .collect();
                clusters.push(serde_json::json!({
                    "name": &*cl.name,
                    "mode": cv.mode.as_str(),
                    "active": cv.active,
                    "usable": cv.usable,
                    "ejected": cv.ejected,
                    "subset": cv.members.iter().filter_map(|m| t.get_vm(m.vm).map(|v| &*v.id)).collect::<Vec<_>>(),
                    "vms": vms,
                }));
            }
        }
        let p = b.params();
        serde_json::json!({
            "policy": b.policy().as_str(),
            "instance_id": cfg.edge.instance_id,
            "health_source": match &cfg.health.source {
                edgeplane_config::HealthSource::Scrape => "scrape".to_string(),
                edgeplane_config::HealthSource::Prometheus(u) => format!("prometheus {u}"),
            },
            "subset_size": p.subset_size,
            "subset_refresh_ms": p.subset_refresh_ms,
            "panic_threshold": p.panic_threshold,
            "stale_after_ms": p.stale_after_ms,
            "epoch": view.epoch,
            "view_age_ms": now.saturating_sub(view.built_at_ms),
            "view_table_version": view.table_version,
            "health_rounds": health.generation,
            "picks": crate::balancer::Policy::ALL.iter().map(|p| (p.as_str().to_string(), picks[p.index()].into()))
                .collect::<serde_json::Map<String, serde_json::Value>>(),
            "panic_picks": panic_picks,
            "fallback_picks": fallback_picks,
            "spill_picks": b.size_pick_counts().0,
            "over_capacity_picks": b.size_pick_counts().1,
            "clusters": clusters,
        })
    }

    /// Gathers what the status page shows from the live state.
    /// The last-known-good file: what this edge last wrote, and the file it
    /// started from while it still serves it (None: no file configured).
    fn last_known_good(&self, now: u64) -> Option<LastKnownGoodModel> {
        let status = self.shared.table.status();
        let written = status.last_known_good_written();
        let restored = status.restored();
        if written.is_none() && restored.is_none() {
            return None;
        }
        let age = |at: u64| (at > 0).then(|| now.saturating_sub(at) as f64 / 1000.0);
        let serving = restored
            .as_ref()
            .is_some_and(|r| r.published_at_ms == self.shared.table.published_at_ms());
        Some(LastKnownGoodModel {
            path: written
                .as_ref()
                .map(|w| w.path.clone())
                .or_else(|| restored.as_ref().map(|r| r.path.clone()))
                .unwrap_or_default(),
            written_version: written.as_ref().map_or(0, |w| w.version),
            written_age_s: written.as_ref().and_then(|w| age(w.written_at_ms)),
            serving_from_file: serving,
            started_from_version: restored.as_ref().map(|r| r.version),
            started_from_age_s: restored.as_ref().and_then(|r| age(r.file_written_at_ms)),
        })
    }

    fn status_model(&self, now: u64) -> StatusModel {
        let e = self;
        let t = e.shared.table.load_full();
        let c = t.counts();
        let published = e.shared.table.published_at_ms();
        let status = e.shared.table.status();
        let b = e.shared.route.load().balancer.clone();
        let cfg = e.shared.cfg.load();
        let clusters = cluster_models(&t, &b.view(), &b.ledger);
        StatusModel {
            region: cfg.edge.region.clone(),
            instance: cfg.edge.instance_id.clone(),
            ready: e.shared.table.is_ready(),
            version: t.version(),
            age_s: (published != 0).then(|| now.saturating_sub(published) as f64 / 1000.0),
            source: cfg.placement.source.kind().to_string(),
            connected: status.connected(),
            lag_s: status.lag_us() as f64 / 1e6,
            sync_errors: SyncErrorKind::ALL
                .iter()
                .map(|k| (k.as_str(), status.errors(*k)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            repls: c.repls,
            vms: c.vms,
            custom_domains: c.custom_domains,
            tombstones: c.tombstones,
            directory: c.directory,
            last_known_good: self.last_known_good(now),
            policy: b.policy().as_str().to_string(),
            clusters,
            forwards: e.shared.recent_forwards.latest(),
            tombstone_hits: e.shared.metrics.tombstone_hits.get(),
            now_ms: now,
            last_reload: e.reloader.last(),
            traffic: e.traffic.observe(&e.shared.metrics, now),
        }
    }
}

/// The status page's cluster cards: this region's clusters with their ring
/// share, balancer mode, subset and each VM's usability and load.
fn cluster_models(t: &RoutingTable, view: &BalancerView, ledger: &PlacementLedger) -> Vec<ClusterModel> {
    if !t.is_loaded() {
        return Vec::new();
    }
    let local = t.local_region();
    let mut clusters = Vec::new();
    let shares: std::collections::HashMap<u32, f64> = t.ring(local).shares().into_iter().collect();
    for (i, cl) in t.clusters().filter(|(_, cl)| cl.region == local) {
        let cv = view.clusters.get(i as usize);
        let vms = cv
            .map(|cv| {
                cv.vms
                    .iter()
                    .filter_map(|s| {
                        let st = cv.standing(s, ledger);
                        Some(VmModel {
                            id: t.get_vm(s.vm)?.id.to_string(),
                            usability: s.usability.as_str(),
                            member: s.member,
                            containers: s.containers,
                            capacity: s.capacity,
                            reserved: st.reserved,
                            not_candidate: st.not_candidate,
                            cpu: s.cpu,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        clusters.push(ClusterModel {
            name: cl.name.to_string(),
            state: format!("{:?}", cl.state),
            weight: cl.weight,
            ring_share: shares.get(&i).copied().unwrap_or(0.0),
            mode: cv.map(|cv| cv.mode.as_str()).unwrap_or("-"),
            usable: cv.map(|cv| cv.usable).unwrap_or(0),
            active: cv.map(|cv| cv.active).unwrap_or(0),
            ejected: cv.map(|cv| cv.ejected).unwrap_or(0),
            subset: cv
                .map(|cv| {
                    cv.members
                        .iter()
                        .filter_map(|m| t.get_vm(m.vm).map(|v| v.id.to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            vms,
        });
    }
    clusters
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.as_str().to_string();
        let path = req.uri.path().to_string();
        let query = req.uri.query().unwrap_or("").to_string();
        let auth = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        self.handle(&method, &path, &query, auth.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_values() {
        assert_eq!(percent_decode("a%2Fb+c"), "a/b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(
            query_param("host=app1.repl.co&path=%2Fx%3Fy", "path").as_deref(),
            Some("/x?y")
        );
        assert_eq!(query_param("host=a", "path"), None);
    }
}
