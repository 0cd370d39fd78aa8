//! Delivery receipts and the acks that countersign them.
//!
//! The edge seals a receipt for each media response it sends under a token
//! (`Meshcast-Receipt` header). The player checks it against what it
//! received and signs an ack with the session key named in the token. An
//! ack is thus a statement by two parties — the edge that served and the
//! viewer that was served — and only acks are ever paid for.
//!
//! Receipt wire format (written by hand because it is what the viewer
//! signs and must be byte-exact across Rust and the browser plugin):
//! `"MR4" node[32] token[16] content[16] time_ms serial start len path_len
//!  path seal[16]`, the five numbers as unsigned LEB128 varints in their
//! shortest form (anything longer is refused, so one receipt has one
//! encoding). `seal` is a keyed BLAKE3 MAC over everything before it that
//! only the edge can make: when an ack comes back, the edge knows in
//! nanoseconds that the receipt is one it issued, byte for byte.
//!
//! Why MR4 is shorter than MR3 (`content[32]`, the numbers as 8 bytes
//! big-endian and `path_len` as 2: 39 bytes more for a typical segment,
//! 52 more characters of header): a receipt goes out on every paid
//! response, and on small ones its bytes are most of its cost (see
//! BENCHMARKS.md, receipts). 128 bits of BLAKE3 name content as firmly
//! as 256 here: the HUB compares a receipt's content id with the one it
//! computes for what it published, so a cheater needs a second preimage
//! of that id, not a collision. MR3 receipts are still read (acks logged
//! before an upgrade are claimed after it); their content id is the first
//! 16 bytes of the 32, which is MR4's for the same content.
//!
//! Why a receipt carries no Ed25519 signature of the edge (MR2 did, ~14 µs
//! per response, half of what two cores served of 1 KB objects): the edge
//! puts its name to its acks when it claims them. A claim is a node-signed
//! envelope whose Merkle root covers every ack's bytes, receipt included,
//! and the HUB opens acks only against that root, so each opened receipt
//! is as much the edge's signed statement as if it were signed alone, and
//! the envelope is what the HUB keeps as evidence. Nobody else is ever
//! shown a receipt as proof: the viewer signs what arrived (its byte count,
//! path and token, checked before it acks), and the HUB's probes check
//! what a receipt says against the catalog. Unacked responses (scrapers,
//! players without the plugin, floods) now cost the edge one keyed hash.

/// Names the content of a response for its receipt: BLAKE3 of the origin's
/// ETag (the HUB's ETag is the file's BLAKE3 already) or of the path. The
/// HUB computes the same for what it published, to bind receipts to it.
pub fn content_id(etag: Option<&[u8]>, path: &str) -> [u8; 16] {
    let full = match etag {
        Some(e) => blake3::derive_key("meshcast content v1 etag", e),
        None => blake3::derive_key("meshcast content v1 path", path.as_bytes()),
    };
    full[..16].try_into().expect("16 of 32")
}

/// Whether a response under a token is paid media: everything but
/// playlists and MPDs (`.m3u8`, `.mpd`), which are small, fetched again and
/// again, and needed to learn why media is refused. Paid responses carry a
/// receipt and count against the token's byte budget; playlists do neither
/// and pass even when the budget is spent.
pub fn is_paid_media(path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let name = path.rsplit('/').next().unwrap_or(path);
    // Called on every tokened request: no allocation.
    !name
        .rsplit_once('.')
        .is_some_and(|(_, ext)| ext.eq_ignore_ascii_case("m3u8") || ext.eq_ignore_ascii_case("mpd"))
}

use crate::identity::NodeKey;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::Signer;
use unsigned_varint as varint;

