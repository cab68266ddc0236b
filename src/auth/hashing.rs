//! Argon2id password hashing, run on the blocking pool behind bounds. Logins (verifications) and
//! registrations (new hashes) have separate lanes, each with its own concurrency and its own
//! waiting queue: a registration flood fills only its own lane (503 `server_busy` there) and
//! can never starve logins. Each lane costs a bounded amount of memory (~19 MiB per running
//! hash) and never stalls the async workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use tokio::sync::Semaphore;

/// OWASP's argon2id parameters: 19 MiB, 2 passes, 1 lane.
const M_COST_KIB: u32 = 19_456;
const T_COST: u32 = 2;
const P_COST: u32 = 1;

/// Why hashing could not be done.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Too many hash requests waiting: answer 503 and let the client retry.
    #[error("password hashing is saturated")]
    Busy,
    /// The blocking task failed (should not happen).
    #[error("password hashing failed: {0}")]
    Internal(String),
}

/// Concurrency and queue bound of one lane.
#[derive(Debug, Clone, Copy)]
pub struct LaneLimits {
    /// Hashes computed at once; 0 = the number of CPUs.
    pub concurrent: usize,
    /// Requests allowed to wait for a slot; beyond that, [`HashError::Busy`].
    pub queued: usize,
}

/// One bounded lane: a semaphore of running hashes and a count of waiting ones.
#[derive(Clone)]
struct Lane {
    slots: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
}

impl Lane {
    fn new(limits: LaneLimits) -> Self {
        let n = if limits.concurrent == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        } else {
            limits.concurrent
        };
        Self {
            slots: Arc::new(Semaphore::new(n)),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting: limits.queued,
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(HashError::Busy);
        }
        let permit = self.slots.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let permit = permit.map_err(|e| HashError::Internal(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| HashError::Internal(e.to_string()))
    }
}

/// Bounded argon2id hasher shared by the HTTP handlers.
#[derive(Clone)]
pub struct PasswordHasher {
    /// Login verifications (`auth.max_concurrent_hashes`, `auth.max_queued_hashes`).
    login: Lane,
    /// New hashes at registration (`auth.max_concurrent_registration_hashes`,
    /// `auth.max_queued_registration_hashes`).
    register: Lane,
    /// Hash of a random password, verified against for unknown usernames so that they cost
    /// exactly what a wrong password costs.
    dummy_hash: Arc<str>,
    /// Counts verifications actually computed (exported, and proves equal work in tests).
    metrics: Arc<crate::metrics::Metrics>,
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash_blocking(password: &str) -> Result<String, HashError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| HashError::Internal(e.to_string()))?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Internal(e.to_string()))
}

fn verify_blocking(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|parsed| {
            argon2()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

impl PasswordHasher {
    /// A hasher with separate `login` and `register` lanes.
    pub fn new(
        login: LaneLimits,
        register: LaneLimits,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let mut random = [0u8; 32];
        rand::rng().fill_bytes(&mut random);
        let dummy = hash_blocking(&base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            random,
        ))
        .unwrap_or_default();
        Self {
            login: Lane::new(login),
            register: Lane::new(register),
            dummy_hash: dummy.into(),
            metrics,
        }
    }

    /// Hashes a new password into an argon2id PHC string (registration lane).
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        self.register.run(move || hash_blocking(&password)).await?
    }

    /// Verifies `password` against `phc`, or against the dummy hash when `phc` is `None`
    /// (unknown user): same work, always `false` (login lane).
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool, HashError> {
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy_hash.to_string());
        let metrics = self.metrics.clone();
        let ok = self
            .login
            .run(move || {
                let ok = verify_blocking(&password, &phc);
                metrics.password_verifications.inc();
                ok
            })
            .await?;
        Ok(ok && known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_params_and_verify() {
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let lane = LaneLimits {
            concurrent: 1,
            queued: 4,
        };
        let h = PasswordHasher::new(lane, lane, metrics.clone());
        let phc = h.hash("correct horse battery".into()).await.expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(
            h.verify("correct horse battery".into(), Some(phc.clone()))
                .await
                .expect("v")
        );
        assert!(
            !h.verify("wrong horse battery".into(), Some(phc))
                .await
                .expect("v")
        );
        assert!(!h.verify("anything at all".into(), None).await.expect("v"));
        assert_eq!(
            metrics.password_verifications.get(),
            3,
            "an unknown user costs one verification too"
        );
    }

    #[tokio::test]
    async fn a_full_registration_lane_leaves_logins_alone() {
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let one = LaneLimits {
            concurrent: 1,
            queued: 1,
        };
        let h = PasswordHasher::new(one, one, metrics);
        // Saturate the registration lane: one running, one waiting, the rest refused.
        let hashes: Vec<_> = (0..4)
            .map(|i| {
                let h = h.clone();
                tokio::spawn(async move { h.hash(format!("password number {i}")).await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(
            !h.verify("anything at all".into(), None)
                .await
                .expect("login lane is free"),
            "verified (and refused) instead of 503"
        );
        let busy = futures_util::future::join_all(hashes)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(Err(HashError::Busy))))
            .count();
        assert!(busy >= 1, "the registration lane was saturated");
    }
}
