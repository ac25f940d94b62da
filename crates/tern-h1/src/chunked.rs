//! The chunked transfer coding, decoded incrementally from a read buffer: data is
//! cut out of the buffer without copying, and every line it reads is bounded.

use bytes::{Buf, Bytes, BytesMut};

use crate::Error;

/// The longest chunk-size line (size and extensions) accepted.
const MAX_SIZE_LINE: usize = 4096;
/// The most trailer bytes accepted; trailers are read and dropped.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk's size.
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size: before an extension's `;` or the line's CR,
    /// nothing else may come (RFC 9112, 7.1.1: `BWS ";"`), as hyper reads it.
    SizeLws {
        size: u64,
    },
    /// Extensions after the size, up to the line's CR.
    Extension {
        size: u64,
    },
    /// The LF that ends the size line.
    SizeLf {
        size: u64,
    },
    /// Bytes of chunk data still to come.
    Data {
        left: u64,
    },
    /// The CR after a chunk's data.
    DataCr,
    /// The LF after a chunk's data.
    DataLf,
    /// A trailer field's name, after the last chunk; `empty` while the line is
    /// (an empty line ends the body).
    TrailerName {
        empty: bool,
    },
    /// A trailer field's value, after its colon.
    TrailerValue,
    /// The LF ending a trailer line (or, after an empty one, the body).
    TrailerLf {
        empty: bool,
    },
    Done,
}

/// What a call to [`Decoder::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// The buffer holds no more of the body; read more and call again.
    NeedMore,
    /// The last chunk and the trailers have been read.
    End,
}

/// The decoder's place in a chunked body.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    /// Bytes of size line or trailers read so far, against their limits.
    line_bytes: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            state: State::Size { size: 0, digits: 0 },
            line_bytes: 0,
        }
    }
}

impl Decoder {
    /// Consumes framing bytes from the front of `buf` and returns the next run of
    /// data, if `buf` holds any.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Error> {
        loop {
            if let State::Data { left } = self.state {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let left = left - n as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { left }
                };
                return Ok(Decoded::Data(buf.split_to(n).freeze()));
            }
            if self.state == State::Done {
                return Ok(Decoded::End);
            }
            let Some(&byte) = buf.first() else {
                return Ok(Decoded::NeedMore);
            };
            buf.advance(1);
            self.step(byte)?;
        }
    }

    fn step(&mut self, b: u8) -> Result<(), Error> {
        self.state = match self.state {
            State::Size { size, digits } => {
                self.count_line_byte(MAX_SIZE_LINE)?;
                match (b as char).to_digit(16) {
                    // 16 hex digits fill a u64.
                    Some(d) if digits < 16 => State::Size {
                        size: size << 4 | u64::from(d),
                        digits: digits + 1,
                    },
                    Some(_) => return Err(Error::BadChunk("chunk size too large")),
                    None if digits == 0 => return Err(Error::BadChunk("no chunk size")),
                    None => match b {
                        b'\r' => State::SizeLf { size },
                        b';' => State::Extension { size },
                        b' ' | b'\t' => State::SizeLws { size },
                        _ => return Err(Error::BadChunk("bad chunk size")),
                    },
                }
            }
            State::SizeLws { size } => {
                self.count_line_byte(MAX_SIZE_LINE)?;
                match b {
                    b' ' | b'\t' => State::SizeLws { size },
                    b';' => State::Extension { size },
                    b'\r' => State::SizeLf { size },
                    _ => return Err(Error::BadChunk("bad chunk size")),
                }
            }
            State::Extension { size } => {
                self.count_line_byte(MAX_SIZE_LINE)?;
                match b {
                    b'\r' => State::SizeLf { size },
                    b'\n' => return Err(Error::BadChunk("bare LF in a chunk extension")),
                    _ => State::Extension { size },
                }
            }
            State::SizeLf { size } => {
                if b != b'\n' {
                    return Err(Error::BadChunk("chunk size line without LF"));
                }
                self.line_bytes = 0;
                if size == 0 {
                    State::TrailerName { empty: true }
                } else {
                    State::Data { left: size }
                }
            }
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataLf if b == b'\n' => State::Size { size: 0, digits: 0 },
            State::DataCr | State::DataLf => {
                return Err(Error::BadChunk("chunk data not followed by CRLF"))
            }
            // Trailers are dropped, but they must be fields (RFC 9112, 7.1.2;
            // hyper reads them as such): a token, a colon, a value without
            // control characters.
            State::TrailerName { empty } => {
                self.count_line_byte(MAX_TRAILERS)?;
                match b {
                    b'\r' if empty => State::TrailerLf { empty: true },
                    b':' if !empty => State::TrailerValue,
                    _ if is_tchar(b) => State::TrailerName { empty: false },
                    b'\n' => return Err(Error::BadChunk("bare LF in the trailers")),
                    _ => return Err(Error::BadChunk("bad trailer field name")),
                }
            }
            State::TrailerValue => {
                self.count_line_byte(MAX_TRAILERS)?;
                match b {
                    b'\r' => State::TrailerLf { empty: false },
                    b'\t' | b' '..=b'~' | 0x80..=0xff => State::TrailerValue,
                    _ => return Err(Error::BadChunk("bad trailer field value")),
                }
            }
            State::TrailerLf { empty } => {
                if b != b'\n' {
                    return Err(Error::BadChunk("trailer line without LF"));
                }
                if empty {
                    State::Done
                } else {
                    State::TrailerName { empty: true }
                }
            }
            State::Data { .. } | State::Done => unreachable!("handled by decode"),
        };
        Ok(())
    }

    #[inline]
    fn count_line_byte(&mut self, limit: usize) -> Result<(), Error> {
        self.line_bytes += 1;
        if self.line_bytes > limit {
            return Err(Error::BadChunk("chunk size line or trailers too long"));
        }
        Ok(())
    }
}