const MAGIC: &[u8; 3] = b"MR4";
/// Magic, node, token, content: what comes before the varints.
const HEAD: usize = 3 + 32 + 16 + 16;
/// The earlier, fixed layout, still read: `"MR3" node[32] token[16]
/// content[32] time_ms[8] serial[8] start[8] len[8] path_len[2] path
/// seal[16]`, big-endian.
const MAGIC_V3: &[u8; 3] = b"MR3";
const FIXED_V3: usize = 3 + 32 + 16 + 32 + 8 + 8 + 8 + 8 + 2;
const SEAL: usize = 16;
/// What a session key signs: this, then the receipt's wire bytes.
pub const ACK_CONTEXT: &[u8] = b"meshcast-ack-v1\n";
pub const MAX_PATH: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The serving edge's public key.
    pub node: [u8; 32],
    /// `token::token_id` of the playback token the request carried.
    pub token: [u8; 16],
    /// `content_id` of what was served (see the edge for what it hashes).
    pub content: [u8; 16],
    pub time_ms: u64,
    /// Unique per receipt from one edge, so equal requests differ.
    pub serial: u64,
    /// Byte range of the representation: `start .. start + len`.
    pub start: u64,
    pub len: u64,
    /// Request path without the token (what the token's prefix must cover).
    pub path: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReceiptError {
    #[error("receipt is malformed: {0}")]
    Malformed(&'static str),
    #[error("receipt was not issued by this edge, or was changed since (seal mismatch)")]
    NotOurs,
    #[error("ack signature does not verify with the token's session key")]
    BadAckSignature,
}

fn seal_key(key: &NodeKey) -> [u8; 32] {
    blake3::derive_key("meshcast receipt seal v3", &key.signing().to_bytes())
}

fn seal(key: &[u8; 32], sealed: &[u8]) -> [u8; SEAL] {
    blake3::keyed_hash(key, sealed).as_bytes()[..SEAL]
        .try_into()
        .expect("16 of 32")
}

/// A receipt as sent: its fields and its exact wire bytes, seal included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedReceipt {
    pub receipt: Receipt,
    pub wire: Vec<u8>,
}

impl Receipt {
    /// The wire bytes the seal covers.
    fn unsealed_wire(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEAD + 5 * 10 + self.path.len() + SEAL);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.node);
        b.extend_from_slice(&self.token);
        b.extend_from_slice(&self.content);
        let path_len = self.path.len() as u64;
        for n in [self.time_ms, self.serial, self.start, self.len, path_len] {
            b.extend_from_slice(varint::encode::u64(n, &mut varint::encode::u64_buffer()));
        }
        b.extend_from_slice(self.path.as_bytes());
        b
    }
}

/// Issues and recognises one edge's receipts; holds the node key, whose
/// signature goes on the claims that carry them.
pub struct ReceiptSealer {
    key: NodeKey,
    seal_key: [u8; 32],
    node: [u8; 32],
}

impl ReceiptSealer {
    pub fn new(key: NodeKey) -> Self {
        ReceiptSealer {
            seal_key: seal_key(&key),
            node: key.public().to_bytes(),
            key,
        }
    }

    pub fn node(&self) -> [u8; 32] {
        self.node
    }

    pub fn key(&self) -> &NodeKey {
        &self.key
    }

    /// Fills in `node`, seals, and returns the wire bytes. A path longer
    /// than `MAX_PATH` bytes is cut at a character boundary.
    #[allow(clippy::too_many_arguments)]
    pub fn issue(
        &self,
        token: [u8; 16],
        content: [u8; 16],
        path: &str,
        start: u64,
        len: u64,
        time_ms: u64,
        serial: u64,
    ) -> SealedReceipt {
        let mut cut = path.len().min(MAX_PATH);
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        let r = Receipt {
            node: self.node,
            token,
            content,
            time_ms,
            serial,
            start,
            len,
            path: path[..cut].to_string(),
        };
        let mut wire = r.unsealed_wire();
        let sealed = seal(&self.seal_key, &wire);
        wire.extend_from_slice(&sealed);
        SealedReceipt { receipt: r, wire }
    }

    /// The edge's own check on a receipt coming back in an ack: it issued
    /// exactly these bytes.
    pub fn is_ours(&self, r: &SealedReceipt) -> Result<(), ReceiptError> {
        let (sealed, tail) = r.wire.split_at(r.wire.len() - SEAL);
        if r.receipt.node != self.node || seal(&self.seal_key, sealed)[..] != tail[..] {
            return Err(ReceiptError::NotOurs);
        }
        Ok(())
    }
}

/// Node, token and content id: at the same offsets in both layouts (MR3's
/// content id is the first 16 bytes of its 32). `wire` is at least `HEAD`.
fn names(wire: &[u8]) -> ([u8; 32], [u8; 16], [u8; 16]) {
    (
        wire[3..35].try_into().expect("32"),
        wire[35..51].try_into().expect("16"),
        wire[51..67].try_into().expect("16"),
    )
}

