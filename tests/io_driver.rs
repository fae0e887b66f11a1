//! The shards' IO driver: io_uring by default where the kernel allows it, epoll when asked
//! (`CORECAST_IO_DRIVER=epoll`) or when io_uring is refused, as Docker's default seccomp
//! profile does. The start-up log line and `corecast_io_driver` say which; clients work
//! the same on either.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::rest::post;
use common::{Ws, http};
use serde_json::json;

const SHARDS: usize = 2;

/// A server process with its stderr kept, killed on drop.
struct Node {
    port: u16,
    metrics_port: u16,
    log: Arc<Mutex<Vec<String>>>,
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// The start-up line naming the IO driver.
    fn driver_line(&self) -> String {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.starts_with("corecast: io driver "))
            .cloned()
            .unwrap_or_else(|| panic!("no io driver line in {:?}", self.log.lock().unwrap()))
    }

    /// One `/metrics` scrape.
    fn scrape(&self) -> String {
        let (status, body) = http(self.metrics_port, "GET", "/metrics", &[], b"").expect("scrape");
        assert_eq!(status, 200);
        String::from_utf8(body).expect("utf-8 scrape")
    }
}

/// `corecast start` with 2 shards, metrics on, `env` on top; io_uring syscalls fail with
/// EPERM when `block_uring`, as under Docker's default seccomp profile.
fn command(env: &[(&str, &str)], block_uring: bool) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corecast"));
    // Only the variables set here: the server refuses unknown SOKETI_*/CORECAST_* names,
    // and whatever the test's own environment holds must not change what is tested.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("SOKETI_") || name.starts_with("CORECAST_") {
            cmd.env_remove(name.as_ref());
        }
    }
    cmd.arg("start")
        .env("SOKETI_HOST", "127.0.0.1")
        .env("SOKETI_PORT", "0")
        .env("SOKETI_METRICS_ENABLED", "true")
        .env("SOKETI_METRICS_HOST", "127.0.0.1")
        .env("SOKETI_METRICS_SERVER_PORT", "0")
        .env("CORECAST_SHARDS", SHARDS.to_string())
        .env_remove("MONOIO_FORCE_LEGACY_DRIVER")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    if block_uring {
        // SAFETY: between fork and exec the closure only makes two prctl calls on
        // stack data, which are async-signal-safe.
        unsafe {
            cmd.pre_exec(deny_io_uring);
        }
    }
    cmd
}

