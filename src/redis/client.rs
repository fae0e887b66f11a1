//! A small RESP2 client on monoio sockets, for the redis bridge thread.
//!
//! [`Connection`] sends commands, pipelined: many requests in one write, replies matched
//! in order. [`Subscriber`] is a connection in pub/sub mode. [`Backoff`] paces
//! reconnects. The wire format lives in [`super::resp`]; this file only moves bytes.
//!
//! # Failure and cancellation
//!
//! Any I/O or protocol error leaves a connection unusable: later calls return
//! [`RedisError::Closed`], and the caller reconnects (with [`Backoff`]). The same holds
//! when a call's future is dropped before it finishes (a `select!` or an outer
//! `monoio::time::timeout`): its reply would otherwise be taken as the next call's.
//! So run a [`Subscriber`] in a task of its own that loops on
//! [`Subscriber::next_message`], rather than racing that future against others.
//! An error *reply* (`-ERR ...`) is not a failure: the connection stays in step. Except
//! `-READONLY`: the server is a replica now (its master was failed over), so the call
//! returns [`RedisError::NotMaster`] and the connection is done with, as after an I/O
//! error. With [`RedisOptions::sentinels`] every connect asks the sentinels where the
//! master is (see [`super::sentinel`]).

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::ToSocketAddrs;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

pub use super::resp::Reply;
use super::resp::{self, ProtocolError, PushEvent};
use super::sentinel::{Sentinels, SwitchMark};

/// Where and how to connect.
#[derive(Clone)]
pub struct RedisOptions {
    /// Host name or IP address; resolved (blocking) on every connect.
    pub host: String,
    pub port: u16,
    /// ACL user (Redis 6+); only sent together with `password`.
    pub username: Option<String>,
    /// Sent with `AUTH` right after connecting; `None` sends no `AUTH`.
    pub password: Option<String>,
    /// Database for `SELECT`; 0 sends nothing. Pub/sub ignores it.
    pub db: u32,
    /// Budget for the whole connect: asking the sentinels, TCP handshake, `AUTH`,
    /// `SELECT` and `ROLE` together.
    pub connect_timeout: Duration,
    /// Ask these sentinels for the master on every connect; `host` and `port` are then
    /// unused. The connection checks with `ROLE` that it reached a master, and fails
    /// with [`RedisError::NotMaster`] once the sentinels announce a new one.
    pub sentinels: Option<Sentinels>,
}

impl Default for RedisOptions {
    /// `127.0.0.1:6379`, no auth, db 0, 5 s connect timeout.
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 6379,
            username: None,
            password: None,
            db: 0,
            connect_timeout: Duration::from_secs(5),
            sentinels: None,
        }
    }
}

impl fmt::Debug for RedisOptions {
    /// Like a derived `Debug`, but never prints the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("connect_timeout", &self.connect_timeout)
            .field("sentinels", &self.sentinels)
            .finish()
    }
}

/// Why a Redis call failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The socket failed (refused, reset, ...). Reconnect after a [`Backoff`] delay.
    #[error("redis I/O error: {0}")]
    Io(#[from] io::Error),
    /// The server sent bytes that are not RESP2, or a reply this client did not expect,
    /// or the caller passed an empty command. The connection is unusable: reconnect.
    #[error("redis protocol error: {0}")]
    Protocol(String),
    /// The server answered with an error reply (`-ERR`, `-NOAUTH`, `-WRONGPASS`, ...).
    /// The connection is still usable, except when it came from `connect`.
    #[error("redis replied with an error: {0}")]
    Server(String),
    /// No sentinel gave the master's address: none knows the instance name, or none
    /// answered. Retry with backoff.
    #[error("no sentinel gave the address of master {name:?} ({answers})")]
    NoMaster { name: String, answers: String },
    /// No seed node of the Redis Cluster gave its slot map: none answered, or they are
    /// not in cluster mode. Retry with backoff.
    #[error("no Redis Cluster node gave the slot map ({answers})")]
    NoCluster { answers: String },
    /// The server is not the master (any more): `ROLE` at connect said otherwise, a
    /// write got `-READONLY`, or the sentinels announced a new master. The connection
    /// is unusable: reconnect, which asks the sentinels again.
    #[error("redis is not the master: {0}")]
    NotMaster(String),
    /// Connecting (including `AUTH` and `SELECT`) took longer than `connect_timeout`.
    #[error("redis did not answer within the connect timeout")]
    Timeout,
    /// The server closed the socket, or an earlier failure or cancelled call left this
    /// connection out of step. Reconnect.
    #[error("redis connection closed")]
    Closed,
}

