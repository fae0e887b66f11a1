//! `POST /apps/{id}/events` and `POST /apps/{id}/batch_events`: validate the whole
//! request first, then encode each event once per channel and publish it.

use std::rc::Rc;

use simd_json::BorrowedValue;
use simd_json::prelude::*;

use super::{Response, error};
use crate::app::AppIdx;
use crate::config::AppConfig;
use crate::protocol::{Data, EventFrame, SocketId, event_frame, validate_publish_channel};
use crate::shard::Shard;

/// One event, checked and ready to publish.
struct Checked<'a> {
    name: &'a str,
    data: DataText<'a>,
    channels: Vec<&'a str>,
    except: Option<SocketId>,
    /// Attributes asked for with `info` (`subscription_count`, `user_count`).
    info: Option<&'a str>,
}

/// The event's data: a string as the libraries send it, or any other JSON value as text.
enum DataText<'a> {
    Str(&'a str),
    Json(String),
}

/// `POST /apps/{id}/events`.
pub async fn trigger(shard: &Rc<Shard>, app_idx: AppIdx, body: &mut [u8]) -> Response {
    let app = shard.apps.get(app_idx);
    let Ok(value) = simd_json::to_borrowed_value(body) else {
        return error(400, "The request body is not valid JSON.");
    };
    let event = match check_event(&app, &value, true) {
        Ok(event) => event,
        Err(resp) => return resp,
    };
    if let Err(resp) = admit(shard, app_idx, event.channels.len()).await {
        return resp;
    }
    if let Err(resp) = room(shard, event.channels.len()).await {
        return resp;
    }
    publish(shard, app_idx, &event);
    shard.flush_dirty();
    let Some(info) = event.info else {
        return Response::json(200, "{}");
    };
    let mut channels = serde_json::Map::new();
    for channel in &event.channels {
        channels.insert(
            (*channel).to_owned(),
            attributes(shard, app_idx, channel, info).await,
        );
    }
    Response::json(200, serde_json::json!({ "channels": channels }).to_string())
}

/// Backpressure: waits until every ring towards the other shards (and the redis bridge)
/// has room for `envelopes`, so a publish is never dropped between shards; a ring that
/// stays full answers 503 and the client may retry.
async fn room(shard: &Shard, envelopes: usize) -> Result<(), Response> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while shard.outbox.borrow().min_free() < envelopes {
        if std::time::Instant::now() >= deadline {
            return Err(error(503, "The server is overloaded; retry the publish."));
        }
        monoio::time::sleep(std::time::Duration::from_micros(200)).await;
    }
    Ok(())
}

/// `max_backend_events_per_sec`: one point per channel an event goes to, as Soketi counts;
/// over the cluster with `SOKETI_RATE_LIMITER_DRIVER=redis` (per node while Redis is
/// unreachable).
async fn admit(shard: &Rc<Shard>, app: AppIdx, points: usize) -> Result<(), Response> {
    let Some(limit) = shard.apps.get(app).max_backend_events_per_sec else {
        return Ok(());
    };
    if shard.cluster_rates() {
        match shard
            .take_rate(app, crate::shard::Rate::Backend, points as u64)
            .await
        {
            Some(true) => return Ok(()),
            Some(false) => {
                return Err(super::too_many(
                    shard,
                    1,
                    crate::metrics::Counter::RateLimitedBackend,
                ));
            }
            None => {}
        }
    }
    let now = crate::app::limits::unix_secs();
    shard
        .apps
        .usage(app)
        .backend_events
        .try_acquire_n(now, points as u64, limit)
        .map_err(|retry| super::too_many(shard, retry, crate::metrics::Counter::RateLimitedBackend))
}

/// A channel's attributes named in `info`, counted over every shard.
async fn attributes(
    shard: &Rc<Shard>,
    app: AppIdx,
    channel: &str,
    info: &str,
) -> serde_json::Value {
    let facts = super::channels::facts(shard, app, channel).await;
    let mut out = serde_json::Map::new();
    for attr in info.split(',').map(str::trim) {
        match attr {
            "subscription_count" => {
                out.insert(attr.into(), facts.subscriptions.into());
            }
            "user_count" if channel.starts_with("presence-") => {
                out.insert(attr.into(), facts.users.as_ref().map_or(0, Vec::len).into());
            }
            _ => {}
        }
    }
    serde_json::Value::Object(out)
}

