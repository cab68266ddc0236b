//! The persistence actor: turns call events into rows without ever slowing signaling.
//!
//! Producers push events into a bounded, shared queue ([`PersistenceHandle::record`]) and wake
//! the actor. The actor writes them in order, in batches (at most `batch_size` events, after at
//! most `batch_interval_ms`), one transaction per batch. An event leaves the queue only after its
//! batch committed; a failed batch is retried with exponential backoff, and because every write is
//! idempotent (see `store::calls::apply`) a batch that committed but whose answer was lost is
//! harmless to repeat. The queue lives outside the actor so that a restarted actor carries on
//! with it: nothing buffered is lost to a panic.
//!
//! Lifecycle events are never dropped. The queue has two budgets: signaling-metadata rows may
//! hold at most `signaling_buffer_share` percent of `buffer_capacity`, and lifecycle events
//! have the rest to themselves, so a chatty call can never make an unrelated invite fail. When
//! the lifecycle budget is full (a long outage), the registry refuses new invites
//! (`persistence_unavailable`); when the signaling budget is full, metadata rows are skipped
//! and counted (`callsignal_signal_rows_skipped_total`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use sea_orm::{DatabaseConnection, TransactionTrait};

use crate::config::PersistenceSettings;
use crate::domain::{CallId, UserId};
use crate::metrics::Metrics;
use crate::store::calls::{self, CallEvent};
use entity::signaling_messages::SignalingKind;

/// First retry delay after a failed batch.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Outage bookkeeping for `/readyz`.
#[derive(Debug, Default)]
struct Outage {
    since: Option<Instant>,
    error: String,
}

struct Shared {
    queue: Mutex<VecDeque<CallEvent>>,
    /// Budget of lifecycle events (created, accepted, ended).
    lifecycle_capacity: usize,
    /// Budget of signaling-metadata rows.
    signal_capacity: usize,
    /// Signaling rows in the queue.
    signals_queued: AtomicUsize,
    log_signaling: bool,
    /// Set while a `Flush` is queued or running, so producers wake the actor once, not per event.
    flush_pending: AtomicBool,
    /// Set while a batch is being written (it is still in the queue until commit).
    outage: Mutex<Outage>,
    actor_name: String,
    metrics: Arc<Metrics>,
}

/// Cheap, cloneable producer side of the persistence queue.
#[derive(Clone)]
pub struct PersistenceHandle(Arc<Shared>);

