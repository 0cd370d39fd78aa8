//! Access checks: the pipeline's "token check" step. Today a site may require
//! HMAC-SHA256 signed URLs; a later check (Ed25519 playback tokens) plugs in
//! through the same trait.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Why a request was refused; shown to the client as a one-line reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    MissingSignature,
    Malformed,
    Expired,
    WrongPrefix,
    BadSignature,
}

impl Denied {
    pub fn reason(self) -> &'static str {
        match self {
            Denied::MissingSignature => {
                "missing signature: this site requires signed URLs (exp, sig query parameters)"
            }
            Denied::Malformed => {
                "malformed signature parameters: exp must be a Unix time and sig 64 hex digits"
            }
            Denied::Expired => "signed URL has expired",
            Denied::WrongPrefix => "signed URL does not cover this path",
            Denied::BadSignature => {
                "signature does not match (URL tampered with or signed with another key)"
            }
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Denied::MissingSignature => "missing",
            Denied::Malformed => "malformed",
            Denied::Expired => "expired",
            Denied::WrongPrefix => "prefix",
            Denied::BadSignature => "signature",
        }
    }
}

/// One access-check step of the pipeline.
pub trait AccessCheck: Send + Sync {
    /// `path` is the request path, `query` its raw query string.
    fn check(&self, path: &str, query: Option<&str>, now_unix: u64) -> Result<(), Denied>;
}

/// Query parameters the signer owns; they are removed from the cache key.
pub const SIGNING_PARAMS: [&str; 3] = ["exp", "prefix", "sig"];

/// Signed URLs: `?exp=UNIX&prefix=/v/abc/&sig=HEX`, where
/// `sig = HMAC-SHA256(secret, prefix + "\n" + exp)` and `prefix` (default:
/// the whole path) must start the request path. One signature can so cover
/// a playlist and every segment under it.
pub struct SignedUrls {
    secret: Vec<u8>,
}

impl SignedUrls {
    pub fn new(secret: &str) -> Self {
        SignedUrls {
            secret: secret.as_bytes().to_vec(),
        }
    }

    fn mac(&self, prefix: &str, exp: u64) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(prefix.as_bytes());
        mac.update(b"\n");
        mac.update(exp.to_string().as_bytes());
        mac
    }

    /// The query string that signs `prefix` until `exp`.
    pub fn sign(&self, prefix: &str, exp: u64) -> String {
        let sig = hex::encode(self.mac(prefix, exp).finalize().into_bytes());
        let prefix_enc: String = url::form_urlencoded::byte_serialize(prefix.as_bytes()).collect();
        format!("exp={exp}&prefix={prefix_enc}&sig={sig}")
    }
}

impl AccessCheck for SignedUrls {
    fn check(&self, path: &str, query: Option<&str>, now_unix: u64) -> Result<(), Denied> {
        let (mut exp, mut prefix, mut sig) = (None, None, None);
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "exp" => exp = Some(v.into_owned()),
                "prefix" => prefix = Some(v.into_owned()),
                "sig" => sig = Some(v.into_owned()),
                _ => {}
            }
        }
        let (Some(exp), Some(sig)) = (exp, sig) else {
            return Err(Denied::MissingSignature);
        };
        let exp: u64 = exp.parse().map_err(|_| Denied::Malformed)?;
        let mut sig_bytes = [0u8; 32];
        hex::decode_to_slice(&sig, &mut sig_bytes).map_err(|_| Denied::Malformed)?;
        let prefix = prefix.unwrap_or_else(|| path.to_string());
        let expected = self.mac(&prefix, exp).finalize().into_bytes();
        if !bool::from(expected.as_slice().ct_eq(&sig_bytes)) {
            return Err(Denied::BadSignature);
        }
        if !path.starts_with(&prefix) {
            return Err(Denied::WrongPrefix);
        }
        if exp < now_unix {
            return Err(Denied::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_check() {
        let s = SignedUrls::new("0123456789abcdef0123");
        let q = s.sign("/v/abc/", 2000);
        assert_eq!(s.check("/v/abc/720p/seg1.m4s", Some(&q), 1000), Ok(()));
        assert_eq!(
            s.check("/v/abc/720p/seg1.m4s", Some(&q), 2001),
            Err(Denied::Expired)
        );
        assert_eq!(
            s.check("/v/other/seg1.m4s", Some(&q), 1000),
            Err(Denied::WrongPrefix)
        );
        assert_eq!(
            s.check("/v/abc/x", None, 1000),
            Err(Denied::MissingSignature)
        );
        assert_eq!(
            s.check("/v/abc/x", Some(&q.replace("exp=2000", "exp=3000")), 1000),
            Err(Denied::BadSignature)
        );
        assert_eq!(
            s.check(
                "/v/abc/x",
                Some(&q.replace("prefix=%2Fv%2Fabc%2F", "prefix=%2F")),
                1000
            ),
            Err(Denied::BadSignature)
        );
        assert_eq!(
            s.check("/v/abc/x", Some("exp=zz&sig=00"), 1000),
            Err(Denied::Malformed)
        );
        let other = SignedUrls::new("another-secret-of-16+");
        assert_eq!(
            other.check("/v/abc/x", Some(&q), 1000),
            Err(Denied::BadSignature)
        );
    }
}
