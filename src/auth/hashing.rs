//! Argon2id password hashing, run on the blocking pool behind a bound: at most
//! `max_concurrent_hashes` computations at once and `max_queued_hashes` waiting, so a login
//! storm costs a bounded amount of memory and never stalls the async workers.

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

/// Bounded argon2id hasher shared by the HTTP handlers.
#[derive(Clone)]
pub struct PasswordHasher {
    slots: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
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
    /// `concurrency` 0 means the number of CPUs.
    pub fn new(
        concurrency: usize,
        max_waiting: usize,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let n = if concurrency == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        } else {
            concurrency
        };
        let mut random = [0u8; 32];
        rand::rng().fill_bytes(&mut random);
        let dummy = hash_blocking(&base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            random,
        ))
        .unwrap_or_default();
        Self {
            slots: Arc::new(Semaphore::new(n)),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting,
            dummy_hash: dummy.into(),
            metrics,
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

    /// Hashes a new password into an argon2id PHC string.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        self.run(move || hash_blocking(&password)).await?
    }

    /// Verifies `password` against `phc`, or against the dummy hash when `phc` is `None`
    /// (unknown user): same work, always `false`.
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool, HashError> {
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy_hash.to_string());
        let metrics = self.metrics.clone();
        let ok = self
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
        let h = PasswordHasher::new(1, 4, metrics.clone());
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
}