fn utf8_path(bytes: &[u8]) -> Result<String, ReceiptError> {
    std::str::from_utf8(bytes)
        .map(str::to_string)
        .map_err(|_| ReceiptError::Malformed("path is not UTF-8"))
}

fn decode_v4(wire: &[u8]) -> Result<Receipt, ReceiptError> {
    if wire.len() < HEAD + 5 + SEAL {
        return Err(ReceiptError::Malformed("receipt too short"));
    }
    let mut rest = &wire[HEAD..];
    let mut numbers = [0u64; 5];
    for n in &mut numbers {
        let (value, tail) = varint::decode::u64(rest)
            .map_err(|_| ReceiptError::Malformed("a number is not a shortest varint"))?;
        (*n, rest) = (value, tail);
    }
    let [time_ms, serial, start, len, path_len] = numbers;
    if path_len > MAX_PATH as u64 || rest.len() as u64 != path_len + SEAL as u64 {
        return Err(ReceiptError::Malformed("length does not match its path"));
    }
    let (node, token, content) = names(wire);
    Ok(Receipt {
        node,
        token,
        content,
        time_ms,
        serial,
        start,
        len,
        path: utf8_path(&rest[..path_len as usize])?,
    })
}

fn decode_v3(wire: &[u8]) -> Result<Receipt, ReceiptError> {
    if wire.len() < FIXED_V3 + SEAL {
        return Err(ReceiptError::Malformed("receipt too short"));
    }
    let u64_at = |o: usize| u64::from_be_bytes(wire[o..o + 8].try_into().expect("8 bytes"));
    let path_len = u16::from_be_bytes([wire[FIXED_V3 - 2], wire[FIXED_V3 - 1]]) as usize;
    if wire.len() != FIXED_V3 + path_len + SEAL {
        return Err(ReceiptError::Malformed("length does not match its path"));
    }
    let (node, token, content) = names(wire);
    Ok(Receipt {
        node,
        token,
        content,
        time_ms: u64_at(83),
        serial: u64_at(91),
        start: u64_at(99),
        len: u64_at(107),
        path: utf8_path(&wire[FIXED_V3..FIXED_V3 + path_len])?,
    })
}

impl SealedReceipt {
    pub fn decode(wire: &[u8]) -> Result<SealedReceipt, ReceiptError> {
        let receipt = match wire.get(..3) {
            Some(m) if m == MAGIC => decode_v4(wire)?,
            Some(m) if m == MAGIC_V3 => decode_v3(wire)?,
            _ => {
                return Err(ReceiptError::Malformed(
                    "not a meshcast receipt (MR4 or MR3)",
                ))
            }
        };
        Ok(SealedReceipt {
            receipt,
            wire: wire.to_vec(),
        })
    }

    pub fn from_header(value: &str) -> Result<SealedReceipt, ReceiptError> {
        let wire = URL_SAFE_NO_PAD
            .decode(value.trim())
            .map_err(|_| ReceiptError::Malformed("not base64url"))?;
        Self::decode(&wire)
    }

    pub fn header_value(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.wire)
    }

    /// Receipt id: what dedup and claims name a delivery by.
    pub fn id(&self) -> [u8; 16] {
        let h = blake3::derive_key("meshcast receipt id v1", &self.wire);
        h[..16].try_into().expect("16 of 32")
    }
}

/// A viewer's signed acknowledgement of one receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub receipt: SealedReceipt,
    pub sig: [u8; 64],
}

pub fn ack_message(receipt_wire: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(ACK_CONTEXT.len() + receipt_wire.len());
    m.extend_from_slice(ACK_CONTEXT);
    m.extend_from_slice(receipt_wire);
    m
}

impl Ack {
    /// What a player does (the Rust client; the browser plugin does the same
    /// with WebCrypto).
    pub fn sign(session: &ed25519_dalek::SigningKey, receipt: SealedReceipt) -> Ack {
        let sig = session.sign(&ack_message(&receipt.wire)).to_bytes();
        Ack { receipt, sig }
    }

