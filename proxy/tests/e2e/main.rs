//! End-to-end tests: real `edgeplane` processes in front of real fake-VM
//! processes, on OS-chosen loopback ports, driven by real HTTP and
//! WebSocket clients. One test binary for the crate (`cargo test` builds
//! it once). Needs `cargo build --workspace --bins` first (for the fake VM).

mod acme;
mod allocations;
mod balancer;
mod certs;
mod certs_bench;
mod deploy;
mod differential;
mod dns;
mod duplex;
mod faults;
mod harness;
mod hostile;
mod http;
mod http2;
mod last_known_good;
mod lifecycle;
mod limits;
mod local_stack;
mod moves;
mod operations;
mod pg_server;
mod placement_races;
mod postgres;
mod process_life;
mod proxy_protocol;
mod redis_shadow;
mod regions;
mod resolver;
mod runbook;
mod scanner;
mod sizes;
mod status_page;
mod tls;
mod websocket;
mod workspace;
mod world_directory;

use std::net::SocketAddr;

use serde_json::json;

/// The standard two-region world. `edge_a`/`edge_b` are the edge addresses
/// of us-east1 and ap-south1 (use a dead port where unknown).
pub fn world(
    vm1: SocketAddr,
    vm2: SocketAddr,
    vm3: SocketAddr,
    edge_a: SocketAddr,
    edge_b: SocketAddr,
) -> serde_json::Value {
    json!({
        "regions": [{"name": "us-east1", "edge_addr": edge_a.to_string()},
                    {"name": "ap-south1", "edge_addr": edge_b.to_string()}],
        "clusters": [{"name": "use1-a", "region": "us-east1", "state": "active", "weight": 100},
                     {"name": "aps1-a", "region": "ap-south1", "state": "active", "weight": 100}],
        "vms": [{"id": "vm-1", "cluster": "use1-a", "addr": vm1.to_string(), "state": "active"},
                {"id": "vm-2", "cluster": "use1-a", "addr": vm2.to_string(), "state": "active"},
                {"id": "vm-3", "cluster": "aps1-a", "addr": vm3.to_string(), "state": "active"}],
        "repls": [{"id": "r1", "slug": "app1", "region": "us-east1"},
                  {"id": "r2", "slug": "app2", "region": "us-east1"},
                  {"id": "r3", "slug": "app3", "region": "ap-south1"},
                  {"id": "r4", "slug": "moved", "region": "ap-south1"}],
        "containers": [{"repl_id": "r1", "vm_id": "vm-1"},
                       {"repl_id": "r3", "vm_id": "vm-3"},
                       {"repl_id": "r4", "vm_id": "vm-3"}],
        "custom_domains": [{"hostname": "www.example.com", "repl_id": "r1"}],
        "tombstones": [{"repl_id": "r4", "from_cluster": "use1-a", "to_cluster": "aps1-a",
                        "expires_at": "2099-01-01T00:00:00Z"}]
    })
}

/// A loopback address nothing listens on, and nothing will: the port stays
/// bound (never listening) for the life of the test process, so connects
/// are refused and the OS cannot hand the port to a VM or edge another
/// test starts in parallel (a bound-then-released port once could, and a
/// "dead" VM answered 200).
pub fn dead_addr() -> SocketAddr {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    std::mem::forget(s);
    addr
}

/// A port free right now, for a server that must be told its port on the
/// command line (Prometheus, a private PostgreSQL): bound, then released.
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
