//! Which webhooks an event goes to: the app's webhooks whose `event_types` list the event and
//! whose filter accepts its channel. Shared read-only by the shard handles and the sender;
//! a change of an app's webhooks makes a new [`Routes`] (see [`Routes::with_app`]).

use std::ops::Range;
use std::sync::Arc;

use crate::config::{WebhookConfig, WebhookEvent, WebhookFilter};

/// Every app's webhooks, each with its index in the sender's flat lists.
///
/// Indexes are handed out in order and never reused: replacing an app's webhooks gives them
/// new indexes past every earlier one, so the sender's state for the old ones (open batches,
/// retries, attempts in flight) stays theirs until it drains. Cloning is cheap: one `Arc`
/// per app.
#[derive(Debug, Default, Clone)]
pub struct Routes {
    /// Per app index, its webhooks in config order.
    apps: Vec<Arc<[Route]>>,
    /// Indexes handed out so far: the next webhook gets this one.
    next: usize,
}

#[derive(Debug)]
struct Route {
    index: usize,
    event_types: Vec<WebhookEvent>,
    filter: WebhookFilter,
}

impl Routes {
    /// Routes for `apps[i]` = app `i`'s webhook list; app 0's webhooks get the first
    /// indexes, then app 1's, and so on.
    pub fn new<'a>(apps: impl IntoIterator<Item = &'a [WebhookConfig]>) -> Self {
        let mut routes = Self::default();
        for hooks in apps {
            let entry = routes.entry(hooks);
            routes.apps.push(entry);
        }
        routes
    }

    /// These routes with app `app`'s webhooks replaced by `hooks` (apps past the end are
    /// added, those in between without webhooks), and the indexes given to `hooks`: the
    /// next ones, in order. Other apps keep theirs.
    #[must_use]
    pub fn with_app(&self, app: usize, hooks: &[WebhookConfig]) -> (Self, Range<usize>) {
        let mut routes = self.clone();
        let first = routes.next;
        let entry = routes.entry(hooks);
        if app >= routes.apps.len() {
            routes.apps.resize_with(app + 1, || Arc::from([]));
        }
        routes.apps[app] = entry;
        let added = first..routes.next;
        (routes, added)
    }

    fn entry(&mut self, hooks: &[WebhookConfig]) -> Arc<[Route]> {
        let entry = hooks
            .iter()
            .enumerate()
            .map(|(i, hook)| Route {
                index: self.next + i,
                event_types: hook.event_types.clone(),
                filter: hook.filter.clone(),
            })
            .collect();
        self.next += hooks.len();
        entry
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
            .map_or(&[][..], |hooks| &hooks[..])
            .iter()
            .filter(move |route| route.event_types.contains(&kind) && route.filter.matches(channel))
            .map(|route| route.index)
    }

    /// No webhook was ever given an index.
    #[cfg(test)]
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.next == 0
    }

    /// Indexes handed out so far (the length of the sender's flat lists).
    #[cfg(test)]
    #[must_use]
    pub fn len(&self) -> usize {
        self.next
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

    #[test]
    fn with_app_gives_the_new_webhooks_fresh_indexes_and_leaves_other_apps_alone() {
        use WebhookEvent::*;
        let app0 = vec![hook(&[ChannelOccupied], None, None)];
        let app1 = vec![hook(&[ChannelOccupied], None, None)];
        let routes = Routes::new([app0.as_slice(), app1.as_slice()]);
        assert_eq!(routes.len(), 2);

        let new0 = vec![
            hook(&[ChannelVacated], None, None),
            hook(&[ChannelVacated, ChannelOccupied], Some("a-"), None),
        ];
        let (changed, added) = routes.with_app(0, &new0);
        assert_eq!(added, 2..4);
        assert_eq!(changed.len(), 4);
        let m = |r: &Routes, app, kind, ch| r.matching(app, kind, ch).collect::<Vec<_>>();
        assert_eq!(m(&changed, 0, ChannelVacated, "a-x"), [2, 3]);
        assert_eq!(m(&changed, 0, ChannelOccupied, "a-x"), [3]);
        assert_eq!(m(&changed, 0, ChannelOccupied, "b-x"), Vec::<usize>::new());
        assert_eq!(m(&changed, 1, ChannelOccupied, "b-x"), [1]);
        // The snapshot it was made from is unchanged.
        assert_eq!(m(&routes, 0, ChannelOccupied, "b-x"), [0]);
        assert_eq!(routes.len(), 2);

        // An app past the end is added; the ones in between have no webhook.
        let (grown, added) = changed.with_app(3, &app1);
        assert_eq!(added, 4..5);
        assert_eq!(m(&grown, 3, ChannelOccupied, "x"), [4]);
        assert_eq!(m(&grown, 2, ChannelOccupied, "x"), Vec::<usize>::new());
        assert_eq!(m(&grown, 1, ChannelOccupied, "x"), [1]);

        // Emptying an app hands out no index.
        let (emptied, added) = grown.with_app(1, &[]);
        assert!(added.is_empty());
        assert_eq!(emptied.len(), 5);
        assert_eq!(m(&emptied, 1, ChannelOccupied, "x"), Vec::<usize>::new());

        let (first, added) = Routes::default().with_app(0, &app0);
        assert!(Routes::default().is_empty() && !first.is_empty());
        assert_eq!((added, m(&first, 0, ChannelOccupied, "x")), (0..1, vec![0]));
    }
}