    /// `len(u16) receipt sig[64]`: one Merkle leaf, one log record entry.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.receipt.wire.len() + 64);
        out.extend_from_slice(&(self.receipt.wire.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.receipt.wire);
        out.extend_from_slice(&self.sig);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Ack, ReceiptError> {
        if bytes.len() < 2 + 64 {
            return Err(ReceiptError::Malformed("ack too short"));
        }
        let n = u16::from_be_bytes([bytes[0], bytes[1]]) as usize;
        if bytes.len() != 2 + n + 64 {
            return Err(ReceiptError::Malformed("ack length does not match"));
        }
        Ok(Ack {
            receipt: SealedReceipt::decode(&bytes[2..2 + n])?,
            sig: bytes[2 + n..].try_into().expect("64"),
        })
    }
}

/// Verifies the session signatures of many acks at once (batch Ed25519,
/// the workspace's one rule, so the verdict on each ack does not depend
/// on the others); on failure, the index of the first bad one, so the
/// caller can name it. `sessions[i]` is the session key acks[i] must be
/// signed by.
pub fn verify_acks(acks: &[Ack], sessions: &[[u8; 32]]) -> Result<(), usize> {
    assert_eq!(acks.len(), sessions.len());
    let messages: Vec<Vec<u8>> = acks.iter().map(|a| ack_message(&a.receipt.wire)).collect();
    let items: Vec<crate::ed25519::Item<'_>> = acks
        .iter()
        .zip(sessions)
        .zip(&messages)
        .map(|((a, key), m)| (key, m.as_slice(), &a.sig))
        .collect();
    crate::ed25519::verify_batch(&items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playlists_are_not_paid_media() {
        for p in [
            "/v/a/master.m3u8",
            "/v/a/360p/index.m3u8?x=1",
            "/v/a/manifest.MPD",
        ] {
            assert!(!is_paid_media(p), "{p}");
        }
        for p in [
            "/v/a/360p/seg_00001.m4s",
            "/v/a/360p/init.mp4",
            "/v/a/subs/subs.vtt",
            "/m3u8/x",
        ] {
            assert!(is_paid_media(p), "{p}");
        }
    }
    use ed25519_dalek::SigningKey;

    #[test]
    fn issue_decode_ack_and_tamper() {
        let edge = ReceiptSealer::new(NodeKey::from_seed([3; 32]));
        let path = "/v/abc/720p/1.m4s";
        let r = edge.issue([1; 16], [2; 16], path, 0, 1234, 99, 7);
        // magic, head, the five varints (1 + 2 + 1 + 1 + 1 bytes), path, seal.
        assert_eq!(r.wire.len(), HEAD + 6 + path.len() + SEAL);
        let back = SealedReceipt::from_header(&r.header_value()).unwrap();
        assert_eq!(back, r);
        assert_eq!(edge.is_ours(&back), Ok(()));
        let other = ReceiptSealer::new(NodeKey::from_seed([4; 32]));
        assert_eq!(other.is_ours(&back), Err(ReceiptError::NotOurs));

        // A viewer who changes any byte — a field, a number, the path, the
        // seal — is refused at the edge, before its ack can reach a claim.
        let path_at = r.wire.len() - SEAL - path.len();
        let len_at = HEAD + 2; // the low byte of 1234
        for at in [
            3,
            40,
            60,
            len_at,
            path_at,
            r.wire.len() - 16,
            r.wire.len() - 1,
        ] {
            let mut wire = r.wire.clone();
            wire[at] ^= 0x01;
            let poisoned = SealedReceipt::decode(&wire).unwrap();
            assert_eq!(
                edge.is_ours(&poisoned),
                Err(ReceiptError::NotOurs),
                "byte {at}"
            );
        }

        let session = SigningKey::from_bytes(&[9; 32]);
        let ack = Ack::sign(&session, r.clone());
        let decoded = Ack::decode(&ack.encode()).unwrap();
        assert_eq!(decoded, ack);
        let good = session.verifying_key().to_bytes();
        let wrong = SigningKey::from_bytes(&[8; 32]).verifying_key().to_bytes();
        assert_eq!(
            verify_acks(&[ack.clone(), ack.clone()], &[good, good]),
            Ok(())
        );
        assert_eq!(
            verify_acks(&[ack.clone(), ack.clone()], &[good, wrong]),
            Err(1)
        );
        assert!(SealedReceipt::decode(&r.wire[..r.wire.len() - 1]).is_err());
        assert!(SealedReceipt::from_header("!!!").is_err());
    }

    #[test]
    fn every_receipt_has_one_encoding() {
        let edge = ReceiptSealer::new(NodeKey::from_seed([3; 32]));
        let r = edge.issue([1; 16], [2; 16], "/a.m4s", 0, 5, u64::MAX, 1 << 40);
        assert_eq!(SealedReceipt::decode(&r.wire).unwrap(), r);
        // `start` = 0 written in two bytes instead of one: the same number,
        // other bytes (another receipt id), so it is refused.
        let at = HEAD + 10 + 6; // after time_ms (10 bytes) and serial (6)
        assert_eq!(r.wire[at], 0);
        let mut long = r.wire[..at].to_vec();
        long.extend_from_slice(&[0x80, 0x00]);
        long.extend_from_slice(&r.wire[at + 1..]);
        assert!(matches!(
            SealedReceipt::decode(&long),
            Err(ReceiptError::Malformed(_))
        ));
        // A path length past the end, or past MAX_PATH, is refused.
        let mut short = r.wire.clone();
        short.truncate(short.len() - 1);
        assert!(SealedReceipt::decode(&short).is_err());
        let mut long_path = r.receipt.clone();
        long_path.path = "/".repeat(MAX_PATH + 1);
        let mut wire = long_path.unsealed_wire();
        wire.extend_from_slice(&[0; SEAL]);
        assert_eq!(
            SealedReceipt::decode(&wire),
            Err(ReceiptError::Malformed("length does not match its path"))
        );
    }

    /// An MR3 receipt as edges issued them before MR4, sealed the same way.
    fn v3_receipt(edge: &ReceiptSealer, content: [u8; 32], path: &str, len: u64) -> Vec<u8> {
        let mut b = MAGIC_V3.to_vec();
        b.extend_from_slice(&edge.node());
        b.extend_from_slice(&[1; 16]);
        b.extend_from_slice(&content);
        for n in [99u64, 7, 0, len] {
            b.extend_from_slice(&n.to_be_bytes());
        }
        b.extend_from_slice(&(path.len() as u16).to_be_bytes());
        b.extend_from_slice(path.as_bytes());
        let sealed = seal(&edge.seal_key, &b);
        b.extend_from_slice(&sealed);
        b
    }

    #[test]
    fn mr3_receipts_logged_before_an_upgrade_still_read_and_seal() {
        let edge = ReceiptSealer::new(NodeKey::from_seed([3; 32]));
        let etag = b"\"abc\"";
        let full = blake3::derive_key("meshcast content v1 etag", etag);
        let wire = v3_receipt(&edge, full, "/v/abc/720p/1.m4s", 1234);
        let r = SealedReceipt::decode(&wire).unwrap();
        assert_eq!(r.wire, wire, "kept byte for byte: acks signed them");
        assert_eq!(edge.is_ours(&r), Ok(()));
        // Its content id is MR4's for the same content.
        assert_eq!(r.receipt.content, content_id(Some(etag), "/ignored"));
        assert_eq!(
            (r.receipt.len, r.receipt.time_ms, r.receipt.serial),
            (1234, 99, 7)
        );
        assert_eq!(r.receipt.path, "/v/abc/720p/1.m4s");
        let mut changed = wire.clone();
        changed[FIXED_V3 - 5] ^= 1; // in len
        let changed = SealedReceipt::decode(&changed).unwrap();
        assert_eq!(edge.is_ours(&changed), Err(ReceiptError::NotOurs));
        assert!(SealedReceipt::decode(&wire[..wire.len() - 1]).is_err());
    }

    #[test]
    fn long_paths_are_cut_at_a_character_boundary() {
        let edge = ReceiptSealer::new(NodeKey::from_seed([3; 32]));
        let path = format!("/{}", "é".repeat(MAX_PATH));
        let r = edge.issue([1; 16], [2; 16], &path, 0, 1, 99, 7);
        assert_eq!(r.receipt.path.len(), MAX_PATH - 1);
        assert!(path.starts_with(&r.receipt.path));
        assert_eq!(SealedReceipt::decode(&r.wire).unwrap(), r);
    }
}
