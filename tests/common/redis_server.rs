//! A real `redis-server` on a free 127.0.0.1 port, killed on drop; `stop` and `restart`
//! keep the port, for outage tests.
//!
//! Include with `#[path = "common/redis_server.rs"] mod redis_server;`. Uses only std.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What a test says when the binary is missing: these tests never pass silently.
pub const INSTALL_HINT: &str = "redis-server is not on PATH: install it with \
    `apt-get install -y redis-server` (tests/run.sh installs it)";

/// How long a started server may take to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// A `redis-server` child process.
pub struct RedisServer {
    pub port: u16,
    /// `--requirepass`, when the test wants AUTH.
    password: Option<String>,
    /// `None` while stopped.
    child: Option<Child>,
    /// The server's log, read into the panic message when it fails to start.
    log: PathBuf,
}

impl RedisServer {
    /// Whether `redis-server` runs from PATH.
    pub fn available() -> bool {
        Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Starts a server without a password. Panics with [`INSTALL_HINT`] when the binary
    /// is missing.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts a server with `--requirepass password`.
    pub fn start_with_password(password: &str) -> Self {
        Self::start_with(Some(password.to_owned()))
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Kills the server; the port stays reserved for `restart`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (stopping it first if it runs).
    pub fn restart(&mut self) {
        self.stop();
        if let Err(err) = self.spawn() {
            panic!("redis-server did not restart on port {}: {err}", self.port);
        }
    }

    fn start_with(password: Option<String>) -> Self {
        assert!(Self::available(), "{INSTALL_HINT}");
        let mut last_err = String::new();
        // A port found free can be taken before redis binds it: try a few.
        for _ in 0..5 {
            let port = free_port();
            let mut server = RedisServer {
                port,
                password: password.clone(),
                child: None,
                log: std::env::temp_dir().join(format!("corecast-redis-{port}.log")),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(err) => last_err = err,
            }
        }
        panic!("redis-server did not start: {last_err}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .arg("--logfile")
            .arg(&self.log);
        if let Some(password) = &self.password {
            cmd.args(["--requirepass", password]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| format!("cannot run redis-server: {err}. {INSTALL_HINT}"))?;
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("spawned above");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(format!("exited with {status}; log: {}", self.log_text()));
            }
            if answers_ping(self.port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "no PING answer within {READY_TIMEOUT:?}; log: {}",
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A port for a server that must keep it across `stop` and `restart`: outside the
/// kernel's ephemeral range, so neither another test's `bind(0)` nor an outgoing
/// connection's source port (a bridge reconnecting to the stopped server could even
/// connect to itself) can take it during an outage; and never one this process handed
/// out before. Checked free by binding it.
fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    static SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let (low, high) = ephemeral_range();
    // The widest span below the ephemeral range, or above it.
    let (start, span) = if low.saturating_sub(1024) >= 65535 - high {
        (1024, low.saturating_sub(1024))
    } else {
        (high + 1, 65535 - high)
    };
    let mut x = SEED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ^ (u64::from(std::process::id()) << 20)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    for _ in 0..1000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let port = start + ((x >> 33) % u64::from(span.max(1))) as u16;
        let mut taken = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if taken.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        taken.push(port);
        return port;
    }
    panic!("no free port outside the ephemeral range {low}-{high}");
}

/// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((parts.next()??, parts.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// True when something on `port` answers an inline PING like Redis does (`+PONG`, or
/// `-NOAUTH` when a password is required).
fn answers_ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 64];
    match stream.read(&mut reply) {
        Ok(n) => reply[..n].starts_with(b"+PONG") || reply[..n].starts_with(b"-NOAUTH"),
        Err(_) => false,
    }
}
