//! The cluster's JetStream key-value buckets, and the only code that reads or writes them.
//!
//! | bucket | key | value | lifetime |
//! |---|---|---|---|
//! | `callsignal_nodes` | node id | `{started_at}` | bucket TTL = `cluster.node_timeout_secs`, refreshed every second by the node's heartbeat: a dead node's claim expires on its own |
//! | `callsignal_presence` | user id | `{"<node>/<run>": connections}` | no TTL; readers ignore entries of nodes (or earlier runs of a node) not heard from, so a dead node's entries count for nothing; writers drop them |
//! | `callsignal_calls` | user id | [`CallClaim`] | created atomically when the user's call starts, deleted when it ends; a claim whose owner is dead or no longer has the call is stale and is replaced |
//!
//! `create` is atomic in JetStream (it fails when the key exists), and updates and deletes are
//! guarded by the revision read before them: two nodes never both believe they wrote.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::domain::{CallId, UserId};

const NODES: &str = "callsignal_nodes";
const PRESENCE: &str = "callsignal_presence";
const CALLS: &str = "callsignal_calls";

/// Compare-and-set attempts before a write is given up (retried later by its caller).
const CAS_ATTEMPTS: usize = 5;

/// A user's current call, as the `callsignal_calls` bucket holds it: the user is in at most one
/// call cluster-wide.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallClaim {
    /// The call.
    pub call_id: CallId,
    /// The node owning the call's actor.
    pub owner: String,
    /// Inviting user.
    pub caller: UserId,
    /// Invited user.
    pub callee: UserId,
    /// Not answered yet (glare needs to know).
    pub ringing: bool,
}

/// What claiming a user for a call found.
#[derive(Debug)]
pub enum Claim {
    /// The user is ours for this call.
    Won,
    /// The user is in this call (its entry revision, to replace it if it proves stale).
    Held(CallClaim, u64),
}

/// The three buckets.
pub struct Buckets {
    nodes: kv::Store,
    presence: kv::Store,
    calls: kv::Store,
    /// Revision of this node's claim, for guarded refreshes. A std mutex: never held across
    /// an await.
    node_rev: Mutex<u64>,
}

async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
) -> anyhow::Result<kv::Store> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    // The stream a key-value bucket is, created directly: `create_key_value` first reads the
    // account info, whose shape from nats-server 2.9 this client version does not parse.
    let config = jetstream::stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        // Duplicates are tracked for at most the entries' lifetime (the server requires it).
        duplicate_window: if max_age.is_zero() {
            Duration::from_secs(120)
        } else {
            max_age.min(Duration::from_secs(120))
        },
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: 1,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    let created = js.create_stream(config).await;
    match js.get_key_value(name).await {
        Ok(store) => Ok(store),
        Err(e) => Err(anyhow::anyhow!(
            "cannot open or create the JetStream bucket {name}: {e} (creating: {:?})",
            created.err()
        )),
    }
}

fn user_key(user: UserId) -> String {
    user.0.to_string()
}

impl Buckets {
    /// Opens (creating if needed) the buckets; the node claims expire after `node_timeout`.
    pub async fn open(client: &async_nats::Client, node_timeout: Duration) -> anyhow::Result<Self> {
        let js = jetstream::new(client.clone());
        Ok(Self {
            nodes: bucket(&js, NODES, node_timeout).await?,
            presence: bucket(&js, PRESENCE, Duration::ZERO).await?,
            calls: bucket(&js, CALLS, Duration::ZERO).await?,
            node_rev: Mutex::new(0),
        })
    }

