//! [`Pump`]: the bytes of one WebSocket tunnel, both ways, for any pair of
//! streams (a plain TCP socket, a TLS stream), with no buffer of its own
//! while idle.
//!
//! Each direction reads into this thread's scratch buffer and writes
//! straight on; only bytes the other side cannot take yet are kept (in a
//! buffer freed once written), and that direction reads nothing more until
//! they are gone (back-pressure). Frame boundaries are followed as bytes
//! pass ([`FrameCursor`]), so that when the tunnel is told to close
//! ([`Pump::close_with`]) each direction stops at its next boundary and
//! gets a close frame there, never inside a frame.
//!
//! [`Pump::step`] is poll-based and cancel-safe: the tunnel task selects it
//! against its timers (idle, the stop's delay, the drain limit), so no
//! timer ever stops the bytes (docs/request-path.md, "WebSocket tunnels").

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::ws_frames::{close_frame_to_client, close_frame_to_server, FrameCursor};

/// Scratch buffer per worker thread, shared by all its tunnels.
const SCRATCH: usize = 64 * 1024;
/// A pending buffer that grew past this is given back once written.
const KEEP_PENDING: usize = 16 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

/// What one [`Pump::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Bytes moved (the idle clock starts again).
    Moved,
    /// The tunnel is over: a side closed and what it sent was delivered, or
    /// both close frames went out while closing.
    Ended,
}

/// Which way bytes go, for the close frame each direction gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// Client to VM: frames the edge adds are masked (RFC 6455 §5.3).
    ToVm,
    ToClient,
}

/// One direction: what its sink has not taken yet, and where its frames are.
#[derive(Debug)]
struct Direction {
    way: Way,
    pending: Vec<u8>,
    /// Bytes of `pending` already written.
    written: usize,
    needs_flush: bool,
    /// The source ended.
    eof: bool,
    /// The sink's write half was shut after the source ended.
    shut: bool,
    frames: FrameCursor,
    close_sent: bool,
    carried: u64,
}

impl Direction {
    fn new(way: Way, first: &[u8]) -> Direction {
        let mut frames = FrameCursor::default();
        frames.advance(first);
        Direction {
            way,
            pending: first.to_vec(),
            written: 0,
            needs_flush: !first.is_empty(),
            eof: false,
            shut: false,
            frames,
            close_sent: false,
            carried: 0,
        }
    }

    fn has_pending(&self) -> bool {
        self.written < self.pending.len()
    }

    /// Writes what is pending, then flushes. Ready(true) once all is out.
    fn poll_send<W: AsyncWrite + Unpin>(&mut self, cx: &mut Context<'_>, to: &mut W) -> Poll<io::Result<bool>> {
        let mut moved = false;
        while self.has_pending() {
            match Pin::new(&mut *to).poll_write(cx, &self.pending[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.written += n;
                    self.needs_flush = true;
                    moved = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return if moved { Poll::Ready(Ok(false)) } else { Poll::Pending },
            }
        }
        if self.pending.capacity() > KEEP_PENDING {
            self.pending = Vec::new();
        } else {
            self.pending.clear();
        }
        self.written = 0;
        if self.needs_flush {
            match Pin::new(&mut *to).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return if moved { Poll::Ready(Ok(false)) } else { Poll::Pending },
            }
        }
        Poll::Ready(Ok(true))
    }

