//! What an invite becomes: refused (`busy_self`, `user_not_found`, rate or persistence limits),
//! a call that ends at once (`busy`, `unavailable`, `glare`), or a ringing call with its own
//! call actor.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use chrono::Utc;
use ractor::ActorRef;

use super::{CallEntry, CallEntryInfo, INVITE_WINDOW, RegistryMsg, RegistryState};
use crate::actors::call::CallArgs;
use crate::actors::supervisor::SupervisorMsg;
use crate::actors::{ConnRef, ask};
use crate::domain::{CallId, UserId, UserRef, Username};
use crate::store::calls::CallEvent;
use crate::ws::protocol::{EndReason, ErrorCode, ServerMessage};

impl RegistryState {
    /// What a new call actor starts with: the call, its two parties, the callee's devices to
    /// ring and the invite's `ref`; the rest comes from the settings.
    pub(super) fn call_args(
        &self,
        id: CallId,
        caller: &ConnRef,
        callee: &UserRef,
        callee_conns: Vec<ConnRef>,
        invite_ref: Option<String>,
    ) -> CallArgs {
        CallArgs {
            id,
            caller: caller.clone(),
            callee: callee.clone(),
            callee_conns,
            invite_ref,
            ring_timeout: Duration::from_secs(self.args.settings.calls.ring_timeout_secs),
            instance_id: self.args.settings.server.instance_id.clone(),
            system_id: self.args.system_id.clone(),
            persistence: self.args.persistence.clone(),
            metrics: self.args.metrics.clone(),
            #[cfg(feature = "test-hooks")]
            tamper_fingerprint_to: self.args.settings.test_hooks.tamper_fingerprint_to.clone(),
        }
    }

