//! A read-side fix for clients whose `:authority` the `h2` crate refuses.
//!
//! gRPC's C core (Python `grpcio`, C++, Ruby) sends the percent-encoded
//! socket path as `:authority` on `unix:` targets (`tmp%2Fimaged.sock`), and
//! grpc-java the path itself (`/run/imaged/imaged.sock`). `h2`, under tonic,
//! refuses a `%` outside the userinfo, and a `/`, as a malformed header and
//! resets the stream (hyperium/h2 PR #487, grpc/grpc #38142, grpc-java
//! #12664). imaged ignores the authority, so it rewrites it on the way in:
//! each byte of a literal `:authority` value that `h2` would refuse becomes
//! `-`.
//!
//! The rewrite is in place and keeps every length: frame sizes do not move,
//! and the value enters h2's HPACK dynamic table with the same size the
//! client's encoder gives it, so both tables stay in step and later
//! requests that refer to the entry by index get the rewritten value.
//!
//! Only a connection whose first request needed the rewrite keeps being
//! read frame by frame; every other connection is handed to h2 untouched
//! after its first header block. Values sent Huffman-coded are left as they
//! are (the clients above send them as raw literals).

use std::ops::Range;

/// The client's connection preface.
const PREFACE_LEN: usize = 24;
/// An HTTP/2 frame header.
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Most bytes of one header block (its frames) held while it is read whole;
/// a larger one is handed on unread.
const MAX_RUN: usize = 1 << 20;

/// Where the reader is in the client's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Reading frames, rewriting header blocks.
    Frames,
    /// Handing every byte on unread.
    Pass,
}

/// The fix's state for one connection: bytes read from the client, how many
/// of them may be handed to h2, and where the next frame starts.
#[derive(Debug)]
pub struct AuthorityFix {
    mode: Mode,
    /// Whether the first header block has been seen.
    first_seen: bool,
    /// Payload bytes of the current non-header frame still to hand on.
    skip: usize,
    /// Whether the preface has been handed on.
    preface_done: bool,
}

impl Default for AuthorityFix {
    fn default() -> Self {
        AuthorityFix {
            mode: Mode::Frames,
            first_seen: false,
            skip: 0,
            preface_done: false,
        }
    }
}

impl AuthorityFix {
    /// A fix that hands every byte on unread from the start: what a daemon
    /// without the fix would do. Only the benchmark asks for it (see
    /// [`crate::transport::incoming::accept`]), to measure what the fix costs
    /// connections that do not need it.
    pub fn off() -> AuthorityFix {
        AuthorityFix {
            mode: Mode::Pass,
            ..AuthorityFix::default()
        }
    }

    /// Whether every byte from here on is handed on unread.
    pub fn passing(&self) -> bool {
        self.mode == Mode::Pass
    }

    /// Scans `buf` (the bytes read and not yet handed on), rewriting header
    /// blocks in place, and returns how many bytes from its start may be
    /// handed on now; the rest wait for more bytes.
    pub fn scan(&mut self, buf: &mut [u8]) -> usize {
        let mut at = 0;
        loop {
            if self.mode == Mode::Pass {
                return buf.len();
            }
            if !self.preface_done {
                if buf.len() < PREFACE_LEN {
                    return at;
                }
                self.preface_done = true;
                at = PREFACE_LEN;
                continue;
            }
            if self.skip > 0 {
                let n = self.skip.min(buf.len() - at);
                self.skip -= n;
                at += n;
                if self.skip > 0 {
                    return at;
                }
                continue;
            }
            let Some(header) = frame_header(&buf[at..]) else {
                return at;
            };
            if header.kind != HEADERS && header.kind != CONTINUATION {
                self.skip = header.len;
                at += FRAME_HEADER;
                continue;
            }
            match header_run(&buf[at..]) {
                Run::Incomplete => return at,
                Run::TooLarge => {
                    self.mode = Mode::Pass;
                    return buf.len();
                }
                Run::Whole { end, fragments } => {
                    let fixed = fix_block(&mut buf[at..at + end], &fragments);
                    if !self.first_seen {
                        self.first_seen = true;
                        if !fixed {
                            self.mode = Mode::Pass;
                        }
                    }
                    at += end;
                }
            }
        }
    }
}

struct FrameHeader {
    len: usize,
    kind: u8,
    flags: u8,
}

fn frame_header(buf: &[u8]) -> Option<FrameHeader> {
    let head = buf.get(..FRAME_HEADER)?;
    Some(FrameHeader {
        len: u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize,
        kind: head[3],
        flags: head[4],
    })
}