/// A character of a token (RFC 9110, 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes and collects the data.
    fn decode_in_steps(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), Error> {
        let mut d = Decoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => out.extend_from_slice(&b),
                Decoded::End => return Ok((out, buf.len())),
                Decoded::NeedMore => {
                    if fed == input.len() {
                        return Err(Error::BadChunk("input ended"));
                    }
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn trailers_must_be_fields() {
        let ok = b"0\r\nx-t: 1\r\nx-u:\r\n\r\n";
        assert_eq!(decode_in_steps(ok, 1).unwrap(), (Vec::new(), 0));
        for bad in [
            &b"0\r\n\0-t: 1\r\n\r\n"[..],
            b"0\r\nx t: 1\r\n\r\n",
            b"0\r\n: 1\r\n\r\n",
            b"0\r\nx-t\r\n\r\n",
            b"0\r\nx-t: a\x01b\r\n\r\n",
        ] {
            assert!(
                matches!(decode_in_steps(bad, 1), Err(Error::BadChunk(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn chunks_decode_whatever_the_read_sizes() {
        let body =
            b"5\r\nhello\r\n7 \t;name=value\r\n, world\r\nA \r\n0123456789\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, body.len()] {
            let (data, _) = decode_in_steps(body, step).unwrap();
            assert_eq!(data, b"hello, world0123456789", "step {step}");
        }
        // What follows the body stays in the buffer.
        let (_, left) = decode_in_steps(body, body.len()).unwrap();
        assert_eq!(left, 4);
    }

    #[test]
    fn an_empty_chunked_body_ends_at_once() {
        let (data, _) = decode_in_steps(b"0\r\n\r\n", 1).unwrap();
        assert!(data.is_empty());
    }

    #[test]
    fn malformed_chunking_is_an_error() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX",
            b"5\nhello\r\n",
            b"11111111111111111\r\n",
            b"5;ext\nhello",
            b"0\r\nx: y\n\r\n",
            // After the size and its whitespace, only `;` or the CR.
            b"6 \x0e\r\ndddddd\r\n0\r\n\r\n",
            b"6 x\r\ndddddd\r\n0\r\n\r\n",
        ] {
            assert!(
                matches!(decode_in_steps(bad, 1), Err(Error::BadChunk(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn endless_size_lines_and_trailers_are_cut() {
        let mut ext = b"5;".to_vec();
        ext.extend(std::iter::repeat_n(b'a', MAX_SIZE_LINE));
        assert!(matches!(
            decode_in_steps(&ext, 512),
            Err(Error::BadChunk(_))
        ));

        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..(MAX_TRAILERS / 8 + 1) {
            trailers.extend_from_slice(b"x: yyy\r\n");
        }
        assert!(matches!(
            decode_in_steps(&trailers, 512),
            Err(Error::BadChunk(_))
        ));
    }
}