    pub(super) async fn invite(
        &mut self,
        me: &ActorRef<RegistryMsg>,
        from: ConnRef,
        to: &str,
        reference: Option<String>,
    ) {
        let fail = |code, msg: &str, reference| {
            from.send(ServerMessage::error(code, msg, reference, None))
        };
        if self.shutting_down {
            return fail(
                ErrorCode::InternalError,
                "the server is shutting down",
                reference,
            );
        }
        let Ok(to) = Username::parse(to) else {
            return fail(ErrorCode::UserNotFound, "no such user", reference);
        };
        if to == from.user.username {
            return fail(ErrorCode::BadMessage, "you cannot call yourself", reference);
        }
        if !self.args.persistence.has_room() {
            return fail(
                ErrorCode::PersistenceUnavailable,
                "call records cannot be written right now; try again shortly",
                reference,
            );
        }
        let window = self.invites.entry(from.user.id).or_default();
        let now = Instant::now();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= INVITE_WINDOW)
        {
            window.pop_front();
        }
        if window.len() >= self.args.settings.calls.invites_per_minute as usize {
            self.args.metrics.rate_limited.inc();
            return fail(
                ErrorCode::RateLimited,
                "too many invites; wait a minute",
                reference,
            );
        }
        window.push_back(now);
        if self.cluster.is_some() {
            return self.cluster_invite(me, from, to, reference);
        }
        if let Some(&callee_id) = self.names.get(&to) {
            let callee = UserRef {
                id: callee_id,
                username: to,
            };
            return self.invite_online_or(&from, callee, reference, false).await;
        }
        // Not connected here: is it a user at all? Ask the database off the registry's loop.
        let db = self.args.db.clone();
        let me = me.clone();
        tokio::spawn(async move {
            let callee = match crate::store::users::find_by_username(&db, &to).await {
                Ok(found) => found.map(|u| u.user),
                Err(e) => {
                    tracing::warn!(error = %e, "callee lookup failed");
                    from.send(ServerMessage::error(
                        ErrorCode::InternalError,
                        "could not look up the user; retry",
                        reference,
                        None,
                    ));
                    return;
                }
            };
            let _ = me.cast(RegistryMsg::InviteOffline {
                from,
                callee,
                reference,
            });
        });
    }

    /// Decides what the invite becomes once the callee is known.
    pub(super) async fn invite_online_or(
        &mut self,
        from: &ConnRef,
        callee: UserRef,
        reference: Option<String>,
        offline: bool,
    ) {
        let caller_call = self.users.get(&from.user.id).and_then(|u| u.call);
        let callee_call = self.users.get(&callee.id).and_then(|u| u.call);
        // Glare: the callee is ringing us right now.
        let glare = callee_call.is_some()
            && callee_call == caller_call
            && caller_call
                .and_then(|c| self.calls.get(&c))
                .is_some_and(|c| {
                    c.info.callee_conn.is_none()
                        && c.info.caller.user.id == callee.id
                        && c.info.callee.id == from.user.id
                });
        if glare {
            return self.ended_at_once(from, callee, reference, EndReason::Glare);
        }
        if caller_call.is_some() {
            return from.send(ServerMessage::error(
                ErrorCode::BusySelf,
                "you are already in a call",
                reference,
                None,
            ));
        }
        if !self.admit_invite_to(from.user.id, callee.id) {
            self.args.metrics.rate_limited.inc();
            return from.send(ServerMessage::error(
                ErrorCode::RateLimited,
                "this user was called too often in the last minute; try again later",
                reference,
                None,
            ));
        }
        let conns: Vec<ConnRef> = self
            .users
            .get(&callee.id)
            .map(|u| {
                u.conns
                    .iter()
                    .filter_map(|c| self.conns.get(c))
                    .map(|e| e.conn.clone())
                    .collect()
            })
            .unwrap_or_default();
        if callee_call.is_some() {
            return self.ended_at_once(from, callee, reference, EndReason::Busy);
        }
        if offline || conns.is_empty() {
            return self.ended_at_once(from, callee, reference, EndReason::Unavailable);
        }
        let call_id = CallId::new();
        let args = self.call_args(call_id, from, &callee, conns, reference.clone());
        let Some(actor) = ask(&self.args.calls, |r| {
            SupervisorMsg::SpawnCall(Box::new(args), r)
        })
        .await
        .flatten() else {
            return from.send(ServerMessage::error(
                ErrorCode::InternalError,
                "could not start the call",
                reference,
                None,
            ));
        };
        for uid in [from.user.id, callee.id] {
            self.users.entry(uid).or_default().call = Some(call_id);
        }
        let info = CallEntryInfo {
            call_id,
            caller: from.clone(),
            callee,
            callee_conn: None,
        };
        self.calls.insert(call_id, CallEntry { actor, info });
    }

    /// The per-callee and per-pair invite limits (harassment bounds): records the invite and
    /// says whether it may proceed.
    pub(super) fn admit_invite_to(&mut self, caller: UserId, callee: UserId) -> bool {
        let now = Instant::now();
        let calls = &self.args.settings.calls;
        let (per_callee, per_pair) = (
            calls.invites_per_callee_per_minute as usize,
            calls.invites_per_pair_per_minute as usize,
        );
        let fresh = |w: &mut VecDeque<Instant>| {
            while w
                .front()
                .is_some_and(|t| now.duration_since(*t) >= INVITE_WINDOW)
            {
                w.pop_front();
            }
            w.len()
        };
        let to = fresh(self.invites_to.entry(callee).or_default());
        let pair = fresh(self.invites_pair.entry((caller, callee)).or_default());
        if to >= per_callee || pair >= per_pair {
            return false;
        }
        self.invites_to.entry(callee).or_default().push_back(now);
        self.invites_pair
            .entry((caller, callee))
            .or_default()
            .push_back(now);
        true
    }

    /// A call that ends as soon as it is created (busy, unavailable, glare): recorded, and the
    /// inviter told, without a call actor.
    pub(super) fn ended_at_once(
        &self,
        from: &ConnRef,
        callee: UserRef,
        reference: Option<String>,
        reason: EndReason,
    ) {
        let call_id = CallId::new();
        let now = Utc::now();
        self.args.persistence.record(CallEvent::Created {
            call_id,
            caller: from.user.id,
            callee: callee.id,
            instance_id: self.args.settings.server.instance_id.clone(),
            at: now,
        });
        self.args.metrics.call_ended(reason.as_str());
        self.args.persistence.record(CallEvent::Ended {
            call_id,
            reason: reason.as_str(),
            at: now,
        });
        self.args.metrics.calls_created.inc();
        from.send(ServerMessage::CallCreated {
            call_id,
            to: callee,
            reference,
        });
        from.send(ServerMessage::CallEnded {
            call_id,
            reason,
            cause: None,
            reference: None,
        });
        tracing::info!(call_id = %call_id, reason = reason.as_str(), "call ended at once");
    }
}
