//! A JSON reader over one record's bytes: tokens on demand, no intermediate tree.
//!
//! The decoder pulls exactly the tokens it needs and writes values straight into column builders,
//! so there is one pass over the input and no allocation per field.
//!
//! UTF-8: JSON's syntax outside strings is ASCII, so the reader accepts a byte above 0x7f only
//! inside a string, and checks each string that has such bytes. Hence every slice of the input
//! that the reader has scanned and that starts and ends at ASCII delimiters is valid UTF-8 (see
//! [`utf8`]), without a separate pass over the record.

use super::fail::{Fail, RecordErrorKind};

/// Nesting deeper than this is refused (it would only ever be an attack or a bug, and recursion
/// needs a bound).
pub(crate) const MAX_DEPTH: usize = 512;

/// Bytes that end the fast scan of a string: the closing quote, a backslash, control characters,
/// and non-ASCII bytes (to be checked as UTF-8).
static STRING_STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i < 0x20 || i >= 0x80;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// A string token: the bytes between the quotes, and whether they contain escapes.
#[derive(Clone, Copy)]
pub(crate) struct RawStr<'a> {
    pub raw: &'a [u8],
    pub escaped: bool,
}

impl<'a> RawStr<'a> {
    /// The string's text: borrowed from the input when it has no escapes, else unescaped into
    /// `scratch`.
    pub fn text<'s>(self, scratch: &'s mut Vec<u8>, at: usize) -> Result<&'s str, Box<Fail>>
    where
        'a: 's,
    {
        if !self.escaped {
            return Ok(utf8(self.raw));
        }
        scratch.clear();
        unescape_into(self.raw, scratch, at)?;
        Ok(utf8(scratch))
    }
}

/// A slice of the record as text.
///
/// Callers pass only slices the reader has scanned, cut at ASCII delimiters (quote, bracket, the
/// ends of a number or literal), never inside a multi-byte character, or text unescaped from
/// such slices. Those are valid UTF-8 (see the module comment). Checking each token again cost
/// about 8% of the decoding time, so debug builds check and release builds rely on it.
#[inline]
pub(crate) fn utf8(b: &[u8]) -> &str {
    debug_assert!(std::str::from_utf8(b).is_ok());
    // SAFETY: `b` is valid UTF-8 by the reader's construction, as said above.
    unsafe { std::str::from_utf8_unchecked(b) }
}

