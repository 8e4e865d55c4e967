//! [`to_this_thread`]: moves an accepted socket's registration to the
//! reactor of the thread that serves it.
//!
//! Why: with `edge.threads` > 1 Pingora runs one single-threaded runtime
//! per thread; the accept loop runs on one of them and spawns each
//! connection on a random one. The socket stays registered with the
//! accepting thread's reactor, so for about half the connections every
//! readiness event is noticed on one thread and wakes another (an eventfd
//! write, a context switch): 0.57 per request measured with strace under
//! keep-alive load (bench/results/h1-codec/README.md). Re-registering on
//! the serving thread at the start of the connection keeps the request
//! path on one thread, as nginx's and HAProxy's workers do.
//!
//! How: the socket is duplicated, the original stream dropped (tokio
//! deregisters it from the accepting reactor, then closes that
//! descriptor; the duplicate keeps the socket), and the duplicate wrapped
//! as a new stream, registered with the current thread's reactor. The
//! socket digest (peer address) is set again. Nothing has been read or
//! written yet, so nothing is lost. Start at [`to_this_thread`].

use std::os::fd::{AsRawFd, BorrowedFd};

use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest, Stream};

/// The same connection, registered with this thread's reactor; `stream`
/// unchanged when it is not a plain TCP stream (already wrapped, or a test
/// stream) or the duplicate could not be made. None: the connection could
/// not be registered here (out of memory for the reactor), logged.
pub fn to_this_thread(stream: Stream) -> Option<Stream> {
    if !stream.as_any().is::<L4Stream>() {
        return Some(stream);
    }
    let peer = stream.get_socket_digest().and_then(|d| d.peer_addr().cloned());
    let fd = stream.as_any().downcast_ref::<L4Stream>().map(|l4| l4.as_raw_fd());
    let Some(fd) = fd else {
        return Some(stream);
    };
    // SAFETY: `fd` belongs to `stream`, which is alive for this borrow.
    #[allow(unsafe_code)]
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let owned = match borrowed.try_clone_to_owned() {
        Ok(o) => o,
        Err(e) => {
            log::debug!("keeping the accepting thread's registration: dup: {e}");
            return Some(stream);
        }
    };
    // Deregisters from the accepting thread's reactor and closes `fd`; the
    // socket lives on in `owned` (same open file: still non-blocking).
    drop(stream);
    let std = std::net::TcpStream::from(owned);
    let tcp = match tokio::net::TcpStream::from_std(std) {
        Ok(t) => t,
        Err(e) => {
            log::warn!("cannot register an accepted connection with this thread's reactor: {e}");
            return None;
        }
    };
    let mut l4 = L4Stream::from(tcp);
    let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
    if let Some(p) = peer {
        let _ = digest.peer_addr.set(Some(p));
    }
    l4.set_socket_digest(digest);
    Some(Box::new(l4))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Accepted on one runtime, served on another that never polls the
    /// first's reactor: without the re-registration the reads below would
    /// never wake. The peer address survives.
    #[test]
    fn a_socket_accepted_on_one_runtime_is_served_by_another_with_its_peer() {
        let (accepting, serving) = (runtime(), runtime());
        let listener = accepting
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            // After the serving side waits: its read must be woken by a
            // readiness event, not by one the accepting reactor cached.
            std::thread::sleep(Duration::from_millis(300));
            c.write_all(b"ping").unwrap();
            let mut got = [0u8; 4];
            c.read_exact(&mut got).unwrap();
            (c.local_addr().unwrap(), got)
        });
        let (tcp, peer) = accepting.block_on(listener.accept()).unwrap();
        let mut l4 = L4Stream::from(tcp);
        let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
        let _ = digest
            .peer_addr
            .set(Some(pingora_core::protocols::l4::socket::SocketAddr::Inet(peer)));
        l4.set_socket_digest(digest);
        let stream: Stream = Box::new(l4);

        serving.block_on(async {
            let mut s = to_this_thread(stream).expect("registered here");
            let seen = s.get_socket_digest().and_then(|d| d.peer_addr().cloned());
            assert_eq!(seen.and_then(|a| a.as_inet().copied()), Some(peer));
            let mut buf = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
                .await
                .expect("the read woke on this runtime")
                .unwrap();
            assert_eq!(&buf, b"ping");
            s.write_all(b"pong").await.unwrap();
            s.flush().await.unwrap();
        });
        let (client_addr, got) = client.join().unwrap();
        assert_eq!((client_addr, &got), (peer, b"pong"));
    }
}
