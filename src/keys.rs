//! `meshcast keys`: key material for local use.

use anyhow::Context;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes a self-signed certificate (`cert.pem`) and its key (`key.pem`,
/// mode 0600) for `hosts`, valid 13 days, and returns the base64 SHA-256 of
/// its SubjectPublicKeyInfo — what Chromium's
/// `--ignore-certificate-errors-spki-list` takes.
pub fn self_signed_cert(hosts: &[String], out: &Path) -> anyhow::Result<String> {
    anyhow::ensure!(!hosts.is_empty(), "name at least one host with --host");
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut params = rcgen::CertificateParams::new(hosts.to_vec()).context("invalid host name")?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(13);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hosts[0].clone());
    let key = rcgen::KeyPair::generate().context("generating a key")?;
    let cert = params
        .self_signed(&key)
        .context("signing the certificate")?;
    std::fs::write(out.join("cert.pem"), cert.pem())?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(out.join("key.pem"))?;
    f.write_all(key.serialize_pem().as_bytes())?;
    let spki = Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key));
    Ok(base64::engine::general_purpose::STANDARD.encode(spki))
}
