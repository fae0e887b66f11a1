//! The machine's own cost of the kernel work of a fan-out, measured in the same run:
//! one std thread owns `--connections` accepted loopback sockets and writes one
//! delivery-sized WebSocket frame per delivery with a plain blocking `write()`,
//! round robin, at the delivery scenario's deliveries/s. Its CPU, read with
//! `getrusage(RUSAGE_THREAD)`, divided by its writes, is the floor a server's
//! CPU per delivery is read against. A second thread drains the other ends with
//! epoll so the socket buffers never fill.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::args::Args;

/// Writing before the measured window (socket buffers, page cache, frequency).
const WARMUP_MAX: Duration = Duration::from_secs(1);

/// What the writer measured.
pub struct Baseline {
    /// Deliveries/s the writer was paced at; 0 = flat out.
    pub target_per_s: f64,
    pub frame_bytes: usize,
    pub writes: u64,
    pub wall_s: f64,
    pub user_s: f64,
    pub sys_s: f64,
    /// The draining thread's CPU over the same window.
    pub reader_cpu_s: f64,
    /// `write()` calls that wrote less than the frame (the rest was written after).
    pub short_writes: u64,
}

impl Baseline {
    pub fn cpu_us_per_write(&self) -> f64 {
        if self.writes == 0 {
            0.0
        } else {
            (self.user_s + self.sys_s) * 1e6 / self.writes as f64
        }
    }
}

