//! imd mass-deployment tokens: the claim format, Ed25519 (EdDSA) signing
//! keys, verification, and the logic behind the `imd-tokens` CLI.
//!
//! A token is a compact JWS/JWT with header `{"typ":"JWT","alg":"EdDSA","kid":…}`
//! and the claims in [`Claims`]. See README.md for the full format.

pub mod bundle;
mod claims;
pub mod cli;
mod error;
mod keys;
mod verify;

pub use claims::{AUDIENCE, Claims, ImdVersion};
pub use error::TokenError;
pub use keys::{PublicKey, SigningKey, jwks};
pub use verify::{Unverified, Verifier, decode_unverified};