    /// Moves what can be moved now. Ready(true) when something happened.
    fn poll_move<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        close: Option<(u16, [u8; 4])>,
    ) -> Poll<io::Result<bool>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut moved = false;
        loop {
            match self.poll_send(cx, to) {
                Poll::Ready(Ok(true)) => {}
                Poll::Ready(Ok(false)) => return Poll::Ready(Ok(true)),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return if moved { Poll::Ready(Ok(true)) } else { Poll::Pending },
            }
            // Everything read so far is out.
            if let (Some((code, mask)), false, true) = (close, self.close_sent, self.frames.at_boundary()) {
                self.close_sent = true;
                match self.way {
                    Way::ToClient => self.pending.extend_from_slice(&close_frame_to_client(code)),
                    Way::ToVm => self.pending.extend_from_slice(&close_frame_to_server(code, mask)),
                }
                moved = true;
                continue;
            }
            if self.eof {
                if !self.shut {
                    match Pin::new(&mut *to).poll_shutdown(cx) {
                        Poll::Ready(_) => {
                            self.shut = true;
                            moved = true;
                        }
                        Poll::Pending => return if moved { Poll::Ready(Ok(true)) } else { Poll::Pending },
                    }
                }
                return Poll::Ready(Ok(moved));
            }
            // While closing, nothing past the current frame's end is read.
            let limit = match close {
                Some(_) if self.close_sent => 0,
                Some(_) => self.frames.to_boundary().min(SCRATCH as u64) as usize,
                None => SCRATCH,
            };
            if limit == 0 {
                return if moved { Poll::Ready(Ok(true)) } else { Poll::Pending };
            }
            let read = SCRATCH_BUF.with(|b| {
                let mut b = b.borrow_mut();
                let mut buf = ReadBuf::new(&mut b[..limit]);
                match Pin::new(&mut *from).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Ok(None)),
                    Poll::Ready(Ok(())) => {
                        let got = buf.filled();
                        self.frames.advance(got);
                        self.carried += got.len() as u64;
                        // Straight on; only what the sink will not take is kept.
                        let mut at = 0;
                        while at < got.len() {
                            match Pin::new(&mut *to).poll_write(cx, &got[at..]) {
                                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                                Poll::Ready(Ok(n)) => at += n,
                                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                                Poll::Pending => break,
                            }
                        }
                        self.pending.extend_from_slice(&got[at..]);
                        self.needs_flush = true;
                        Poll::Ready(Ok(Some(got.len())))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            });
            match read {
                Poll::Ready(Ok(None)) => {
                    self.eof = true;
                    moved = true;
                }
                Poll::Ready(Ok(Some(_))) => moved = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return if moved { Poll::Ready(Ok(true)) } else { Poll::Pending },
            }
        }
    }
}

/// A tunnel's two streams and two directions.
pub struct Pump<C, V> {
    client: C,
    vm: V,
    /// Client to VM.
    up: Direction,
    /// VM to client.
    down: Direction,
    /// Set by [`Pump::close_with`]: the close code and the mask of the
    /// frame to the VM.
    close: Option<(u16, [u8; 4])>,
}

