//! Idle upstream connections, kept per serving thread: a request to a VM or
//! peer edge takes the most recently used idle connection to that address
//! from its own thread's pool, and gives it back when the answer is read
//! whole. No lock, no channel, no task per idle connection.
//!
//! Why per thread: the edge's runtimes do not steal work (`work_stealing =
//! false`), so a connection task stays on the thread it started on, and a
//! socket stays registered with that thread's reactor. Pingora's shared
//! pool hands a connection made on one thread to a request on another, and
//! each use then wakes the first thread's reactor (an eventfd write per
//! request, measured in bench/results/shipped/README.md); it also takes a
//! lock and spawns an idle watcher per release. Here neither happens.
//!
//! Invariants:
//! - A connection idle for [`CHECK_AFTER`] or longer is handed out only if
//!   it is open and holds no unread bytes (a non-blocking `MSG_PEEK`
//!   answers `WouldBlock`): a VM that closed an idle connection is noticed
//!   before a request is written to it. One used moments ago is handed out
//!   without the system call (under load that is every request); the rare
//!   one the VM closed meanwhile fails before any answer and the request
//!   path sends an idempotent request again on a new connection. A request
//!   that may not be sent twice (POST and the like) always gets the check.
//! - At most [`MAX_IDLE_PER_ADDR`] idle connections per address and
//!   [`MAX_IDLE_PER_THREAD`] in all per thread; none older than
//!   [`IDLE_TIMEOUT`] is handed out, and a sweep closes those at most once a
//!   second, so a VM that went away leaves nothing open for long: on a
//!   give-back under traffic, and from one sweeper task per thread while
//!   the thread's pool holds any ([`SWEEP_EVERY`]), so a burst followed
//!   by silence does not keep its connections (and their descriptors)
//!   open until the VMs close them.
//!
//! - A connection goes back only with nothing unread in its buffer (bytes
//!   past an answer would be a desynchronised VM), and its buffer is cut
//!   back to its first size when an answer grew it.
//!
//! Start at [`take`] and [`give_back`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::Conn;

/// Idle connections kept per upstream address, per thread. It has to be
/// above the most requests one thread has in flight to one VM: every
/// answer past it closes its connection, and the next request opens one
/// (a connect, and a TIME_WAIT socket left behind). At 64, 640 HTTP/2
/// streams to one app on one thread opened a connection for most requests
/// and cost 38 CPU-µs each instead of 13 (bench/results/h1-own/README.md,
/// "HTTP/2 with many streams"). nginx's `keepalive` is the same cap,
/// HAProxy keeps idle server connections without one.
pub const MAX_IDLE_PER_ADDR: usize = 1024;
/// Idle connections kept in all, per thread (each holds its 8 KiB read
/// buffer and about 1 KiB of write buffer: at most about 40 MiB).
pub const MAX_IDLE_PER_THREAD: usize = 4096;
/// An idle connection older than this is closed, not reused (VMs' own
/// keep-alive timeouts are commonly 5-60 s; a reused one that the VM closed
/// meanwhile is caught by the liveness check or retried).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a thread's sweeper closes connections idle past
/// [`IDLE_TIMEOUT`] when no give-back did.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Idle at least this long: checked before it is handed out.
pub const CHECK_AFTER: Duration = Duration::from_millis(250);

/// A buffer grown past this by a big answer is given back to the
/// allocator when its connection is pooled.
const KEEP_BUFFER: usize = 64 * 1024;

struct Idle {
    conn: Conn,
    since_ms: u64,
}

#[derive(Default)]
struct Pool {
    /// foldhash, not SipHash: the keys are VM addresses from the control
    /// plane, not a client's choice, and the lookup runs twice per request.
    by_addr: HashMap<SocketAddr, Vec<Idle>, foldhash::fast::RandomState>,
    total: usize,
    last_sweep_ms: u64,
    /// This thread's sweeper task is running.
    sweeper: bool,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// An open idle connection to `addr` from this thread's pool, if any.
/// `check` asks for the liveness check whatever the idle time (a request
/// that may not be sent twice should not meet a connection the VM closed).
pub fn take(addr: SocketAddr, now_ms: u64, check: bool) -> Option<Conn> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let p = &mut *p;
        let list = p.by_addr.get_mut(&addr)?;
        while let Some(idle) = list.pop() {
            p.total -= 1;
            let idle_ms = now_ms.saturating_sub(idle.since_ms);
            if idle_ms >= IDLE_TIMEOUT.as_millis() as u64 {
                continue;
            }
            if (!check && idle_ms < CHECK_AFTER.as_millis() as u64) || still_open(&idle.conn.io) {
                let mut conn = idle.conn;
                conn.pooled = true;
                return Some(conn);
            }
        }
        None
    })
}

