//! The log as operators read it (docs/contract.md §7): ERROR means this
//! edge or its dependencies are failing, and no condition writes lines
//! without bound.
//!
//! Where it sits: every `log` record — Pingora's, the sync's, the edge's
//! own — passes through [`Bridge`] on its way to `tracing` (which formats
//! it as human text or JSON). The bridge does two things:
//! - **Reclassify** what Pingora logs at ERROR but is nobody's fault here
//!   ([`classify`]): clients that hang up, time out their handshake or send
//!   garbage. Those are counted in `edgeplane_log_events_total{event}` and
//!   logged at DEBUG (the request path counts its own the same way:
//!   `client_error`, `pool_reuse_race`).
//! - **Rate-limit** every call site ([`Limiter`]): at most
//!   [`LINES_PER_SECOND`] lines per call site per second; the rest are
//!   counted in `edgeplane_log_suppressed_total{level}`, and the next line
//!   that gets through says how many were left out.
//!
//! Invariants: the bridge never blocks and never allocates to decide (the
//! message prefix it matches is formatted into a stack buffer); the limiter
//! is a fixed table of atomics. Start at [`init`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

use prometheus::IntCounterVec;

/// Lines one call site may write per second before the rest are counted
/// instead.
pub const LINES_PER_SECOND: u32 = 20;

/// `edgeplane_log_events_total{event}`: conditions that are counted rather
/// than logged above DEBUG. Registered by [`crate::metrics::Metrics::new`].
pub static LOG_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        prometheus::Opts::new(
            "edgeplane_log_events_total",
            "Conditions counted instead of logged above DEBUG (pool reuse races, client faults)",
        ),
        &["event"],
    )
    .expect("valid metric")
});

/// Every `event` value of [`LOG_EVENTS`] (each exported at 0 from the
/// start): Pingora's lines that are a client's doing ([`NOT_OUR_FAULT`]),
/// the request path's client faults, and pooled connections the VM closed
/// as they were reused.
pub const EVENTS: [&str; 4] = ["client_handshake", "client_read", "client_error", "pool_reuse_race"];

/// Every `level` value of [`LOG_SUPPRESSED`].
pub const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// `edgeplane_log_suppressed_total{level}`: log lines left out by the
/// per-call-site rate limit.
pub static LOG_SUPPRESSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        prometheus::Opts::new(
            "edgeplane_log_suppressed_total",
            "Log lines left out by the per-call-site rate limit",
        ),
        &["level"],
    )
    .expect("valid metric")
});

/// The process-wide limiter (the access log's error lines use it too).
pub static LIMITER: Limiter = Limiter::new();

/// Output format of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
}

/// Sets up `tracing` (filter from `RUST_LOG`, default `info`; stderr) and
/// routes `log` records through the [`Bridge`].
pub fn init(format: Format) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let result = match format {
        Format::Human => builder.finish().try_init_global(),
        Format::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish()
            .try_init_global(),
    };
    if let Err(e) = result {
        eprintln!("edgeplane: cannot set up logging: {e}");
        return;
    }
    let max = tracing::level_filters::LevelFilter::current();
    let max = match max.into_level() {
        None => log::LevelFilter::Off,
        Some(l) => match l {
            tracing::Level::ERROR => log::LevelFilter::Error,
            tracing::Level::WARN => log::LevelFilter::Warn,
            tracing::Level::INFO => log::LevelFilter::Info,
            tracing::Level::DEBUG => log::LevelFilter::Debug,
            tracing::Level::TRACE => log::LevelFilter::Trace,
        },
    };
    // Reclassified records arrive at ERROR and may leave at DEBUG, so the
    // `log` side lets ERROR through whatever the filter says.
    if log::set_boxed_logger(Box::new(Bridge::default())).is_ok() {
        log::set_max_level(max.max(log::LevelFilter::Error));
    }
}

trait TryInitGlobal {
    fn try_init_global(self) -> Result<(), tracing::subscriber::SetGlobalDefaultError>;
}

impl<S: tracing::Subscriber + Send + Sync + 'static> TryInitGlobal for S {
    fn try_init_global(self) -> Result<(), tracing::subscriber::SetGlobalDefaultError> {
        tracing::subscriber::set_global_default(self)
    }
}

/// What the bridge does with a record ([`classify`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    /// The level it is written at.
    pub level: log::Level,
    /// The event it counts as, when it is one of the counted conditions.
    pub event: Option<&'static str>,
}

