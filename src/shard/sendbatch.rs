//! Batched sends: one `io_uring_enter` hands a whole flush's frames to the kernel.
//!
//! `flush_dirty` would otherwise make one `send` syscall per dirty connection. With a
//! batch, each connection whose queue holds one frame (nearly every delivery) becomes an
//! `IORING_OP_SEND` entry on a small ring of the shard's own, and the whole batch is
//! submitted and reaped with one syscall. The entries carry `MSG_DONTWAIT`, so the kernel
//! completes every one of them inside that call, sent or with `EAGAIN`, and never parks
//! one to wait for room: when the call returns, no entry refers to a frame any longer.
//! What a batch entry could not finish (a partial send, a full socket, a queue of several
//! frames) goes on through the direct path, [`super::conn::Outbound::flush`].
//!
//! The ring is separate from the runtime's: the runtime's ring completes operations
//! asynchronously and would make the flush wait for its own reaping, while this one is
//! used synchronously and is empty between two flushes. A kernel that refuses io_uring
//! (seccomp, `kernel.io_uring_disabled`) gets no batch and every send goes direct.

use std::io;
use std::os::fd::RawFd;

use io_uring::{IoUring, opcode, types};

/// Entries per submission; a larger flush is submitted in several calls.
pub const ENTRIES: u32 = 256;

/// A shard's send ring and the results of its last submission.
pub struct SendBatch {
    ring: IoUring,
    /// Entries queued since the last submission.
    queued: usize,
    /// The ring failed; see [`SendBatch::is_broken`].
    broken: bool,
    /// The caller's tag of each entry queued, by index.
    tags: Vec<usize>,
    /// `(tag, result)` of each entry of the last submission.
    results: Vec<(usize, i32)>,
}

