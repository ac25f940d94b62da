//! WebSocket frame boundaries in a relayed byte stream (RFC 6455, 5.2), so that
//! Tern can put a frame of its own between two of the machine's: the Close
//! (1001, going away) a client gets when its machine is stopped. Only headers are
//! read; payloads pass through untouched.

/// The Close frame Tern sends a client whose machine goes away: unmasked (server
/// to client), status 1001.
pub const GOING_AWAY: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// Where a stream is within its frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameBoundaries {
    state: State,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Reading a header: `have` of its bytes so far (at most 14).
    Header { have: usize, head: [u8; 14] },
    /// Inside a payload, `left` bytes to go.
    Payload { left: u64 },
}

impl Default for FrameBoundaries {
    fn default() -> Self {
        FrameBoundaries {
            state: State::between_frames(),
        }
    }
}

impl FrameBoundaries {
    /// Whether the stream is between two frames.
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Header { have: 0, .. })
    }

    /// Reads `bytes` as the stream's next bytes, up to the first frame boundary
    /// in them: returns how many were read to reach it, or `None` when there is
    /// none (all were read).
    pub fn advance(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut used = 0;
        while used < bytes.len() {
            match &mut self.state {
                State::Payload { left } => {
                    let take = (*left).min((bytes.len() - used) as u64) as usize;
                    used += take;
                    *left -= take as u64;
                    if *left == 0 {
                        self.state = State::between_frames();
                        return Some(used);
                    }
                }
                State::Header { have, head } => {
                    head[*have] = bytes[used];
                    *have += 1;
                    used += 1;
                    if let Some(payload) = header_done(&head[..*have]) {
                        if payload == 0 {
                            self.state = State::between_frames();
                            return Some(used);
                        }
                        self.state = State::Payload { left: payload };
                    }
                }
            }
        }
        None
    }
}

impl State {
    fn between_frames() -> State {
        State::Header {
            have: 0,
            head: [0; 14],
        }
    }
}

/// The payload length once `head` holds a whole header, `None` while it needs
/// more bytes.
fn header_done(head: &[u8]) -> Option<u64> {
    if head.len() < 2 {
        return None;
    }
    let masked = head[1] & 0x80 != 0;
    let mask = if masked { 4 } else { 0 };
    let (len_bytes, short) = match head[1] & 0x7F {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    if head.len() < 2 + len_bytes + mask {
        return None;
    }
    let len = short.unwrap_or_else(|| {
        head[2..2 + len_bytes]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    });
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;

    /// A frame as tungstenite writes it: `len` payload bytes, masked or not.
    fn frame(len: usize, masked: bool, fin: bool) -> Vec<u8> {
        let mut f = Frame::message(vec![0xA5u8; len], OpCode::Data(Data::Binary), fin);
        if masked {
            f.header_mut().mask = Some([1, 2, 3, 4]);
        }
        let mut out = Vec::new();
        f.format(&mut out).unwrap();
        out
    }

    /// Every boundary the tracker reports, fed `stream` in `cuts`-sized pieces.
    fn boundaries(stream: &[u8], cuts: &[usize]) -> Vec<usize> {
        let mut frames = FrameBoundaries::default();
        let mut found = Vec::new();
        let (mut at, mut cut) = (0, 0);
        while at < stream.len() {
            let size = cuts.get(cut).copied().unwrap_or(stream.len()).max(1);
            cut += 1;
            let piece = &stream[at..(at + size).min(stream.len())];
            let mut used = 0;
            while let Some(end) = frames.advance(&piece[used..]) {
                used += end;
                found.push(at + used);
            }
            at += piece.len();
        }
        assert!(frames.at_boundary() || found.last() != Some(&stream.len()));
        found
    }

    #[test]
    fn the_three_length_forms_and_a_mask_are_read() {
        for (len, masked) in [
            (0, false),
            (5, true),
            (125, false),
            (126, false),
            (70_000, true),
        ] {
            let bytes = frame(len, masked, true);
            assert_eq!(boundaries(&bytes, &[1; 20]), vec![bytes.len()], "len {len}");
            let mut frames = FrameBoundaries::default();
            assert_eq!(frames.advance(&bytes), Some(bytes.len()));
            assert!(frames.at_boundary());
        }
        assert_eq!(GOING_AWAY, {
            let mut out = Vec::new();
            Frame::close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Away,
                reason: "".into(),
            }))
            .format(&mut out)
            .unwrap();
            <[u8; 4]>::try_from(out.as_slice()).unwrap()
        });
    }

    proptest! {
        /// Frames of every length form, masked or not, fragmented or not, cut into
        /// arbitrary pieces: the tracker finds exactly the ends tungstenite wrote.
        #[test]
        fn boundaries_match_the_frames_tungstenite_writes(
            frames in proptest::collection::vec(
                (prop_oneof![0usize..=125, 126usize..=70_000], any::<bool>(), any::<bool>()),
                1..12,
            ),
            cuts in proptest::collection::vec(1usize..5000, 0..40),
        ) {
            let mut stream = Vec::new();
            let mut ends = Vec::new();
            for (len, masked, fin) in frames {
                stream.extend(frame(len, masked, fin));
                ends.push(stream.len());
            }
            prop_assert_eq!(boundaries(&stream, &cuts), ends);
        }
    }
}
