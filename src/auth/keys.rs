//! The keys tokens are verified with: HS256 secrets (any listed one
//! verifies, so a secret can rotate) and a JWKS file (RS256, ES256, EdDSA;
//! `kid` selects the key), re-read when its content changes.
//!
//! Algorithm confusion is impossible by construction: a secret is only ever
//! tried for `HS256`, a JWKS key only for the one algorithm it is pinned to
//! (its `alg`, or the only one its type allows), and symmetric (`oct`) keys
//! in a JWKS are refused. `alg: none` is not an algorithm jsonwebtoken knows.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::{Mutex, RwLock};

/// One verification key from the JWKS, pinned to one algorithm.
struct Pinned {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The parsed content of the JWKS file.
#[derive(Default)]
struct JwkKeys {
    keys: Vec<Pinned>,
}

/// The JWKS file and what was last loaded from it.
struct JwksFile {
    path: PathBuf,
    keys: RwLock<Arc<JwkKeys>>,
    /// The bytes last parsed: a reload whose content is unchanged does nothing.
    loaded: Mutex<Vec<u8>>,
}

pub struct Keys {
    secrets: Vec<DecodingKey>,
    jwks: Option<JwksFile>,
}

/// The keys a token's header selects, each with the algorithm to verify it with.
pub struct Candidates {
    pub keys: Vec<(Algorithm, DecodingKey)>,
}

impl Keys {
    /// Secrets and the JWKS file as configured; a bad secret or file is an error.
    pub fn new(secrets: &[String], jwks: Option<&Path>) -> Result<Keys, String> {
        let secrets = secrets
            .iter()
            .map(|s| secret(s))
            .collect::<Result<Vec<_>, _>>()?;
        let jwks = jwks.map(JwksFile::open).transpose()?;
        Ok(Keys { secrets, jwks })
    }

    pub fn has_jwks(&self) -> bool {
        self.jwks.is_some()
    }

    /// The keys a token with this header may be verified with (possibly none).
    pub fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> Candidates {
        let keys = match alg {
            Algorithm::HS256 => self.secrets.iter().map(|k| (alg, k.clone())).collect(),
            _ => match &self.jwks {
                Some(f) => f.select(alg, kid),
                None => Vec::new(),
            },
        };
        Candidates { keys }
    }

    /// Re-reads the JWKS file; `Ok(true)` when its content changed and was
    /// loaded. A file that no longer parses keeps the keys loaded before.
    pub fn reload(&self) -> Result<bool, String> {
        match &self.jwks {
            Some(f) => f.reload(),
            None => Ok(false),
        }
    }
}

/// A secret shorter than HS256's output is too weak to accept.
fn secret(s: &str) -> Result<DecodingKey, String> {
    if s.len() < 32 {
        return Err("auth_jwt_secret must be at least 32 bytes".into());
    }
    DecodingKey::from_secret(s.as_bytes()).map_err(|e| format!("auth_jwt_secret: {e}"))
}

impl JwksFile {
    fn open(path: &Path) -> Result<JwksFile, String> {
        let f = JwksFile {
            path: path.to_path_buf(),
            keys: RwLock::new(Arc::default()),
            loaded: Mutex::new(Vec::new()),
        };
        f.reload()?;
        Ok(f)
    }

    fn reload(&self) -> Result<bool, String> {
        let shown = self.path.display();
        let bytes = std::fs::read(&self.path).map_err(|e| format!("auth_jwks {shown}: {e}"))?;
        let mut loaded = self.loaded.lock();
        if *loaded == bytes {
            return Ok(false);
        }
        let keys = parse(&bytes).map_err(|e| format!("auth_jwks {shown}: {e}"))?;
        *self.keys.write() = Arc::new(keys);
        *loaded = bytes;
        Ok(true)
    }

    fn select(&self, alg: Algorithm, kid: Option<&str>) -> Vec<(Algorithm, DecodingKey)> {
        let keys = self.keys.read().clone();
        keys.keys
            .iter()
            .filter(|p| p.alg == alg && (kid.is_none() || p.kid.as_deref() == kid))
            .map(|p| (p.alg, p.key.clone()))
            .collect()
    }
}

/// For config validation: the JWKS file must exist and every key in it parse.
pub fn check_file(path: &Path) -> Result<(), String> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("auth_jwks: {shown}: {e}"))?;
    parse(&bytes)
        .map(drop)
        .map_err(|e| format!("auth_jwks: {shown}: {e}"))
}

/// Every key must be usable: a typo in the file is reported, not skipped.
fn parse(bytes: &[u8]) -> Result<JwkKeys, String> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS: {e}"))?;
    let keys = set
        .keys
        .iter()
        .enumerate()
        .map(|(i, jwk)| pin(jwk).map_err(|e| format!("key {i}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(JwkKeys { keys })
}

fn pin(jwk: &Jwk) -> Result<Pinned, String> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => Algorithm::ES384,
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are refused: use auth_jwt_secret".into())
        }
        _ => return Err("unsupported key type".into()),
    };
    let alg = match jwk.common.key_algorithm {
        Some(a) => Algorithm::try_from(a).map_err(|e| format!("alg: {e}"))?,
        None => implied,
    };
    if alg.family() != implied.family() {
        return Err(format!("alg {alg:?} does not fit the key's type"));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    Ok(Pinned {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_secrets_and_symmetric_jwks_keys_are_refused() {
        assert!(Keys::new(&["short".into()], None).is_err());
        let oct = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}"#;
        assert!(parse(oct).err().unwrap().contains("symmetric"));
        assert!(parse(b"{}").is_err());
    }

    #[test]
    fn an_rsa_key_pinned_to_an_hmac_alg_is_refused() {
        let jwk = r#"{"keys":[{"kty":"RSA","alg":"HS256","n":"AQAB","e":"AQAB"}]}"#;
        assert!(parse(jwk.as_bytes())
            .err()
            .unwrap()
            .contains("does not fit"));
    }

    #[test]
    fn secrets_are_only_candidates_for_hs256() {
        let k = Keys::new(&["0123456789abcdef0123456789abcdef".into()], None).unwrap();
        assert_eq!(k.candidates(Algorithm::HS256, None).keys.len(), 1);
        assert!(k.candidates(Algorithm::RS256, None).keys.is_empty());
        assert!(k.candidates(Algorithm::HS384, None).keys.is_empty());
    }
}