/// Keeps a connection whose last answer was read whole, for the next request
/// to its address on this thread (closed instead when the pool is full, or
/// when bytes past the answer are waiting in its buffer).
pub fn give_back(mut conn: Conn, now_ms: u64) {
    if !conn.rbuf.is_empty() {
        return;
    }
    if conn.rbuf.capacity() > KEEP_BUFFER {
        conn.rbuf = bytes::BytesMut::with_capacity(super::READ_BUFFER);
    }
    let addr = conn.addr;
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if now_ms.saturating_sub(p.last_sweep_ms) >= 1000 {
            p.sweep(now_ms);
        }
        if p.total >= MAX_IDLE_PER_THREAD {
            return;
        }
        let list = p.by_addr.entry(addr).or_default();
        if list.len() >= MAX_IDLE_PER_ADDR {
            return;
        }
        list.push(Idle { conn, since_ms: now_ms });
        p.total += 1;
        if !p.sweeper {
            p.sweeper = spawn_sweeper();
        }
    })
}

/// Starts this thread's sweeper (false outside a runtime). It runs on the
/// thread that spawns it (the edge's runtimes do not steal work, a test's
/// is single-threaded) and ends once the pool is empty; the next give-back
/// starts another.
fn spawn_sweeper() -> bool {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    rt.spawn(async {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            let left = POOL.with(|p| {
                let mut p = p.borrow_mut();
                p.sweep(crate::clock::now_ms());
                p.sweeper = p.total > 0;
                p.total
            });
            if left == 0 {
                return;
            }
        }
    });
    true
}

/// Idle connections this thread holds (for tests and the status page).
pub fn idle_on_this_thread() -> usize {
    POOL.with(|p| p.borrow().total)
}

impl Pool {
    /// Closes every connection idle past [`IDLE_TIMEOUT`] and forgets
    /// addresses with none left.
    fn sweep(&mut self, now_ms: u64) {
        self.last_sweep_ms = now_ms;
        let limit = IDLE_TIMEOUT.as_millis() as u64;
        let mut total = 0;
        self.by_addr.retain(|_, list| {
            list.retain(|i| now_ms.saturating_sub(i.since_ms) < limit);
            total += list.len();
            !list.is_empty()
        });
        self.total = total;
    }
}

/// True when the socket is open and nothing is waiting to be read on it (an
/// idle HTTP/1 connection the VM has not closed).
fn still_open(io: &tokio::net::TcpStream) -> bool {
    let sock = socket2::SockRef::from(io);
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    match sock.peek(&mut buf) {
        // Closed (0) or an unexpected byte: not reusable.
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (Conn, tokio::net::TcpStream, SocketAddr) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let c = super::super::connect(addr, Duration::from_secs(1)).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s, addr)
    }

    #[tokio::test]
    async fn an_open_connection_comes_back_and_a_closed_one_does_not() {
        let (c, server, addr) = pair().await;
        give_back(c, 1);
        assert_eq!(idle_on_this_thread(), 1);
        assert!(take(addr, 1000, false).is_some(), "open and quiet: reused");
        assert!(take(addr, 1000, false).is_none(), "handed out once");

        let (c, server2, addr2) = pair().await;
        give_back(c, 1);
        drop(server2);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(take(addr2, 1000, false).is_none(), "the VM closed it while idle");

        let (c, mut server3, addr3) = pair().await;
        give_back(c, 1);
        server3.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            take(addr3, 1000, false).is_none(),
            "unread bytes: not a clean idle connection"
        );
        // Used a moment ago: handed out without a check.
        let (c, server4, addr4) = pair().await;
        give_back(c, 1);
        drop(server4);
        assert!(take(addr4, 2, false).is_some(), "no check within CHECK_AFTER");
        // ... unless the caller asks for one.
        let (c, server5, addr5) = pair().await;
        give_back(c, 1);
        drop(server5);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(take(addr5, 2, true).is_none(), "checked on request: closed");
        drop(server);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_without_traffic() {
        use tokio::io::AsyncReadExt;
        let (c, mut server, _addr) = pair().await;
        // Given back almost IDLE_TIMEOUT ago, and no request after it.
        let since = crate::clock::now_ms() - IDLE_TIMEOUT.as_millis() as u64 + 500;
        give_back(c, since);
        assert_eq!(idle_on_this_thread(), 1);
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), server.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0))), "the sweeper closed it: {read:?}");
        assert_eq!(idle_on_this_thread(), 0);
        // The sweeper ended with the pool empty; the next give-back starts one.
        tokio::time::sleep(SWEEP_EVERY * 2).await;
        assert!(!POOL.with(|p| p.borrow().sweeper));
    }

    #[tokio::test]
    async fn old_connections_are_closed_not_reused() {
        let (c, _server, addr) = pair().await;
        give_back(c, 1);
        assert!(take(addr, 1 + IDLE_TIMEOUT.as_millis() as u64, false).is_none());
        let (c, _server2, addr2) = pair().await;
        give_back(c, 10);
        let (c3, _server3, _addr3) = pair().await;
        // The sweep on a later give-back closes the old one.
        give_back(c3, 20_000 + IDLE_TIMEOUT.as_millis() as u64);
        assert_eq!(idle_on_this_thread(), 1);
        assert!(take(addr2, 20_000, false).is_none());
    }
}
