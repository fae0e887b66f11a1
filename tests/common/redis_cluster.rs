//! A Redis Cluster for tests: `masters` masters (each with `replicas` replicas), real
//! `redis-server --cluster-enabled yes` processes on free 127.0.0.1 ports, joined with
//! `redis-cli --cluster create`, all killed and their temp directory removed on drop.
//! [`Cluster::move_slot`] migrates one hash slot between masters as `redis-cli --cluster
//! reshard` does (`CLUSTER SETSLOT` and `MIGRATE`), [`Cluster::failover`] promotes a
//! replica with `CLUSTER FAILOVER`.
//!
//! Include after the sentinel module, whose RESP helpers it uses:
//! `#[path = "common/redis_sentinel.rs"] mod redis_sentinel;` then
//! `#[path = "common/redis_cluster.rs"] mod redis_cluster;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis_sentinel::{INSTALL_HINT, Reply, available, command_as, free_port, spawn_server};

/// How long the cluster may take to form, settle after a change, or fail over.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// One server of the cluster.
pub struct Node {
    pub port: u16,
    /// The cluster's name for it (`CLUSTER MYID`).
    pub id: String,
    child: Child,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    dir: PathBuf,
    /// `requirepass` (and `masterauth`) of every node.
    password: Option<&'static str>,
}

/// What to start.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub masters: usize,
    pub replicas: usize,
    /// Rename `SSUBSCRIBE`, `SPUBLISH` and `SUNSUBSCRIBE` away, as on a Redis older than 7.
    pub without_sharded_pubsub: bool,
    /// Require this password on every node.
    pub password: Option<&'static str>,
}

impl Shape {
    pub const fn masters(masters: usize) -> Self {
        Self {
            masters,
            replicas: 0,
            without_sharded_pubsub: false,
            password: None,
        }
    }
}