/// The index of the first byte at or after `i` that ends a plain run of string bytes, eight bytes
/// at a time (a quote, a backslash, a control character or a non-ASCII byte).
#[inline]
fn scan_plain(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let quote = w ^ (ONES * b'"' as u64);
        let backslash = w ^ (ONES * b'\\' as u64);
        // Per byte, the high bit ends up set for: a zero byte of `quote` or `backslash`, a byte
        // below 0x20, a byte of 0x80 or more. Borrows only spread upwards from a true hit, so the
        // lowest flagged byte is exact.
        let stop = (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (w.wrapping_sub(ONES * 0x20) & !w)
            | w;
        let stop = stop & HIGHS;
        if stop != 0 {
            return i + (stop.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && !STRING_STOP[b[i] as usize] {
        i += 1;
    }
    i
}

pub(crate) struct Cursor<'a> {
    pub b: &'a [u8],
    pub i: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Cursor { b, i: 0 }
    }

    #[inline]
    pub fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if c == b' ' || c == b'\n' || c == b'\r' || c == b'\t' {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    /// The next non-whitespace byte, not consumed.
    #[inline]
    pub fn peek(&mut self) -> Result<u8, Box<Fail>> {
        self.ws();
        match self.b.get(self.i) {
            Some(&c) => Ok(c),
            None => Err(self.syntax("unexpected end of input")),
        }
    }

    /// Consumes `c` (after whitespace) or fails saying what was expected.
    #[inline]
    pub fn eat(&mut self, c: u8, what: &str) -> Result<(), Box<Fail>> {
        if self.peek()? == c {
            self.i += 1;
            Ok(())
        } else {
            Err(self.expected(what))
        }
    }

    #[cold]
    fn expected(&self, what: &str) -> Box<Fail> {
        self.syntax(&format!("expected {what}"))
    }

    /// After a member or element: true if another follows (a comma was eaten), false at the
    /// closing bracket (eaten).
    #[inline]
    pub fn next_or_close(&mut self, close: u8) -> Result<bool, Box<Fail>> {
        match self.peek()? {
            b',' => {
                self.i += 1;
                Ok(true)
            }
            c if c == close => {
                self.i += 1;
                Ok(false)
            }
            _ => Err(self.syntax(if close == b'}' {
                "expected ',' or '}'"
            } else {
                "expected ',' or ']'"
            })),
        }
    }

    #[cold]
    pub fn syntax(&self, what: &str) -> Box<Fail> {
        Fail::not_json(format!("{what} at byte {}{}", self.i, near(self.b, self.i)))
    }

    /// Reads a string token; the cursor must be at the opening quote.
    #[inline]
    pub fn string(&mut self) -> Result<RawStr<'a>, Box<Fail>> {
        if self.b.get(self.i) != Some(&b'"') {
            return Err(self.syntax("expected a string"));
        }
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        let mut non_ascii = false;
        let b = self.b;
        let mut i = self.i;
        loop {
            i = scan_plain(b, i);
            match b.get(i) {
                Some(b'"') => {
                    let raw = &b[start..i];
                    if non_ascii && let Err(e) = std::str::from_utf8(raw) {
                        let at = start + e.valid_up_to();
                        return Err(Fail::new(
                            RecordErrorKind::InvalidUtf8,
                            format!(
                                "not UTF-8: invalid byte in a string at byte {at}{}",
                                near(b, at)
                            ),
                        ));
                    }
                    self.i = i + 1;
                    return Ok(RawStr { raw, escaped });
                }
                Some(&c) if c >= 0x80 => {
                    non_ascii = true;
                    i += 1;
                }
                Some(b'\\') => {
                    escaped = true;
                    match b.get(i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                        Some(b'u') => {
                            if i + 6 > b.len() || !b[i + 2..i + 6].iter().all(u8::is_ascii_hexdigit)
                            {
                                self.i = i;
                                return Err(self.syntax("invalid \\u escape in string"));
                            }
                            i += 6;
                        }
                        _ => {
                            self.i = i;
                            return Err(self.syntax("invalid escape in string"));
                        }
                    }
                }
                Some(_) => {
                    self.i = i;
                    return Err(self.syntax("control character in string (must be escaped)"));
                }
                None => {
                    self.i = i;
                    return Err(self.syntax("unterminated string"));
                }
            }
        }
    }

    /// Reads a number token, checked against JSON's grammar; returns its text.
    #[inline]
    pub fn number(&mut self) -> Result<&'a str, Box<Fail>> {
        let b = self.b;
        let start = self.i;
        let mut i = start;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            _ => {
                self.i = i;
                return Err(self.syntax("invalid number"));
            }
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            let digits = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == digits {
                self.i = i;
                return Err(self.syntax("invalid number (no digits after '.')"));
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let digits = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == digits {
                self.i = i;
                return Err(self.syntax("invalid number (no digits in exponent)"));
            }
        }
        self.i = i;
        Ok(utf8(&b[start..i]))
    }

    /// Consumes the literal `word` (`true`, `false`, `null`).
    #[inline]
    pub fn literal(&mut self, word: &'static [u8]) -> Result<(), Box<Fail>> {
        // Byte by byte: a call to `memcmp` for four bytes showed up in profiles.
        let rest = &self.b[self.i..];
        if rest.len() >= word.len() && word.iter().zip(rest).all(|(w, r)| w == r) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.syntax("invalid literal"))
        }
    }

    /// Skips one value, checking its syntax. With `out`, also writes it as compact JSON text.
    pub fn skip(&mut self, mut out: Option<&mut Vec<u8>>, depth: usize) -> Result<(), Box<Fail>> {
        if depth > MAX_DEPTH {
            return Err(self.syntax("nested too deeply"));
        }
        match self.peek()? {
            b'"' => {
                let start = self.i;
                self.string()?;
                if let Some(out) = out {
                    out.extend_from_slice(&self.b[start..self.i]);
                }
            }
            b'{' => {
                self.i += 1;
                if let Some(o) = out.as_deref_mut() {
                    o.push(b'{');
                }
                if self.peek()? == b'}' {
                    self.i += 1;
                } else {
                    loop {
                        if self.peek()? != b'"' {
                            return Err(self.syntax("expected a string key"));
                        }
                        let start = self.i;
                        self.string()?;
                        if let Some(o) = out.as_deref_mut() {
                            o.extend_from_slice(&self.b[start..self.i]);
                            o.push(b':');
                        }
                        self.eat(b':', "':'")?;
                        self.skip(out.as_deref_mut(), depth + 1)?;
                        if !self.next_or_close(b'}')? {
                            break;
                        }
                        if let Some(o) = out.as_deref_mut() {
                            o.push(b',');
                        }
                    }
                }
                if let Some(o) = out {
                    o.push(b'}');
                }
            }
            b'[' => {
                self.i += 1;
                if let Some(o) = out.as_deref_mut() {
                    o.push(b'[');
                }
                if self.peek()? == b']' {
                    self.i += 1;
                } else {
                    loop {
                        self.skip(out.as_deref_mut(), depth + 1)?;
                        if !self.next_or_close(b']')? {
                            break;
                        }
                        if let Some(o) = out.as_deref_mut() {
                            o.push(b',');
                        }
                    }
                }
                if let Some(o) = out {
                    o.push(b']');
                }
            }
            b't' => {
                self.literal(b"true")?;
                if let Some(o) = out {
                    o.extend_from_slice(b"true");
                }
            }
            b'f' => {
                self.literal(b"false")?;
                if let Some(o) = out {
                    o.extend_from_slice(b"false");
                }
            }
            b'n' => {
                self.literal(b"null")?;
                if let Some(o) = out {
                    o.extend_from_slice(b"null");
                }
            }
            _ => {
                let n = self.number()?;
                if let Some(o) = out {
                    o.extend_from_slice(n.as_bytes());
                }
            }
        }
        Ok(())
    }

    /// Checks that only whitespace is left.
    pub fn end(&mut self) -> Result<(), Box<Fail>> {
        self.ws();
        if self.i == self.b.len() {
            Ok(())
        } else {
            Err(self.syntax("unexpected data after the record"))
        }
    }
}

