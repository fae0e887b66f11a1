//! The queue's Redis layout and the shape of a job in it, sans-IO: key names, the fields a
//! job is appended with, and the replies of `XREADGROUP`, `XAUTOCLAIM` and `XPENDING`.
//!
//! Every key carries the hash tag `{corecast:webhooks}`, so in a Redis Cluster all of them
//! live in one slot: one `XREADGROUP` reads every partition a node owns, and the lease
//! script touches its two keys atomically.

use bytes::Bytes;

use crate::redis::client::Reply;
use crate::redis::cluster;

/// The consumer group every node reads with.
pub const GROUP: &str = "corecast";

/// Key names under the adapter's key prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    /// `{prefix}{corecast:webhooks}:`, the start of every key.
    base: String,
}

impl Keys {
    #[must_use]
    pub fn new(prefix: &str) -> Self {
        Self {
            base: format!("{prefix}{{corecast:webhooks}}:"),
        }
    }

    /// Partition stream `p`: `{prefix}{corecast:webhooks}:p{p}`.
    #[must_use]
    pub fn partition(&self, p: u16) -> String {
        format!("{}p{p}", self.base)
    }

    /// The dead-letter stream: `{prefix}{corecast:webhooks}:dead`.
    #[must_use]
    pub fn dead(&self) -> String {
        format!("{}dead", self.base)
    }

    /// Hash of partition leases: field = partition, value = `consumer|expiry_ms`.
    #[must_use]
    pub fn owners(&self) -> String {
        format!("{}owners", self.base)
    }

    /// Sorted set of live consumers, scored by the expiry of their heartbeat (ms).
    #[must_use]
    pub fn consumers(&self) -> String {
        format!("{}consumers", self.base)
    }

    /// The partition a stream key names, if it is one of ours.
    #[must_use]
    pub fn partition_of(&self, key: &[u8]) -> Option<u16> {
        let rest = key.strip_prefix(self.base.as_bytes())?.strip_prefix(b"p")?;
        std::str::from_utf8(rest).ok()?.parse().ok()
    }
}

/// The partition of ordering key `key` among `partitions` (stable across nodes: the
/// CRC16 Redis Cluster uses for slots).
#[must_use]
pub fn partition_for(key: &[u8], partitions: u16) -> u16 {
    cluster::slot(key) % partitions.max(1)
}

/// One job: a signed webhook request, self-contained so any node can send it.
///
/// It carries the whole request (request line, `X-Pusher-Key`, the webhook's custom
/// headers, `X-Pusher-Signature` and the body), signed on the node that decided it: the
/// consumer needs no app table and the app secret never goes to Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The webhook URL, for the consumer's connection (host, port) and logs.
    pub url: String,
    /// The full HTTP request bytes.
    pub request: Bytes,
    /// Jobs with the same key are sent one after the other, in stream order: the webhook
    /// URL, plus the channel when each request carries one event.
    pub key: Bytes,
    /// Events in the body, for the counters.
    pub events: usize,
    /// The app id, for logs and the dead-letter stream.
    pub app: String,
}

impl Job {
    /// The field-value pairs of `XADD`.
    #[must_use]
    pub fn fields(&self) -> [(&'static str, Bytes); 5] {
        [
            ("url", Bytes::from(self.url.clone())),
            ("key", self.key.clone()),
            ("events", Bytes::from(self.events.to_string())),
            ("app", Bytes::from(self.app.clone())),
            ("request", self.request.clone()),
        ]
    }

    /// A job from the flat field-value array of a stream entry; `None` when a field is
    /// missing or malformed (an entry not written by corecast).
    #[must_use]
    pub fn from_fields(fields: &Reply) -> Option<Job> {
        let Reply::Array(items) = fields else {
            return None;
        };
        let (mut url, mut request, mut key, mut events, mut app) = (None, None, None, None, None);
        for pair in items.chunks(2) {
            let [Reply::Bulk(name), Reply::Bulk(value)] = pair else {
                return None;
            };
            match &name[..] {
                b"url" => url = Some(String::from_utf8(value.to_vec()).ok()?),
                b"request" => request = Some(value.clone()),
                b"key" => key = Some(value.clone()),
                b"events" => events = std::str::from_utf8(value).ok()?.parse().ok(),
                b"app" => app = Some(String::from_utf8_lossy(value).into_owned()),
                _ => {}
            }
        }
        Some(Job {
            url: url?,
            request: request?,
            key: key?,
            events: events?,
            app: app.unwrap_or_default(),
        })
    }
}

/// A stream entry: its id, and the job (`None` when unreadable or trimmed away).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: Bytes,
    pub job: Option<Job>,
}

/// The entries of an `XREADGROUP` reply, with the stream each came from; empty on a
/// timeout (nil reply).
#[must_use]
pub fn read_reply(reply: &Reply) -> Vec<(Bytes, Entry)> {
    let Reply::Array(streams) = reply else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for stream in streams {
        let Reply::Array(parts) = stream else {
            continue;
        };
        let [Reply::Bulk(key), Reply::Array(entries)] = &parts[..] else {
            continue;
        };
        out.extend(entries.iter().filter_map(entry).map(|e| (key.clone(), e)));
    }
    out
}