impl Cluster {
    /// Starts and joins the cluster, and waits until every node sees all slots served.
    pub fn start(shape: Shape) -> Self {
        assert!(available(), "{INSTALL_HINT}");
        assert!(
            Command::new("redis-cli")
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "redis-cli is not on PATH (it comes with redis-server: {INSTALL_HINT})"
        );
        let dir = std::env::temp_dir().join(format!(
            "corecast-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create the cluster test directory");
        let mut cluster = Cluster {
            nodes: Vec::new(),
            dir,
            password: shape.password,
        };
        let total = shape.masters * (1 + shape.replicas);
        for i in 0..total {
            let (port, child) = spawn_server(&cluster.dir, &format!("node-{i}"), |port, dir| {
                node_args(port, dir, shape)
            });
            let id = match cluster.command(port, &["CLUSTER", "MYID"]) {
                Ok(Reply::Bulk(id)) => id,
                other => panic!("CLUSTER MYID on :{port}: {other:?}"),
            };
            cluster.nodes.push(Node { port, id, child });
        }
        let mut create = Command::new("redis-cli");
        if let Some(password) = shape.password {
            create.args(["--no-auth-warning", "-a", password]);
        }
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = create
            .args([
                "--cluster-replicas",
                &shape.replicas.to_string(),
                "--cluster-yes",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.settle(shape.masters);
        cluster
    }

    /// `SOKETI_DB_REDIS_CLUSTER_NODES` naming every node.
    pub fn env_value(&self) -> String {
        let list: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!(r#"{{"host":"127.0.0.1","port":{}}}"#, n.port))
            .collect();
        format!("[{}]", list.join(","))
    }

    /// Runs one command on the node at `port`.
    pub fn command(&self, port: u16, args: &[&str]) -> std::io::Result<Reply> {
        command_as(port, self.password, args)
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot(&self, key: &str) -> u16 {
        match self.command(self.nodes[0].port, &["CLUSTER", "KEYSLOT", key]) {
            Ok(Reply::Int(n)) => u16::try_from(n).expect("a slot"),
            other => panic!("CLUSTER KEYSLOT {key}: {other:?}"),
        }
    }

    /// The port of the master serving `slot`, as the first node sees it.
    pub fn owner(&self, slot: u16) -> u16 {
        self.owner_seen_by(self.nodes[0].port, slot)
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// The ports of the masters, as the first node sees them.
    pub fn masters(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = slot_ranges(self.nodes[0].port, self.password)
            .into_iter()
            .map(|(_, _, port)| port)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// Moves `slot` (and its keys) to the master at `to`, then waits until every node
    /// agrees.
    pub fn move_slot(&self, slot: u16, to: u16) {
        let from = self.owner(slot);
        assert_ne!(from, to, "slot {slot} is on :{to} already");
        let (from_id, to_id) = (self.id(from), self.id(to));
        let s = slot.to_string();
        self.ok(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]);
        self.ok(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]);
        loop {
            let keys: Vec<String> =
                match self.command(from, &["CLUSTER", "GETKEYSINSLOT", &s, "100"]) {
                    Ok(Reply::Array(items)) => items
                        .iter()
                        .filter_map(|k| k.text().map(str::to_owned))
                        .collect(),
                    other => panic!("CLUSTER GETKEYSINSLOT {slot}: {other:?}"),
                };
            if keys.is_empty() {
                break;
            }
            let port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000"];
            if let Some(password) = self.password {
                args.extend(["AUTH", password]);
            }
            args.push("KEYS");
            args.extend(keys.iter().map(String::as_str));
            self.ok(from, &args);
        }
        for node in &self.nodes {
            // Replicas refuse SETSLOT; masters learn it directly, replicas by gossip.
            let _ = self.command(node.port, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
        }
        let ports: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        self.wait(
            || {
                ports
                    .iter()
                    .all(|&p| self.owner_seen_by(p, slot) == Some(to))
            },
            &format!("every node to see slot {slot} on :{to}"),
        );
    }

    /// Promotes the replica of the master at `master` with `CLUSTER FAILOVER` and waits
    /// until every live node sees it serving that master's slots. Returns the new
    /// master's port.
    pub fn failover(&self, master: u16) -> u16 {
        let id = self.id(master);
        let replica = self
            .nodes
            .iter()
            .find(|n| {
                matches!(self.command(n.port, &["ROLE"]), Ok(Reply::Array(ref r))
                    if r.first().and_then(Reply::text) == Some("slave")
                        && r.get(2) == Some(&Reply::Int(i64::from(master))))
            })
            .unwrap_or_else(|| panic!("no replica of :{master} ({id})"))
            .port;
        self.wait(
            || {
                self.command(replica, &["INFO", "replication"])
                    .ok()
                    .and_then(|r| r.text().map(|t| t.contains("master_link_status:up")))
                    .unwrap_or(false)
            },
            "the replica to be in sync",
        );
        self.ok(replica, &["CLUSTER", "FAILOVER"]);
        let slots: Vec<(u16, u16)> = slot_ranges(self.nodes[0].port, self.password)
            .into_iter()
            .filter(|(_, _, p)| *p == master)
            .map(|(a, b, _)| (a, b))
            .collect();
        let ports: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        self.wait(
            || {
                ports.iter().all(|&p| {
                    slots
                        .iter()
                        .all(|(a, _)| self.owner_seen_by(p, *a) == Some(replica))
                })
            },
            &format!("every node to see :{replica} promoted in place of :{master}"),
        );
        replica
    }

    /// The log of node `i`, for messages.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("node-{i}.log"))).unwrap_or_default()
    }

    fn id(&self, port: u16) -> String {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .map(|n| n.id.clone())
            .unwrap_or_else(|| panic!("no node on :{port}"))
    }

    fn ok(&self, port: u16, args: &[&str]) {
        match self.command(port, args) {
            Ok(Reply::Status(s)) if s == "OK" || s == "NOKEY" => {}
            other => panic!("{args:?} on :{port}: {other:?}"),
        }
    }

    fn owner_seen_by(&self, port: u16, slot: u16) -> Option<u16> {
        slot_ranges(port, self.password)
            .into_iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot))
            .map(|(_, _, p)| p)
    }

    fn settle(&self, masters: usize) {
        let ports: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        self.wait(
            || {
                ports.iter().all(|&p| {
                    let info = self.command(p, &["CLUSTER", "INFO"]).ok();
                    let info = info.as_ref().and_then(Reply::text).unwrap_or("");
                    info.contains("cluster_state:ok")
                        && info.contains("cluster_slots_ok:16384")
                        && info.contains(&format!("cluster_size:{masters}"))
                        && info.contains(&format!("cluster_known_nodes:{}", ports.len()))
                })
            },
            "the cluster to form",
        );
    }

    fn wait(&self, mut ready: impl FnMut() -> bool, what: &str) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while !ready() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; node-0 log: {}",
                self.log(0)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
        }
        for node in &mut self.nodes {
            let _ = node.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `(first slot, last slot, master port)` of every range `CLUSTER SLOTS` lists on `port`.
fn slot_ranges(port: u16, password: Option<&str>) -> Vec<(u16, u16, u16)> {
    let Ok(Reply::Array(ranges)) = command_as(port, password, &["CLUSTER", "SLOTS"]) else {
        return Vec::new();
    };
    ranges
        .iter()
        .filter_map(|r| {
            let Reply::Array(fields) = r else { return None };
            let (Reply::Int(a), Reply::Int(b), Reply::Array(master)) =
                (fields.first()?, fields.get(1)?, fields.get(2)?)
            else {
                return None;
            };
            let Reply::Int(p) = master.get(1)? else {
                return None;
            };
            Some((
                u16::try_from(*a).ok()?,
                u16::try_from(*b).ok()?,
                u16::try_from(*p).ok()?,
            ))
        })
        .collect()
}

fn node_args(port: u16, dir: &Path, shape: Shape) -> Vec<String> {
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--cluster-enabled",
        "yes",
        "--cluster-node-timeout",
        "1000",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.push(dir.display().to_string());
    args.extend([
        "--cluster-config-file".to_owned(),
        format!("nodes-{port}.conf"),
        "--dbfilename".to_owned(),
        format!("dump-{port}.rdb"),
    ]);
    if let Some(password) = shape.password {
        for option in ["--requirepass", "--masterauth"] {
            args.extend([option.to_owned(), password.to_owned()]);
        }
    }
    if shape.without_sharded_pubsub {
        for name in ["SSUBSCRIBE", "SPUBLISH", "SUNSUBSCRIBE"] {
            args.extend([
                "--rename-command".to_owned(),
                name.to_owned(),
                String::new(),
            ]);
        }
    }
    args
}