impl From<ProtocolError> for RedisError {
    fn from(err: ProtocolError) -> Self {
        RedisError::Protocol(err.0)
    }
}

/// A command connection with pipelining: several requests written in one write,
/// replies matched in order.
pub struct Connection {
    sock: Socket,
}

impl Connection {
    /// Connects (within `connect_timeout`), sends `AUTH` (username and password, or
    /// password only) and `SELECT db` when `db != 0`.
    pub async fn connect(opts: &RedisOptions) -> Result<Connection, RedisError> {
        let sock = Socket::connect(opts).await?;
        // Pipelined publishes should leave at once, not wait for Nagle.
        sock.stream.set_nodelay(true)?;
        Ok(Connection { sock })
    }

    /// Sends one command, e.g. `conn.call(&[b"PUBLISH", ch, payload])`, and waits for
    /// its reply. An error reply becomes [`RedisError::Server`].
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        check_command(args)?;
        self.sock.begin()?;
        resp::encode_command(&mut self.sock.write_buf, args);
        self.sock.flush().await?;
        let reply = self.sock.read_reply().await?;
        self.sock.end();
        match reply {
            Reply::Error(msg) if is_readonly(&msg) => Err(self.sock.demoted(msg)),
            Reply::Error(msg) => Err(RedisError::Server(msg)),
            reply => Ok(reply),
        }
    }

    /// The server this connection reached, as `host:port`.
    pub fn server(&self) -> &str {
        &self.sock.server
    }

    /// Connected through sentinels, which have announced a new master since: the next
    /// call fails with [`RedisError::NotMaster`], so reconnect now.
    pub fn moved(&self) -> bool {
        self.sock.switch.as_ref().is_some_and(SwitchMark::moved)
    }

    /// Sends many commands in one write and returns one reply per command, in order.
    /// An error reply is [`Reply::Error`] in its place, not an `Err`; but a `-READONLY`
    /// among them fails the whole pipeline with [`RedisError::NotMaster`].
    pub async fn pipeline(&mut self, cmds: &[Vec<Bytes>]) -> Result<Vec<Reply>, RedisError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        for cmd in cmds {
            check_command(cmd)?;
        }
        self.sock.begin()?;
        for cmd in cmds {
            resp::encode_command(&mut self.sock.write_buf, cmd);
        }
        self.sock.flush().await?;
        let mut replies = Vec::with_capacity(cmds.len());
        for _ in cmds {
            replies.push(self.sock.read_reply().await?);
        }
        self.sock.end();
        let readonly = replies.iter().find_map(|r| match r {
            Reply::Error(msg) if is_readonly(msg) => Some(msg.clone()),
            _ => None,
        });
        if let Some(msg) = readonly {
            return Err(self.sock.demoted(msg));
        }
        Ok(replies)
    }
}

/// A connection in pub/sub mode.
pub struct Subscriber {
    sock: Socket,
    /// Messages that arrived while (un)subscribe waited for its confirmations; handed
    /// out by `next_message` before reading the socket again.
    pending: VecDeque<(Bytes, Bytes)>,
}

impl Subscriber {
    /// Connects like [`Connection::connect`], with TCP keepalive so that a silently
    /// vanished server surfaces as an error from `next_message` within about a minute.
    pub async fn connect(opts: &RedisOptions) -> Result<Subscriber, RedisError> {
        let sock = Socket::connect(opts).await?;
        sock.stream.set_tcp_keepalive(
            Some(Duration::from_secs(30)),
            Some(Duration::from_secs(10)),
            Some(3),
        )?;
        Ok(Subscriber {
            sock,
            pending: VecDeque::new(),
        })
    }

    /// `SUBSCRIBE`s to `channels` and waits for the server's confirmations.
    pub async fn subscribe(&mut self, channels: &[&[u8]]) -> Result<(), RedisError> {
        self.change_subscriptions(b"SUBSCRIBE", &[channels]).await
    }

    /// `UNSUBSCRIBE`s from `channels` and waits for the confirmations. An empty slice
    /// does nothing (it does not mean "all channels" here).
    pub async fn unsubscribe(&mut self, channels: &[&[u8]]) -> Result<(), RedisError> {
        self.change_subscriptions(b"UNSUBSCRIBE", &[channels]).await
    }

    /// Sends `command` (`SUBSCRIBE`, `SSUBSCRIBE`, ...) once per group of channels, in
    /// one write, and waits for every confirmation. Sharded pub/sub in a cluster takes
    /// only channels of one hash slot per command: one group per slot.
    pub async fn subscribe_groups(
        &mut self,
        command: &[u8],
        groups: &[&[&[u8]]],
    ) -> Result<(), RedisError> {
        self.change_subscriptions(command, groups).await
    }

