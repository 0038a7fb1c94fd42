//! RSA-OAEP (SHA-1, MGF1-SHA-1, empty label) with keys of 1024 to 2047 bits, which the
//! v1 "ssl" mode accepts from fleets that still have them ([`super::keys`] decides
//! when; nothing else uses this module).
//!
//! aws-lc-rs refuses RSA keys under 2048 bits for encryption; aws-lc itself, the C
//! library underneath it, does not. These keys go through aws-lc's C API (the
//! `aws-lc-sys` crate aws-lc-rs already links), so the private-key operation is aws-lc's
//! blinded, constant-time one, as for larger keys, and never the pure-Rust `rsa` crate
//! (RUSTSEC-2023-0071).
//!
//! ```text
//! PKCS#8 DER ─ d2i_AutoPrivateKey ─ EVP_PKEY_get1_RSA ─► RSA ─ RSA_private_decrypt(OAEP)
//! SPKI DER   ─ d2i_RSA_PUBKEY ─────────────────────────► RSA ─ RSA_public_encrypt(OAEP)
//! ```
//!
//! Every `unsafe` block of the crypto code is in this file, each with its argument.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::os::raw::{c_int, c_long};
use std::ptr::{self, NonNull};

use aws_lc_sys as ffi;

/// OAEP padding's overhead with SHA-1: two digests and two bytes.
const OAEP_SHA1_OVERHEAD: usize = 2 * 20 + 2;

/// An aws-lc `RSA` object (public, or private with its public half), freed on drop.
pub(crate) struct LegacyRsa(NonNull<ffi::RSA>);

// SAFETY: once built, an aws-lc RSA object may be used from several threads at once
// (the values it computes lazily, Montgomery contexts and blinding, are under its own
// lock); this is what aws-lc-rs relies on for its own keys. Nothing here changes the
// key after it is built.
unsafe impl Send for LegacyRsa {}
// SAFETY: as for `Send`.
unsafe impl Sync for LegacyRsa {}

impl Drop for LegacyRsa {
    fn drop(&mut self) {
        // SAFETY: we own one reference to the object, released exactly once here.
        unsafe { ffi::RSA_free(self.0.as_ptr()) }
    }
}

/// Empties this thread's aws-lc error queue after a failed call, so that a later,
/// unrelated operation never sees a stale error.
fn clear_errors() {
    // SAFETY: no arguments; only touches the calling thread's error queue.
    unsafe { ffi::ERR_clear_error() }
}

impl LegacyRsa {
    /// Parses a PKCS#8 `PrivateKeyInfo` (DER) holding a consistent RSA private key.
    pub(crate) fn private_from_pkcs8(der: &[u8]) -> Option<LegacyRsa> {
        let len = c_long::try_from(der.len()).ok()?;
        let mut input = der.as_ptr();
        // SAFETY: `input` points to `len` readable bytes that outlive the call; with a
        // null `out`, aws-lc allocates a new EVP_PKEY whose one reference we own.
        let pkey = unsafe { ffi::d2i_AutoPrivateKey(ptr::null_mut(), &mut input, len) };
        let Some(pkey) = NonNull::new(pkey) else {
            clear_errors();
            return None;
        };
        // SAFETY: `pkey` is a valid EVP_PKEY; get1 returns a new reference to its RSA
        // (null if it holds another kind of key), which we then own.
        let rsa = unsafe { ffi::EVP_PKEY_get1_RSA(pkey.as_ptr()) };
        // SAFETY: we own `pkey`'s one reference and release it once; `rsa` holds its own.
        unsafe { ffi::EVP_PKEY_free(pkey.as_ptr()) };
        let key = LegacyRsa(NonNull::new(rsa).or_else(|| {
            clear_errors();
            None
        })?);
        // SAFETY: `key.0` is a valid RSA object.
        if unsafe { ffi::RSA_check_key(key.0.as_ptr()) } != 1 {
            clear_errors();
            return None;
        }
        Some(key)
    }

    /// Parses a `SubjectPublicKeyInfo` (DER) holding an RSA public key.
    pub(crate) fn public_from_spki(der: &[u8]) -> Option<LegacyRsa> {
        let len = c_long::try_from(der.len()).ok()?;
        let mut input = der.as_ptr();
        // SAFETY: `input` points to `len` readable bytes that outlive the call; with a
        // null `out`, aws-lc allocates a new RSA whose one reference we own.
        let rsa = unsafe { ffi::d2i_RSA_PUBKEY(ptr::null_mut(), &mut input, len) };
        match NonNull::new(rsa) {
            Some(rsa) => Some(LegacyRsa(rsa)),
            None => {
                clear_errors();
                None
            }
        }
    }

    /// The modulus length in bytes (the size of every ciphertext).
    fn size(&self) -> usize {
        // SAFETY: `self.0` is a valid RSA object.
        let bytes = unsafe { ffi::RSA_size(self.0.as_ptr()) };
        usize::try_from(bytes).unwrap_or(0)
    }

    /// The modulus length in bits.
    pub(crate) fn bits(&self) -> usize {
        // SAFETY: `self.0` is a valid RSA object.
        let bits = unsafe { ffi::RSA_bits(self.0.as_ptr()) };
        usize::try_from(bits).unwrap_or(0)
    }

    /// Decrypts one OAEP-SHA-1 block; `None` on any failure, without detail.
    pub(crate) fn decrypt_oaep_sha1(&self, ciphertext: &[u8]) -> Option<Vec<u8>> {
        let size = self.size();
        if size == 0 || ciphertext.len() != size {
            return None;
        }
        let mut out = vec![0u8; size];
        // SAFETY: `ciphertext` is `ciphertext.len()` readable bytes; `out` has
        // RSA_size writable bytes, the most RSA_private_decrypt writes; `self.0` is a
        // valid RSA object with its private half (built by `private_from_pkcs8`; on a
        // public-only key the call fails cleanly).
        let written = unsafe {
            ffi::RSA_private_decrypt(
                ciphertext.len(),
                ciphertext.as_ptr(),
                out.as_mut_ptr(),
                self.0.as_ptr(),
                ffi::RSA_PKCS1_OAEP_PADDING as c_int,
            )
        };
        let Ok(written) = usize::try_from(written) else {
            clear_errors();
            return None;
        };
        out.truncate(written);
        Some(out)
    }

    /// Encrypts `plaintext` into one OAEP-SHA-1 block (randomized); `None` if it is too
    /// long or the operation fails.
    pub(crate) fn encrypt_oaep_sha1(&self, plaintext: &[u8]) -> Option<Vec<u8>> {
        let size = self.size();
        if plaintext.len() + OAEP_SHA1_OVERHEAD > size {
            return None;
        }
        let mut out = vec![0u8; size];
        // SAFETY: `plaintext` is `plaintext.len()` readable bytes, short enough for the
        // modulus (checked above); `out` has RSA_size writable bytes, what
        // RSA_public_encrypt writes; `self.0` is a valid RSA object.
        let written = unsafe {
            ffi::RSA_public_encrypt(
                plaintext.len(),
                plaintext.as_ptr(),
                out.as_mut_ptr(),
                self.0.as_ptr(),
                ffi::RSA_PKCS1_OAEP_PADDING as c_int,
            )
        };
        let Ok(written) = usize::try_from(written) else {
            clear_errors();
            return None;
        };
        out.truncate(written);
        Some(out)
    }
}