/// Pingora's ERROR lines that are not the edge's fault: message prefix,
/// the event they count as (logged at DEBUG).
const NOT_OUR_FAULT: &[(&str, &str)] = &[
    ("Downstream handshake error", "client_handshake"),
    ("Downstream handshake timeout", "client_handshake"),
    ("H2 handshake error", "client_handshake"),
    // The admin listener's HTTP server (Pingora's `ServeHttp`).
    ("HTTP server fails to read from downstream", "client_read"),
];

/// Pingora's ERROR lines that say something worth seeing but not that this
/// edge is failing: message prefix, the level they are written at.
const LOWER: &[(&str, log::Level)] = &[
    // `serve --upgrade` waiting for the old process to hand its listeners
    // over: the normal first second of an upgrade.
    ("No incoming socket transfer", log::Level::Info),
    // An upgrade that found no one to hand over to, on either side: the
    // edge says so itself in one line (crate::upgrade), so Pingora's
    // retries and give-ups are detail.
    ("Giving up reading socket", log::Level::Debug),
    ("Bootstrap failed on error", log::Level::Debug),
    ("server not ready, will try again", log::Level::Debug),
    ("Max retry: ", log::Level::Debug),
];

/// Pure: the level and counted event of a record from `target` at `level`
/// whose message is `msg` (or its first bytes). Only Pingora's records are
/// reclassified; everything else keeps its level.
pub fn classify(target: &str, level: log::Level, msg: &str) -> Class {
    if level <= log::Level::Warn && target.starts_with("pingora") {
        if let Some((_, lower)) = LOWER.iter().find(|(p, _)| msg.starts_with(p)) {
            return Class {
                level: *lower,
                event: None,
            };
        }
        if let Some((_, event)) = NOT_OUR_FAULT.iter().find(|(p, _)| msg.starts_with(p)) {
            return Class {
                level: log::Level::Debug,
                event: Some(event),
            };
        }
    }
    Class { level, event: None }
}

/// The `log` → `tracing` bridge (see the module docs).
#[derive(Default)]
pub struct Bridge {
    tracer: tracing_log::LogTracer,
}

impl log::Log for Bridge {
    fn enabled(&self, meta: &log::Metadata<'_>) -> bool {
        meta.level() == log::Level::Error || self.tracer.enabled(meta)
    }

    fn log(&self, record: &log::Record<'_>) {
        let mut prefix = Prefix::default();
        let _ = write!(prefix, "{}", record.args());
        let class = classify(record.target(), record.level(), prefix.as_str());
        if let Some(event) = class.event {
            LOG_EVENTS.with_label_values(&[event]).inc();
        }
        let meta = log::Metadata::builder()
            .level(class.level)
            .target(record.target())
            .build();
        if !self.tracer.enabled(&meta) {
            return;
        }
        let key = callsite_key(record.file_static(), record.line(), record.target());
        let suppressed_before = match LIMITER.admit(key, crate::clock::now_ms() / 1000) {
            Admit::No => {
                LOG_SUPPRESSED.with_label_values(&[level_name(class.level)]).inc();
                return;
            }
            Admit::Yes { suppressed_before } => suppressed_before,
        };
        let out = |args: std::fmt::Arguments<'_>| {
            self.tracer.log(
                &log::Record::builder()
                    .metadata(meta.clone())
                    .args(args)
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            )
        };
        if suppressed_before > 0 {
            out(format_args!(
                "{} ({suppressed_before} similar lines left out in the last seconds)",
                record.args()
            ));
        } else {
            out(*record.args());
        }
    }

    fn flush(&self) {}
}

fn level_name(l: log::Level) -> &'static str {
    match l {
        log::Level::Error => "error",
        log::Level::Warn => "warn",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    }
}