/// The frame the server sends for one REST event of this run: a 2-byte (or 4-byte
/// past 125) text header and `{"event":"bench","channel":"bench-C","data":"s=..;t=..;pad=x.."}`.
pub fn delivery_frame(args: &Args) -> Vec<u8> {
    // Sequence and timestamp of typical width in the middle of a run.
    let mut data = String::from("s=12345;t=12345678901;pad=");
    super::publish::pad(&mut data, args.payload_bytes, args.text_payload, 12345);
    let json = format!(
        r#"{{"event":"bench","channel":"{}-{}","data":"{data}"}}"#,
        args.scenario.channel_prefix(),
        args.channels / 2
    );
    let mut frame = vec![0x81u8];
    match json.len() {
        n if n < 126 => frame.push(n as u8),
        n => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(json.as_bytes());
    frame
}

/// User and system CPU of the calling thread, in seconds. The sum is the
/// scheduler's exact runtime; the split is apportioned from tick samples, so a
/// thread that sleeps between short bursts can show all of it as user time.
fn thread_cpu_s() -> (f64, f64) {
    // SAFETY: rusage is plain old data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage we own.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// Runs the baseline for `--duration` after a short warmup, paced at
/// `per_s` deliveries/s (0 = flat out) in bursts of `--connections / --channels`
/// writes, one burst per event as the server's fan-out does.
pub fn run(args: &Args, per_s: f64) -> Result<Baseline, String> {
    let n = args.connections;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("baseline bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut readers = Vec::with_capacity(n);
    let mut writers = Vec::with_capacity(n);
    // Connect and accept in steps below the listen backlog.
    for chunk in (0..n).collect::<Vec<_>>().chunks(128) {
        for _ in chunk {
            let s = TcpStream::connect(addr).map_err(|e| format!("baseline connect: {e}"))?;
            readers.push(s);
        }
        for _ in chunk {
            let (s, _) = listener
                .accept()
                .map_err(|e| format!("baseline accept: {e}"))?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            writers.push(s);
        }
    }
    drop(listener);

    let stop = Arc::new(AtomicBool::new(false));
    let win = Arc::new(std::sync::Mutex::new(None::<(Instant, Instant)>));
    let reader = {
        let (stop, win) = (stop.clone(), win.clone());
        std::thread::Builder::new()
            .name("baseline-reader".into())
            .spawn(move || drain(readers, &stop, &win))
            .map_err(|e| e.to_string())?
    };

    let frame = delivery_frame(args);
    let fan = (n as f64 / args.channels as f64).round().max(1.0) as usize;
    let interval = if per_s > 0.0 {
        Some(Duration::from_secs_f64(fan as f64 / per_s))
    } else {
        None
    };
    let warmup = args.warmup.min(WARMUP_MAX);
    let writer = {
        let (stop, win) = (stop.clone(), win.clone());
        let duration = args.duration;
        std::thread::Builder::new()
            .name("baseline-writer".into())
            .spawn(move || {
                let r = write_loop(
                    &writers, &frame, fan, interval, warmup, duration, &win, &stop,
                );
                // The sockets stay open until the reader stopped: no EOF for it.
                (r, writers)
            })
            .map_err(|e| e.to_string())?
    };
    let written = writer
        .join()
        .map_err(|_| "the baseline writer panicked".to_string());
    stop.store(true, Ordering::Relaxed);
    let reader_cpu_s = reader
        .join()
        .map_err(|_| "the baseline reader panicked".to_string())?;
    let (written, writers) = written?;
    drop(writers);
    let mut b = written?;
    b.target_per_s = per_s;
    b.reader_cpu_s = reader_cpu_s?;
    Ok(b)
}

#[allow(clippy::too_many_arguments)]
fn write_loop(
    socks: &[TcpStream],
    frame: &[u8],
    fan: usize,
    interval: Option<Duration>,
    warmup: Duration,
    duration: Duration,
    win: &std::sync::Mutex<Option<(Instant, Instant)>>,
    stop: &AtomicBool,
) -> Result<Baseline, String> {
    let t0 = Instant::now();
    let win_start = t0 + warmup;
    let win_end = win_start + duration;
    *win.lock().map_err(|e| e.to_string())? = Some((win_start, win_end));
    let mut next = 0usize;
    let (mut writes, mut short) = (0u64, 0u64);
    let mut cpu0: Option<((f64, f64), u64, Instant)> = None;
    let mut burst = 0u32;
    loop {
        let mut now = Instant::now();
        if let Some(iv) = interval {
            let due = t0 + iv * burst;
            if due > now {
                std::thread::sleep(due - now);
                now = Instant::now();
            }
        }
        if cpu0.is_none() && now >= win_start {
            cpu0 = Some((thread_cpu_s(), writes, now));
        }
        if now >= win_end {
            let (u1, s1) = thread_cpu_s();
            let ((u0, s0), w0, t) = cpu0.expect("window started before it ended");
            break Ok(Baseline {
                target_per_s: 0.0,
                frame_bytes: frame.len(),
                writes: writes - w0,
                wall_s: now.duration_since(t).as_secs_f64(),
                user_s: u1 - u0,
                sys_s: s1 - s0,
                reader_cpu_s: 0.0,
                short_writes: short,
            });
        }
        if stop.load(Ordering::Relaxed) {
            break Err("baseline reader stopped early".to_string());
        }
        for _ in 0..fan {
            let mut s = &socks[next];
            next = (next + 1) % socks.len();
            // One plain blocking write(2) per delivery.
            match s.write(frame) {
                Ok(k) if k == frame.len() => {}
                Ok(k) => {
                    short += 1;
                    if let Err(e) = s.write_all(&frame[k..]) {
                        return Err(format!("baseline write: {e}"));
                    }
                }
                Err(e) => return Err(format!("baseline write: {e}")),
            }
            writes += 1;
        }
        burst += 1;
    }
}

/// Reads and discards everything arriving on `socks` until `stop`; returns its own
/// CPU over the writer's measured window.
fn drain(
    socks: Vec<TcpStream>,
    stop: &AtomicBool,
    win: &std::sync::Mutex<Option<(Instant, Instant)>>,
) -> Result<f64, String> {
    // SAFETY: plain syscall.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(format!(
            "epoll_create1: {}",
            std::io::Error::last_os_error()
        ));
    }
    for (i, s) in socks.iter().enumerate() {
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: valid epoll fd, socket fd and event.
        if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) } != 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: closing the epoll fd we created.
            unsafe { libc::close(ep) };
            return Err(format!("epoll_ctl: {e}"));
        }
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = vec![0u8; 64 * 1024];
    let mut cpu0: Option<f64> = None;
    let mut cpu_win = 0.0;
    let mut window: Option<(Instant, Instant)> = None;
    let mut failed = None;
    while !stop.load(Ordering::Relaxed) {
        if window.is_none() {
            window = *win.lock().map_err(|e| e.to_string())?;
        }
        if let Some((start, end)) = window {
            let now = Instant::now();
            let cpu = || {
                let (u, s) = thread_cpu_s();
                u + s
            };
            if cpu0.is_none() && now >= start {
                cpu0 = Some(cpu());
            } else if let Some(c0) = cpu0
                && now >= end
                && cpu_win == 0.0
            {
                cpu_win = cpu() - c0;
            }
        }
        // SAFETY: `events` has room for `events.len()` entries.
        let k = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 50) };
        if k < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            failed = Some(format!("epoll_wait: {e}"));
            break;
        }
        for ev in &events[..k as usize] {
            let s = &socks[ev.u64 as usize];
            // SAFETY: reading into our own buffer from a socket we own.
            let r = unsafe { libc::read(s.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if r == 0 {
                failed = Some("baseline socket closed".to_string());
            }
        }
        if failed.is_some() {
            break;
        }
    }
    if let Some(c0) = cpu0
        && cpu_win == 0.0
    {
        let (u, s) = thread_cpu_s();
        cpu_win = u + s - c0;
    }
    // SAFETY: closing the epoll fd we created.
    unsafe { libc::close(ep) };
    match failed {
        Some(e) => {
            stop.store(true, Ordering::Relaxed);
            Err(e)
        }
        None => Ok(cpu_win),
    }
}
