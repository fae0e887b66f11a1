//! A Redis Sentinel deployment for tests: a master, one replica and one or more sentinels
//! (`redis-server <conf> --sentinel`), each a real `redis-server` on a free 127.0.0.1
//! port, all killed and their temp directory removed on drop. [`Sentinels::failover`]
//! runs `SENTINEL FAILOVER` and waits until the sentinels name the replica.
//!
//! Include with `#[path = "common/redis_sentinel.rs"] mod redis_sentinel;`. Uses only std.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What a test says when the binary is missing: these tests never pass silently.
pub const INSTALL_HINT: &str = "redis-server is not on PATH: install it with \
    `apt-get install -y redis-server` (tests/run.sh installs it)";

/// The instance name the sentinels monitor.
pub const NAME: &str = "mymaster";

/// How long a started server may take to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the deployment may take to settle (replica in sync, sentinels aware of it).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

/// A master, its replica and the sentinels monitoring them as [`NAME`].
pub struct Sentinels {
    /// The port of the current master (the replica's after a failover).
    pub master_port: u16,
    /// The port of the current replica.
    pub replica_port: u16,
    pub sentinel_ports: Vec<u16>,
    children: Vec<(String, Child)>,
    dir: PathBuf,
}

/// One RESP reply, as far as these tests read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Nil,
    Status(String),
    Error(String),
    Int(i64),
    Bulk(String),
    Array(Vec<Reply>),
}

impl Reply {
    /// The text of a status or bulk reply.
    pub fn text(&self) -> Option<&str> {
        match self {
            Reply::Status(s) | Reply::Bulk(s) => Some(s),
            _ => None,
        }
    }
}

impl Sentinels {
    /// Starts a master, a replica of it and `sentinels` sentinels, and waits until the
    /// replica is in sync and every sentinel knows the master and the replica.
    pub fn start(sentinels: usize) -> Self {
        assert!(sentinels >= 1, "at least one sentinel");
        assert!(available(), "{INSTALL_HINT}");
        let dir = std::env::temp_dir().join(format!(
            "corecast-sentinel-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create the sentinel test directory");
        let mut set = Sentinels {
            master_port: 0,
            replica_port: 0,
            sentinel_ports: Vec::new(),
            children: Vec::new(),
            dir,
        };
        set.master_port = set.spawn("master", |port, dir| data_args(port, dir, None));
        let master = set.master_port;
        set.replica_port = set.spawn("replica", |port, dir| data_args(port, dir, Some(master)));
        for i in 0..sentinels {
            let name = format!("sentinel-{i}");
            let port = set.spawn(&name, |port, dir| {
                let conf = dir.join(format!("sentinel-{port}.conf"));
                let text = format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {NAME} 127.0.0.1 {master} 1\n\
                     sentinel down-after-milliseconds {NAME} 1000\n\
                     sentinel failover-timeout {NAME} 5000\n",
                    dir.display()
                );
                std::fs::write(&conf, text).expect("write the sentinel config");
                vec![conf.display().to_string(), "--sentinel".to_owned()]
            });
            set.sentinel_ports.push(port);
        }
        set.settle();
        set
    }

