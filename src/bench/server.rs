//! The server under test as a child process, and what `/proc` says about it. The
//! crossnode scenario runs two of them and a `redis-server`, all as [`Server`]s.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::args::Args;

/// How long the server may take to answer `GET /ready` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the server may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `redis-server` may take to answer `PING`.
const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `corecast start` (or the crossnode scenario's `redis-server`).
///
/// Dropping one that was not stopped kills it, so an early return or a panic never
/// leaves a process behind; and every child gets SIGKILL if the load generator dies.
pub struct Server {
    /// `None` for a server the bench did not start (`--target`).
    child: Option<Child>,
    /// `None` for a `--target` without `--server-pid`: no CPU or memory readings.
    pub pid: Option<i32>,
    /// Where it listens: 127.0.0.1 for the servers the bench starts.
    pub addr: SocketAddr,
    /// `addr`'s port.
    pub port: u16,
    /// Where its Prometheus `/metrics` answers, when the caller enabled them.
    pub metrics_port: Option<u16>,
    /// Its stdout and stderr, for the report when something goes wrong.
    pub log: PathBuf,
}

/// CPU and memory of a process at one instant.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// utime + stime from `/proc/PID/stat`, in clock ticks (10 ms) turned to seconds.
    pub cpu_s: f64,
    /// The two parts of `cpu_s`: user space, and kernel (on loopback the kernel
    /// part includes the receiving side's TCP work, done in the sender's context).
    pub user_s: f64,
    pub sys_s: f64,
    /// The same from the process CPU clock (`clock_getcpuclockid`): nanosecond
    /// resolution, for short phases where ticks are too coarse. NaN if unavailable.
    pub cpu_clock_s: f64,
    pub rss_bytes: u64,
}

/// How the server ended.
pub struct Exit {
    /// `Some` when it had exited before we asked it to: a crash.
    pub died_early: Option<ExitStatus>,
    pub status: Option<ExitStatus>,
    /// It ignored SIGTERM for `STOP_TIMEOUT`.
    pub killed: bool,
}

impl Server {
    /// A server the bench did not start (`--target`), with its pid when the caller
    /// knows it.
    pub fn attach(addr: SocketAddr, pid: Option<i32>) -> Server {
        Server {
            child: None,
            pid,
            addr,
            port: addr.port(),
            metrics_port: None,
            log: PathBuf::new(),
        }
    }

