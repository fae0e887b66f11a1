//! One connection's shard-side state and its bounded outbound queue.
//!
//! Frames are queued as shared `Bytes` (a refcount, not a copy) and written with one
//! `sendmsg` carrying every queued frame, straight from the shard thread without
//! waiting: a delivery costs a queue push, and a batch of deliveries one syscall.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use monoio::net::TcpStream;

use crate::app::AppIdx;
use crate::protocol::SocketId;

/// How many frames one `sendmsg` carries at most.
const MAX_IOVECS: usize = 64;

/// A WebSocket connection owned by a shard.
pub struct Conn {
    /// Unique on this shard for its lifetime; tells a reused slab slot from the old one.
    pub serial: u64,
    /// The Pusher socket id given in `connection_established`.
    pub socket_id: SocketId,
    /// The app the connection belongs to.
    pub app: AppIdx,
    /// Shared with the reader task and, while the socket is full, a writer task.
    pub stream: Rc<TcpStream>,
    /// Frames waiting for the socket.
    pub out: Outbound,
    /// Already in the shard's list of connections to flush.
    pub dirty: bool,
    /// A writer task is waiting for the socket to drain.
    pub writer_active: bool,
    /// When the server began closing this connection; new deliveries are skipped.
    pub closing: Option<Instant>,
    /// Last time anything arrived from the client.
    pub last_seen: Instant,
    /// When we sent `pusher:ping` without an answer yet.
    pub ping_sent: Option<Instant>,
    /// Channels this connection is subscribed to, to leave them on disconnect.
    pub channels: Vec<Subscription>,
    /// TLS state on `wss://` connections.
    pub tls: Option<Box<super::tls::Tls>>,
    /// The user id after a successful `pusher:signin`.
    pub user_id: Option<Arc<str>>,
    /// Signed in or joined a private or presence channel (for user-authentication apps).
    pub authorized: bool,
    /// Holds a slot of the app's cluster-wide connection quota, given back on close.
    pub leased_slot: bool,
    /// When the connection was established.
    pub opened_at: Instant,
    /// Client events in the current one-second window: `(window start, count)`.
    pub client_events: (Instant, u32),
    /// permessage-deflate, when the client negotiated it: the server's window bits.
    pub deflate: Option<crate::ws::Deflate>,
}

impl Conn {
    /// Hands queued frames to the kernel without blocking (encrypting them first on TLS).
    pub fn flush(&mut self) -> Flushed {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&*self.stream);
        match self.tls.as_mut() {
            Some(tls) => tls.flush(&mut self.out, fd),
            None => self.out.flush(fd),
        }
    }
}

/// One channel a connection is on.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub channel: Arc<str>,
    /// On presence channels, the member this socket counts for.
    pub presence_user: Option<Arc<str>>,
}

/// What a flush achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// The queue is empty.
    Done,
    /// The socket buffer is full; wait for it to become writable.
    Blocked,
    /// The socket is gone.
    Failed,
}

/// A bounded queue of frames, bounded in bytes rather than messages.
///
/// The front frame lives in an inline slot, so queueing a frame to a connection with
/// nothing queued (nearly every delivery) and flushing it allocate and free nothing;
/// frames behind it go to a `VecDeque` that is dropped once drained, so an idle
/// connection holds no queue memory.
#[derive(Default)]
pub struct Outbound {
    /// The frame being written; `None` only when the queue is empty.
    front: Option<Bytes>,
    /// The frames after `front`, in order.
    rest: VecDeque<Bytes>,
    /// Bytes of the front frame already written.
    offset: usize,
    /// Bytes queued, minus `offset`.
    bytes: usize,
}

impl Outbound {
    /// Queues `frame` unless that would pass `limit` bytes; returns whether it was queued.
    pub fn push(&mut self, frame: Bytes, limit: usize) -> bool {
        if self.front.is_none() {
            self.bytes = frame.len();
            self.front = Some(frame);
            return true;
        }
        if self.bytes + frame.len() > limit {
            return false;
        }
        self.bytes += frame.len();
        self.rest.push_back(frame);
        true
    }