enum Run {
    /// Not all of its frames have arrived.
    Incomplete,
    /// Larger than [`MAX_RUN`].
    TooLarge,
    /// Its frames end at `end`; its header block is `fragments`, in order.
    Whole { end: usize, fragments: Vec<Range<usize>> },
}

/// A HEADERS frame and its CONTINUATIONs, to END_HEADERS.
fn header_run(buf: &[u8]) -> Run {
    let mut at = 0;
    let mut fragments = Vec::new();
    loop {
        let Some(header) = frame_header(&buf[at..]) else {
            return Run::Incomplete;
        };
        let end = at + FRAME_HEADER + header.len;
        if end > MAX_RUN {
            return Run::TooLarge;
        }
        if end > buf.len() {
            return Run::Incomplete;
        }
        let mut start = at + FRAME_HEADER;
        let mut stop = end;
        if header.kind == HEADERS {
            if header.flags & PADDED != 0 {
                let pad = buf.get(start).copied().unwrap_or(0) as usize;
                start += 1;
                stop = stop.saturating_sub(pad);
            }
            if header.flags & PRIORITY != 0 {
                start += 5;
            }
        }
        // A malformed frame is h2's to refuse: hand it on as it is.
        fragments.push(start.min(stop)..stop);
        at = end;
        if header.flags & END_HEADERS != 0 {
            return Run::Whole { end, fragments };
        }
    }
}

/// Rewrites the `:authority` literals of the header block held in
/// `fragments` of `frames`; returns whether any needed it.
fn fix_block(frames: &mut [u8], fragments: &[Range<usize>]) -> bool {
    let mut block: Vec<u8> = fragments
        .iter()
        .flat_map(|r| frames[r.clone()].iter().copied())
        .collect();
    let mut fixed = false;
    for value in authority_values(&block) {
        for byte in &mut block[value] {
            if !allowed_in_authority(*byte) {
                *byte = b'-';
                fixed = true;
            }
        }
    }
    if fixed {
        let mut from = 0;
        for range in fragments {
            let n = range.len();
            frames[range.clone()].copy_from_slice(&block[from..from + n]);
            from += n;
        }
    }
    fixed
}

/// Whether `h2` takes `byte` in an `:authority`: RFC 3986's unreserved
/// characters and sub-delimiters, and the `:`, `@`, `[` and `]` that give an
/// authority its parts. `%` is refused outside the userinfo, and a path's
/// `/` anywhere.
fn allowed_in_authority(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@[]".contains(&byte)
}

/// The byte ranges of the raw (not Huffman-coded) values of `:authority`
/// literals in an HPACK header block (RFC 7541 section 6).
fn authority_values(block: &[u8]) -> Vec<Range<usize>> {
    let mut values = Vec::new();
    let mut at = 0;
    while at < block.len() {
        let first = block[at];
        let prefix = match first {
            b if b & 0x80 != 0 => {
                // Indexed field: nothing literal.
                let Some((_, next)) = integer(block, at, 7) else { break };
                at = next;
                continue;
            }
            b if b & 0xe0 == 0x20 => {
                // Dynamic table size update.
                let Some((_, next)) = integer(block, at, 5) else { break };
                at = next;
                continue;
            }
            b if b & 0xc0 == 0x40 => 6,
            _ => 4,
        };
        let Some((index, next)) = integer(block, at, prefix) else {
            break;
        };
        at = next;
        let mut is_authority = index == 1;
        if index == 0 {
            let Some((name, huffman, next)) = string(block, at) else {
                break;
            };
            is_authority = !huffman && &block[name] == b":authority";
            at = next;
        }
        let Some((value, huffman, next)) = string(block, at) else {
            break;
        };
        if is_authority && !huffman {
            values.push(value);
        }
        at = next;
    }
    values
}

/// An HPACK integer with an `n`-bit prefix at `at`, and where it ends.
fn integer(block: &[u8], at: usize, n: u32) -> Option<(usize, usize)> {
    let max = (1usize << n) - 1;
    let mut value = (*block.get(at)? as usize) & max;
    let mut at = at + 1;
    if value < max {
        return Some((value, at));
    }
    let mut shift = 0;
    loop {
        let byte = *block.get(at)?;
        at += 1;
        value = value.checked_add(((byte & 0x7f) as usize).checked_shl(shift)?)?;
        shift += 7;
        if byte & 0x80 == 0 || shift > 28 {
            return (byte & 0x80 == 0).then_some((value, at));
        }
    }
}