/// Unescapes a string body (already checked by [`Cursor::string`]) onto `out`.
pub(crate) fn unescape_into(raw: &[u8], out: &mut Vec<u8>, at: usize) -> Result<(), Box<Fail>> {
    let bad = |msg: &str| Fail::not_json(format!("{msg} in string near byte {at}"));
    let mut i = 0;
    while i < raw.len() {
        let plain = raw[i..]
            .iter()
            .position(|&c| c == b'\\')
            .unwrap_or(raw.len() - i);
        out.extend_from_slice(&raw[i..i + plain]);
        i += plain;
        if i >= raw.len() {
            break;
        }
        let c = raw[i + 1];
        i += 2;
        let ch = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 8,
            b'f' => 12,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            _ => {
                let hi = hex4(&raw[i..i + 4]);
                i += 4;
                let code = if (0xD800..0xDC00).contains(&hi) {
                    if raw.get(i..i + 2) != Some(b"\\u") || i + 6 > raw.len() {
                        return Err(bad("lone surrogate \\u escape"));
                    }
                    let lo = hex4(&raw[i + 2..i + 6]);
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err(bad("lone surrogate \\u escape"));
                    }
                    i += 6;
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else if (0xDC00..0xE000).contains(&hi) {
                    return Err(bad("lone surrogate \\u escape"));
                } else {
                    hi
                };
                let ch = char::from_u32(code).ok_or_else(|| bad("invalid \\u escape"))?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                continue;
            }
        };
        out.push(ch);
    }
    Ok(())
}

fn hex4(b: &[u8]) -> u32 {
    b.iter().fold(0, |acc, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => c - b'A' + 10,
        };
        acc * 16 + d as u32
    })
}

/// A short excerpt of the input around `i`, for syntax errors.
pub(crate) fn near(b: &[u8], i: usize) -> String {
    if b.is_empty() {
        return " (empty record)".to_owned();
    }
    let start = i.saturating_sub(20);
    let end = (i + 20).min(b.len());
    format!(" near {:?}", String::from_utf8_lossy(&b[start..end]))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn scan_plain_stops_where_a_byte_loop_stops(
            bytes in prop::collection::vec(prop_oneof![4 => 0x20u8..0x7f, 1 => any::<u8>()], 0..40),
            from in 0usize..40,
        ) {
            let from = from.min(bytes.len());
            let naive = (from..bytes.len()).find(|&i| STRING_STOP[bytes[i] as usize]).unwrap_or(bytes.len());
            prop_assert_eq!(scan_plain(&bytes, from), naive);
        }
    }
}
