//! RSA keys (temporary stub until the full loader lands).
#![allow(missing_docs)]
use aws_lc_rs::rsa::{
    OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey, PublicEncryptingKey,
    OAEP_SHA256_MGF1SHA256,
};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

pub struct RsaPrivateKey(OaepPrivateDecryptingKey);
pub struct RsaPublicKey(OaepPublicEncryptingKey);

fn der(pem: &str) -> Result<Vec<u8>, KeyError> {
    use base64::Engine;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| KeyError(e.to_string()))
}

impl RsaPrivateKey {
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        Self::from_pem(&std::fs::read_to_string(path).map_err(|e| KeyError(e.to_string()))?)
    }
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let k =
            PrivateDecryptingKey::from_pkcs8(&der(pem)?).map_err(|e| KeyError(e.to_string()))?;
        Ok(Self(
            OaepPrivateDecryptingKey::new(k).map_err(|e| KeyError(e.to_string()))?,
        ))
    }
    pub fn decrypt_oaep_sha256(&self, ct: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut out = vec![0u8; self.0.min_output_size()];
        let n = self
            .0
            .decrypt(&OAEP_SHA256_MGF1SHA256, ct, &mut out, None)
            .map_err(|_| KeyError("decrypt".into()))?
            .len();
        out.truncate(n);
        Ok(out)
    }
}

impl RsaPublicKey {
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        Self::from_pem(&std::fs::read_to_string(path).map_err(|e| KeyError(e.to_string()))?)
    }
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let k = PublicEncryptingKey::from_der(&der(pem)?).map_err(|e| KeyError(e.to_string()))?;
        Ok(Self(
            OaepPublicEncryptingKey::new(k).map_err(|e| KeyError(e.to_string()))?,
        ))
    }
    pub fn encrypt_oaep_sha256(&self, pt: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut out = vec![0u8; self.0.ciphertext_size()];
        let n = self
            .0
            .encrypt(&OAEP_SHA256_MGF1SHA256, pt, &mut out, None)
            .map_err(|_| KeyError("encrypt".into()))?
            .len();
        out.truncate(n);
        Ok(out)
    }
}
