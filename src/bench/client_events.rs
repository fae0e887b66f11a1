//! The client-events scenario's senders: one WebSocket connection per channel,
//! subscribed to it like any member, sending `client-bench` events at the paced rate
//! (Pusher delivers a client event to every subscriber of the channel but its
//! sender). The events carry the same `s=SEQ;t=NANOS` data as REST publishes, so the
//! receiving side and its loss and order accounting are the fan-out scenario's.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use monoio::io::AsyncWriteRentExt;

use super::clients::{OPEN_TIMEOUT, Shared};
use super::publish::{PubPlan, PubReport};
use super::ws::{self, Auth, Conn, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};

/// After the last event, how long each sender listens for `pusher:error` answers
/// (rate limit, client events disabled) before it closes.
const LISTEN_AFTER: Duration = Duration::from_millis(300);

/// The `client-bench` event for channel `c`; `data` is `s=SEQ;t=NANOS;pad=xxx`
/// padded to `payload_bytes`, as a string.
pub fn event_frame(plan: &PubPlan, c: usize, seq: u64, t_ns: u64) -> Vec<u8> {
    let data = super::publish::event_data(plan, seq, t_ns);
    let msg = format!(
        r#"{{"event":"client-bench","channel":"{}-{c}","data":"{data}"}}"#,
        plan.prefix
    );
    ws::client_frame(OP_TEXT, msg.as_bytes())
}

/// Runs the senders on their own thread: they connect and subscribe at once, then
/// send from `plan.start_ns` to `plan.end_ns`; the report arrives on the channel.
/// `ok` counts the events written per channel, less those the server answered with
/// a `pusher:error` (those are also `uncertain`: the error does not say which).
pub fn spawn(plan: PubPlan, ws_path: String, shared: Arc<Shared>) -> mpsc::Receiver<PubReport> {
    super::publish::on_thread("loadgen-client-events", move || {
        send_all(plan, ws_path, shared)
    })
}

async fn send_all(plan: PubPlan, ws_path: String, shared: Arc<Shared>) -> PubReport {
    let mut report = PubReport::new(plan.channels);
    let auth = Auth {
        key: plan.app_key.clone(),
        secret: plan.app_secret.clone(),
    };
    // One sender per channel; `None` where it could not subscribe.
    let mut senders: Vec<Option<Conn>> = Vec::with_capacity(plan.channels);
    for c in 0..plan.channels {
        let channel = format!("{}-{c}", plan.prefix);
        let open = ws::open(plan.addr, &ws_path, &channel, Some(&auth));
        match monoio::time::timeout(OPEN_TIMEOUT, open).await {
            Ok(Ok(conn)) => {
                report.connects += 1;
                senders.push(Some(conn));
            }
            Ok(Err(e)) => {
                report.error(format!("sender {}: {}", e.stage, e.detail));
                senders.push(None);
            }
            Err(_) => {
                report.error(format!("sender not subscribed within {OPEN_TIMEOUT:?}"));
                senders.push(None);
            }
        }
    }
    let mut sent = vec![0u64; plan.channels];
    'rounds: for seq in 0u64.. {
        for (c, slot) in senders.iter_mut().enumerate() {
            if !super::publish::pace(&plan, &shared, seq, c).await {
                break 'rounds;
            }
            let Some(conn) = slot else { continue };
            let frame = event_frame(&plan, c, seq, shared.now_ns());
            let (res, _) = conn.stream.write_all(frame).await;
            match res {
                Ok(_) => sent[c] += 1,
                Err(e) => {
                    report.error(format!("sender write: {e}"));
                    report.uncertain[c] += 1;
                    *slot = None;
                }
            }
        }
    }
    for (c, slot) in senders.iter_mut().enumerate() {
        let refused = match slot {
            Some(conn) => listen(conn, &mut report).await,
            None => 0,
        };
        report.ok[c] = sent[c].saturating_sub(refused);
        report.uncertain[c] += refused.min(sent[c]);
    }
    report
}

/// Reads what the server sent a sender: `pusher:error`s are counted (and returned),
/// pings answered, until `LISTEN_AFTER` passes without a byte or the server closes.
async fn listen(conn: &mut Conn, report: &mut PubReport) -> u64 {
    let mut refused = 0;
    loop {
        while let Some(f) = conn.frames.next_frame() {
            let msg = conn.frames.bytes(&f.payload);
            match f.opcode {
                OP_TEXT if ws::event_name(msg) == Some(b"pusher:error") => {
                    refused += 1;
                    let text = String::from_utf8_lossy(&msg[..msg.len().min(200)]).into_owned();
                    if report.error_samples.len() < 5 && !report.error_samples.contains(&text) {
                        report.error_samples.push(text.clone());
                    }
                    report.error(text);
                }
                OP_PING => {
                    let pong = ws::client_frame(OP_PONG, msg);
                    let _ = conn.stream.write_all(pong).await;
                }
                OP_CLOSE => {
                    report.error(format!("sender closed with {}", ws::close_code(msg)));
                    return refused;
                }
                _ => {}
            }
        }
        // A read that times out is dropped (the driver cancels it); the connection
        // is closed right after.
        let read = conn.frames.fill(&mut conn.stream, None);
        match monoio::time::timeout(LISTEN_AFTER, read).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(Ok(_)) => return refused,
            Ok(Err(e)) => {
                report.error(format!("sender read: {e}"));
                return refused;
            }
            Err(_) => return refused,
        }
    }
}