/// Installs a seccomp filter that fails `io_uring_setup`, `io_uring_enter` and
/// `io_uring_register` with EPERM and allows everything else.
fn deny_io_uring() -> std::io::Result<()> {
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const LOAD_NR: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let nr = |n: libc::c_long| u32::try_from(n).expect("syscall number");
    let mut filter = [
        // The syscall number is the first field of `struct seccomp_data`.
        op(LOAD_NR, 0, 0, 0),
        op(JEQ, 3, 0, nr(libc::SYS_io_uring_setup)),
        op(JEQ, 2, 0, nr(libc::SYS_io_uring_enter)),
        op(JEQ, 1, 0, nr(libc::SYS_io_uring_register)),
        op(RET, 0, 0, libc::SECCOMP_RET_ALLOW),
        op(RET, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: plain prctl calls; `prog` points at `filter`, alive for the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Starts the server and waits until it reports both ports and `/ready` answers.
fn launch(env: &[(&str, &str)], block_uring: bool) -> Node {
    let mut child = command(env, block_uring).spawn().expect("spawn corecast");
    let log = keep_log(&mut child);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (port, metrics_port) = loop {
        let lines = log.lock().unwrap().clone();
        let port_of = |tag: &str| {
            lines.iter().find_map(|l| {
                l.strip_prefix(tag)?
                    .rsplit(':')
                    .next()?
                    .trim()
                    .parse::<u16>()
                    .ok()
            })
        };
        if let (Some(p), Some(m)) = (
            port_of("corecast: listening on "),
            port_of("corecast: metrics on "),
        ) {
            break (p, m);
        }
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            panic!("server did not start: {lines:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let node = Node {
        port,
        metrics_port,
        log,
        child,
    };
    while !matches!(http(port, "GET", "/ready", &[], b""), Ok((200, _))) {
        assert!(Instant::now() < deadline, "server did not become ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    node
}

/// Runs the server until it exits on its own (a start-up failure); its status and log.
fn run_to_exit(env: &[(&str, &str)], block_uring: bool) -> (ExitStatus, String) {
    let mut child = command(env, block_uring).spawn().expect("spawn corecast");
    let log = keep_log(&mut child);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("server kept running: {:?}", log.lock().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The reader thread sees end of file right after the exit.
    std::thread::sleep(Duration::from_millis(100));
    let text = log.lock().unwrap().join("\n");
    (status, text)
}

/// Collects the child's stderr lines (and echoes them to the test's stderr).
fn keep_log(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let stderr = child.stderr.take().expect("piped stderr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            sink.lock().unwrap().push(line);
        }
    });
    log
}

/// The value of the sample line `series` (name and labels, as rendered).
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// Every shard reports `driver` as 1 and the other driver as 0.
fn assert_driver_metric(node: &Node, driver: &str) {
    let scrape = node.scrape();
    assert!(
        scrape.contains("# TYPE corecast_io_driver gauge\n"),
        "{scrape}"
    );
    for shard in 0..SHARDS {
        for other in ["io_uring", "epoll"] {
            let series = format!(r#"corecast_io_driver{{shard="{shard}",driver="{other}"}}"#);
            let want = if other == driver { 1.0 } else { 0.0 };
            assert_eq!(
                sample(&scrape, &series),
                Some(want),
                "{series} in\n{scrape}"
            );
        }
    }
}

/// Clients get `connection_established` and a REST publish, on every shard.
fn assert_clients_work(node: &Node) {
    // Connections spread over the shards; a few make it likely that every shard has one,
    // and each publish reaches the others through the rings.
    let mut clients: Vec<Ws> = (0..4).map(|_| Ws::pusher(node.port).0).collect();
    for ws in &mut clients {
        ws.subscribe("driver-check");
    }
    let body = json!({"name": "tick", "channel": "driver-check", "data": "{\"n\":1}"});
    let (status, reply) = post(node.port, "/apps/app-id/events", &body.to_string());
    assert_eq!(status, 200, "{reply}");
    for ws in &mut clients {
        let event = ws.read_event("tick");
        assert_eq!(event["channel"], "driver-check");
        assert_eq!(event["data"], "{\"n\":1}");
    }
}

/// What `auto` picks where the kernel lets this process use io_uring.
fn uring_here() -> bool {
    monoio::utils::detect_uring()
}

#[test]
fn default_and_required_io_uring_run_on_io_uring() {
    if !uring_here() {
        eprintln!("io_uring is unavailable to this process: checking the fallback instead");
        let node = launch(&[], false);
        assert!(
            node.driver_line()
                .starts_with("corecast: io driver epoll (")
        );
        assert_driver_metric(&node, "epoll");
        return;
    }
    for env in [&[][..], &[("CORECAST_IO_DRIVER", "io_uring")][..]] {
        let node = launch(env, false);
        assert_eq!(
            node.driver_line(),
            "corecast: io driver io_uring (4096 entries)",
            "{env:?}"
        );
        assert_driver_metric(&node, "io_uring");
        assert_clients_work(&node);
    }
}

#[test]
fn epoll_on_request_serves_clients() {
    let node = launch(&[("CORECAST_IO_DRIVER", "epoll")], false);
    assert_eq!(
        node.driver_line(),
        "corecast: io driver epoll (chosen by CORECAST_IO_DRIVER=epoll)"
    );
    assert_driver_metric(&node, "epoll");
    assert_clients_work(&node);
}

#[test]
fn io_uring_blocked_by_seccomp_falls_back_to_epoll() {
    let node = launch(&[], true);
    let line = node.driver_line();
    assert!(
        line.starts_with("corecast: io driver epoll (io_uring refused: "),
        "{line}"
    );
    assert!(line.contains("seccomp"), "names the likely cause: {line}");
    assert_driver_metric(&node, "epoll");
    assert_clients_work(&node);
}

#[test]
fn required_io_uring_stops_the_start_when_refused() {
    let (status, log) = run_to_exit(&[("CORECAST_IO_DRIVER", "io_uring")], true);
    assert!(!status.success(), "{status}: {log}");
    assert!(
        log.contains(
            "io driver io_uring required (CORECAST_IO_DRIVER=io_uring) but io_uring refused"
        ),
        "{log}"
    );
    assert!(!log.contains("corecast: listening on"), "{log}");
}

#[test]
fn unknown_driver_is_a_configuration_error() {
    let (status, log) = run_to_exit(&[("CORECAST_IO_DRIVER", "kqueue")], false);
    assert!(!status.success(), "{status}: {log}");
    assert!(log.contains("CORECAST_IO_DRIVER"), "{log}");
    assert!(log.contains("auto, io_uring or epoll"), "{log}");
}