    /// Claims `node`: fails while a live node holds it. A claim left by a dead node is waited
    /// out (it stops being refreshed and expires within `node_timeout`).
    pub async fn claim_node(&self, node: &str, node_timeout: Duration) -> anyhow::Result<()> {
        let value = serde_json::json!({ "started_at": chrono::Utc::now() }).to_string();
        let deadline = tokio::time::Instant::now() + node_timeout + Duration::from_secs(2);
        let mut last_seen: Option<u64> = None;
        loop {
            match self.nodes.create(node, value.clone().into()).await {
                Ok(rev) => {
                    *self.node_rev.lock().unwrap_or_else(|p| p.into_inner()) = rev;
                    return Ok(());
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    let rev = self.nodes.entry(node).await?.map(|e| e.revision);
                    if let (Some(before), Some(now)) = (last_seen, rev)
                        && before != now
                    {
                        anyhow::bail!(
                            "server.instance_id {node:?} is held by a live node of the cluster \
                             (its claim is being refreshed); every node needs its own id"
                        );
                    }
                    if tokio::time::Instant::now() > deadline {
                        anyhow::bail!(
                            "server.instance_id {node:?} is still claimed in the cluster"
                        );
                    }
                    last_seen = rev.or(last_seen);
                    tracing::warn!(
                        node,
                        "instance_id claimed in the cluster; waiting to see whether its holder is alive"
                    );
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
                Err(e) => return Err(e).context("cannot claim the node id in NATS"),
            }
        }
    }

    /// Refreshes this node's claim (heartbeat); re-creates it if it expired during an outage.
    pub async fn refresh_node(&self, node: &str) {
        let value = serde_json::json!({ "refreshed_at": chrono::Utc::now() }).to_string();
        let rev = *self.node_rev.lock().unwrap_or_else(|p| p.into_inner());
        let result = match self.nodes.update(node, value.clone().into(), rev).await {
            Ok(rev) => Ok(rev),
            Err(_) => match self.nodes.entry(node).await {
                Ok(None) => self
                    .nodes
                    .create(node, value.into())
                    .await
                    .map_err(|e| e.to_string()),
                Ok(Some(e)) if e.operation != kv::Operation::Put => self
                    .nodes
                    .update(node, value.into(), e.revision)
                    .await
                    .map_err(|e| e.to_string()),
                Ok(Some(_)) => Err("another node holds this instance_id".to_owned()),
                Err(e) => Err(e.to_string()),
            },
        };
        match result {
            Ok(rev) => *self.node_rev.lock().unwrap_or_else(|p| p.into_inner()) = rev,
            Err(e) => tracing::error!(node, error = %e, "cannot refresh the node's claim"),
        }
    }

    /// Whether `node` holds a claim now (a dead node's expires).
    pub async fn node_claimed(&self, node: &str) -> anyhow::Result<bool> {
        Ok(self
            .nodes
            .entry(node)
            .await?
            .is_some_and(|e| e.operation == kv::Operation::Put))
    }

    /// Drops this node's claim (clean shutdown).
    pub async fn release_node(&self, node: &str) {
        let _ = self.nodes.purge(node).await;
    }

    /// Connections of `user` per node, as last written (unfiltered).
    pub async fn presence(&self, user: UserId) -> anyhow::Result<HashMap<String, usize>> {
        Ok(match self.presence.get(user_key(user)).await? {
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            None => HashMap::new(),
        })
    }

    /// Sets the count of `user`'s connections of `node` (`<node>/<run>`), dropping the entries
    /// `stale` names (so a user's entry never grows with dead nodes).
    pub async fn write_presence(
        &self,
        node: &str,
        user: UserId,
        count: usize,
        stale: &(dyn Fn(&str) -> bool + Sync),
    ) -> anyhow::Result<()> {
        let key = user_key(user);
        for _ in 0..CAS_ATTEMPTS {
            let entry = self.presence.entry(&key).await?;
            let live = entry.as_ref().filter(|e| e.operation == kv::Operation::Put);
            let mut counts: HashMap<String, usize> = live
                .and_then(|e| serde_json::from_slice(&e.value).ok())
                .unwrap_or_default();
            counts.retain(|k, _| k == node || !stale(k));
            if count == 0 {
                counts.remove(node);
            } else {
                counts.insert(node.to_owned(), count);
            }
            let written = match (entry.as_ref().map(|e| e.revision), counts.is_empty()) {
                (None, true) => return Ok(()),
                (Some(rev), true) => self
                    .presence
                    .delete_expect_revision(&key, Some(rev))
                    .await
                    .is_ok(),
                (None, false) => self
                    .presence
                    .create(&key, serde_json::to_vec(&counts)?.into())
                    .await
                    .is_ok(),
                (Some(rev), false) => self
                    .presence
                    .update(&key, serde_json::to_vec(&counts)?.into(), rev)
                    .await
                    .is_ok(),
            };
            if written {
                return Ok(());
            }
        }
        anyhow::bail!("presence of {key} kept changing")
    }

    /// Claims `user` for `claim`'s call: atomic cluster-wide.
    pub async fn claim_user(&self, user: UserId, claim: &CallClaim) -> anyhow::Result<Claim> {
        let key = user_key(user);
        let value = serde_json::to_vec(claim)?;
        for _ in 0..CAS_ATTEMPTS {
            match self.calls.create(&key, value.clone().into()).await {
                Ok(_) => return Ok(Claim::Won),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    if let Some(e) = self.calls.entry(&key).await?
                        && e.operation == kv::Operation::Put
                        && let Ok(held) = serde_json::from_slice(&e.value)
                    {
                        return Ok(Claim::Held(held, e.revision));
                    }
                    // Deleted meanwhile: try again.
                }
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("claim of {key} kept changing")
    }

    /// The call `user` is claimed for, if any.
    pub async fn claim_of(&self, user: UserId) -> anyhow::Result<Option<CallClaim>> {
        Ok(self
            .calls
            .get(user_key(user))
            .await?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Removes a stale claim (revision-guarded: a newer claim is never removed).
    pub async fn drop_stale(&self, user: UserId, revision: u64) {
        let _ = self
            .calls
            .delete_expect_revision(user_key(user), Some(revision))
            .await;
    }

    /// Frees `user` from call `call` (only if that is the call it is claimed for).
    pub async fn release_user(&self, user: UserId, call: CallId) {
        let key = user_key(user);
        if let Ok(Some(e)) = self.calls.entry(&key).await
            && e.operation == kv::Operation::Put
            && serde_json::from_slice::<CallClaim>(&e.value).is_ok_and(|c| c.call_id == call)
        {
            let _ = self
                .calls
                .delete_expect_revision(&key, Some(e.revision))
                .await;
        }
    }

    /// Marks `user`'s claim for `call` answered.
    pub async fn mark_answered(&self, user: UserId, call: CallId) {
        let key = user_key(user);
        if let Ok(Some(e)) = self.calls.entry(&key).await
            && e.operation == kv::Operation::Put
            && let Ok(mut claim) = serde_json::from_slice::<CallClaim>(&e.value)
            && claim.call_id == call
        {
            claim.ringing = false;
            if let Ok(v) = serde_json::to_vec(&claim) {
                let _ = self.calls.update(&key, v.into(), e.revision).await;
            }
        }
    }
}

/// Local connection counts waiting to be written to the presence bucket: at most one entry
/// per user (the latest count), so it is bounded by the users connected here.
#[derive(Default)]
pub struct PresenceQueue {
    /// A std mutex: held for a map operation, never across an await.
    pending: Mutex<HashMap<UserId, usize>>,
    wake: Notify,
}

impl PresenceQueue {
    /// Records `user`'s current count.
    pub fn set(&self, user: UserId, count: usize) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user, count);
        self.wake.notify_one();
    }

    /// Puts back a count that could not be written, unless a newer one came meanwhile.
    pub fn retry(&self, user: UserId, count: usize) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(user)
            .or_insert(count);
        self.wake.notify_one();
    }

    /// Everything pending.
    pub fn take(&self) -> Vec<(UserId, usize)> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect()
    }

    /// Resolves once something is pending.
    pub async fn wait(&self) {
        self.wake.notified().await;
    }
}