/// `POST /apps/{id}/batch_events`.
pub async fn trigger_batch(shard: &Rc<Shard>, app_idx: AppIdx, body: &mut [u8]) -> Response {
    let app = shard.apps.get(app_idx);
    let Ok(value) = simd_json::to_borrowed_value(body) else {
        return error(400, "The request body is not valid JSON.");
    };
    let Some(batch) = value.get_array("batch") else {
        return error(400, "The body must have a batch array.");
    };
    if batch.len() > app.max_event_batch_size {
        let msg = format!(
            "Cannot batch-send more than {} events at once.",
            app.max_event_batch_size
        );
        return error(400, &msg);
    }
    let mut events = Vec::with_capacity(batch.len());
    for item in batch {
        match check_event(&app, item, false) {
            Ok(e) => events.push(e),
            Err(resp) => return resp,
        }
    }
    let points = events.iter().map(|e| e.channels.len()).sum();
    if let Err(resp) = admit(shard, app_idx, points).await {
        return resp;
    }
    if let Err(resp) = room(shard, points).await {
        return resp;
    }
    for event in &events {
        publish(shard, app_idx, event);
    }
    shard.flush_dirty();
    if events.iter().all(|e| e.info.is_none()) {
        return Response::json(200, "{}");
    }
    let mut batch = Vec::with_capacity(events.len());
    for event in &events {
        batch.push(match (event.info, event.channels.first()) {
            (Some(info), Some(channel)) => attributes(shard, app_idx, channel, info).await,
            _ => serde_json::json!({}),
        });
    }
    Response::json(200, serde_json::json!({ "batch": batch }).to_string())
}

fn publish(shard: &Rc<Shard>, app_idx: AppIdx, event: &Checked<'_>) {
    shard.catch_up();
    let data = match &event.data {
        DataText::Str(s) => Data::Str(s),
        DataText::Json(j) => Data::Json(j),
    };
    for channel in &event.channels {
        let frame = event_frame(&EventFrame {
            event: event.name,
            channel: Some(channel),
            data,
            user_id: None,
        });
        shard.publish(app_idx, channel, &frame, event.except, true);
    }
}

/// `POST /apps/{id}/events` without a shard: the body checked as `trigger` checks it and
/// each channel's frame encoded as `publish` encodes it, for the sans-IO benchmarks.
#[cfg(feature = "bench")]
pub(crate) fn encode_event(
    app: &AppConfig,
    body: &mut [u8],
) -> Result<Vec<bytes::Bytes>, Response> {
    let Ok(value) = simd_json::to_borrowed_value(body) else {
        return Err(error(400, "The request body is not valid JSON."));
    };
    let event = check_event(app, &value, true)?;
    let data = match &event.data {
        DataText::Str(s) => Data::Str(s),
        DataText::Json(j) => Data::Json(j),
    };
    Ok(event
        .channels
        .iter()
        .map(|channel| {
            event_frame(&EventFrame {
                event: event.name,
                channel: Some(channel),
                data,
                user_id: None,
            })
        })
        .collect())
}

/// Validates one event object against the app's limits. `multi`: whether `channels`
/// (an array) is allowed, as on `/events`; batch items name one `channel`.
fn check_event<'a>(
    app: &AppConfig,
    value: &'a BorrowedValue<'a>,
    multi: bool,
) -> Result<Checked<'a>, Response> {
    if !value.is_object() {
        return Err(error(400, "Each event must be a JSON object."));
    }
    let name = value
        .get_str("name")
        .ok_or_else(|| error(400, "The event has no name."))?;
    if name.is_empty() || name.len() > app.max_event_name_length {
        let msg = format!(
            "The event name must be 1 to {} characters.",
            app.max_event_name_length
        );
        return Err(error(400, &msg));
    }
    let mut channels = Vec::new();
    if let Some(list) = value.get("channels").filter(|_| multi) {
        let list = list
            .as_array()
            .ok_or_else(|| error(400, "channels must be an array."))?;
        for c in list {
            channels.push(
                c.as_str()
                    .ok_or_else(|| error(400, "Channel names must be strings."))?,
            );
        }
    } else if let Some(c) = value.get("channel") {
        channels.push(
            c.as_str()
                .ok_or_else(|| error(400, "The channel name must be a string."))?,
        );
    }
    if channels.is_empty() {
        return Err(error(400, "The event names no channel."));
    }
    if channels.len() > app.max_event_channels_at_once {
        let msg = format!(
            "Cannot send to more than {} channels at once.",
            app.max_event_channels_at_once
        );
        return Err(error(400, &msg));
    }
    for c in &channels {
        if let Err(e) = validate_publish_channel(c, app.max_channel_name_length) {
            return Err(error(400, &format!("Invalid channel {c:?}: {e}")));
        }
    }
    let data = match value.get("data") {
        None => DataText::Str(""),
        Some(d) => match d.as_str() {
            Some(s) => DataText::Str(s),
            None => DataText::Json(d.encode()),
        },
    };
    let size = match &data {
        DataText::Str(s) => s.len(),
        DataText::Json(j) => j.len(),
    };
    if size as f64 > app.max_event_payload_in_kb * 1024.0 {
        let msg = format!(
            "The event data is larger than {} KB.",
            app.max_event_payload_in_kb
        );
        return Err(error(413, &msg));
    }
    let except = match value.get("socket_id") {
        None => None,
        Some(s) if s.is_null() => None,
        Some(s) => Some(
            s.as_str()
                .and_then(|s| SocketId::parse(s).ok())
                .ok_or_else(|| error(400, "Invalid socket_id."))?,
        ),
    };
    let info = value.get_str("info").filter(|i| !i.is_empty());
    Ok(Checked {
        name,
        data,
        channels,
        except,
        info,
    })
}
