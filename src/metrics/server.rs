//! The metrics HTTP server (Soketi's port 9601): `GET /metrics`, `/`, `/ready`, `/usage`.
//!
//! It runs on plain `std` threads, apart from the shards: an accept loop, and one
//! short-lived thread per connection (a scrape renders on it), at most
//! `MAX_CONNECTIONS` at once. Every answer closes the connection; scrapers and probes
//! reconnect, and nothing idles here.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::Registry;

/// Connections served at once; past it a new one is closed unanswered.
const MAX_CONNECTIONS: usize = 16;
/// The most request head bytes read before answering 431.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// How long a client may take to send its request or read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The running metrics server. Dropping it leaves the server running for the life of
/// the process; [`MetricsServer::shutdown`] stops it.
#[derive(Debug)]
pub struct MetricsServer {
    /// Where it listens (the real port when asked for port 0).
    pub addr: SocketAddr,
    /// What `/ready` answers: 200 while true, 503 once shutdown begins.
    ready: Arc<AtomicBool>,
    /// Tells the accept loop to return.
    stop: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Sets what `/ready` answers: `false` makes it 503 so load balancers drain this
    /// node during shutdown.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Stops accepting and waits for the accept loop to end (connections being served
    /// finish on their own threads).
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept with a connection of our own.
        let _ = TcpStream::connect_timeout(&wake_addr(self.addr), Duration::from_secs(1));
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves the metrics endpoints on `host:port` in its own thread; returns once bound.
///
/// # Errors
/// When `host:port` does not resolve or cannot be bound.
pub fn serve(registry: Arc<Registry>, host: &str, port: u16) -> io::Result<MetricsServer> {
    let listener = TcpListener::bind((host, port))?;
    let addr = listener.local_addr()?;
    let ready = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let state = Arc::new(State {
        registry,
        ready: Arc::clone(&ready),
        active: AtomicUsize::new(0),
    });
    let stop_flag = Arc::clone(&stop);
    let accept_thread = thread::Builder::new()
        .name("metrics".to_owned())
        .spawn(move || accept_loop(&listener, &state, &stop_flag))?;
    Ok(MetricsServer {
        addr,
        ready,
        stop,
        accept_thread: Some(accept_thread),
    })
}

/// What every connection thread shares.
struct State {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    /// Connections being served, against `MAX_CONNECTIONS`.
    active: AtomicUsize,
}

fn accept_loop(listener: &TcpListener, state: &Arc<State>, stop: &AtomicBool) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok((stream, _)) = accepted else {
            // EMFILE and friends: back off instead of spinning on the error.
            thread::sleep(Duration::from_millis(50));
            continue;
        };
        if state.active.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            state.active.fetch_sub(1, Ordering::Relaxed);
            continue;
        }
        let state_for_conn = Arc::clone(state);
        let spawned = thread::Builder::new()
            .name("metrics-conn".to_owned())
            .spawn(move || {
                let _ = serve_connection(stream, &state_for_conn);
                state_for_conn.active.fetch_sub(1, Ordering::Relaxed);
            });
        if spawned.is_err() {
            state.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Reads one request, answers it, closes.
fn serve_connection(mut stream: TcpStream, state: &State) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let response = match read_head(&mut stream)? {
        Head::Complete { method, path } => route(&method, &path, state),
        Head::TooLarge => Response::text(431, "Request Header Fields Too Large", ""),
        Head::Invalid => Response::text(400, "Bad Request", ""),
        Head::Closed => return Ok(()),
    };
    stream.write_all(&response.encode())?;
    stream.flush()?;
    let _ = stream.shutdown(Shutdown::Write);
    Ok(())
}

/// The request line as far as routing needs it.
enum Head {
    Complete {
        method: String,
        path: String,
    },
    TooLarge,
    Invalid,
    /// The peer closed before sending a whole head (the shutdown wake-up, a port probe).
    Closed,
}

fn read_head(stream: &mut TcpStream) -> io::Result<Head> {
    let mut buf = vec![0u8; MAX_HEAD_BYTES];
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Ok(Head::TooLarge);
        }
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                // A complete parse always fills method and path.
                let (Some(method), Some(path)) = (req.method, req.path) else {
                    return Ok(Head::Invalid);
                };
                return Ok(Head::Complete {
                    method: method.to_owned(),
                    path: path.to_owned(),
                });
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Ok(Head::TooLarge),
            Err(_) => return Ok(Head::Invalid),
        }
    }
}

fn route(method: &str, target: &str, state: &State) -> Response {
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        let mut r = Response::text(405, "Method Not Allowed", "");
        r.extra_header = Some(("Allow", "GET, HEAD"));
        return r;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut response = match path {
        "/" => Response::text(200, "OK", "OK"),
        "/ready" if state.ready.load(Ordering::Relaxed) => Response::text(200, "OK", "OK"),
        "/ready" => Response::json(
            503,
            "Service Unavailable",
            r#"{"error":"The server is closing. Choose another server. :)","code":503}"#.to_owned(),
        ),
        "/usage" => Response::json(200, "OK", state.registry.usage_json()),
        "/metrics" if wants_json(query) => Response::json(200, "OK", state.registry.render_json()),
        "/metrics" => Response {
            status: 200,
            reason: "OK",
            content_type: prometheus::TEXT_FORMAT,
            body: state.registry.render().into_bytes(),
            extra_header: None,
            head_only: false,
        },
        _ => Response::text(404, "Not Found", ""),
    };
    response.head_only = head_only;
    response
}

/// Soketi answers JSON when the query has a `json` parameter, whatever its value.
fn wants_json(query: &str) -> bool {
    query
        .split('&')
        .any(|pair| pair.split('=').next() == Some("json"))
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    extra_header: Option<(&'static str, &'static str)>,
    /// A `HEAD` request: headers as for `GET`, no body.
    head_only: bool,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Self {
        Self {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            extra_header: None,
            head_only: false,
        }
    }

    fn json(status: u16, reason: &'static str, body: String) -> Self {
        Self {
            content_type: "application/json",
            body: body.into_bytes(),
            ..Self::text(status, reason, "")
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if let Some((name, value)) = self.extra_header {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if !self.head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// Where to connect to wake our own accept: a wildcard bind is reached on loopback.
fn wake_addr(addr: SocketAddr) -> SocketAddr {
    let mut wake = addr;
    if addr.ip().is_unspecified() {
        wake.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    wake
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_query_is_detected_by_name() {
        assert!(wants_json("json"));
        assert!(wants_json("json=1"));
        assert!(wants_json("a=b&json="));
        assert!(!wants_json(""));
        assert!(!wants_json("jsonp=1"));
    }

    #[test]
    fn head_answers_without_a_body() {
        let mut r = Response::text(200, "OK", "OK");
        r.head_only = true;
        let text = String::from_utf8(r.encode()).unwrap();
        assert!(text.contains("Content-Length: 2\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }
}
