//! The server under test as a child process, and what `/proc` says about it.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::args::Args;

/// How long the server may take to answer `GET /ready` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the server may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `corecast start`.
pub struct Server {
    child: Child,
    pub pid: i32,
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
    /// Starts the server with the run's port, shard count and app credentials.
    pub fn spawn(args: &Args, tag: &str) -> Result<Server, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Err(format!(
                "something already listens on {addr}; stop it or pass --port"
            ));
        }
        std::fs::create_dir_all(&args.log_dir)
            .map_err(|e| format!("creating {}: {e}", args.log_dir.display()))?;
        let log = args.log_dir.join(format!("server-{tag}.log"));
        let out = File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&args.server_bin)
            .arg("start")
            .env("SOKETI_PORT", args.port.to_string())
            .env("CORECAST_SHARDS", args.shards.to_string())
            .env("SOKETI_DEFAULT_APP_ID", &args.app_id)
            .env("SOKETI_DEFAULT_APP_KEY", &args.app_key)
            .env("SOKETI_DEFAULT_APP_SECRET", &args.app_secret)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| {
                format!(
                    "starting {}: {e} (run `cargo build --release` first, or pass --server-bin)",
                    args.server_bin.display()
                )
            })?;
        let pid = child.id() as i32;
        Ok(Server { child, pid, log })
    }

    /// Polls `GET /ready` until it answers 200, the process dies, or the timeout passes.
    pub fn wait_ready(&mut self, port: u16) -> Result<Duration, String> {
        let t0 = Instant::now();
        let mut last = String::from("no answer");
        while t0.elapsed() < READY_TIMEOUT {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "server exited before ready ({status}); log {}:\n{}",
                    self.log.display(),
                    self.log_tail(20)
                ));
            }
            match http_get_status(port, "/ready") {
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

    /// `Some(status)` if the server has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn sample(&self) -> Result<Sample, String> {
        proc_sample(self.pid)
    }

    /// SIGTERM, wait, then SIGKILL if it lingers.
    pub fn stop(mut self) -> Exit {
        let died_early = self.exited();
        if let Some(status) = died_early {
            return Exit {
                died_early,
                status: Some(status),
                killed: false,
            };
        }
        // SAFETY: kill(2) on our own child's pid; it has not been reaped (try_wait said running).
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
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
        let _ = self.child.kill();
        let status = self.child.wait().ok();
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

/// One blocking HTTP/1.1 GET with `Connection: close`; returns the status code.
fn http_get_status(port: u16, path: &str) -> Result<u16, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
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
