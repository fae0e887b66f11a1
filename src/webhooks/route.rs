//! Which webhooks an event goes to: the app's webhooks whose `event_types` list the event and
//! whose filter accepts its channel. Shared read-only by the shard handles and the sender.

use crate::config::{WebhookConfig, WebhookEvent, WebhookFilter};

/// Every app's webhooks, flattened: webhook `i` is index `i` of the sender's lists.
#[derive(Debug, Default)]
pub struct Routes {
    /// Per app (config order), the indexes of its webhooks.
    apps: Vec<Vec<usize>>,
    hooks: Vec<Route>,
}

#[derive(Debug)]
struct Route {
    event_types: Vec<WebhookEvent>,
    filter: WebhookFilter,
}

impl Routes {
    /// Routes for `apps[i]` = app `i`'s webhook list.
    pub fn new<'a>(apps: impl IntoIterator<Item = &'a [WebhookConfig]>) -> Self {
        let mut routes = Self::default();
        for hooks in apps {
            let mut indexes = Vec::with_capacity(hooks.len());
            for hook in hooks {
                indexes.push(routes.hooks.len());
                routes.hooks.push(Route {
                    event_types: hook.event_types.clone(),
                    filter: hook.filter.clone(),
                });
            }
            routes.apps.push(indexes);
        }
        routes
    }

    /// The webhooks of `app` that want `kind` on `channel`, in config order.
    pub fn matching<'a>(
        &'a self,
        app: usize,
        kind: WebhookEvent,
        channel: &'a str,
    ) -> impl Iterator<Item = usize> + 'a {
        self.apps
            .get(app)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .copied()
            .filter(move |&i| {
                let route = &self.hooks[i];
                route.event_types.contains(&kind) && route.filter.matches(channel)
            })
    }

    /// No app has a webhook.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(types: &[WebhookEvent], starts: Option<&str>, ends: Option<&str>) -> WebhookConfig {
        WebhookConfig {
            url: "http://h/".into(),
            headers: Vec::new(),
            event_types: types.to_vec(),
            filter: WebhookFilter {
                channel_name_starts_with: starts.map(Into::into),
                channel_name_ends_with: ends.map(Into::into),
            },
        }
    }

    #[test]
    fn events_go_to_hooks_of_their_app_by_type_and_filter() {
        use WebhookEvent::*;
        let app0 = vec![
            hook(&[ChannelOccupied], Some("beta-"), None),
            hook(&[ChannelOccupied, ClientEvent], None, Some("-app")),
        ];
        let app1 = vec![hook(&[ChannelOccupied], None, None)];
        let routes = Routes::new([app0.as_slice(), app1.as_slice()]);
        let m = |app, kind, ch| routes.matching(app, kind, ch).collect::<Vec<_>>();
        assert!(!routes.is_empty());
        assert_eq!(m(0, ChannelOccupied, "beta-x"), [0]);
        assert_eq!(m(0, ChannelOccupied, "x-app"), [1]);
        assert_eq!(m(0, ChannelOccupied, "beta-x-app"), [0, 1]);
        assert_eq!(m(0, ChannelOccupied, "plain"), Vec::<usize>::new());
        assert_eq!(m(0, ClientEvent, "beta-x"), Vec::<usize>::new());
        assert_eq!(m(0, ChannelVacated, "beta-x-app"), Vec::<usize>::new());
        assert_eq!(m(1, ChannelOccupied, "beta-x"), [2]);
        assert_eq!(m(2, ChannelOccupied, "beta-x"), Vec::<usize>::new());
    }
}
