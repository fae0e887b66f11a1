//! The pub/sub side: other nodes' messages handed to every local shard.

use super::*;

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
        if sub
            .subscribe(&[bridge.keys.broadcast.as_bytes()])
            .await
            .is_err()
        {
            monoio::time::sleep(backoff.next_delay()).await;
            continue;
        }
        backoff.reset();
        was_up = true;
        bridge.sub_up.set(true);
        while let Ok((_, payload)) = sub.next_message().await {
            let Ok(message) = Message::decode(&payload) else {
                continue;
            };
            if message.node() == bridge.node {
                continue;
            }
            bump(&bridge.stats.received, 1);
            dispatch(&bridge, message).await;
        }
        bridge.sub_up.set(false);
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
