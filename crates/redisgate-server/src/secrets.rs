//! Sealing secrets RedisGate must be able to read back (an external instance's URL, which
//! carries its password): XChaCha20-Poly1305 under a key kept outside the database, so a
//! copy of the database alone reveals nothing.
//!
//! The key is `REDISGATE_SECRET_KEY` (64 hex digits; every replica sharing a PostgreSQL store
//! needs the same one) or, by default, `<data_dir>/secret.key`, created with 256 random bits
//! and mode 0600 on first start (and put back to 0600 at every start).

use std::io::Write as _;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

const NONCE: usize = 24;

/// Seals and opens small secrets.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("secret key: {0}")]
    Key(String),
    #[error("a sealed secret could not be opened (wrong secret key, or damaged data)")]
    Open,
}

impl Sealer {
    pub fn from_key(key: [u8; 32]) -> Self {
        Sealer { cipher: XChaCha20Poly1305::new(&key.into()) }
    }

    /// The key from `hex` if given, else from (or newly into) `data_dir/secret.key`.
    pub fn load(hex: Option<&str>, data_dir: &Path) -> Result<Self, SealError> {
        if let Some(hex) = hex {
            return parse_hex(hex.trim())
                .map(Self::from_key)
                .ok_or_else(|| SealError::Key("REDISGATE_SECRET_KEY must be 64 hex digits".into()));
        }
        let path = data_dir.join("secret.key");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                tighten(&path)?;
                parse_hex(text.trim())
                    .map(Self::from_key)
                    .ok_or_else(|| SealError::Key(format!("{} does not hold 64 hex digits", path.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key).map_err(|e| SealError::Key(e.to_string()))?;
                std::fs::create_dir_all(data_dir).map_err(|e| SealError::Key(e.to_string()))?;
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut f =
                    options.open(&path).map_err(|e| SealError::Key(format!("{}: {e}", path.display())))?;
                let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
                f.write_all(hex.as_bytes()).map_err(|e| SealError::Key(e.to_string()))?;
                Ok(Self::from_key(key))
            }
            Err(e) => Err(SealError::Key(format!("{}: {e}", path.display()))),
        }
    }

    /// `nonce || ciphertext`.
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE];
        getrandom::fill(&mut nonce).expect("the OS random source works");
        let sealed = self.cipher.encrypt(&XNonce::from(nonce), plain).expect("sealing in memory cannot fail");
        [nonce.as_slice(), &sealed].concat()
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE {
            return Err(SealError::Open);
        }
        let (nonce, body) = sealed.split_at(NONCE);
        let nonce: [u8; NONCE] = nonce.try_into().map_err(|_| SealError::Open)?;
        self.cipher.decrypt(&XNonce::from(nonce), body).map_err(|_| SealError::Open)
    }
}

/// A key file loosened since it was created (by hand, a restore from backup) goes back to 0600.
fn tighten(path: &Path) -> Result<(), SealError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| SealError::Key(format!("{}: {e}", path.display())))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn parse_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The SHA-256 of a secret token, as the store keeps it.
pub fn hash_secret(secret: &str) -> redisgate_core::store::SecretHash {
    <sha2::Sha256 as sha2::Digest>::digest(secret.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_round_trip_and_keys_persist() {
        let dir = tempfile::tempdir().unwrap();
        let a = Sealer::load(None, dir.path()).unwrap();
        let sealed = a.seal(b"redis://:pw@host:6379");
        assert!(!sealed.windows(2).any(|w| w == b"pw"));
        let b = Sealer::load(None, dir.path()).unwrap();
        assert_eq!(b.open(&sealed).unwrap(), b"redis://:pw@host:6379");
        let other = Sealer::load(Some(&"ab".repeat(32)), dir.path()).unwrap();
        assert!(other.open(&sealed).is_err());
        assert!(Sealer::load(Some("short"), dir.path()).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("secret.key")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
