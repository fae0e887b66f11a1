//! A real PostgreSQL server on a free 127.0.0.1 port, with its data in a fresh temporary
//! directory: shut down, and the directory removed, on drop. `stop` and `restart` keep the
//! port and the data, `pause` and `resume` freeze it (SIGSTOP), for outage tests.
//!
//! `initdb` makes the cluster with the superuser `postgres` and the password [`PASSWORD`]
//! (SCRAM over TCP, trust on the Unix socket); the database [`DATABASE`] is created at
//! start. PostgreSQL refuses to run as root, so when the tests run as root `initdb` and
//! `postgres` run as `nobody` (or a `corecast-test` system user made for it), which owns
//! the directory. [`Postgres::sql`] runs statements with the `tokio-postgres` crate.
//!
//! Include with `#[path = "common/postgres.rs"] mod postgres;`.
#![allow(dead_code)]

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What a test says when the binaries are missing: these tests never pass silently.
pub const INSTALL_HINT: &str = "PostgreSQL is not installed (no initdb and postgres on \
    PATH or in /usr/lib/postgresql/*/bin): install it with `apt-get install -y postgresql` \
    (tests/run.sh installs it)";

/// The superuser the tests and corecast log in as.
pub const USER: &str = "postgres";
/// Its password.
pub const PASSWORD: &str = "corecast-test-password";
/// The database created at start.
pub const DATABASE: &str = "main";

/// How long a started server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A `postgres` child process and its data directory.
pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// The unprivileged user and group the server runs as, when the tests run as root.
    run_as: Option<(u32, u32)>,
    /// `None` while stopped.
    child: Option<Child>,
}

impl Postgres {
    /// Makes a cluster and starts a server on it. Panics with [`INSTALL_HINT`] when
    /// PostgreSQL is not installed, and with the server's log when it does not start.
    pub fn start() -> Self {
        let Some(bin) = bin_dir() else {
            panic!("{INSTALL_HINT}");
        };
        let run_as = is_root().then(unprivileged_user);
        let dir = temp_dir("postgres");
        std::fs::write(dir.join("pwfile"), format!("{PASSWORD}\n"))
            .unwrap_or_else(|e| panic!("{e}"));
        if let Some((uid, gid)) = run_as {
            for path in [dir.clone(), dir.join("pwfile")] {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
            }
        }
        let log = File::create(dir.join("initdb.log")).unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = Command::new(bin.join("initdb"));
        cmd.arg("-D")
            .arg(dir.join("data"))
            .args([
                "-U",
                USER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", dir.join("pwfile").display()))
            .args(["-E", "UTF8", "--locale=C", "--no-sync"]);
        as_user(&mut cmd, run_as);
        let status = cmd
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap_or_else(|e| panic!("{e}")))
            .stderr(log)
            .status()
            .unwrap_or_else(|e| panic!("cannot run initdb: {e}. {INSTALL_HINT}"));
        if !status.success() {
            let text = std::fs::read_to_string(dir.join("initdb.log")).unwrap_or_default();
            let _ = std::fs::remove_dir_all(&dir);
            panic!("initdb failed ({status}):\n{text}");
        }

        let mut db = Postgres {
            port: 0,
            dir,
            bin,
            run_as,
            child: None,
        };
        let mut last_err = String::new();
        // A port found free can be taken before the server binds it: try a few.
        for _ in 0..5 {
            db.port = free_port();
            match db.spawn() {
                Ok(()) => {
                    if let Err(err) = execute(db.port, "postgres", "CREATE DATABASE main") {
                        panic!("CREATE DATABASE main: {err}");
                    }
                    return db;
                }
                Err(err) => last_err = err,
            }
        }
        panic!("postgres did not start: {last_err}");
    }

    /// Environment that points corecast's postgres app manager at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SOKETI_APP_MANAGER_DRIVER", "postgres".to_owned()),
            ("SOKETI_DB_POSTGRES_HOST", "127.0.0.1".to_owned()),
            ("SOKETI_DB_POSTGRES_PORT", self.port.to_string()),
            ("SOKETI_DB_POSTGRES_USERNAME", USER.to_owned()),
            ("SOKETI_DB_POSTGRES_PASSWORD", PASSWORD.to_owned()),
            ("SOKETI_DB_POSTGRES_DATABASE", DATABASE.to_owned()),
        ]
    }

    /// Runs statements (one or several, `;`-separated) in [`DATABASE`]; panics with the
    /// server's error.
    pub fn sql(&self, statements: &str) {
        if let Err(err) = execute(self.port, DATABASE, statements) {
            panic!("{statements}: {err}");
        }
    }

    /// Shuts the server down (fast shutdown: SIGINT, then SIGKILL after 15 s); the port and
    /// the data stay for [`Postgres::restart`].
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal_family(&child, libc::SIGCONT);
        signal(&child, libc::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal_family(&child, libc::SIGKILL);
        let _ = child.wait();
    }

    /// Starts the server again on the same port and data (stopping it first if it runs).
    pub fn restart(&mut self) {
        self.stop();
        if let Err(err) = self.spawn() {
            panic!("postgres did not restart on port {}: {err}", self.port);
        }
    }

    /// Freezes the server and its backends (SIGSTOP): connections stay open but nothing
    /// answers.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            signal_family(child, libc::SIGSTOP);
            wait_stopped(&family(child));
        }
    }

    /// Lets a paused server run again.
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            signal_family(child, libc::SIGCONT);
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = File::create(self.dir.join("postgres.log")).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(&self.dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "shared_buffers=16MB", "-c", "max_connections=20"]);
        as_user(&mut cmd, self.run_as);
        let child = cmd
            .current_dir(&self.dir)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run postgres: {e}. {INSTALL_HINT}"))?;
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("spawned above");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(format!("exited with {status}; log:\n{}", self.log()));
            }
            if execute(self.port, "postgres", "SELECT 1").is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "not ready within {READY_TIMEOUT:?}; log:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Immediate shutdown, which also removes the server's shared memory.
            signal_family(&child, libc::SIGCONT);
            signal(&child, libc::SIGQUIT);
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut exited = false;
            while !exited && Instant::now() < deadline {
                exited = matches!(child.try_wait(), Ok(Some(_)));
                std::thread::sleep(Duration::from_millis(10));
            }
            if !exited {
                signal_family(&child, libc::SIGKILL);
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connects as [`USER`] to `database` over TCP and runs `statements`.
fn execute(port: u16, database: &str, statements: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(port)
            .user(USER)
            .password(PASSWORD)
            .dbname(database)
            .connect_timeout(Duration::from_secs(1));
        let connecting = config.connect(tokio_postgres::NoTls);
        let (client, connection) = tokio::time::timeout(Duration::from_secs(5), connecting)
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let run = client.batch_execute(statements);
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| match e.as_db_error() {
                Some(db) => db.to_string(),
                None => e.to_string(),
            })
    })
}

