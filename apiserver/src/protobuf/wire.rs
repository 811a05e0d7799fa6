//! The protobuf wire format, read only: varints, keys and length-delimited fields, with every
//! bound checked (a malformed body is an error, never a panic or an over-read).

use std::fmt;

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn err<T>(message: impl Into<String>) -> Result<T, WireError> {
    Err(WireError(message.into()))
}

/// The wire types protobuf 2/3 use (groups, 3 and 4, are refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireType {
    Varint,
    Fixed64,
    Len,
    Fixed32,
}

impl WireType {
    fn from_bits(bits: u64) -> Result<Self, WireError> {
        match bits {
            0 => Ok(WireType::Varint),
            1 => Ok(WireType::Fixed64),
            2 => Ok(WireType::Len),
            5 => Ok(WireType::Fixed32),
            other => err(format!("unsupported wire type {other}")),
        }
    }
}

/// A cursor over one message's bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return err("truncated varint");
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return err("varint overflows 64 bits");
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        err("varint longer than 10 bytes")
    }

    /// A field key: (field number, wire type).
    pub fn key(&mut self) -> Result<(u32, WireType), WireError> {
        let key = self.varint()?;
        let tag = key >> 3;
        if tag == 0 || tag > u64::from(u32::MAX >> 3) {
            return err(format!("invalid field number {tag}"));
        }
        Ok((tag as u32, WireType::from_bits(key & 7)?))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| WireError("length overflows".into()))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| WireError(format!("field of {len} bytes runs past the end")))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let end = self
            .pos
            .checked_add(N)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| WireError("truncated fixed-width field".into()))?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.pos..end]);
        self.pos = end;
        Ok(out)
    }

    pub fn fixed64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.fixed::<8>()?))
    }

    pub fn fixed32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.fixed::<4>()?))
    }

    /// Passes over a field this reader does not know.
    pub fn skip(&mut self, wire: WireType) -> Result<(), WireError> {
        match wire {
            WireType::Varint => self.varint().map(drop),
            WireType::Fixed64 => self.fixed64().map(drop),
            WireType::Fixed32 => self.fixed32().map(drop),
            WireType::Len => self.bytes().map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_decode_and_bad_ones_are_errors() {
        assert_eq!(Reader::new(&[0x96, 0x01]).varint(), Ok(150));
        assert_eq!(Reader::new(&[0]).varint(), Ok(0));
        // -1 as an int32/int64 varint: ten bytes.
        let minus_one = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(Reader::new(&minus_one).varint().map(|v| v as i64), Ok(-1));
        assert!(Reader::new(&[0x80]).varint().is_err());
        assert!(Reader::new(&[0xff; 11]).varint().is_err());
        assert!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02])
                .varint()
                .is_err()
        );
    }

    #[test]
    fn lengths_past_the_end_and_bad_keys_are_errors() {
        assert!(Reader::new(&[0x05, b'a']).bytes().is_err());
        assert_eq!(Reader::new(&[0x01, b'a']).bytes(), Ok(&b"a"[..]));
        assert!(Reader::new(&[0x00]).key().is_err()); // field 0
        assert!(Reader::new(&[0x0b]).key().is_err()); // group start
        assert_eq!(Reader::new(&[0x0a]).key(), Ok((1, WireType::Len)));
        assert!(Reader::new(&[1, 2, 3]).fixed64().is_err());
    }
}