impl SendBatch {
    /// A ring for one shard thread, or the reason the kernel refused it.
    pub fn new() -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_submit_all()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .build(ENTRIES)
            .or_else(|_| IoUring::builder().setup_submit_all().build(ENTRIES))?;
        Ok(SendBatch {
            ring,
            queued: 0,
            broken: false,
            tags: Vec::with_capacity(ENTRIES as usize),
            results: Vec::with_capacity(ENTRIES as usize),
        })
    }

    /// Whether another entry fits before [`SendBatch::submit`] must run.
    #[must_use]
    pub fn has_room(&self) -> bool {
        self.queued < ENTRIES as usize
    }

    /// Entries queued and not yet submitted.
    #[must_use]
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Queues a send of `data` to `fd`; [`SendBatch::submit`] reports its result with
    /// `tag`.
    ///
    /// # Safety
    /// `data` must stay valid, and unmoved, until the next [`SendBatch::submit`] returns.
    pub unsafe fn push(&mut self, fd: RawFd, data: &[u8], tag: usize) {
        debug_assert!(self.has_room());
        let index = self.queued;
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let entry = opcode::Send::new(types::Fd(fd), data.as_ptr(), len)
            .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            .build()
            .user_data(index as u64);
        // SAFETY: the caller keeps `data` alive until the submission completes, and
        // `has_room` guarantees a free submission slot (the ring is empty between calls).
        let pushed = unsafe { self.ring.submission().push(&entry) };
        debug_assert!(pushed.is_ok(), "the send ring has room for ENTRIES");
        self.tags.push(tag);
        self.queued += 1;
    }

    /// Submits every queued entry with one syscall and waits for all of them (they
    /// complete inside the call: `MSG_DONTWAIT`). Each result, in the order the entries
    /// were pushed, is a byte count or `-errno` with its tag; `-ECANCELED` means the entry
    /// never reached the kernel (the ring failed: [`SendBatch::is_broken`]) and nothing
    /// of it was sent.
    pub fn submit(&mut self) -> &[(usize, i32)] {
        let want = std::mem::take(&mut self.queued);
        self.results.clear();
        self.results
            .extend(self.tags.drain(..).map(|tag| (tag, -libc::ECANCELED)));
        let mut seen = 0;
        while seen < want {
            match self.ring.submit_and_wait(want - seen) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(_) => {
                    // The ring itself failed (never seen in practice). Entries the kernel
                    // took have completed (`MSG_DONTWAIT`) and are reaped below; the
                    // rest stay `-ECANCELED` and the shard stops using the ring.
                    self.broken = true;
                }
            }
            for cqe in self.ring.completion() {
                if let Some(slot) = self.results.get_mut(cqe.user_data() as usize) {
                    slot.1 = cqe.result();
                    seen += 1;
                }
            }
            if self.broken {
                break;
            }
        }
        &self.results
    }

    /// The ring failed once; the shard should drop it and send directly.
    #[must_use]
    pub fn is_broken(&self) -> bool {
        self.broken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_batch_sends_to_every_socket_in_one_submission() {
        let Ok(mut batch) = SendBatch::new() else {
            // No io_uring here: the direct path is all there is, and tests/io_driver.rs
            // covers it.
            assert!(SendBatch::new().is_err());
            return;
        };
        let pairs: Vec<_> = (0..10)
            .map(|_| std::os::unix::net::UnixStream::pair().expect("pair"))
            .collect();
        let frames: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        for ((a, _), f) in pairs.iter().zip(&frames) {
            // SAFETY: `frames` outlives the submission below.
            unsafe { batch.push(a.as_raw_fd(), f, f.len()) };
        }
        assert_eq!(batch.queued(), 10);
        let results = batch.submit().to_vec();
        assert_eq!(batch.queued(), 0);
        for (i, ((_, b), f)) in pairs.iter().zip(&frames).enumerate() {
            assert_eq!(results[i], (f.len(), f.len() as i32));
            let mut got = vec![0u8; f.len()];
            (&*b).read_exact(&mut got).expect("read");
            assert_eq!(&got, f);
        }
    }

    #[test]
    fn a_full_socket_answers_eagain_at_once_instead_of_waiting() {
        let Ok(mut batch) = SendBatch::new() else {
            return;
        };
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0usize;
        let mut eagain = false;
        for _ in 0..200 {
            // SAFETY: `chunk` outlives the submission.
            unsafe { batch.push(a.as_raw_fd(), &chunk, 0) };
            let r = batch.submit()[0].1;
            if r == -libc::EAGAIN {
                eagain = true;
                break;
            }
            assert!(r > 0, "send failed: {r}");
            sent += r as usize;
        }
        assert!(eagain, "12 MB never filled a socket pair");
        assert!(sent > 0);
        drop(b);
        // SAFETY: as above.
        unsafe { batch.push(a.as_raw_fd(), &chunk, 0) };
        let r = batch.submit()[0].1;
        assert_eq!(
            r,
            -libc::EPIPE,
            "a closed peer fails the send, without SIGPIPE"
        );
    }

    #[test]
    fn more_entries_than_the_ring_holds_are_submitted_in_turns() {
        let Ok(mut batch) = SendBatch::new() else {
            return;
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let a =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut b, _) = listener.accept().expect("accept");
        let frame = b"x".repeat(10);
        let mut total = 0;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        for turn in 0..3 {
            while batch.has_room() {
                // SAFETY: `frame` outlives every submission.
                unsafe { batch.push(a.as_raw_fd(), &frame, turn) };
            }
            let results = batch.submit();
            assert!(results.iter().all(|&(tag, _)| tag == turn));
            total += results.iter().filter(|&&(_, r)| r == 10).count();
            while got.len() < total * 10 {
                let n = b.read(&mut buf).expect("read");
                got.extend_from_slice(&buf[..n]);
            }
        }
        assert_eq!(total, 3 * ENTRIES as usize);
        assert_eq!(got.len(), 30 * ENTRIES as usize);
    }
}
