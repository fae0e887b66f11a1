//! A real HTTP receiver for webhooks: accepts POSTs on 127.0.0.1, answers 200, and keeps
//! every request's headers and body for the test to look at.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;

/// One request as received: header names lowercased, and the body.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    /// The value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The webhook events in the body: `(name, channel[/user_id])`.
    pub fn events(&self) -> Vec<(String, String)> {
        let Ok(v) = serde_json::from_slice::<Value>(&self.body) else {
            return Vec::new();
        };
        v["events"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let name = e["name"].as_str().unwrap_or_default().to_owned();
                let user = e["user_id"].as_str().map(|u| format!("/{u}"));
                let channel = e["channel"].as_str().unwrap_or_default();
                (name, format!("{channel}{}", user.unwrap_or_default()))
            })
            .collect()
    }
}

/// The requests received so far, shared with the receiver's thread.
pub type Requests = Arc<Mutex<Vec<Received>>>;

/// Starts a receiver on a port the kernel picks; its port and what it received.
pub fn start() -> (u16, Requests) {
    start_failing(Arc::new(AtomicUsize::new(0)))
}

/// Like [`start`], but the next `fail` requests (as the counter says when each comes;
/// `usize::MAX` for "until told otherwise") are answered 500 and not kept.
pub fn start_failing(fail: Arc<AtomicUsize>) -> (u16, Requests) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let requests: Requests = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&requests);
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let received = read_request(&mut stream);
            let failing = fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                    0 => None,
                    usize::MAX => Some(usize::MAX),
                    n => Some(n - 1),
                })
                .is_ok();
            if failing {
                let _ = stream.write_all(
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if let Some(r) = received {
                keep.lock().unwrap_or_else(PoisonError::into_inner).push(r);
            }
        }
    });
    (port, requests)
}

/// Every event received so far, in order.
pub fn events(requests: &Requests) -> Vec<(String, String)> {
    requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .flat_map(Received::events)
        .collect()
}

fn read_request(stream: &mut std::net::TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let headers: Vec<(String, String)> = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            let body = buf[end + 4..end + 4 + len].to_vec();
            return Some(Received { headers, body });
        }
    }
}
