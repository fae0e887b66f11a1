//! The pub/sub side: other nodes' messages handed to every local shard.

use super::*;
use crate::redis::resp::PushEvent;

/// Listens on the broadcast channel and hands other nodes' messages to every shard.
pub(super) async fn subscriber_loop(bridge: Rc<Bridge>) {
    let mut backoff = Backoff::new(Duration::from_secs(5));
    let mut was_up = false;
    loop {
        let mut sub = match Subscriber::connect(&bridge.opts).await {
            Ok(s) => s,
            Err(e) => {
                if was_up {
                    eprintln!("corecast: redis subscriber lost ({e}); retrying with backoff");
                    was_up = false;
                }
                monoio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        let topics = bridge.interest.reset_for_reconnect();
        let mut channels: Vec<&[u8]> = topics.iter().map(|t| t.as_bytes()).collect();
        channels.push(bridge.keys.broadcast.as_bytes());
        if sub.subscribe(&channels).await.is_err() {
            monoio::time::sleep(backoff.next_delay()).await;
            continue;
        }
        bridge.interest.subscribed_all(&topics);
        bridge.own_waker.poke();
        backoff.reset();
        was_up = true;
        // Reading goes on in this task; (un)subscribing for interest routing is written
        // by a task of its own, and Redis confirms each change on the read side.
        let (mut reader, writer) = sub.split();
        let generation = bridge.sub_generation.get();
        monoio::spawn(super::interest::writer_loop(
            Rc::clone(&bridge),
            writer,
            generation,
        ));
        bridge.sub_up.set(true);
        while let Ok(event) = reader.next_event().await {
            let payload = match event {
                PushEvent::Message { payload, .. } => payload,
                PushEvent::Subscribed { channel, .. } => {
                    bridge.interest.confirm(&channel, true);
                    bridge.own_waker.poke();
                    continue;
                }
                PushEvent::Unsubscribed { channel, .. } => {
                    bridge.interest.confirm(&channel, false);
                    continue;
                }
                _ => continue,
            };
            let Ok(message) = Message::decode(&payload) else {
                continue;
            };
            if message.node() == bridge.node {
                continue;
            }
            bump(&bridge.stats.received, 1);
            bump(&bridge.stats.received_bytes, payload.len() as u64);
            dispatch(&bridge, message).await;
        }
        bridge.sub_up.set(false);
        super::interest::retire_writer(&bridge);
        eprintln!("corecast: redis subscriber disconnected; reconnecting");
    }
}

pub(super) async fn dispatch(bridge: &Bridge, message: Message) {
    match message {
        Message::Publish {
            app_id,
            channel,
            except,
            cache,
            frame,
            ..
        } => {
            let Some((app, _)) = bridge.apps.by_id(&app_id) else {
                return;
            };
            let channel: Arc<str> = Arc::from(channel);
            let at = Instant::now();
            bridge
                .to_all_shards_waiting(|| Envelope::Publish {
                    app,
                    channel: Arc::clone(&channel),
                    frame: frame.clone(),
                    except,
                    cache,
                    at,
                })
                .await;
        }
        Message::Terminate {
            app_id, user_id, ..
        } => {
            let Some((app, _)) = bridge.apps.by_id(&app_id) else {
                return;
            };
            let user: Arc<str> = Arc::from(user_id);
            bridge
                .to_all_shards_waiting(|| Envelope::TerminateUser {
                    app,
                    user_id: Arc::clone(&user),
                })
                .await;
        }
    }
}