    /// `SOKETI_DB_REDIS_SENTINELS` for these sentinels.
    pub fn env_value(&self) -> String {
        let list: Vec<String> = self
            .sentinel_ports
            .iter()
            .map(|p| format!(r#"{{"host":"127.0.0.1","port":{p}}}"#))
            .collect();
        format!("[{}]", list.join(","))
    }

    /// The master's port as the first sentinel names it, if it names one.
    pub fn named_master(&self) -> Option<u16> {
        named_master(self.sentinel_ports[0])
    }

    /// Runs `SENTINEL FAILOVER` and waits until every sentinel names the replica as the
    /// master; the roles are then swapped in `master_port` / `replica_port`. Returns
    /// when the command was accepted.
    pub fn failover(&mut self) -> Instant {
        let sentinel = self.sentinel_ports[0];
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let accepted = loop {
            match command(sentinel, &["SENTINEL", "FAILOVER", NAME]) {
                Ok(Reply::Status(ok)) if ok == "OK" => break Instant::now(),
                // -NOGOODSLAVE before the sentinel saw the replica, -INPROG during one.
                other => {
                    assert!(
                        Instant::now() < deadline,
                        "SENTINEL FAILOVER was not accepted: {other:?}; sentinel log: {}",
                        self.log("sentinel-0")
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        let promoted = self.replica_port;
        self.wait(
            || {
                self.sentinel_ports
                    .iter()
                    .all(|&p| named_master(p) == Some(promoted))
            },
            "the sentinels to name the promoted replica",
        );
        std::mem::swap(&mut self.master_port, &mut self.replica_port);
        accepted
    }

    /// Runs one command on `port` (any of the deployment's servers).
    pub fn command(&self, port: u16, args: &[&str]) -> std::io::Result<Reply> {
        command(port, args)
    }

    /// The log of one process (`master`, `replica`, `sentinel-0`, ...), for messages.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    fn settle(&self) {
        let (master, replica) = (self.master_port, self.replica_port);
        self.wait(
            || {
                command(replica, &["INFO", "replication"])
                    .ok()
                    .and_then(|r| r.text().map(|t| t.contains("master_link_status:up")))
                    .unwrap_or(false)
            },
            "the replica to sync with the master",
        );
        self.wait(
            || {
                self.sentinel_ports
                    .iter()
                    .all(|&p| named_master(p) == Some(master) && knows_replica(p, replica))
            },
            "the sentinels to see the master and its replica",
        );
    }

    fn wait(&self, mut ready: impl FnMut() -> bool, what: &str) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while !ready() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; sentinel log: {}",
                self.log("sentinel-0")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts one server on a free port and waits for PING; its log is `<name>.log`.
    fn spawn(&mut self, name: &str, args: impl Fn(u16, &Path) -> Vec<String>) -> u16 {
        let (port, child) = spawn_server(&self.dir, name, args);
        self.children.push((name.to_owned(), child));
        port
    }
}

/// Starts one `redis-server` with `args(port, dir)` on a free port (trying a few) and
/// waits until it answers PING; its log is `<name>.log` in `dir`.
pub fn spawn_server(
    dir: &Path,
    name: &str,
    args: impl Fn(u16, &Path) -> Vec<String>,
) -> (u16, Child) {
    let log = dir.join(format!("{name}.log"));
    let mut last_err = String::new();
    // A port found free can be taken before redis binds it: try a few.
    for _ in 0..5 {
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args(args(port, dir))
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(err) => panic!("cannot run redis-server: {err}. {INSTALL_HINT}"),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        let ready = loop {
            if let Ok(Some(status)) = child.try_wait() {
                last_err = format!("{name} exited with {status}");
                break false;
            }
            if answers_ping(port) {
                break true;
            }
            if Instant::now() > deadline {
                last_err = format!("{name} gave no PING answer within {READY_TIMEOUT:?}");
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if ready {
            return (port, child);
        }
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    panic!("redis-server did not start: {last_err}; log: {text}");
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
        }
        for (_, child) in &mut self.children {
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn data_args(port: u16, dir: &Path, replica_of: Option<u16>) -> Vec<String> {
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.push(dir.display().to_string());
    // Both files in one directory: each server its own.
    args.extend(["--dbfilename".to_owned(), format!("dump-{port}.rdb")]);
    if let Some(master) = replica_of {
        args.extend([
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            master.to_string(),
        ]);
    }
    args
}

/// The master's port as sentinel `port` names it.
fn named_master(port: u16) -> Option<u16> {
    match command(port, &["SENTINEL", "get-master-addr-by-name", NAME]).ok()? {
        Reply::Array(items) => items.get(1)?.text()?.parse().ok(),
        _ => None,
    }
}

/// Whether sentinel `port` lists `replica` as a healthy replica of the master.
fn knows_replica(port: u16, replica: u16) -> bool {
    let Ok(Reply::Array(replicas)) = command(port, &["SENTINEL", "replicas", NAME]) else {
        return false;
    };
    replicas.iter().any(|r| {
        let Reply::Array(fields) = r else {
            return false;
        };
        let field = |name: &str| {
            fields
                .chunks(2)
                .find(|kv| kv[0].text() == Some(name))
                .and_then(|kv| kv.get(1)?.text().map(str::to_owned))
        };
        field("port").as_deref() == Some(replica.to_string().as_str())
            && field("flags").is_some_and(|f| f == "slave")
            && field("master-link-status").as_deref() == Some("ok")
    })
}

/// One command over a fresh connection, with short timeouts.
pub fn command(port: u16, args: &[&str]) -> std::io::Result<Reply> {
    command_as(port, None, args)
}

/// [`command`] after `AUTH password` when one is given.
pub fn command_as(port: u16, password: Option<&str>, args: &[&str]) -> std::io::Result<Reply> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let encode = |args: &[&str]| {
        let mut out = format!("*{}\r\n", args.len());
        for arg in args {
            out.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        out
    };
    let mut out = String::new();
    if let Some(password) = password {
        out.push_str(&encode(&["AUTH", password]));
    }
    out.push_str(&encode(args));
    (&stream).write_all(out.as_bytes())?;
    let mut reader = BufReader::new(stream);
    if password.is_some() {
        match read_reply(&mut reader)? {
            Reply::Status(ok) if ok == "OK" => {}
            other => return Ok(other),
        }
    }
    read_reply(&mut reader)
}

fn read_reply(r: &mut impl BufRead) -> std::io::Result<Reply> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(1.min(line.len()));
    let number = || rest.parse::<i64>().map_err(|_| bad(line));
    Ok(match kind {
        "+" => Reply::Status(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Int(number()?),
        "$" => match number()? {
            n if n < 0 => Reply::Nil,
            n => {
                let mut buf = vec![0u8; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Reply::Bulk(String::from_utf8_lossy(&buf).into_owned())
            }
        },
        "*" => match number()? {
            n if n < 0 => Reply::Nil,
            n => Reply::Array((0..n).map(|_| read_reply(r)).collect::<Result<_, _>>()?),
        },
        _ => return Err(bad(line)),
    })
}

/// True when something on `port` answers PING like Redis does.
pub fn answers_ping(port: u16) -> bool {
    match command(port, &["PING"]) {
        Ok(Reply::Status(s)) => s == "PONG",
        // A server with `requirepass` is up too.
        Ok(Reply::Error(e)) => e.starts_with("NOAUTH"),
        _ => false,
    }
}

/// A port outside the kernel's ephemeral range, so no outgoing connection's source
/// port or another test's `bind(0)` takes it, and never one this process handed out
/// before. Checked free by binding it.
pub fn free_port() -> u16 {
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
