//! A little-endian reader over a byte slice that never reads past the end and never trusts a
//! length: every take is checked against what remains, and the failure says where and how much.
//! Errors carry no context; the caller knows which key or tensor it was reading and adds it.

/// The slice ended: `needed` bytes were wanted at `offset`, `available` remained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Short {
    pub offset: u64,
    pub needed: u64,
    pub available: u64,
}

pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor { bytes, pos: 0 }
    }

    /// Current offset from the start of the slice.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    /// The next `n` bytes. `n` is a u64 straight from the file; it is compared before any
    /// conversion, so 2^63 is just "too long".
    pub fn take(&mut self, n: u64) -> Result<&'a [u8], Short> {
        let available = self.remaining();
        if n > available {
            return Err(Short { offset: self.pos as u64, needed: n, available });
        }
        // n <= remaining <= usize::MAX, so the cast is lossless.
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Short> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, Short> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, Short> {
        self.array().map(u16::from_le_bytes)
    }

    pub fn u32(&mut self) -> Result<u32, Short> {
        self.array().map(u32::from_le_bytes)
    }

    pub fn u64(&mut self) -> Result<u64, Short> {
        self.array().map(u64::from_le_bytes)
    }

    pub fn i8(&mut self) -> Result<i8, Short> {
        self.array().map(i8::from_le_bytes)
    }

    pub fn i16(&mut self) -> Result<i16, Short> {
        self.array().map(i16::from_le_bytes)
    }

    pub fn i32(&mut self) -> Result<i32, Short> {
        self.array().map(i32::from_le_bytes)
    }

    pub fn i64(&mut self) -> Result<i64, Short> {
        self.array().map(i64::from_le_bytes)
    }

    pub fn f32(&mut self) -> Result<f32, Short> {
        self.array().map(f32::from_le_bytes)
    }

    pub fn f64(&mut self) -> Result<f64, Short> {
        self.array().map(f64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_lengths_are_short_not_panics() {
        let mut c = Cursor::new(&[1, 2, 3]);
        assert_eq!(c.take(1 << 63), Err(Short { offset: 0, needed: 1 << 63, available: 3 }));
        assert_eq!(c.u16(), Ok(0x0201));
        assert_eq!(c.u32(), Err(Short { offset: 2, needed: 4, available: 1 }));
        assert_eq!(c.u8(), Ok(3));
        assert_eq!(c.remaining(), 0);
    }
}
