//! `edgeplane dns`: the authoritative DNS responder that tells clients
//! which region's edge serves an app (A/AAAA for `<slug>.<suffix>` and
//! custom domains), fed by the same placement sync as the proxy.
//!
//! Where it sits: its own process (`edgeplane dns -c FILE`), same config
//! file, same table as the edge of its region
//! ([`crate::placement::load_placement_for`]): this region's repls whole, and
//! every other region's app in the world directory (name -> home region,
//! ~8 bytes each), so a transfer that changes a repl's home region changes
//! the answer with the delta that carries it. Region edge addresses given
//! as names are resolved in the background ([`crate::background::names`]).
//!
//! Answers ([`answer`], pure: table, time and config passed in):
//! - a known app: the IP of its home region's `edge_addr`, as A (IPv4) or
//!   AAAA (IPv6); the other type gets an empty NOERROR answer;
//! - TTL `[dns] ttl_seconds`, or `moved_ttl_seconds` while the app recently
//!   moved (a live tombstone in any region, or a pending lazy transfer), so
//!   resolvers come back soon: the table's recent moves name the apps of
//!   every region by slug and custom domain, so a move between two other
//!   regions gets the short TTL from this responder too;
//! - the suffix itself: NOERROR, SOA in the authority section;
//! - anything else: NXDOMAIN (with the SOA under a hosting suffix, for
//!   negative caching, RFC 2308).
//!
//! Wire handling ([`respond`]) uses hickory-proto: one question per query,
//! FORMERR for garbage with a readable id, NOTIMP for other opcodes, EDNS
//! echoed, TC set when a UDP answer would not fit. UDP and TCP (length
//! prefixed, 10 s idle limit) on every `[dns] listen` address. Start at
//! [`answer`], then [`serve()`] and its [`mod@serve`] module.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use edgeplane_config::{Config, DnsConfig};
use edgeplane_control_sync::table::Idx;
use edgeplane_control_sync::{RoutingTable, TableHandle};

use crate::background::names::Names;

mod serve;

/// Largest UDP answer without EDNS (RFC 1035).
const UDP_PLAIN_MAX: usize = 512;
/// The UDP payload size this responder advertises with EDNS.
const EDNS_PAYLOAD: u16 = 1232;
/// A TCP client idle this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// What a name resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A known app: its home region's edge address and the TTL to give.
    App { region: Idx, ip: Option<IpAddr>, ttl: u32 },
    /// The zone apex of a hosting suffix.
    Apex { zone: String },
    /// Not a name this responder knows; `zone` when under a hosting suffix.
    Unknown { zone: Option<String> },
}

/// Answers `name` (lower-case, no trailing dot) from `t`.
pub fn answer(
    t: &RoutingTable,
    suffixes: &[String],
    dns: &DnsConfig,
    names: &Names,
    name: &str,
    now_ms: u64,
) -> Lookup {
    use edgeplane_control_sync::directory::Name;
    let mut zone = None;
    let mut slug = None;
    for sfx in suffixes {
        if name == sfx {
            return Lookup::Apex { zone: sfx.clone() };
        }
        if let Some(s) = name.strip_suffix(sfx.as_str()).and_then(|p| p.strip_suffix('.')) {
            zone = Some(sfx.clone());
            slug = Some(s).filter(|s| !s.contains('.'));
            break;
        }
    }
    let repl = slug.and_then(|s| t.repl_by_slug(s)).or_else(|| t.repl_by_domain(name));
    // A move between any two regions (a live tombstone anywhere) counts:
    // the sources name such apps by slug and custom domain.
    let now = now_ms as i64;
    let moved_anywhere =
        slug.is_some_and(|s| t.recently_moved(Name::Slug(s), now)) || t.recently_moved(Name::Domain(name), now);
    let (home, moved) = match repl {
        Some(r) => {
            let live_tomb = t.tombstones(r.id()).iter().any(|ts| ts.expires_at_ms > now);
            (r.region, r.transfer_to.get().is_some() || live_tomb || moved_anywhere)
        }
        None => {
            let elsewhere = slug
                .and_then(|s| t.home_region(Name::Slug(s)))
                .or_else(|| t.home_region(Name::Domain(name)));
            match elsewhere {
                Some(region) => (region, moved_anywhere),
                None => return Lookup::Unknown { zone },
            }
        }
    };
    let region = t.region(home);
    let ip = region.edge.resolve(names).map(|a| a.ip());
    Lookup::App {
        region: home,
        ip,
        ttl: if moved { dns.moved_ttl_seconds } else { dns.ttl_seconds },
    }
}

