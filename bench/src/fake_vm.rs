//! The fake conman VM (docs/contract.md §5): a real HTTP/1.1 + WebSocket server that
//! stands in for a container VM in the demo, tests and benchmarks.
//!
//! - Every HTTP request gets 200, `x-served-by: <id>` and a JSON body
//!   `{"vm","method","host","path","headers":{..},"body_bytes"}` so a test can
//!   see exactly what the VM received; `GET /echo-page` is an HTML page
//!   that opens a WebSocket back to its host and shows the echo (for
//!   browser tests).
//! - A WebSocket upgrade on any path is accepted and every message echoed;
//!   a text message `close-me` makes the VM close the socket itself (code
//!   4000), so tests can check that a close from either side crosses the edge.
//! - The metrics listener serves `/metrics` (`conman_containers`,
//!   `conman_cpu_utilization`, `conman_ready`, `fakevm_requests_total`,
//!   `fakevm_bodies_whole_total` (requests whose body arrived whole),
//!   `fakevm_connections_total` (connections accepted on the HTTP
//!   listener: how many a proxy opened, so a test sees it reuse them), and
//!   `conman_units_reserved` once `units` is set) and
//!   takes `POST /control` with JSON `{"containers":N,"cpu":F,"ready":bool,
//!   "units":N,"scrape":"ok"|"hang"|"garbage"|"error","replay":"vm=ID"}` (all fields
//!   optional; `scrape` injects faults into `/metrics` only, the HTTP
//!   listener keeps serving; `replay`, when not empty, makes the VM answer
//!   every request and refuse every upgrade with 409 and
//!   `x-edgeplane-replay: <value>`, as a VM that lost a placement race;
//!   `"replay": null` or `""` stops that).
//! - Test paths: `/__fake/early?status=N` answers N at once without
//!   reading the request body (and closes), `/__fake/echo-stream` streams
//!   the request body back as it arrives, `/__fake/slow?ms=N` answers 200
//!   after N ms (at most 10 s: requests held in flight).
//!
//! Both listeners may be given port 0; the bound addresses are printed as
//! `fake-vm <id> listening http=<addr> metrics=<addr>`. Start at [`run`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// What the VM reports on `/metrics`; changed through `/control`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Reported {
    pub containers: u64,
    /// Served as `conman_units_reserved` once set (absent until then, as
    /// from a conman that predates sizes).
    #[serde(default)]
    pub units: Option<u64>,
    pub cpu: f64,
    pub ready: bool,
    /// How `/metrics` answers: `ok`, `hang` (never), `garbage` (200 with a
    /// body that is not the exposition format) or `error` (500).
    pub scrape: ScrapeMode,
    /// `x-edgeplane-replay` value every answer carries (empty: none).
    #[serde(default)]
    pub replay: String,
}

/// How the fake VM answers scrapes (fault injection for health tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScrapeMode {
    #[default]
    Ok,
    Hang,
    Garbage,
    Error,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlBody {
    containers: Option<u64>,
    units: Option<u64>,
    cpu: Option<f64>,
    ready: Option<bool>,
    scrape: Option<ScrapeMode>,
    /// Absent: unchanged; `null` or `""`: no replay; a value: replay there.
    #[serde(default, deserialize_with = "present")]
    replay: Option<Option<String>>,
}

/// A field that may be absent (None), null (Some(None)) or set.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}

struct State {
    id: String,
    reported: Mutex<Reported>,
    requests: AtomicU64,
    /// Requests whose body arrived whole (as its framing declared).
    bodies_whole: AtomicU64,
    ws_open: AtomicU64,
    /// Connections accepted on the HTTP listener.
    connections: AtomicU64,
}

/// Options of `edgeplane-bench fake-vm`.
#[derive(Debug, Clone)]
pub struct FakeVmOptions {
    pub id: String,
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub containers: u64,
    pub cpu: f64,
}

type Body = BoxBody<Bytes, hyper::Error>;

/// A whole body.
fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(full(body.into()))
        .unwrap()
}