    /// Whether the bench started it (and so has its log and stops it).
    pub fn started(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the server on `port` with the run's shard count and app credentials,
    /// plus `env` (the redis adapter's settings for crossnode).
    pub fn spawn(
        args: &Args,
        port: u16,
        tag: &str,
        env: &[(&str, String)],
    ) -> Result<Server, String> {
        let mut cmd = Command::new(&args.server_bin);
        cmd.arg("start")
            .env("SOKETI_PORT", port.to_string())
            .env("CORECAST_SHARDS", args.shards.to_string())
            .env("SOKETI_DEFAULT_APP_ID", &args.app_id)
            .env("SOKETI_DEFAULT_APP_KEY", &args.app_key)
            .env("SOKETI_DEFAULT_APP_SECRET", &args.app_secret);
        for (k, v) in env {
            cmd.env(k, v);
        }
        start(cmd, port, &args.log_dir, &format!("server-{tag}.log")).map_err(|e| {
            format!(
                "starting {}: {e} (run `cargo build --release` first, or pass --server-bin)",
                args.server_bin.display()
            )
        })
    }

    /// Starts `redis-server` on `port`, nothing persisted, logging to stdout.
    pub fn spawn_redis(args: &Args, port: u16, tag: &str) -> Result<Server, String> {
        let mut cmd = Command::new(&args.redis_bin);
        cmd.args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--logfile", "", "--daemonize", "no"]);
        start(cmd, port, &args.log_dir, &format!("redis-{tag}.log")).map_err(|e| {
            format!(
                "starting {}: {e} (install redis-server, or pass --redis-bin)",
                args.redis_bin.display()
            )
        })
    }

    /// Sends `PING` until Redis answers `+PONG`, the process dies, or the timeout passes.
    pub fn wait_redis(&mut self) -> Result<Duration, String> {
        let t0 = Instant::now();
        let mut last = String::from("no answer");
        while t0.elapsed() < REDIS_READY_TIMEOUT {
            if let Some(status) = self.exited() {
                return Err(format!(
                    "redis-server exited before ready ({status}); log {}:\n{}",
                    self.log.display(),
                    self.log_tail(20)
                ));
            }
            match redis_ping(self.addr) {
                Ok(()) => return Ok(t0.elapsed()),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "redis-server not ready after {REDIS_READY_TIMEOUT:?} (last: {last}); log {}:\n{}",
            self.log.display(),
            self.log_tail(20)
        ))
    }

    /// Polls `GET /ready` until it answers 200, the process dies, or the timeout passes.
    pub fn wait_ready(&mut self) -> Result<Duration, String> {
        let addr = self.addr;
        let t0 = Instant::now();
        let mut last = String::from("no answer");
        while t0.elapsed() < READY_TIMEOUT {
            if let Some(status) = self.exited() {
                return Err(format!(
                    "server exited before ready ({status}); log {}:\n{}",
                    self.log.display(),
                    self.log_tail(20)
                ));
            }
            match http_get_status(addr, "/ready") {
                Ok(200) => return Ok(t0.elapsed()),
                Ok(code) => last = format!("status {code}"),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "server not ready after {READY_TIMEOUT:?} (last: {last}); log {}:\n{}",
            self.log.display(),
            self.log_tail(20)
        ))
    }

    /// `Some(status)` if the server has exited (never, for one the bench did not
    /// start: that one's failures show as connection errors).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// CPU and memory now; NaN CPU and 0 bytes without a pid (the figures built from
    /// them are dropped from the report, see `mod.rs`).
    pub fn sample(&self) -> Result<Sample, String> {
        match self.pid {
            Some(pid) => proc_sample(pid),
            None => Ok(Sample {
                cpu_s: f64::NAN,
                user_s: f64::NAN,
                sys_s: f64::NAN,
                cpu_clock_s: f64::NAN,
                rss_bytes: 0,
            }),
        }
    }

    /// SIGTERM, wait, then SIGKILL if it lingers; a server the bench did not start is
    /// left running.
    pub fn stop(mut self) -> Exit {
        let (Some(pid), true) = (self.pid, self.started()) else {
            return Exit {
                died_early: None,
                status: None,
                killed: false,
            };
        };
        let died_early = self.exited();
        if let Some(status) = died_early {
            return Exit {
                died_early,
                status: Some(status),
                killed: false,
            };
        }
        // SAFETY: kill(2) on our own child's pid; it has not been reaped (try_wait said running).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < STOP_TIMEOUT {
            if let Some(status) = self.exited() {
                return Exit {
                    died_early: None,
                    status: Some(status),
                    killed: false,
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let Some(child) = self.child.as_mut() else {
            return Exit {
                died_early: None,
                status: None,
                killed: false,
            };
        };
        let _ = child.kill();
        let status = child.wait().ok();
        Exit {
            died_early: None,
            status,
            killed: true,
        }
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Server {
    /// Not stopped (an early return, a panic): SIGKILL and reap.
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(None) = child.try_wait()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Spawns `cmd` with stdout and stderr in `log_dir/log_name`, after checking that
/// nothing listens on `port` yet.
fn start(mut cmd: Command, port: u16, log_dir: &Path, log_name: &str) -> Result<Server, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
        return Err(format!(
            "something already listens on {addr}; stop it or pass --port"
        ));
    }
    std::fs::create_dir_all(log_dir).map_err(|e| format!("creating {}: {e}", log_dir.display()))?;
    let log = log_dir.join(log_name);
    let out = File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
    // which is async-signal-safe; it allocates nothing and touches no locks.
    unsafe {
        cmd.pre_exec(|| {
            // The child dies with the thread that spawned it (our main thread), so
            // an interrupted load generator leaves no server or redis-server behind.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| e.to_string())?;
    let pid = child.id() as i32;
    Ok(Server {
        child: Some(child),
        pid: Some(pid),
        addr,
        port,
        metrics_port: None,
        log,
    })
}

/// Time allowed for one `/metrics` scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

/// `GET /metrics` on `port`: every sample's value summed per family name (over
/// shards and other labels).
pub fn scrape(port: u16) -> Result<std::collections::BTreeMap<String, f64>, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .map_err(|e| format!("metrics connect: {e}"))?;
    s.set_read_timeout(Some(SCRAPE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("metrics write: {e}"))?;
    // The metrics server closes after every answer; the deadline bounds a stuck one.
    let t0 = Instant::now();
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if t0.elapsed() > SCRAPE_TIMEOUT || raw.len() > 16 * 1024 * 1024 {
            return Err("metrics answer too slow or too large".into());
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("metrics read: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err("metrics: no HTTP head".into());
    };
    if !head.starts_with("HTTP/1.1 200") {
        let line = head.lines().next().unwrap_or("");
        return Err(format!("metrics: {line}"));
    }
    let mut sums = std::collections::BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series).trim();
        if let Ok(v) = value.trim().parse::<f64>() {
            *sums.entry(name.to_string()).or_insert(0.0) += v;
        }
    }
    Ok(sums)
}

/// One `PING` on a fresh connection; Ok when the answer is `+PONG`.
fn redis_ping(addr: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"PING\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 7 {
        match s.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    if buf[..got].starts_with(b"+PONG") {
        Ok(())
    } else {
        Err(format!("answer {:?}", String::from_utf8_lossy(&buf[..got])))
    }
}

/// One blocking HTTP/1.1 GET with `Connection: close`; returns the status code.
fn http_get_status(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 256];
    let mut got = 0;
    while got < 12 {
        match s.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let head = std::str::from_utf8(&buf[..got]).unwrap_or("");
    head.strip_prefix("HTTP/1.1 ")
        .or_else(|| head.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {head:?}"))
}

/// utime+stime from `/proc/PID/stat` and `VmRSS` from `/proc/PID/status`.
pub fn proc_sample(pid: i32) -> Result<Sample, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields after the command name (which may hold spaces) start at field 3, `state`;
    // utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let (Some(utime), Some(stime)) = (tick(11), tick(12)) else {
        return Err(format!("cannot parse /proc/{pid}/stat: {stat:?}"));
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))?;
    Ok(Sample {
        cpu_s: (utime + stime) as f64 / hz,
        user_s: utime as f64 / hz,
        sys_s: stime as f64 / hz,
        cpu_clock_s: cpu_clock_s(pid),
        rss_bytes: rss_kb * 1024,
    })
}

/// CPU time of process `pid` from its CPU-time clock; NaN if the kernel refuses.
fn cpu_clock_s(pid: i32) -> f64 {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: valid out pointer; the call only looks the pid up.
    if unsafe { libc::clock_getcpuclockid(pid, &mut clock) } != 0 {
        return f64::NAN;
    }
    // SAFETY: timespec is plain old data filled by clock_gettime.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid clock id from clock_getcpuclockid and a pointer to our timespec.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// CPU seconds every process on the machine has used since boot (all cores, from
/// `/proc/stat`); with the server's and our own, it tells how busy the rest was.
pub fn machine_busy_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return f64::NAN;
    };
    // user nice system idle iowait irq softirq steal: everything but idle and iowait.
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    busy as f64 / hz
}

/// This process's CPU seconds (user + system), from getrusage.
pub fn self_cpu_s() -> f64 {
    // SAFETY: rusage is plain old data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Makes sure this process (and the server, which inherits the limit) may hold
/// `needed` descriptors, raising the soft limit up to the hard one, never beyond.
pub fn ensure_fd_limit(needed: u64) -> Result<u64, String> {
    // SAFETY: rlimit is plain old data filled by getrlimit.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to an rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
    }
    if lim.rlim_cur >= needed {
        return Ok(lim.rlim_cur);
    }
    if lim.rlim_max < needed {
        return Err(format!(
            "this run needs about {needed} open files (connections plus headroom) but \
             RLIMIT_NOFILE is soft {} / hard {}; lower --connections",
            lim.rlim_cur, lim.rlim_max
        ));
    }
    // The server inherits this limit: give it all the headroom the hard limit allows.
    let raised = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: valid pointer to an rlimit; the new soft limit is within the hard one.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
    }
    Ok(lim.rlim_max)
}