/// Runs `cmd` as `run_as` (uid, gid) when set.
fn as_user(cmd: &mut Command, run_as: Option<(u32, u32)>) {
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
}

/// The directory holding both `initdb` and `postgres`: on PATH, else Debian's
/// `/usr/lib/postgresql/<version>/bin` (newest first), else `/usr/local/pgsql/bin`.
fn bin_dir() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry
                .file_name()
                .to_str()?
                .split('.')
                .next()?
                .parse()
                .ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    dirs.extend(versions.into_iter().map(|(_, dir)| dir));
    dirs.push(PathBuf::from("/usr/local/pgsql/bin"));
    dirs.into_iter()
        .find(|dir| is_executable(&dir.join("initdb")) && is_executable(&dir.join("postgres")))
}

/// `nobody`, or a `corecast-test` system user (created when missing): who runs PostgreSQL
/// when the tests run as root.
fn unprivileged_user() -> (u32, u32) {
    if let Some(ids) = passwd_entry("nobody").or_else(|| passwd_entry("corecast-test")) {
        return ids;
    }
    let _ = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
        ])
        .arg("corecast-test")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    passwd_entry("corecast-test").unwrap_or_else(|| {
        panic!(
            "PostgreSQL does not run as root and there is no `nobody` user; \
             `useradd corecast-test` failed: run the tests as another user"
        )
    })
}

/// The uid and gid of `name` in /etc/passwd.
fn passwd_entry(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

/// Signals the server process only (the postmaster).
fn signal(child: &Child, sig: i32) {
    // SAFETY: kill on our own child's pid has no memory effects.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// Waits (up to 5 s) until every thread of each of `pids` is stopped, so a frozen server
/// cannot still answer a request sent right after SIGSTOP.
fn wait_stopped(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !pids.iter().all(|&pid| stopped(pid)) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether every thread of `pid` is stopped (or `pid` is gone).
fn stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|task| {
        stat(&task.path().join("stat")).is_none_or(|(state, _)| matches!(state, 'T' | 't'))
    })
}

/// The state and parent pid in a `/proc/.../stat` file.
fn stat(path: &Path) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut rest = text.get(text.rfind(')')? + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    Some((state, rest.next()?.parse().ok()?))
}

/// The server process and its children (the backends, each in its own process group).
fn family(child: &Child) -> Vec<u32> {
    let pid = child.id();
    let mut pids = vec![pid];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(other) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if stat(&entry.path().join("stat")).is_some_and(|(_, ppid)| ppid == pid) {
            pids.push(other);
        }
    }
    pids
}

/// Signals the server and its backends.
fn signal_family(child: &Child, sig: i32) {
    for pid in family(child) {
        // SAFETY: kill on our own child and its children has no memory effects.
        unsafe { libc::kill(pid as i32, sig) };
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A new, empty directory of this process under the system's temporary directory.
fn temp_dir(what: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "corecast-{what}-{}-{n}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// A port for a server that must keep it across `stop` and `restart`: outside the
/// kernel's ephemeral range, so neither another test's `bind(0)` nor an outgoing
/// connection's source port can take it during an outage; and never one this process
/// handed out before. Checked free by binding it.
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
