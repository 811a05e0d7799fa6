//! The on-disk record of one revision in the `revs` table.
//!
//! Layout (little-endian): `format:u8 kind:u8 create_revision:u64 prev_revision:u64
//! key_len:u32 key value`. `prev_revision` is the mod_revision of the version this write replaced
//! (0 when it created the key): it gives watch events their previous value and drives compaction,
//! which deletes exactly the versions some older record superseded.

use crate::{Revision, StorageError};

const FORMAT: u8 = 1;
const HEADER: usize = 1 + 1 + 8 + 8 + 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Put = 1,
    Delete = 2,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Record<'a> {
    pub kind: Kind,
    pub create_revision: Revision,
    pub prev_revision: Revision,
    pub key: &'a str,
    pub value: &'a [u8],
}

pub(super) fn encode(
    kind: Kind,
    create_revision: Revision,
    prev_revision: Revision,
    key: &str,
    value: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + key.len() + value.len());
    out.push(FORMAT);
    out.push(kind as u8);
    out.extend_from_slice(&create_revision.to_le_bytes());
    out.extend_from_slice(&prev_revision.to_le_bytes());
    // Keys are bounded by the API server (a few hundred bytes); u32 is ample.
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(value);
    out
}

pub(super) fn decode(revision: Revision, bytes: &[u8]) -> Result<Record<'_>, StorageError> {
    let corrupt = |what: &str| StorageError::Internal {
        message: format!("corrupt record at revision {revision}: {what}"),
        source: None,
    };
    if bytes.len() < HEADER {
        return Err(corrupt("shorter than its header"));
    }
    if bytes[0] != FORMAT {
        return Err(corrupt("unknown format byte"));
    }
    let kind = match bytes[1] {
        1 => Kind::Put,
        2 => Kind::Delete,
        _ => return Err(corrupt("unknown kind")),
    };
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        i64::from_le_bytes(b)
    };
    let create_revision = u64_at(2);
    let prev_revision = u64_at(10);
    let mut len = [0u8; 4];
    len.copy_from_slice(&bytes[18..22]);
    let key_len = u32::from_le_bytes(len) as usize;
    let rest = &bytes[HEADER..];
    if rest.len() < key_len {
        return Err(corrupt("key runs past the record"));
    }
    let key = std::str::from_utf8(&rest[..key_len]).map_err(|_| corrupt("key is not UTF-8"))?;
    Ok(Record {
        kind,
        create_revision,
        prev_revision,
        key,
        value: &rest[key_len..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_decodes_to_what_was_encoded() {
        let bytes = encode(Kind::Put, 7, 5, "pods/default/a", b"{\"a\":1}");
        let r = decode(9, &bytes).unwrap();
        assert_eq!(
            r,
            Record {
                kind: Kind::Put,
                create_revision: 7,
                prev_revision: 5,
                key: "pods/default/a",
                value: b"{\"a\":1}",
            }
        );
    }

    #[test]
    fn truncated_or_garbled_records_are_errors_not_panics() {
        let bytes = encode(Kind::Delete, 1, 2, "k", b"");
        for cut in 0..bytes.len() {
            assert!(decode(3, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[1] = 9;
        assert!(decode(3, &bad).is_err());
        let mut long_key = bytes;
        long_key[18] = 200;
        assert!(decode(3, &long_key).is_err());
    }
}
