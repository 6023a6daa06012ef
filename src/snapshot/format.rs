//! The state file's framing: a fixed header (magic, format version, body length, SHA-256 of
//! the body) in front of a JSON body. A file that is not a Volt snapshot, comes from another
//! format version, is truncated or corrupt is refused before anything is parsed.

use sha2::{Digest, Sha256};

/// "VOLTSNAP".
pub const MAGIC: [u8; 8] = *b"VOLTSNAP";
/// Bumped whenever the body's meaning changes.
pub const FORMAT_VERSION: u32 = 1;
/// magic (8) + version (4) + reserved (4) + body length (8) + SHA-256 (32).
pub const HEADER_LEN: usize = 56;
/// No real state file comes near this; a larger length field is corruption.
pub const MAX_BODY_LEN: u64 = 64 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("it is not a Volt snapshot (bad magic)")]
    BadMagic,
    #[error("it has snapshot format version {found}; this Volt reads version {FORMAT_VERSION}")]
    Version { found: u32 },
    #[error("it is truncated: {have} bytes, the header announces {want}")]
    Truncated { have: u64, want: u64 },
    #[error("it is {have} bytes, {extra} more than the header announces")]
    TrailingBytes { have: u64, extra: u64 },
    #[error("its body length {0} is implausible")]
    BadLength(u64),
    #[error("its checksum does not match: the file is corrupt")]
    Checksum,
}

/// Header + body.
pub fn encode(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(body));
    out.extend_from_slice(body);
    out
}

/// Checks the header and returns the body.
pub fn decode(file: &[u8]) -> Result<&[u8], FormatError> {
    if file.len() < 12 || file[..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = u32::from_le_bytes(file[8..12].try_into().unwrap_or_default());
    if version != FORMAT_VERSION {
        return Err(FormatError::Version { found: version });
    }
    if file.len() < HEADER_LEN {
        return Err(FormatError::Truncated {
            have: file.len() as u64,
            want: HEADER_LEN as u64,
        });
    }
    let body_len = u64::from_le_bytes(file[16..24].try_into().unwrap_or_default());
    if body_len > MAX_BODY_LEN {
        return Err(FormatError::BadLength(body_len));
    }
    let want = HEADER_LEN as u64 + body_len;
    let have = file.len() as u64;
    if have < want {
        return Err(FormatError::Truncated { have, want });
    }
    if have > want {
        return Err(FormatError::TrailingBytes {
            have,
            extra: have - want,
        });
    }
    let body = &file[HEADER_LEN..];
    if Sha256::digest(body).as_slice() != &file[24..56] {
        return Err(FormatError::Checksum);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_gives_the_body_back() {
        let file = encode(b"{\"x\":1}");
        assert_eq!(file.len(), HEADER_LEN + 7);
        assert_eq!(decode(&file).unwrap(), b"{\"x\":1}");
    }

    #[test]
    fn every_kind_of_damage_is_named() {
        let file = encode(b"{\"state\":[1,2,3]}");
        assert_eq!(decode(b"ELF\x7f....."), Err(FormatError::BadMagic));
        let mut other_version = file.clone();
        other_version[8] = 7;
        assert_eq!(
            decode(&other_version),
            Err(FormatError::Version { found: 7 })
        );
        for cut in [20, HEADER_LEN, file.len() - 1] {
            assert!(
                matches!(decode(&file[..cut]), Err(FormatError::Truncated { .. })),
                "cut at {cut}"
            );
        }
        let mut longer = file.clone();
        longer.push(0);
        assert!(matches!(
            decode(&longer),
            Err(FormatError::TrailingBytes { extra: 1, .. })
        ));
        for index in [HEADER_LEN, file.len() - 1, 30] {
            let mut flipped = file.clone();
            flipped[index] ^= 0x40;
            assert_eq!(decode(&flipped), Err(FormatError::Checksum), "byte {index}");
        }
        let mut huge = file.clone();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(decode(&huge), Err(FormatError::BadLength(u64::MAX)));
    }
}
