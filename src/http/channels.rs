//! REST reads: `GET /apps/{id}/channels`, `/channels/{name}` and `/channels/{name}/users`,
//! counted over every shard (scatter-gather through the rings).

use std::rc::Rc;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{Response, error};
use crate::app::AppIdx;
use crate::fanout::Query;
use crate::shard::{ChannelFacts, Shard};

/// One channel's facts over every shard.
pub async fn facts(shard: &Rc<Shard>, app: AppIdx, channel: &str) -> ChannelFacts {
    let name: Arc<str> = Arc::from(channel);
    let mut merged = shard
        .gather(
            app,
            Query::Channel {
                name: Arc::clone(&name),
            },
        )
        .await;
    merged.remove(&name).unwrap_or_default()
}

fn info_attrs(query: &[(String, String)]) -> Vec<String> {
    query
        .iter()
        .filter(|(k, _)| k == "info")
        .flat_map(|(_, v)| v.split(',').map(|a| a.trim().to_owned()))
        .filter(|a| !a.is_empty())
        .collect()
}

fn param<'q>(query: &'q [(String, String)], name: &str) -> Option<&'q str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `GET /apps/{id}/channels`: occupied channels, optionally filtered by prefix;
/// `info=user_count` is allowed only with a `presence-` prefix, as Pusher documents.
pub async fn list(shard: &Rc<Shard>, app: AppIdx, query: &[(String, String)]) -> Response {
    let prefix = param(query, "filter_by_prefix").unwrap_or("");
    let attrs = info_attrs(query);
    let wants_users = attrs.iter().any(|a| a == "user_count");
    if wants_users && !prefix.starts_with("presence-") {
        return error(400, "info=user_count requires filter_by_prefix=presence-");
    }
    let wants_subs = attrs.iter().any(|a| a == "subscription_count");
    let merged = shard
        .gather(
            app,
            Query::Channels {
                prefix: Arc::from(prefix),
            },
        )
        .await;
    let mut channels = Map::new();
    let mut names: Vec<_> = merged
        .into_iter()
        .filter(|(_, f)| f.subscriptions > 0)
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, facts) in names {
        let mut attrs = Map::new();
        if wants_users {
            attrs.insert(
                "user_count".into(),
                facts.users.map_or(0, |u| u.len()).into(),
            );
        }
        if wants_subs {
            attrs.insert("subscription_count".into(), facts.subscriptions.into());
        }
        channels.insert(name.to_string(), Value::Object(attrs));
    }
    Response::json(200, json!({ "channels": channels }).to_string())
}

/// `GET /apps/{id}/channels/{name}`: `occupied`, and the counts asked for with `info`.
pub async fn show(
    shard: &Rc<Shard>,
    app: AppIdx,
    channel: &str,
    query: &[(String, String)],
) -> Response {
    let attrs = info_attrs(query);
    let presence = channel.starts_with("presence-");
    if attrs.iter().any(|a| a == "user_count") && !presence {
        return error(400, "user_count is only available on presence channels.");
    }
    let facts = facts(shard, app, channel).await;
    let mut body = Map::new();
    body.insert("occupied".into(), (facts.subscriptions > 0).into());
    for attr in &attrs {
        match attr.as_str() {
            "subscription_count" => {
                body.insert(attr.clone(), facts.subscriptions.into());
            }
            "user_count" => {
                body.insert(
                    attr.clone(),
                    facts.users.as_ref().map_or(0, Vec::len).into(),
                );
            }
            _ => {}
        }
    }
    Response::json(200, Value::Object(body).to_string())
}

/// `GET /apps/{id}/channels/{name}/users`: each member once; 400 for other channels.
pub async fn users(shard: &Rc<Shard>, app: AppIdx, channel: &str) -> Response {
    if !channel.starts_with("presence-") {
        return error(400, "Users can only be listed on presence channels.");
    }
    let facts = facts(shard, app, channel).await;
    let users: Vec<Value> = facts
        .users
        .unwrap_or_default()
        .iter()
        .map(|id| json!({ "id": &**id }))
        .collect();
    Response::json(200, json!({ "users": users }).to_string())
}