/// `GET /echo-page`: a page a browser test opens through an edge. It opens
/// a WebSocket back to the same host (`wss:` on an `https:` page), sends a
/// line, and shows what came back, with the protocol the page itself was
/// loaded over (`h2` through an HTTP/2 edge).
const ECHO_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>echo page</title>
<style>body{font:18px sans-serif;margin:40px} b{color:#0a7}</style></head>
<body><h1>Served by {vm}</h1>
<p>page loaded over <b id="proto">?</b> from <span id="origin"></span></p>
<p>WebSocket: <b id="ws">connecting</b></p>
<p>echo: <b id="echo"></b></p>
<script>
const nav = performance.getEntriesByType('navigation')[0];
document.getElementById('proto').textContent = nav ? nav.nextHopProtocol : 'unknown';
document.getElementById('origin').textContent = location.origin;
const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
const ws = new WebSocket(scheme + '//' + location.host + '/echo-socket');
ws.onopen = () => { document.getElementById('ws').textContent = 'open'; ws.send('hello from the page'); };
ws.onmessage = (m) => { document.getElementById('echo').textContent = m.data; document.title = 'echoed'; ws.close(1000); };
ws.onerror = () => { document.getElementById('ws').textContent = 'error'; };
ws.onclose = (e) => { if (document.title !== 'echoed') document.getElementById('ws').textContent = 'closed ' + e.code; };
</script></body></html>
"#;

async fn app(state: Arc<State>, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let replay = state.reported.lock().unwrap().replay.clone();
    let is_ws = req
        .headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.eq_ignore_ascii_case("websocket"))
        .unwrap_or(false);
    if is_ws && !replay.is_empty() {
        return Ok(Response::builder()
            .status(StatusCode::CONFLICT)
            .header("x-served-by", state.id.as_str())
            .header("x-edgeplane-replay", replay.as_str())
            .body(full(Bytes::from_static(b"elsewhere\n")))
            .unwrap());
    }
    if is_ws {
        let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
            return Ok(text(StatusCode::BAD_REQUEST, "missing sec-websocket-key\n"));
        };
        let upgrade = hyper::upgrade::on(&mut req);
        let st = state.clone();
        tokio::spawn(async move {
            match upgrade.await {
                Ok(upgraded) => {
                    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
                    st.ws_open.fetch_add(1, Ordering::Relaxed);
                    echo(ws).await;
                    st.ws_open.fetch_sub(1, Ordering::Relaxed);
                }
                Err(e) => log::debug!("upgrade failed: {e}"),
            }
        });
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
            .header("x-served-by", state.id.as_str())
            .body(full(Bytes::new()))
            .unwrap());
    }

    // Test paths: an answer that does not wait for the body, and one that
    // streams the body back as it arrives (full-duplex checks).
    if req.uri().path() == "/__fake/early" {
        let status = query_number::<u16>(&req, "status")
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::PAYLOAD_TOO_LARGE);
        return Ok(Response::builder()
            .status(status)
            .header("x-served-by", state.id.as_str())
            .header("connection", "close")
            .body(full(Bytes::from_static(b"not reading that\n")))
            .unwrap());
    }
    if req.uri().path() == "/__fake/slow" {
        let ms = query_number::<u64>(&req, "ms").unwrap_or(100).min(10_000);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        return Ok(Response::builder()
            .header("x-served-by", state.id.as_str())
            .body(full(Bytes::from_static(b"slow\n")))
            .unwrap());
    }
    if req.uri().path() == "/__fake/echo-stream" {
        return Ok(Response::builder()
            .header("x-served-by", state.id.as_str())
            .body(req.into_body().boxed())
            .unwrap());
    }
    if req.uri().path() == "/echo-page" {
        return Ok(Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .header("x-served-by", state.id.as_str())
            .body(full(Bytes::from(ECHO_PAGE.replace("{vm}", &state.id))))
            .unwrap());
    }
    let method = req.method().to_string();
    let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let host = req
        .headers()
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers
            .entry(k.as_str().to_string())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let body_bytes = match req.into_body().collect().await {
        Ok(b) => {
            state.bodies_whole.fetch_add(1, Ordering::Relaxed);
            b.to_bytes().len()
        }
        Err(_) => 0,
    };
    let body = serde_json::json!({
        "vm": state.id, "method": method, "host": host, "path": path,
        "headers": headers, "body_bytes": body_bytes,
    });
    let mut resp = Response::builder()
        .header("content-type", "application/json")
        .header("x-served-by", state.id.as_str());
    resp = if replay.is_empty() {
        resp.status(StatusCode::OK)
    } else {
        resp.status(StatusCode::CONFLICT)
            .header("x-edgeplane-replay", replay.as_str())
    };
    Ok(resp.body(full(Bytes::from(body.to_string()))).unwrap())
}