impl<C, V> Pump<C, V>
where
    C: AsyncRead + AsyncWrite + Unpin,
    V: AsyncRead + AsyncWrite + Unpin,
{
    /// A pump that first sends `to_client` (the `101` head and any frames
    /// the VM sent behind it) and `to_vm` (bytes the client sent past its
    /// request head).
    pub fn new(client: C, vm: V, to_client: &[u8], to_vm: &[u8], frames_to_client: usize) -> Pump<C, V> {
        let mut down = Direction::new(Way::ToClient, to_client);
        // Only the bytes after the head are frames.
        down.frames = FrameCursor::default();
        down.frames.advance(&to_client[to_client.len() - frames_to_client..]);
        Pump {
            client,
            vm,
            up: Direction::new(Way::ToVm, to_vm),
            down,
            close: None,
        }
    }

    /// From now on each direction stops at its next frame boundary and
    /// gets a close frame with `code` there (`mask` for the VM's).
    pub fn close_with(&mut self, code: u16, mask: [u8; 4]) {
        self.close = Some((code, mask));
    }

    /// Both close frames went out (or the tunnel ended before).
    pub fn closed(&self) -> bool {
        self.up.close_sent && self.down.close_sent && !self.up.has_pending() && !self.down.has_pending()
    }

    /// Bytes carried (client to VM, VM to client).
    pub fn carried(&self) -> (u64, u64) {
        (self.up.carried, self.down.carried)
    }

    /// Moves bytes until something happens (cancel-safe: nothing is lost
    /// when the caller drops it for a timer).
    pub async fn step(&mut self) -> io::Result<Step> {
        poll_fn(|cx| self.poll_step(cx)).await
    }

    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Step>> {
        let Pump {
            client,
            vm,
            up,
            down,
            close,
        } = self;
        let a = up.poll_move(cx, client, vm, *close)?;
        let b = down.poll_move(cx, vm, client, *close)?;
        // Either side finishing ends the tunnel once what it sent is
        // delivered (WebSocket ends with frames; a half-open tunnel would
        // only hold sockets, as nginx also decides).
        if (up.eof && up.shut) || (down.eof && down.shut) {
            return Poll::Ready(Ok(Step::Ended));
        }
        if close.is_some() && up.close_sent && down.close_sent && !up.has_pending() && !down.has_pending() {
            let _ = Pin::new(&mut *client).poll_shutdown(cx);
            let _ = Pin::new(&mut *vm).poll_shutdown(cx);
            return Poll::Ready(Ok(Step::Ended));
        }
        match (a, b) {
            (Poll::Ready(true), _) | (_, Poll::Ready(true)) => Poll::Ready(Ok(Step::Moved)),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(payload: &[u8]) -> Vec<u8> {
        // An unmasked text frame (what a VM sends).
        let mut f = vec![0x81, payload.len() as u8];
        f.extend_from_slice(payload);
        f
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_and_a_close_lands_between_frames() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (vm, mut vm_peer) = tokio::io::duplex(64);
        let mut pump = Pump::new(client, vm, b"HTTP/1.1 101 ok\r\n\r\n", b"", 0);
        let task = tokio::spawn(async move {
            let mut closing = false;
            loop {
                match tokio::time::timeout(std::time::Duration::from_millis(200), pump.step()).await {
                    Ok(Ok(Step::Moved)) => {}
                    Ok(Ok(Step::Ended)) => return pump.carried(),
                    Ok(Err(e)) => panic!("{e}"),
                    Err(_) if !closing => {
                        closing = true;
                        pump.close_with(1001, [0, 0, 0, 0]);
                    }
                    Err(_) => panic!("did not end"),
                }
            }
        });
        let mut head = [0u8; 19];
        client_peer.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 101 ok\r\n\r\n");
        // A frame split across writes: the close waits for its end.
        let f = frame(b"hello");
        vm_peer.write_all(&f[..3]).await.unwrap();
        let mut got = vec![0u8; 3];
        client_peer.read_exact(&mut got).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await; // the pump is told to close
        vm_peer.write_all(&f[3..]).await.unwrap();
        let mut rest = vec![0u8; f.len() - 3 + 4];
        client_peer.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest[..f.len() - 3], &f[3..], "the frame went out whole");
        assert_eq!(
            &rest[f.len() - 3..],
            &close_frame_to_client(1001),
            "then the close frame"
        );
        let mut to_vm = [0u8; 8];
        vm_peer.read_exact(&mut to_vm).await.unwrap();
        assert_eq!(to_vm, close_frame_to_server(1001, [0, 0, 0, 0]));
        let (up, down) = task.await.unwrap();
        assert_eq!((up, down), (0, f.len() as u64));
    }

    #[tokio::test]
    async fn a_slow_reader_holds_back_its_writer_and_nothing_is_lost() {
        let (client, mut client_peer) = tokio::io::duplex(16);
        let (vm, mut vm_peer) = tokio::io::duplex(1 << 20);
        let mut pump = Pump::new(client, vm, b"", b"", 0);
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let expect = big.clone();
        let writer = tokio::spawn(async move {
            vm_peer.write_all(&big).await.unwrap();
            vm_peer.shutdown().await.unwrap();
            vm_peer
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client_peer.read_to_end(&mut got).await.unwrap();
            got
        });
        loop {
            if pump.step().await.unwrap() == Step::Ended {
                break;
            }
        }
        drop(pump);
        let _ = writer.await.unwrap();
        assert_eq!(reader.await.unwrap(), expect);
    }
}