/// A call site's key: its file and line (target when a record has no file).
pub fn callsite_key(file: Option<&'static str>, line: Option<u32>, target: &str) -> u64 {
    let h = xxhash_rust::xxh3::xxh3_64(file.unwrap_or(target).as_bytes());
    h ^ u64::from(line.unwrap_or(0)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The first bytes of a message, formatted without allocating.
struct Prefix {
    buf: [u8; 512],
    len: usize,
}

impl Default for Prefix {
    fn default() -> Self {
        Prefix { buf: [0; 512], len: 0 }
    }
}

impl Prefix {
    fn as_str(&self) -> &str {
        // Truncation may split a character: keep the valid part.
        match std::str::from_utf8(&self.buf[..self.len]) {
            Ok(s) => s,
            Err(e) => std::str::from_utf8(&self.buf[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}

impl std::fmt::Write for Prefix {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.buf.len() - self.len;
        let n = room.min(s.len());
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            Err(std::fmt::Error)
        } else {
            Ok(())
        }
    }
}

/// The limiter's answer for one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Write it; `suppressed_before` lines of this call site were left out
    /// since the last one written.
    Yes { suppressed_before: u64 },
    /// Leave it out (counted).
    No,
}

const SLOTS: usize = 512;

/// Per-call-site line budget: a fixed table of slots, each one atomic word
/// `second:40 | lines this second:24` and a count of lines left out. Call
/// sites that share a slot share its budget. Time comes in as an argument.
pub struct Limiter {
    window: [AtomicU64; SLOTS],
    left_out: [AtomicU64; SLOTS],
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new()
    }
}

impl Limiter {
    pub const fn new() -> Limiter {
        Limiter {
            window: [const { AtomicU64::new(0) }; SLOTS],
            left_out: [const { AtomicU64::new(0) }; SLOTS],
        }
    }

    /// Whether one more line of call site `key` may be written in second
    /// `now_s`.
    pub fn admit(&self, key: u64, now_s: u64) -> Admit {
        let i = (key % SLOTS as u64) as usize;
        let slot = &self.window[i];
        let second = now_s & ((1 << 40) - 1);
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let (s, n) = (cur >> 24, cur & 0xFF_FFFF);
            let next = if s == second {
                if n >= u64::from(LINES_PER_SECOND) {
                    self.left_out[i].fetch_add(1, Ordering::Relaxed);
                    return Admit::No;
                }
                cur + 1
            } else {
                second << 24 | 1
            };
            match slot.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(seen) => cur = seen,
            }
        }
        Admit::Yes {
            suppressed_before: self.left_out[i].swap(0, Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pingora_noise_is_counted_at_debug_and_real_errors_keep_their_level() {
        let client = classify(
            "pingora_core::services::listening",
            log::Level::Error,
            "Downstream handshake error from 1.2.3.4:5: tls",
        );
        assert_eq!(client.event, Some("client_handshake"));
        // A failed accept is the edge's own fault (file descriptors): ERROR.
        let accept = classify(
            "pingora_core::services::listening",
            log::Level::Error,
            "Accept() failed Too many open files",
        );
        assert_eq!((accept.level, accept.event), (log::Level::Error, None));
        let upgrade = classify(
            "pingora_core::server::transfer_fd",
            log::Level::Error,
            "No incoming socket transfer, sleep 1s and try again",
        );
        assert_eq!(upgrade.level, log::Level::Info);
        let admin = classify(
            "pingora_core::apps::http_app",
            log::Level::Error,
            "HTTP server fails to read from downstream: ReadError",
        );
        assert_eq!((admin.level, admin.event), (log::Level::Debug, Some("client_read")));
        // The same words from the edge's own code are not reclassified.
        let ours = classify(
            "edgeplane_proxy::http",
            log::Level::Error,
            "Downstream handshake error from 1.2.3.4:5: tls",
        );
        assert_eq!(ours.level, log::Level::Error);
    }

    #[test]
    fn a_call_site_writes_its_budget_per_second_then_says_how_many_were_left_out() {
        let l = Limiter::new();
        let key = callsite_key(Some("src/x.rs"), Some(10), "x");
        let written = (0..1000)
            .filter(|_| matches!(l.admit(key, 100), Admit::Yes { .. }))
            .count();
        assert_eq!(written, LINES_PER_SECOND as usize);
        // Another call site has a budget of its own.
        let other = callsite_key(Some("src/x.rs"), Some(11), "x");
        assert_eq!(l.admit(other, 100), Admit::Yes { suppressed_before: 0 });
        // The next second's first line reports what was left out.
        assert_eq!(
            l.admit(key, 101),
            Admit::Yes {
                suppressed_before: 1000 - LINES_PER_SECOND as u64
            }
        );
        assert_eq!(l.admit(key, 101), Admit::Yes { suppressed_before: 0 });
    }

    #[test]
    fn the_prefix_buffer_keeps_the_first_bytes_whole_characters_only() {
        let mut p = Prefix::default();
        let long = "é".repeat(300);
        let _ = write!(p, "{long}");
        assert_eq!(p.as_str(), "é".repeat(256));
    }
}
