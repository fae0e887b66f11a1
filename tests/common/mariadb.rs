//! A real MariaDB server (`mariadbd`) on a free 127.0.0.1 port, with its data in a fresh
//! temporary directory: killed, and the directory removed, on drop. `stop` and `restart`
//! keep the port and the data, `pause` and `resume` freeze it (SIGSTOP), for outage tests.
//!
//! The data directory is made by `mariadb-install-db`; every start runs an init file that
//! creates the database [`DATABASE`] and the user [`USER`] / [`PASSWORD`] with real
//! password authentication over TCP. [`MariaDb::sql`] runs a statement as that user with
//! the `mysql` client crate.
//!
//! Include with `#[path = "common/mariadb.rs"] mod mariadb;`.
#![allow(dead_code)]

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;

/// What a test says when the binaries are missing: these tests never pass silently.
pub const INSTALL_HINT: &str = "MariaDB is not installed (no mariadbd or \
    mariadb-install-db found): install it with `apt-get install -y mariadb-server` \
    (tests/run.sh installs it)";

/// The user the tests and corecast log in as.
pub const USER: &str = "corecast";
/// Its password.
pub const PASSWORD: &str = "corecast-test-password";
/// The database created at start.
pub const DATABASE: &str = "main";

/// How long a started server may take to accept the test user.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A `mariadbd` child process and its data directory.
pub struct MariaDb {
    pub port: u16,
    dir: PathBuf,
    server: PathBuf,
    /// `None` while stopped.
    child: Option<Child>,
}

impl MariaDb {
    /// Makes a data directory and starts a server on it. Panics with [`INSTALL_HINT`] when
    /// MariaDB is not installed, and with the server's log when it does not start.
    pub fn start() -> Self {
        let (Some(server), Some(install)) = (
            find(
                &["mariadbd", "mysqld"],
                &["/usr/sbin", "/usr/libexec", "/usr/local/mysql/bin"],
            ),
            find(
                &["mariadb-install-db", "mysql_install_db"],
                &["/usr/bin", "/usr/local/mysql/scripts"],
            ),
        ) else {
            panic!("{INSTALL_HINT}");
        };
        let dir = temp_dir("mariadb");
        let log = File::create(dir.join("install.log")).unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = Command::new(&install);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--tmpdir={}", dir.display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ]);
        if is_root() {
            cmd.arg("--user=root");
        }
        let status = cmd
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap_or_else(|e| panic!("{e}")))
            .stderr(log)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}. {INSTALL_HINT}", install.display()));
        if !status.success() {
            let text = std::fs::read_to_string(dir.join("install.log")).unwrap_or_default();
            let _ = std::fs::remove_dir_all(&dir);
            panic!("{} failed ({status}):\n{text}", install.display());
        }
        let init = format!(
            "CREATE DATABASE IF NOT EXISTS `{DATABASE}`;\n\
             CREATE USER IF NOT EXISTS '{USER}'@'%' IDENTIFIED BY '{PASSWORD}';\n\
             GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'%';\n"
        );
        std::fs::write(dir.join("init.sql"), init).unwrap_or_else(|e| panic!("{e}"));

        let mut db = MariaDb {
            port: 0,
            dir,
            server,
            child: None,
        };
        let mut last_err = String::new();
        // A port found free can be taken before the server binds it: try a few.
        for _ in 0..5 {
            db.port = free_port();
            match db.spawn() {
                Ok(()) => return db,
                Err(err) => last_err = err,
            }
        }
        panic!("mariadbd did not start: {last_err}");
    }

    /// Environment that points corecast's mysql app manager at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SOKETI_APP_MANAGER_DRIVER", "mysql".to_owned()),
            ("SOKETI_DB_MYSQL_HOST", "127.0.0.1".to_owned()),
            ("SOKETI_DB_MYSQL_PORT", self.port.to_string()),
            ("SOKETI_DB_MYSQL_USERNAME", USER.to_owned()),
            ("SOKETI_DB_MYSQL_PASSWORD", PASSWORD.to_owned()),
            ("SOKETI_DB_MYSQL_DATABASE", DATABASE.to_owned()),
        ]
    }

    /// Runs one statement in [`DATABASE`] as [`USER`]; panics with the server's error.
    pub fn sql(&self, statement: &str) {
        let mut conn = connect(self.port).unwrap_or_else(|e| panic!("connect: {e}"));
        if let Err(err) = conn.query_drop(statement) {
            panic!("{statement}: {err}");
        }
    }

    /// Shuts the server down (SIGTERM, then SIGKILL after 15 s); the port and the data stay
    /// for [`MariaDb::restart`].
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(&child, libc::SIGCONT);
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal(&child, libc::SIGKILL);
        let _ = child.wait();
    }

    /// Starts the server again on the same port and data (stopping it first if it runs).
    pub fn restart(&mut self) {
        self.stop();
        if let Err(err) = self.spawn() {
            panic!("mariadbd did not restart on port {}: {err}", self.port);
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGSTOP);
            wait_stopped(&[child.id()]);
        }
    }

    /// Lets a paused server run again.
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGCONT);
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log_path = self.dir.join("error.log");
        let _ = std::fs::remove_file(&log_path);
        let out = File::create(self.dir.join("stdout.log")).map_err(|e| e.to_string())?;
        let path = |name: &str| self.dir.join(name).display().to_string();
        let mut cmd = Command::new(&self.server);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", path("data")))
            .arg(format!("--socket={}", path("mysqld.sock")))
            .arg(format!("--pid-file={}", path("mysqld.pid")))
            .arg(format!("--log-error={}", log_path.display()))
            .arg(format!("--init-file={}", path("init.sql")))
            .arg(format!("--tmpdir={}", self.dir.display()))
            .arg(format!("--port={}", self.port))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=16M",
                "--max-connections=50",
            ]);
        if is_root() {
            cmd.arg("--user=root");
        }
        use std::os::unix::process::CommandExt;
        let child = cmd
            .current_dir(&self.dir)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}. {INSTALL_HINT}", self.server.display()))?;
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("spawned above");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(format!("exited with {status}; log:\n{}", self.log()));
            }
            if connect(self.port).is_ok() {
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
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!("{}{}", read("stdout.log"), read("error.log"))
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGKILL);
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn connect(port: u16) -> Result<mysql::Conn, mysql::Error> {
    let opts = mysql::OptsBuilder::new()
        .ip_or_hostname(Some("127.0.0.1"))
        .tcp_port(port)
        .user(Some(USER))
        .pass(Some(PASSWORD))
        .db_name(Some(DATABASE))
        .prefer_socket(false)
        .tcp_connect_timeout(Some(Duration::from_secs(1)))
        .read_timeout(Some(Duration::from_secs(5)));
    mysql::Conn::new(opts)
}

/// Signals the child's process group (the server and anything it started).
fn signal(child: &Child, sig: i32) {
    // SAFETY: kill on our own child's process group has no memory effects.
    unsafe { libc::kill(-(child.id() as i32), sig) };
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

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The first of `names` found on PATH, then in `dirs`.
fn find(names: &[&str], dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut search: Vec<PathBuf> = std::env::split_paths(&path).collect();
    search.extend(dirs.iter().map(PathBuf::from));
    names
        .iter()
        .flat_map(|name| search.iter().map(move |dir| dir.join(name)))
        .find(|candidate| is_executable(candidate))
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