    /// Waits for the next published message: `(channel, payload)`. Both are views into
    /// the read buffer (no copy). Not cancel-safe: see the module docs. Connected
    /// through sentinels, it also returns (with [`RedisError::NotMaster`]) when they
    /// announce a new master.
    pub async fn next_message(&mut self) -> Result<(Bytes, Bytes), RedisError> {
        if let Some(message) = self.pending.pop_front() {
            return Ok(message);
        }
        self.sock.begin()?;
        let Some(switched) = self.sock.switch.as_ref().map(SwitchMark::switched) else {
            return self.read_message().await;
        };
        monoio::select! {
            message = self.read_message() => message,
            () = switched => Err(RedisError::NotMaster(MOVED.to_owned())),
        }
    }

    async fn read_message(&mut self) -> Result<(Bytes, Bytes), RedisError> {
        loop {
            let reply = self.sock.read_reply().await?;
            match resp::push_event(reply) {
                Ok(PushEvent::Message { channel, payload }) => {
                    self.sock.end();
                    return Ok((channel, payload));
                }
                Ok(_) => {}
                Err(reply) => return Err(self.unexpected(reply)),
            }
        }
    }

    async fn change_subscriptions(
        &mut self,
        command: &[u8],
        groups: &[&[&[u8]]],
    ) -> Result<(), RedisError> {
        let groups: Vec<&[&[u8]]> = groups.iter().copied().filter(|g| !g.is_empty()).collect();
        if groups.is_empty() {
            return Ok(());
        }
        self.sock.begin()?;
        let mut unconfirmed = 0;
        for channels in &groups {
            let mut args = Vec::with_capacity(channels.len() + 1);
            args.push(command);
            args.extend_from_slice(channels);
            resp::encode_command(&mut self.sock.write_buf, &args);
            // The server confirms each channel named, duplicates included.
            unconfirmed += channels.len();
        }
        self.sock.flush().await?;
        while unconfirmed > 0 {
            let reply = self.sock.read_reply().await?;
            match resp::push_event(reply) {
                Ok(PushEvent::Message { channel, payload }) => {
                    self.pending.push_back((channel, payload));
                }
                Ok(PushEvent::Subscribed { .. } | PushEvent::Unsubscribed { .. }) => {
                    unconfirmed -= 1;
                }
                Ok(_) => {}
                Err(reply) => return Err(self.unexpected(reply)),
            }
        }
        self.sock.end();
        Ok(())
    }

    /// Splits the connection so one task reads pushes ([`SubReader`]) while others
    /// change subscriptions ([`SubWriter`]); confirmations then arrive as pushes.
    pub fn split(self) -> (SubReader, SubWriter) {
        let Socket {
            stream,
            read_buf,
            switch,
            ..
        } = self.sock;
        let (read, write) = monoio::io::Splitable::into_split(stream);
        (
            SubReader {
                stream: read,
                read_buf,
                pending: self.pending,
                switch,
            },
            SubWriter {
                stream: write,
                write_buf: BytesMut::new(),
            },
        )
    }

    /// An error reply leaves the stream in step; anything else does not.
    fn unexpected(&mut self, reply: Reply) -> RedisError {
        match reply {
            Reply::Error(msg) => {
                self.sock.end();
                RedisError::Server(msg)
            }
            other => RedisError::Protocol(format!("unexpected reply in pub/sub mode: {other:?}")),
        }
    }
}

/// The read side of a split [`Subscriber`].
pub struct SubReader {
    stream: monoio::net::tcp::TcpOwnedReadHalf,
    read_buf: BytesMut,
    pending: VecDeque<(Bytes, Bytes)>,
    /// Connected through sentinels: when (see [`Socket::switch`]).
    switch: Option<SwitchMark>,
}

impl SubReader {
    /// The next push: a message, or the confirmation of a (un)subscribe. Not
    /// cancel-safe: run it in a task of its own. Connected through sentinels, it fails
    /// with [`RedisError::NotMaster`] (now and on every later call) once they announce a
    /// new master.
    pub async fn next_event(&mut self) -> Result<PushEvent, RedisError> {
        if let Some((channel, payload)) = self.pending.pop_front() {
            return Ok(PushEvent::Message { channel, payload });
        }
        let Some(switched) = self.switch.as_ref().map(SwitchMark::switched) else {
            return self.read_event().await;
        };
        monoio::select! {
            event = self.read_event() => event,
            () = switched => Err(RedisError::NotMaster(MOVED.to_owned())),
        }
    }