impl PersistenceHandle {
    /// A new queue; `system_id` names the actor that drains it.
    pub fn new(settings: &PersistenceSettings, system_id: &str, metrics: Arc<Metrics>) -> Self {
        Self(Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            signal_capacity: settings.buffer_capacity * settings.signaling_buffer_share.min(90)
                / 100,
            lifecycle_capacity: settings.buffer_capacity
                - settings.buffer_capacity * settings.signaling_buffer_share.min(90) / 100,
            signals_queued: AtomicUsize::new(0),
            log_signaling: settings.log_signaling,
            flush_pending: AtomicBool::new(false),
            outage: Mutex::new(Outage::default()),
            actor_name: format!("callsignal-{system_id}-persistence"),
            metrics,
        }))
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<CallEvent>> {
        // A std Mutex: pushes and pops are tiny, never held across an await.
        self.0.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an event. Lifecycle events are always kept; signaling metadata is skipped (and
    /// counted) when metadata logging is off or the queue is full.
    pub fn record(&self, event: CallEvent) {
        let is_signal = matches!(event, CallEvent::Signal { .. });
        if is_signal && !self.0.log_signaling {
            return;
        }
        {
            let mut q = self.queue();
            if is_signal {
                if self.0.signals_queued.load(Ordering::Acquire) >= self.0.signal_capacity {
                    self.0.metrics.signal_rows_skipped.inc();
                    return;
                }
                self.0.signals_queued.fetch_add(1, Ordering::AcqRel);
            }
            q.push_back(event);
        }
        self.wake();
    }

    fn wake(&self) {
        if !self.0.flush_pending.swap(true, Ordering::AcqRel) {
            match ractor::registry::where_is(self.0.actor_name.clone()) {
                Some(cell) => {
                    let actor: ActorRef<PersistenceMsg> = cell.into();
                    if actor.cast(PersistenceMsg::Flush).is_err() {
                        self.0.flush_pending.store(false, Ordering::Release);
                    }
                }
                // Restarting: the new actor flushes on start.
                None => self.0.flush_pending.store(false, Ordering::Release),
            }
        }
    }

    /// Records one relayed `sdp`/`ice` as a metadata row (nothing when metadata logging is
    /// off — and then no id is even generated). Row ids are UUIDv7: time-ordered, so they are
    /// appended at the end of the primary-key index instead of at random places.
    pub fn record_signal(&self, call_id: CallId, sender: UserId, kind: SignalingKind) {
        if !self.0.log_signaling {
            return;
        }
        self.record(CallEvent::Signal {
            id: uuid::Uuid::now_v7(),
            call_id,
            sender,
            kind,
            at: chrono::Utc::now(),
        });
    }

    /// Whether a new call may be admitted (the lifecycle budget has room for its events;
    /// signaling rows never count against it).
    pub fn has_room(&self) -> bool {
        let q = self.queue();
        q.len() - self.0.signals_queued.load(Ordering::Acquire).min(q.len())
            < self.0.lifecycle_capacity
    }

    /// Events not yet committed.
    pub fn backlog(&self) -> usize {
        self.queue().len()
    }

    /// `Err` with the reason while writes are failing.
    pub fn health(&self) -> Result<(), String> {
        let o = self.0.outage.lock().unwrap_or_else(|p| p.into_inner());
        match o.since {
            None => Ok(()),
            Some(since) => Err(format!(
                "call events cannot be written since {}s ago ({} buffered): {}",
                since.elapsed().as_secs(),
                self.backlog(),
                o.error
            )),
        }
    }

    /// Waits until every queued event is committed, up to `deadline`. Returns whether it was.
    pub async fn drain(&self, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        self.wake();
        while self.backlog() > 0 {
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

/// The persistence actor.
pub struct Persistence;

/// Messages of the persistence actor.
#[derive(Debug)]
pub enum PersistenceMsg {
    /// Write what is queued (sent by producers and by the retry timer).
    Flush,
    /// Delete `signaling_messages` rows older than `persistence.signaling_retention_secs`
    /// (sent at start and every [`PRUNE_INTERVAL`]; tests may send it).
    Prune,
}

/// How often old signaling-metadata rows are swept.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(600);

/// Fixed configuration of the persistence actor.
pub struct PersistenceArgs {
    /// The database.
    pub db: DatabaseConnection,
    /// The shared queue.
    pub handle: PersistenceHandle,
    /// Batch size and timing.
    pub settings: PersistenceSettings,
}

/// State of the persistence actor.
pub struct PersistenceState {
    db: DatabaseConnection,
    handle: PersistenceHandle,
    settings: PersistenceSettings,
    backoff: Duration,
}

impl Actor for Persistence {
    type Msg = PersistenceMsg;
    type State = PersistenceState;
    type Arguments = PersistenceArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: PersistenceArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(PersistenceState {
            db: args.db,
            handle: args.handle,
            settings: args.settings,
            backoff: FIRST_BACKOFF,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Carry on with whatever a previous incarnation left in the queue.
        state.handle.0.flush_pending.store(true, Ordering::Release);
        myself.cast(PersistenceMsg::Flush)?;
        if state.settings.signaling_retention_secs > 0 {
            myself.cast(PersistenceMsg::Prune)?;
            myself.send_interval(PRUNE_INTERVAL, || PersistenceMsg::Prune);
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: PersistenceMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PersistenceMsg::Flush => flush(myself, state).await,
            PersistenceMsg::Prune => {
                prune(state).await;
                Ok(())
            }
        }
    }
}

/// Deletes expired signaling-metadata rows. A failure is logged and retried at the next sweep.
async fn prune(state: &PersistenceState) {
    let keep = state.settings.signaling_retention_secs;
    let Some(before) = i64::try_from(keep)
        .ok()
        .and_then(chrono::TimeDelta::try_seconds)
        .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
    else {
        return;
    };
    match calls::prune_signals(&state.db, before).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            deleted = n,
            retention_secs = keep,
            "deleted expired signaling metadata rows"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot delete expired signaling metadata rows"),
    }
}

/// Writes what is queued, batch after batch, until the queue is empty or a write fails.
async fn flush(
    myself: ActorRef<PersistenceMsg>,
    state: &mut PersistenceState,
) -> Result<(), ActorProcessingErr> {
    {
        let h = state.handle.clone();
        if h.backlog() < state.settings.batch_size {
            tokio::time::sleep(Duration::from_millis(state.settings.batch_interval_ms)).await;
        }
        loop {
            let batch: Vec<CallEvent> = h
                .queue()
                .iter()
                .take(state.settings.batch_size)
                .cloned()
                .collect();
            if batch.is_empty() {
                h.0.flush_pending.store(false, Ordering::Release);
                // A producer may have pushed between our look and the flag reset.
                if h.backlog() > 0 && !h.0.flush_pending.swap(true, Ordering::AcqRel) {
                    continue;
                }
                return Ok(());
            }
            let started = Instant::now();
            let written = write_batch(&state.db, &batch).await;
            let metrics = &state.handle.0.metrics;
            metrics
                .persistence_write_seconds
                .observe(started.elapsed().as_secs_f64());
            if written.is_err() {
                metrics.persistence_failures.inc();
            }
            match written {
                Ok(()) => {
                    let signals = h
                        .queue()
                        .drain(..batch.len())
                        .filter(|e| matches!(e, CallEvent::Signal { .. }))
                        .count();
                    h.0.signals_queued.fetch_sub(signals, Ordering::AcqRel);
                    for _ in 0..batch.len() {
                        state.handle.0.metrics.events_written.inc();
                    }
                    state.backoff = FIRST_BACKOFF;
                    let mut o = h.0.outage.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(since) = o.since.take() {
                        tracing::info!(
                            outage_secs = since.elapsed().as_secs(),
                            backlog = h.backlog(),
                            "database writable again; writing buffered call events"
                        );
                    }
                }
                Err(e) => {
                    {
                        let mut o = h.0.outage.lock().unwrap_or_else(|p| p.into_inner());
                        if o.since.is_none() {
                            o.since = Some(Instant::now());
                            tracing::error!(error = %e, backlog = h.backlog(),
                                "cannot write call events; buffering and retrying");
                        }
                        o.error = e.to_string();
                    }
                    let wait = state.backoff;
                    state.backoff = (state.backoff * 2).min(Duration::from_millis(
                        state.settings.retry_max_backoff_ms.max(100),
                    ));
                    myself.send_after(wait, || PersistenceMsg::Flush);
                    return Ok(());
                }
            }
        }
    }
}

async fn write_batch(db: &DatabaseConnection, batch: &[CallEvent]) -> Result<(), sea_orm::DbErr> {
    let txn = db.begin().await?;
    calls::apply_all(&txn, batch).await.map_err(|e| match e {
        crate::store::StoreError::Db(e) => e,
        other => sea_orm::DbErr::Custom(other.to_string()),
    })?;
    txn.commit().await
}