fn soa(zone: &str, serial: u32, minimum: u32) -> Option<Record> {
    let apex = Name::from_ascii(format!("{zone}.")).ok()?;
    let mname = Name::from_ascii(format!("edgeplane.{zone}.")).ok()?;
    let rname = Name::from_ascii(format!("hostmaster.{zone}.")).ok()?;
    Some(Record::from_rdata(
        apex,
        minimum,
        RData::SOA(SOA::new(mname, rname, serial, 3600, 600, 86_400, minimum)),
    ))
}

/// The answer to one query message, or `None` when it cannot be answered
/// at all (shorter than a header). `max_len` is the UDP size limit (None
/// on TCP). Returns the bytes and the response code.
pub fn respond(
    bytes: &[u8],
    max_udp: Option<usize>,
    look: impl FnOnce(&str) -> (Lookup, u32),
    ttl_negative: u32,
) -> Option<(Vec<u8>, ResponseCode)> {
    let req = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(_) if bytes.len() >= 12 => {
            let id = u16::from_be_bytes([bytes[0], bytes[1]]);
            let m = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
            return m.to_vec().ok().map(|b| (b, ResponseCode::FormErr));
        }
        Err(_) => return None,
    };
    if req.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    let rcode = 'rc: {
        if req.metadata.op_code != OpCode::Query {
            break 'rc ResponseCode::NotImp;
        }
        let [q] = req.queries.as_slice() else {
            break 'rc ResponseCode::FormErr;
        };
        resp.add_query(q.clone());
        resp.metadata.authoritative = true;
        let name = q.name().to_ascii().to_ascii_lowercase();
        let name = name.strip_suffix('.').unwrap_or(&name);
        let (lookup, serial) = look(name);
        answer_records(&mut resp, q, lookup, serial, ttl_negative)
    };
    resp.metadata.response_code = rcode;
    let payload = req.edns.as_ref().map(|e| e.max_payload().max(UDP_PLAIN_MAX as u16));
    if req.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_PAYLOAD);
        resp.set_edns(e);
    }
    let mut out = resp.to_vec().ok()?;
    if let Some(limit) = max_udp.map(|l| payload.map_or(l, |p| (p as usize).min(EDNS_PAYLOAD as usize))) {
        if out.len() > limit {
            out = resp.truncate().to_vec().ok()?;
        }
    }
    Some((out, rcode))
}

fn answer_records(resp: &mut Message, q: &Query, lookup: Lookup, serial: u32, ttl_negative: u32) -> ResponseCode {
    match lookup {
        Lookup::App { ip, ttl, .. } => {
            let rdata = match (q.query_type(), ip) {
                (RecordType::A | RecordType::ANY, Some(IpAddr::V4(v4))) => Some(RData::A(A(v4))),
                (RecordType::AAAA | RecordType::ANY, Some(IpAddr::V6(v6))) => Some(RData::AAAA(AAAA(v6))),
                _ => None,
            };
            if let Some(rd) = rdata {
                resp.add_answer(Record::from_rdata(q.name().clone(), ttl, rd));
            }
            ResponseCode::NoError
        }
        Lookup::Apex { zone } => {
            if q.query_type() == RecordType::SOA {
                resp.add_answers(soa(&zone, serial, ttl_negative));
            } else {
                resp.add_authorities(soa(&zone, serial, ttl_negative));
            }
            ResponseCode::NoError
        }
        Lookup::Unknown { zone } => {
            if let Some(z) = zone {
                resp.add_authorities(soa(&z, serial, ttl_negative));
            }
            ResponseCode::NXDomain
        }
    }
}