/// An HPACK string literal at `at`: its bytes, whether Huffman-coded, and
/// where it ends.
fn string(block: &[u8], at: usize) -> Option<(Range<usize>, bool, usize)> {
    let huffman = *block.get(at)? & 0x80 != 0;
    let (len, start) = integer(block, at, 7)?;
    let end = start.checked_add(len)?;
    (end <= block.len()).then_some((start..end, huffman, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.extend([kind, flags]);
        out.extend(stream.to_be_bytes());
        out.extend(payload);
        out
    }

    /// What grpc's C core sends: every header a literal with a new name.
    fn literal(name: &str, value: &str) -> Vec<u8> {
        let mut out = vec![0x40, name.len() as u8];
        out.extend(name.as_bytes());
        out.push(value.len() as u8);
        out.extend(value.as_bytes());
        out
    }

    fn scan_all(fix: &mut AuthorityFix, bytes: &mut [u8]) -> usize {
        fix.scan(bytes)
    }

    #[test]
    fn a_percent_encoded_authority_is_rewritten_in_place_and_the_connection_kept_under_watch() {
        let mut block = literal(":path", "/containerd.v1.Images/List");
        block.extend(literal(":authority", "tmp%2Fimaged.sock"));
        block.extend([0x83, 0x86]);
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(0x4, 0, 0, &[0, 2, 0, 0, 0, 0]));
        bytes.extend(frame(HEADERS, END_HEADERS, 1, &block));
        bytes.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0]));
        let before = bytes.len();
        let mut fix = AuthorityFix::default();
        assert_eq!(scan_all(&mut fix, &mut bytes), before);
        assert_eq!(bytes.len(), before);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("tmp-2Fimaged.sock"), "{text}");
        assert!(text.contains("/containerd.v1.Images/List"), "{text}");
        assert!(!fix.passing());
    }

    #[test]
    fn a_socket_path_as_authority_is_rewritten_and_valid_ones_are_not() {
        let mut block = literal(":authority", "/run/imaged/imaged.sock");
        block.extend([0x83, 0x86]);
        let mut bytes = frame(HEADERS, END_HEADERS, 1, &block);
        let fragment = FRAME_HEADER..FRAME_HEADER + block.len();
        assert!(fix_block(&mut bytes, std::slice::from_ref(&fragment)));
        assert!(String::from_utf8_lossy(&bytes).contains("-run-imaged-imaged.sock"));
        for valid in ["localhost", "localhost:1234", "[::1]:50051", "user@host", "a.b_c~d"] {
            let block = literal(":authority", valid);
            let mut bytes = frame(HEADERS, END_HEADERS, 1, &block);
            assert!(
                !fix_block(
                    &mut bytes,
                    std::slice::from_ref(&(FRAME_HEADER..FRAME_HEADER + block.len()))
                ),
                "{valid}"
            );
        }
    }

    #[test]
    fn a_valid_authority_hands_the_connection_on_untouched() {
        let mut block = literal(":authority", "localhost");
        block.extend([0x83, 0x86]);
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(HEADERS, END_HEADERS, 1, &block));
        let copy = bytes.clone();
        let mut fix = AuthorityFix::default();
        assert_eq!(fix.scan(&mut bytes), bytes.len());
        assert_eq!(bytes, copy);
        assert!(fix.passing());
    }

    #[test]
    fn a_block_split_over_continuations_and_reads_is_held_until_whole() {
        let mut block = literal(":authority", "a%2Fb");
        block.extend(literal("te", "trailers"));
        let (head, tail) = block.split_at(4);
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(HEADERS, PADDED, 1, &[&[2u8][..], head, &[0, 0]].concat()));
        bytes.extend(frame(CONTINUATION, END_HEADERS, 1, tail));
        let mut fix = AuthorityFix::default();
        // Only the preface is ready until the last frame has arrived.
        let cut = bytes.len() - 3;
        assert_eq!(fix.scan(&mut bytes[..cut]), PREFACE_LEN);
        let mut fix = AuthorityFix::default();
        assert_eq!(fix.scan(&mut bytes), bytes.len());
        assert!(String::from_utf8_lossy(&bytes).contains("a-2Fb"));
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        for round in 0..2000 {
            let len = (round % 300) + 1;
            let mut bytes: Vec<u8> = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push(if round % 3 == 0 {
                    (seed as u8) & 0x0f
                } else {
                    seed as u8
                });
            }
            let mut fix = AuthorityFix::default();
            let ready = fix.scan(&mut bytes);
            assert!(ready <= bytes.len());
        }
    }
}
