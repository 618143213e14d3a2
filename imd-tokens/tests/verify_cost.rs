//! Measures the cost of one `Verifier::verify`. Ignored by default; run with
//! `cargo test -p imd-tokens --release -- --ignored --nocapture`.

use std::time::Instant;

use aws_lc_rs::signature::{ED25519, ParsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use imd_tokens::{Claims, ImdVersion, SigningKey, Verifier};

#[test]
#[ignore = "timing measurement, run explicitly in release mode"]
fn time_10k_verifies() {
    const N: u32 = 10_000;
    let now = 1_750_000_000;
    let key = SigningKey::generate("bench").unwrap();
    let other = SigningKey::generate("other").unwrap();
    let verifier = Verifier::new([other.public_key(), key.public_key()])
        .with_issuer("https://imd.example.com");
    let claims = Claims::new(
        "https://imd.example.com",
        "org-00000000-0000-0000-0000-000000000000",
        "tok-00000000-0000-0000-0000-000000000000",
        ImdVersion::V4,
        now,
        Some(now + 365 * 86_400),
    );
    let token = key.sign(&claims).unwrap();
    for _ in 0..200 {
        verifier.verify(&token, now).unwrap();
    }

    let start = Instant::now();
    for _ in 0..N {
        std::hint::black_box(verifier.verify(std::hint::black_box(&token), now).unwrap());
    }
    let per_verify = start.elapsed().as_secs_f64() * 1e6 / f64::from(N);

    let start = Instant::now();
    for _ in 0..N {
        std::hint::black_box(key.sign(std::hint::black_box(&claims)).unwrap());
    }
    let per_sign = start.elapsed().as_secs_f64() * 1e6 / f64::from(N);

    // Baseline: the bare Ed25519 check on the same input, to show how much
    // of a verify is crypto versus parsing and claim checks.
    let (msg, sig) = token.rsplit_once('.').unwrap();
    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    let pk = ParsedPublicKey::new(&ED25519, key.public_key().raw()).unwrap();
    let start = Instant::now();
    for _ in 0..N {
        pk.verify_sig(std::hint::black_box(msg.as_bytes()), &sig)
            .unwrap();
    }
    let per_raw = start.elapsed().as_secs_f64() * 1e6 / f64::from(N);

    println!(
        "token {} bytes: verify {per_verify:.1} µs, sign {per_sign:.1} µs, \
         bare Ed25519 verify {per_raw:.1} µs (mean of {N})",
        token.len()
    );
}