/// `XAUTOCLAIM`'s reply: the next cursor (`0-0` when done) and the entries claimed.
#[must_use]
pub fn autoclaim_reply(reply: &Reply) -> Option<(Bytes, Vec<Entry>)> {
    let Reply::Array(parts) = reply else {
        return None;
    };
    let (Some(Reply::Bulk(cursor)), Some(Reply::Array(entries))) = (parts.first(), parts.get(1))
    else {
        return None;
    };
    Some((cursor.clone(), entries.iter().filter_map(entry).collect()))
}

/// `XPENDING key group - + count`'s reply: each id with its delivery count.
#[must_use]
pub fn pending_reply(reply: &Reply) -> Vec<(Bytes, u32)> {
    let Reply::Array(rows) = reply else {
        return Vec::new();
    };
    rows.iter()
        .filter_map(|row| match row {
            Reply::Array(cols) => match (cols.first(), cols.get(3)) {
                (Some(Reply::Bulk(id)), Some(Reply::Int(n))) => {
                    Some((id.clone(), u32::try_from(*n).unwrap_or(u32::MAX)))
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn entry(reply: &Reply) -> Option<Entry> {
    let Reply::Array(parts) = reply else {
        return None;
    };
    let Some(Reply::Bulk(id)) = parts.first() else {
        return None;
    };
    let job = parts.get(1).and_then(Job::from_fields);
    Some(Entry {
        id: id.clone(),
        job,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Reply {
        Reply::Bulk(Bytes::copy_from_slice(s))
    }

    fn job() -> Job {
        Job {
            url: "http://127.0.0.1:9/hook".into(),
            request: Bytes::from_static(b"POST /hook HTTP/1.1\r\n\r\n{}"),
            key: Bytes::from_static(b"http://127.0.0.1:9/hook\nroom"),
            events: 1,
            app: "app-id".into(),
        }
    }

    fn as_reply(job: &Job) -> Reply {
        Reply::Array(
            job.fields()
                .iter()
                .flat_map(|(k, v)| [bulk(k.as_bytes()), Reply::Bulk(v.clone())])
                .collect(),
        )
    }

    #[test]
    fn a_job_reads_back_from_its_fields() {
        assert_eq!(Job::from_fields(&as_reply(&job())), Some(job()));
        assert_eq!(Job::from_fields(&Reply::Array(vec![bulk(b"url")])), None);
        assert_eq!(Job::from_fields(&Reply::Nil), None);
    }

    #[test]
    fn keys_carry_one_hash_tag_and_name_their_partition() {
        let keys = Keys::new("pre:");
        assert_eq!(keys.partition(3), "pre:{corecast:webhooks}:p3");
        assert_eq!(keys.dead(), "pre:{corecast:webhooks}:dead");
        assert_eq!(keys.partition_of(b"pre:{corecast:webhooks}:p12"), Some(12));
        assert_eq!(keys.partition_of(b"pre:{corecast:webhooks}:dead"), None);
        let slots: Vec<u16> = [keys.partition(0), keys.dead(), keys.owners()]
            .iter()
            .map(|k| cluster::slot(k.as_bytes()))
            .collect();
        assert!(slots.windows(2).all(|w| w[0] == w[1]));
        assert!(partition_for(b"a\nroom", 16) < 16);
        assert_eq!(partition_for(b"x", 1), 0);
    }

    #[test]
    fn replies_parse_with_deleted_entries_kept_as_none() {
        let read = Reply::Array(vec![Reply::Array(vec![
            bulk(b"k:p1"),
            Reply::Array(vec![Reply::Array(vec![bulk(b"1-0"), as_reply(&job())])]),
        ])]);
        let got = read_reply(&read);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (&got[0].0[..], got[0].1.job.as_ref()),
            (&b"k:p1"[..], Some(&job()))
        );
        assert!(read_reply(&Reply::Nil).is_empty());

        let claim = Reply::Array(vec![
            bulk(b"0-0"),
            Reply::Array(vec![
                Reply::Array(vec![bulk(b"2-0"), as_reply(&job())]),
                Reply::Array(vec![bulk(b"3-0"), Reply::Nil]),
            ]),
            Reply::Array(vec![]),
        ]);
        let (cursor, entries) = autoclaim_reply(&claim).expect("parses");
        assert_eq!(&cursor[..], b"0-0");
        assert_eq!(
            entries[1],
            Entry {
                id: Bytes::from_static(b"3-0"),
                job: None
            }
        );

        let pending = Reply::Array(vec![Reply::Array(vec![
            bulk(b"2-0"),
            bulk(b"node-a"),
            Reply::Int(10),
            Reply::Int(3),
        ])]);
        assert_eq!(
            pending_reply(&pending),
            vec![(Bytes::from_static(b"2-0"), 3)]
        );
    }
}
