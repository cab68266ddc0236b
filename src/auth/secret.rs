//! Where the JWT key comes from: the configuration, or a key generated once and kept in the
//! data directory with mode 0600 so that restarts keep sessions valid.

use std::io::Write;
use std::path::Path;

use rand::RngCore;

use crate::config::Secret;

/// File name of the generated key inside the data directory.
const SECRET_FILE: &str = "jwt_secret";

/// Bytes of a generated key (256 bits).
const GENERATED_BYTES: usize = 48;

/// Returns the configured key, or loads/generates the one in `data_dir` (the file is kept, or
/// narrowed to, mode 0600).
pub fn load_or_generate(configured: Option<&Secret>, data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = configured {
        return Ok(secret.expose().as_bytes().to_vec());
    }
    let path = data_dir.join(SECRET_FILE);
    if path.exists() {
        let key = std::fs::read(&path)?;
        anyhow::ensure!(
            key.len() >= super::jwt::MIN_SECRET_BYTES,
            "{} is shorter than {} bytes; delete it to have a new one generated",
            path.display(),
            super::jwt::MIN_SECRET_BYTES
        );
        // A key copied in with the umask's mode would be readable by other users.
        crate::store::set_private_file_mode(&path)?;
        return Ok(key);
    }
    crate::store::ensure_private_dir(data_dir)?;
    let mut key = vec![0u8; GENERATED_BYTES];
    rand::rng().fill_bytes(&mut key);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(&path)?.write_all(&key)?;
    tracing::warn!(
        path = %path.display(),
        "auth.jwt_secret is not set: generated a new signing key and stored it (mode 0600); \
         set auth.jwt_secret to share one key between instances"
    );
    Ok(key)
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn an_existing_key_readable_by_others_is_narrowed_to_0600() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(SECRET_FILE);
        std::fs::write(&path, [7u8; 48]).expect("key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let key = load_or_generate(None, dir.path()).expect("loads");
        assert_eq!(key, [7u8; 48]);
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