    async fn read_event(&mut self) -> Result<PushEvent, RedisError> {
        loop {
            if let Some(reply) = resp::decode_reply(&mut self.read_buf)? {
                return match resp::push_event(reply) {
                    Ok(event) => Ok(event),
                    Err(Reply::Error(msg)) => Err(RedisError::Server(msg)),
                    Err(other) => Err(RedisError::Protocol(format!(
                        "unexpected reply in pub/sub mode: {other:?}"
                    ))),
                };
            }
            fill(&mut self.stream, &mut self.read_buf).await?;
        }
    }
}

/// The write side of a split [`Subscriber`].
pub struct SubWriter {
    stream: monoio::net::tcp::TcpOwnedWriteHalf,
    write_buf: BytesMut,
}

impl SubWriter {
    /// Sends `command` (`SUBSCRIBE`, `UNSUBSCRIBE`) for `channels` without waiting: the
    /// reader sees one confirmation per channel.
    pub async fn send(&mut self, command: &[u8], channels: &[&[u8]]) -> Result<(), RedisError> {
        if channels.is_empty() {
            return Ok(());
        }
        let mut args = Vec::with_capacity(channels.len() + 1);
        args.push(command);
        args.extend_from_slice(channels);
        resp::encode_command(&mut self.write_buf, &args);
        let buf = std::mem::take(&mut self.write_buf);
        let (result, mut buf) = self.stream.write_all(buf).await;
        buf.clear();
        self.write_buf = buf;
        result?;
        Ok(())
    }
}

/// Capped exponential backoff for reconnects: 100 ms doubling up to `max`, back to
/// 100 ms after `reset` (call it once a connection works again).
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const INITIAL: Duration = Duration::from_millis(100);

    pub fn new(max: Duration) -> Self {
        Self {
            next: Self::INITIAL.min(max),
            max,
        }
    }

    /// The delay to sleep before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = Self::INITIAL.min(self.max);
    }
}

impl Default for Backoff {
    /// Capped at 5 s.
    fn default() -> Self {
        Self::new(Duration::from_secs(5))
    }
}

/// Bytes asked of the kernel per read, at least.
const READ_CHUNK: usize = 16 * 1024;

/// The socket with its buffers, shared by both connection kinds.
struct Socket {
    stream: TcpStream,
    /// Received bytes not yet decoded. Decoded replies are split off its front, so
    /// bulk payloads handed out are views into it.
    read_buf: BytesMut,
    /// Encoded commands waiting for `flush`; kept to reuse its allocation.
    write_buf: BytesMut,
    /// Set while a request/reply exchange runs. Still set when the next one starts
    /// means the last one failed or was cancelled: replies would be mismatched.
    out_of_step: bool,
    /// `host:port` connected to.
    server: String,
    /// Connected through sentinels: when, to tell whether they announced a new master.
    switch: Option<SwitchMark>,
}

impl Socket {
    async fn connect(opts: &RedisOptions) -> Result<Socket, RedisError> {
        monoio::time::timeout(opts.connect_timeout, Self::connect_untimed(opts))
            .await
            .map_err(|_| RedisError::Timeout)?
    }

    async fn connect_untimed(opts: &RedisOptions) -> Result<Socket, RedisError> {
        // Marked before asking: a switch announced meanwhile fails the first call.
        let switch = opts.sentinels.as_ref().map(Sentinels::mark);
        let (host, port) = match &opts.sentinels {
            // Half the budget at most, so the master still has time to answer.
            Some(sentinels) => sentinels.master(opts.connect_timeout / 2).await?,
            None => (opts.host.clone(), opts.port),
        };
        let mut sock = Socket {
            stream: open(&host, port).await?,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::new(),
            out_of_step: false,
            server: format!("{host}:{port}"),
            switch,
        };
        let db = opts.db.to_string();
        let mut expected = 0;
        if let Some(password) = &opts.password {
            match &opts.username {
                Some(user) => resp::encode_command(
                    &mut sock.write_buf,
                    &[b"AUTH", user.as_bytes(), password.as_bytes()],
                ),
                None => resp::encode_command(&mut sock.write_buf, &[b"AUTH", password.as_bytes()]),
            }
            expected += 1;
        }
        if opts.db != 0 {
            resp::encode_command(&mut sock.write_buf, &[b"SELECT", db.as_bytes()]);
            expected += 1;
        }
        if sock.switch.is_some() {
            resp::encode_command(&mut sock.write_buf, &[b"ROLE"]);
            expected += 1;
        }
        let mut last = None;
        if expected > 0 {
            sock.flush().await?;
            for _ in 0..expected {
                match sock.read_reply().await? {
                    Reply::Error(msg) => return Err(RedisError::Server(msg)),
                    reply => last = Some(reply),
                }
            }
        }
        if sock.switch.is_some() {
            // The sentinels may name a master that was just demoted: `ROLE` decides.
            let role = match &last {
                Some(Reply::Array(items)) => match items.first() {
                    Some(Reply::Bulk(role)) => String::from_utf8_lossy(role).into_owned(),
                    _ => String::new(),
                },
                _ => String::new(),
            };
            if role != "master" {
                return Err(RedisError::NotMaster(format!(
                    "{}, named by the sentinels, has ROLE {role:?}",
                    sock.server
                )));
            }
        }
        Ok(sock)
    }

