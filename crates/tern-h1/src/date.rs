//! The `Date` field of responses that come without one: formatted once a second
//! per thread, as hyper and nginx cache theirs.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};

/// An IMF-fixdate is always this long: `Sun, 06 Nov 1994 08:49:37 GMT`.
const LEN: usize = 29;

thread_local! {
    static CACHED: RefCell<(u64, [u8; LEN])> = const { RefCell::new((u64::MAX, [0; LEN])) };
}

/// Appends the current time as an HTTP date.
pub(crate) fn put_now(out: &mut BytesMut) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, text)| {
        if *at != secs {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == LEN {
                text.copy_from_slice(formatted.as_bytes());
                *at = secs;
            } else {
                // Years past 9999: not cached, written as they come.
                out.put_slice(formatted.as_bytes());
                return;
            }
        }
        out.put_slice(&text[..]);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_date_reads_back_as_now() {
        let mut out = BytesMut::new();
        put_now(&mut out);
        put_now(&mut out);
        assert_eq!(out.len(), 2 * LEN);
        let first = std::str::from_utf8(&out[..LEN]).unwrap();
        let parsed = httpdate::parse_http_date(first).unwrap();
        let off = SystemTime::now().duration_since(parsed).unwrap();
        assert!(off.as_secs() < 5, "{first}");
    }
}
