//! A TLS connection's state, sans-IO: ciphertext read from the socket goes in, plaintext
//! comes out for the HTTP parser or the frame decoder; queued frames are encrypted only
//! when the previous ciphertext has left, so the outbound bound still holds.

use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::sync::Arc;

use super::conn::{Flushed, Outbound};

/// rustls's server state plus the ciphertext not yet taken by the socket.
pub struct Tls {
    conn: rustls::ServerConnection,
    /// Ciphertext waiting for the socket, from `pos`.
    out: Vec<u8>,
    pos: usize,
}

/// The peer broke TLS (bad record, failed handshake): close the socket.
#[derive(Debug)]
pub struct TlsBroken;

impl Tls {
    /// A new server-side session.
    pub fn new(config: Arc<rustls::ServerConfig>) -> Result<Self, TlsBroken> {
        let conn = rustls::ServerConnection::new(config).map_err(|_| TlsBroken)?;
        Ok(Self {
            conn,
            out: Vec::new(),
            pos: 0,
        })
    }

    /// Takes ciphertext just read and appends the plaintext it yields to `plain`.
    pub fn read(&mut self, mut cipher: &[u8], plain: &mut Vec<u8>) -> Result<(), TlsBroken> {
        while !cipher.is_empty() {
            if self.conn.read_tls(&mut cipher).is_err() {
                return Err(TlsBroken);
            }
            if self.conn.process_new_packets().is_err() {
                // Queue the alert so the peer learns why; the caller closes.
                self.take_ciphertext();
                return Err(TlsBroken);
            }
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match self.conn.reader().read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => plain.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => return Err(TlsBroken),
                }
            }
        }
        Ok(())
    }

    /// Encrypts `plain` into the pending ciphertext.
    pub fn write(&mut self, plain: &[u8]) {
        let _ = self.conn.writer().write_all(plain);
        self.take_ciphertext();
    }

    /// Whether handshake or data ciphertext waits to be sent.
    pub fn has_pending(&self) -> bool {
        self.pos < self.out.len() || self.conn.wants_write()
    }

    fn take_ciphertext(&mut self) {
        if self.pos == self.out.len() {
            self.out.clear();
            self.pos = 0;
        }
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut self.out).is_err() {
                break;
            }
        }
    }

    /// Sends pending ciphertext without blocking.
    pub fn send(&mut self, fd: RawFd) -> Flushed {
        self.take_ciphertext();
        while self.pos < self.out.len() {
            let part = &self.out[self.pos..];
            // SAFETY: `part` is valid for reads of its length during the call.
            let n = unsafe {
                libc::send(
                    fd,
                    part.as_ptr().cast(),
                    part.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock => return Flushed::Blocked,
                    io::ErrorKind::Interrupted => continue,
                    _ => return Flushed::Failed,
                }
            }
            self.pos += n as usize;
        }
        self.out = Vec::new();
        self.pos = 0;
        Flushed::Done
    }

    /// Encrypts queued frames once the previous ciphertext has left, and sends.
    pub fn flush(&mut self, out: &mut Outbound, fd: RawFd) -> Flushed {
        loop {
            match self.send(fd) {
                Flushed::Done => {}
                other => return other,
            }
            if out.is_empty() {
                return Flushed::Done;
            }
            out.drain_into(|frame| self.write(frame));
        }
    }
}