    /// Bytes waiting.
    #[must_use]
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Whether nothing waits.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.front.is_none()
    }

    /// Frames queued.
    #[must_use]
    pub fn frames(&self) -> usize {
        usize::from(self.front.is_some()) + self.rest.len()
    }

    /// The one frame queued (from `offset` on), when exactly one is: what a batched send
    /// carries.
    #[must_use]
    pub fn lone(&self) -> Option<&[u8]> {
        match (&self.front, self.rest.is_empty()) {
            (Some(front), true) => Some(&front[self.offset..]),
            _ => None,
        }
    }

    /// Records that the kernel took `sent` bytes of a batched send of [`Outbound::lone`].
    pub fn sent(&mut self, sent: usize) {
        self.advance(sent);
    }

    /// The queued frames in order, the first from `offset` on.
    fn parts(&self) -> impl Iterator<Item = &[u8]> {
        let front = self.front.as_ref().map(|f| &f[self.offset..]);
        front.into_iter().chain(self.rest.iter().map(|f| &f[..]))
    }

    /// Hands every queued frame to `f` (TLS encrypts them) and empties the queue.
    pub fn drain_into(&mut self, mut f: impl FnMut(&[u8])) {
        for part in self.parts() {
            f(part);
        }
        self.clear();
    }

    /// Drops everything queued (a connection being evicted).
    pub fn clear(&mut self) {
        self.front = None;
        self.rest = VecDeque::new();
        self.offset = 0;
        self.bytes = 0;
    }

    /// Writes as much as the socket takes without blocking: one `send` for a lone frame
    /// (the common case), one `sendmsg` for several.
    pub fn flush(&mut self, fd: RawFd) -> Flushed {
        while let Some(front) = self.front.as_ref() {
            let sent = if self.rest.is_empty() {
                let part = &front[self.offset..];
                // SAFETY: `part` is valid for reads of its length during the call.
                unsafe {
                    libc::send(
                        fd,
                        part.as_ptr().cast(),
                        part.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                }
            } else {
                self.send_vectored(fd)
            };
            if sent < 0 {
                let err = io::Error::last_os_error();
                return match err.kind() {
                    io::ErrorKind::WouldBlock => Flushed::Blocked,
                    io::ErrorKind::Interrupted => continue,
                    _ => Flushed::Failed,
                };
            }
            self.advance(sent as usize);
        }
        if self.rest.capacity() > 0 {
            // A burst queued several frames: give the memory back now that it is sent.
            self.rest = VecDeque::new();
        }
        Flushed::Done
    }

    /// One `sendmsg` carrying up to [`MAX_IOVECS`] queued frames.
    fn send_vectored(&self, fd: RawFd) -> isize {
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_IOVECS];
        let mut n = 0;
        for (slot, part) in iov.iter_mut().zip(self.parts()) {
            *slot = libc::iovec {
                iov_base: part.as_ptr() as *mut _,
                iov_len: part.len(),
            };
            n += 1;
        }
        // SAFETY: msghdr is plain data; zeroed is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = n;
        // SAFETY: every iovec points into a `Bytes` held by `self` for the call.
        unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) }
    }

    fn advance(&mut self, mut sent: usize) {
        self.bytes -= sent;
        while sent > 0 {
            let Some(front) = self.front.as_ref() else {
                break;
            };
            let left = front.len() - self.offset;
            if sent >= left {
                sent -= left;
                self.offset = 0;
                self.front = self.rest.pop_front();
            } else {
                self.offset += sent;
                sent = 0;
            }
        }
    }
}

/// Reads what the socket holds without blocking: `Ok(0)` is end of stream, `WouldBlock`
/// means nothing is there yet.
pub fn recv_now(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Shuts a socket down in one or both directions; errors mean it is already gone.
pub fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: shutting down an fd we own has no memory effects.
    unsafe { libc::shutdown(fd, how) };
}

/// Writes all of `data`, waiting for the socket when it is full (HTTP responses, handshake).
pub async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    while !data.is_empty() {
        // SAFETY: `data` is valid for reads of its length.
        let n = unsafe {
            libc::send(
                fd,
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            data = &data[n as usize..];
            continue;
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock => stream.writable(false).await?,
            io::ErrorKind::Interrupted => {}
            _ => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_is_bounded_in_bytes_but_takes_one_oversized_frame() {
        let mut out = Outbound::default();
        assert!(
            out.push(Bytes::from(vec![0; 100]), 50),
            "an empty queue takes any frame"
        );
        assert!(!out.push(Bytes::from(vec![0; 10]), 50));
        assert_eq!(out.len(), 100);
        out.clear();
        assert!(out.is_empty());
    }

    #[test]
    fn partial_writes_advance_across_frames() {
        let mut out = Outbound::default();
        for _ in 0..3 {
            assert!(out.push(Bytes::from_static(b"abcd"), 100));
        }
        out.advance(6);
        assert_eq!(out.len(), 6);
        assert_eq!(out.offset, 2);
        assert_eq!(out.frames(), 2);
        out.advance(6);
        assert!(out.is_empty());
    }

    #[test]
    fn a_lone_frame_uses_the_inline_slot_and_a_burst_gives_its_buffer_back() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        use std::os::fd::AsRawFd;
        let mut out = Outbound::default();
        assert!(out.push(Bytes::from_static(b"one"), 100));
        assert_eq!(out.rest.capacity(), 0, "a lone frame needs no buffer");
        assert_eq!(out.flush(a.as_raw_fd()), Flushed::Done);
        assert!(out.is_empty());
        for f in [&b"a"[..], b"b", b"c"] {
            assert!(out.push(Bytes::from_static(f), 100));
        }
        assert_eq!(out.frames(), 3);
        assert!(out.rest.capacity() > 0);
        assert_eq!(out.flush(a.as_raw_fd()), Flushed::Done);
        assert_eq!(
            out.rest.capacity(),
            0,
            "the burst's buffer is dropped once sent"
        );
    }

    #[test]
    fn a_full_socket_blocks_and_the_rest_follows_byte_exact_in_order() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let (a, mut b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let frames: Vec<Bytes> = (0..40u8)
            .map(|i| Bytes::from(vec![i; 7000 + usize::from(i)]))
            .collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        let mut out = Outbound::default();
        for f in &frames {
            assert!(out.push(f.clone(), 1 << 30));
        }
        let mut got = Vec::new();
        let mut blocked = 0;
        let mut buf = vec![0u8; 4096];
        loop {
            match out.flush(a.as_raw_fd()) {
                Flushed::Done => break,
                Flushed::Blocked => blocked += 1,
                Flushed::Failed => panic!("flush failed"),
            }
            let n = b.read(&mut buf).expect("read");
            got.extend_from_slice(&buf[..n]);
        }
        drop(a);
        b.read_to_end(&mut got).expect("read rest");
        assert!(blocked > 0, "280 KB must fill a socket pair's buffer");
        assert!(got == expected, "bytes lost, duplicated or reordered");
    }

    #[test]
    fn flush_writes_every_queued_frame_in_order() {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let mut out = Outbound::default();
        for f in [&b"one "[..], b"two ", b"three"] {
            assert!(out.push(Bytes::copy_from_slice(f), 1 << 20));
        }
        assert_eq!(out.flush(a.as_raw_fd()), Flushed::Done);
        drop(a);
        let mut got = String::new();
        (&b).read_to_string(&mut got).expect("read");
        assert_eq!(got, "one two three");
    }
}