    fn begin(&mut self) -> Result<(), RedisError> {
        if self.out_of_step {
            return Err(RedisError::Closed);
        }
        self.out_of_step = true;
        if self.switch.as_ref().is_some_and(SwitchMark::moved) {
            return Err(RedisError::NotMaster(MOVED.to_owned()));
        }
        Ok(())
    }

    /// A `-READONLY` reply: the server was demoted to a replica. No later call may use
    /// this connection.
    fn demoted(&mut self, msg: String) -> RedisError {
        self.out_of_step = true;
        RedisError::NotMaster(format!("{} replied {msg}", self.server))
    }

    fn end(&mut self) {
        self.out_of_step = false;
    }

    /// Writes all of `write_buf` and empties it.
    async fn flush(&mut self) -> Result<(), RedisError> {
        let buf = std::mem::take(&mut self.write_buf);
        let (result, mut buf) = self.stream.write_all(buf).await;
        buf.clear();
        self.write_buf = buf;
        result?;
        Ok(())
    }

    /// Decodes the next reply, reading more from the socket until one is complete.
    async fn read_reply(&mut self) -> Result<Reply, RedisError> {
        loop {
            if let Some(reply) = resp::decode_reply(&mut self.read_buf)? {
                return Ok(reply);
            }
            self.fill().await?;
        }
    }

    /// Appends at least one byte from the socket to `read_buf`.
    async fn fill(&mut self) -> Result<(), RedisError> {
        fill(&mut self.stream, &mut self.read_buf).await
    }
}

/// Appends at least one byte from `stream` to `read_buf`.
async fn fill<R: AsyncReadRent>(stream: &mut R, read_buf: &mut BytesMut) -> Result<(), RedisError> {
    // Small replies share one chunk (each payload handed out pins its chunk, so do not
    // start a fresh one per message). A long partial reply is parsed again after every
    // read, so the reads grow with it: O(log n) parses, not O(n).
    let filled = read_buf.len();
    if read_buf.capacity() - filled < (READ_CHUNK / 4).max(filled) {
        read_buf.reserve(READ_CHUNK.max(filled));
    }
    let buf = std::mem::take(read_buf);
    let (result, slice) = stream.read(buf.slice_mut(filled..)).await;
    *read_buf = slice.into_inner();
    match result? {
        0 => Err(RedisError::Closed),
        _ => Ok(()),
    }
}

/// Connects to the first address of `host` that accepts.
async fn open(host: &str, port: u16) -> Result<TcpStream, RedisError> {
    let mut last_err = None;
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_addr(addr).await {
            Ok(stream) => return Ok(stream),
            Err(err) => last_err = Some(err),
        }
    }
    Err(RedisError::Io(last_err.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolves to no address"),
        )
    })))
}

/// Why a connection made through sentinels stops.
const MOVED: &str = "the sentinels announced a new master";

/// `-READONLY ...`: a write reached a replica.
fn is_readonly(msg: &str) -> bool {
    msg.starts_with("READONLY")
}

/// Redis silently ignores an empty command, so the reply would never come.
fn check_command<A>(args: &[A]) -> Result<(), RedisError> {
    if args.is_empty() {
        return Err(RedisError::Protocol("empty command".to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_password() {
        let opts = RedisOptions {
            password: Some("hunter2".into()),
            ..RedisOptions::default()
        };
        let shown = format!("{opts:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn backoff_below_initial_is_capped_at_max() {
        let mut backoff = Backoff::new(Duration::from_millis(30));
        assert_eq!(backoff.next_delay(), Duration::from_millis(30));
        assert_eq!(backoff.next_delay(), Duration::from_millis(30));
    }
}