/// Everything a query needs, shared by the UDP and TCP loops.
pub(crate) struct Responder {
    table: TableHandle,
    names: Arc<Names>,
    suffixes: Vec<String>,
    dns: DnsConfig,
}

impl Responder {
    pub(crate) fn handle(&self, bytes: &[u8], max_udp: Option<usize>) -> Option<Vec<u8>> {
        let now = crate::clock::now_ms();
        let (out, rcode) = respond(
            bytes,
            max_udp,
            |name| {
                let t = self.table.load();
                let l = answer(&t, &self.suffixes, &self.dns, &self.names, name, now);
                (l, t.version() as u32)
            },
            self.dns.moved_ttl_seconds,
        )?;
        log::debug!("dns: {} bytes -> {rcode}", bytes.len());
        Some(out)
    }
}

/// Why `edgeplane dns` could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// Located (`file:line: key: message`).
    #[error("{0}")]
    Placement(#[from] edgeplane_config::ConfigError),
    #[error("cannot listen on {addr}: {err}")]
    Listen { addr: SocketAddr, err: std::io::Error },
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
}

/// Runs the responder until the process is stopped ([`serve::run`]: the
/// listeners and the signals). Prints `edgeplane: dns listening on udp
/// ADDR tcp ADDR` per listener (port 0 gets a free port, the same for UDP
/// and TCP).
pub fn serve(cfg: Config) -> Result<(), DnsError> {
    let placement = crate::placement::load_placement_for(&cfg, crate::placement::PlacementUser::Dns)?;
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let names = Arc::new(Names::default());
    crate::background::names::spawn(
        cfg.resolver.clone(),
        placement.table.clone(),
        names.clone(),
        metrics,
        // Resolves for the process's life (the responder exits at once).
        crate::shutdown::Shutdown::never(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.edge.threads.max(1))
        .enable_all()
        .build()
        .map_err(DnsError::Runtime)?;
    let sync = placement.table.status_arc();
    let responder = Arc::new(Responder {
        table: placement.table,
        names,
        suffixes: cfg.hosting.suffixes.clone(),
        dns: cfg.dns.clone(),
    });
    rt.block_on(serve::run(&cfg, responder, sync))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world() -> RoutingTable {
        let s: edgeplane_control_sync::Snapshot = serde_json::from_str(
            r#"{"regions": [{"name": "r", "edge_addr": "127.0.0.1:80"}, {"name": "s", "edge_addr": "[::1]:80"},
                            {"name": "n", "edge_addr": "edge-n.internal:80"}],
                "clusters": [{"name": "c", "region": "r", "state": "active"}, {"name": "d", "region": "s", "state": "active"},
                             {"name": "e", "region": "n", "state": "active"}],
                "repls": [{"id": "a", "slug": "app-a", "region": "r"},
                          {"id": "b", "slug": "app-b", "region": "s"},
                          {"id": "m", "slug": "moved", "region": "s"},
                          {"id": "t", "slug": "lazy", "region": "r", "transfer_to": "c"},
                          {"id": "x", "slug": "named", "region": "n"}],
                "custom_domains": [{"hostname": "www.example.com", "repl_id": "b"},
                                   {"hostname": "shop.example.org", "repl_id": "x"}],
                "tombstones": [{"repl_id": "m", "from_cluster": "c", "to_cluster": "d", "expires_at": "2030-01-01T00:00:00Z"},
                               {"repl_id": "x", "from_cluster": "d", "to_cluster": "e", "expires_at": "2030-01-01T00:00:00Z"}]}"#,
        )
        .unwrap();
        RoutingTable::build(&s, "r", 3).unwrap()
    }

    fn dns() -> DnsConfig {
        DnsConfig {
            listen: vec![],
            ttl_seconds: 60,
            moved_ttl_seconds: 5,
        }
    }

    fn look(name: &str) -> Lookup {
        let t = world();
        answer(&t, &["repl.co".into()], &dns(), &Names::default(), name, 0)
    }

    #[test]
    fn names_map_to_their_home_region_edge() {
        let t = world();
        assert!(
            matches!(look("app-a.repl.co"), Lookup::App { ip: Some(ip), ttl: 60, region }
            if ip.to_string() == "127.0.0.1" && region == t.region_by_name("r").unwrap())
        );
        assert!(matches!(
            look("app-b.repl.co"),
            Lookup::App {
                ip: Some(IpAddr::V6(_)),
                ttl: 60,
                ..
            }
        ));
        assert!(
            matches!(look("www.example.com"), Lookup::App { ttl: 60, .. }),
            "custom domain"
        );
        assert!(
            matches!(look("moved.repl.co"), Lookup::App { ttl: 5, .. }),
            "live tombstone: short TTL"
        );
        assert!(
            matches!(look("lazy.repl.co"), Lookup::App { ttl: 5, .. }),
            "pending transfer: short TTL"
        );
        // Moved between two other regions (s -> n): this region's table
        // holds no tombstone of it, yet its names get the short TTL too.
        assert!(
            matches!(look("named.repl.co"), Lookup::App { ttl: 5, .. }),
            "moved elsewhere: short TTL"
        );
        assert!(
            matches!(look("shop.example.org"), Lookup::App { ttl: 5, .. }),
            "its custom domain too"
        );
        let t = world();
        let later = answer(
            &t,
            &["repl.co".into()],
            &dns(),
            &Names::default(),
            "named.repl.co",
            1_893_456_000_000,
        );
        assert!(
            matches!(later, Lookup::App { ttl: 60, .. }),
            "after the tombstone: {later:?}"
        );
        assert!(
            matches!(look("named.repl.co"), Lookup::App { ip: None, .. }),
            "a named edge before its answer"
        );
        assert_eq!(
            look("nope.repl.co"),
            Lookup::Unknown {
                zone: Some("repl.co".into())
            }
        );
        assert_eq!(
            look("a.b.repl.co"),
            Lookup::Unknown {
                zone: Some("repl.co".into())
            }
        );
        assert_eq!(look("example.org"), Lookup::Unknown { zone: None });
        assert_eq!(look("repl.co"), Lookup::Apex { zone: "repl.co".into() });
    }

    fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m.to_vec().unwrap()
    }

    fn ask(name: &str, qtype: RecordType) -> Message {
        let (out, _) = respond(&query(name, qtype), Some(512), |n| (look(n), 3), 5).unwrap();
        Message::from_vec(&out).unwrap()
    }

    #[test]
    fn wire_answers() {
        let m = ask("App-A.Repl.Co.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].ttl, 60);
        assert_eq!(m.answers[0].data, RData::A(A("127.0.0.1".parse().unwrap())));

        let m = ask("app-a.repl.co.", RecordType::AAAA);
        assert_eq!(
            (m.metadata.response_code, m.answers.len()),
            (ResponseCode::NoError, 0),
            "NODATA"
        );

        let m = ask("nope.repl.co.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(
            matches!(m.authorities[0].data, RData::SOA(_)),
            "SOA for negative caching"
        );

        assert_eq!(
            respond(&[1, 2, 3], Some(512), |n| (look(n), 3), 5),
            None,
            "too short to answer"
        );
        let (garbage, rc) = respond(
            &[7, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff],
            Some(512),
            |n| (look(n), 3),
            5,
        )
        .unwrap();
        assert_eq!(rc, ResponseCode::FormErr);
        assert_eq!(Message::from_vec(&garbage).unwrap().metadata.id, 0x0707);
    }
}