async fn echo<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(t)) if t.as_str() == "close-me" => {
                let _ = ws
                    .close(Some(CloseFrame {
                        code: CloseCode::Library(4000),
                        reason: "vm closes".into(),
                    }))
                    .await;
                // Drain until the peer answers the close.
                while let Some(Ok(_)) = ws.next().await {}
                return;
            }
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if ws.send(m).await.is_err() {
                    return;
                }
            }
            Ok(Message::Close(_)) => {
                // tungstenite answers the close handshake itself.
                let _ = ws.flush().await;
                return;
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

async fn metrics_app(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/metrics") => {
            let r = state.reported.lock().unwrap().clone();
            match r.scrape {
                ScrapeMode::Ok => {}
                ScrapeMode::Hang => {
                    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                }
                ScrapeMode::Garbage => {
                    return Ok(text(StatusCode::OK, "<html><body>upstream maintenance</body></html>\n"))
                }
                ScrapeMode::Error => return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, "metrics broken\n")),
            }
            let units = r.units.map_or(String::new(), |u| {
                format!(
                    "# HELP conman_units_reserved Size units its containers hold.\n\
# TYPE conman_units_reserved gauge\nconman_units_reserved {u}\n"
                )
            });
            let body = format!(
                "# HELP conman_containers Containers running on this VM.\n# TYPE conman_containers gauge\n\
conman_containers {}\n# HELP conman_cpu_utilization CPU utilisation, 0 to 1.\n# TYPE conman_cpu_utilization gauge\n\
conman_cpu_utilization {}\n# HELP conman_ready 1 when the VM takes new containers.\n# TYPE conman_ready gauge\n\
conman_ready {}\n# HELP fakevm_requests_total HTTP requests and upgrades received.\n# TYPE fakevm_requests_total counter\n\
fakevm_requests_total {}\n# HELP fakevm_bodies_whole_total Requests whose body arrived whole.\n\
# TYPE fakevm_bodies_whole_total counter\nfakevm_bodies_whole_total {}\n# HELP fakevm_connections_total Connections accepted.\n\
# TYPE fakevm_connections_total counter\nfakevm_connections_total {}\n# HELP fakevm_websockets_open WebSocket connections open now.\n# TYPE fakevm_websockets_open gauge\n\
fakevm_websockets_open {}\n{units}",
                r.containers,
                r.cpu,
                r.ready as u8,
                state.requests.load(Ordering::Relaxed),
                state.bodies_whole.load(Ordering::Relaxed),
                state.connections.load(Ordering::Relaxed),
                state.ws_open.load(Ordering::Relaxed),
            );
            Ok(Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(full(Bytes::from(body)))
                .unwrap())
        }
        ("POST", "/control") => {
            let bytes = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return Ok(text(StatusCode::BAD_REQUEST, "unreadable body\n")),
            };
            let c: ControlBody = match serde_json::from_slice(&bytes) {
                Ok(c) => c,
                Err(e) => return Ok(text(StatusCode::BAD_REQUEST, format!("bad control JSON: {e}\n"))),
            };
            let mut r = state.reported.lock().unwrap();
            if let Some(v) = c.containers {
                r.containers = v;
            }
            if let Some(v) = c.units {
                r.units = Some(v);
            }
            if let Some(v) = c.cpu {
                r.cpu = v;
            }
            if let Some(v) = c.ready {
                r.ready = v;
            }
            if let Some(v) = c.scrape {
                r.scrape = v;
            }
            if let Some(v) = c.replay {
                r.replay = v.unwrap_or_default();
            }
            Ok(Response::builder()
                .header("content-type", "application/json")
                .body(full(Bytes::from(serde_json::to_string(&*r).unwrap())))
                .unwrap())
        }
        _ => Ok(text(StatusCode::NOT_FOUND, "not found\n")),
    }
}

/// A test path's one `?key=N` parameter.
fn query_number<T: std::str::FromStr>(req: &Request<Incoming>, key: &str) -> Option<T> {
    let q = req.uri().query()?;
    q.strip_prefix(key)?.strip_prefix('=')?.parse().ok()
}

/// Serves `listener`; `counted`: its connections are `fakevm_connections_total`.
async fn serve_loop<F, Fut>(listener: TcpListener, state: Arc<State>, f: F, counted: bool)
where
    F: Fn(Arc<State>, Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if counted {
            state.connections.fetch_add(1, Ordering::Relaxed);
        }
        let _ = stream.set_nodelay(true);
        let st = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| f(st.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

/// Binds both listeners and serves them on the current runtime; returns
/// their addresses (HTTP, metrics).
pub async fn start(opts: FakeVmOptions) -> std::io::Result<(SocketAddr, SocketAddr)> {
    let http = TcpListener::bind(opts.listen).await?;
    let metrics = TcpListener::bind(opts.metrics_listen).await?;
    let addrs = (http.local_addr()?, metrics.local_addr()?);
    let state = Arc::new(State {
        id: opts.id,
        reported: Mutex::new(Reported {
            scrape: ScrapeMode::Ok,
            replay: String::new(),
            containers: opts.containers,
            units: None,
            cpu: opts.cpu,
            ready: true,
        }),
        requests: AtomicU64::new(0),
        bodies_whole: AtomicU64::new(0),
        ws_open: AtomicU64::new(0),
        connections: AtomicU64::new(0),
    });
    tokio::spawn(serve_loop(metrics, state.clone(), metrics_app, false));
    tokio::spawn(serve_loop(http, state, app, true));
    Ok(addrs)
}

/// Binds both listeners, prints their addresses and serves forever.
pub async fn run(opts: FakeVmOptions) -> std::io::Result<()> {
    let id = opts.id.clone();
    let (http, metrics) = start(opts).await?;
    println!("fake-vm {id} listening http={http} metrics={metrics}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::future::pending::<()>().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ControlBody;

    #[test]
    fn replay_is_unchanged_when_absent_and_cleared_by_null_or_empty() {
        let c: ControlBody = serde_json::from_str(r#"{"cpu": 0.5}"#).unwrap();
        assert_eq!(c.replay, None, "absent: unchanged");
        let c: ControlBody = serde_json::from_str(r#"{"replay": null}"#).unwrap();
        assert_eq!(c.replay, Some(None), "null: no replay");
        let c: ControlBody = serde_json::from_str(r#"{"replay": "vm=vm-2"}"#).unwrap();
        assert_eq!(c.replay, Some(Some("vm=vm-2".into())));
    }
}
