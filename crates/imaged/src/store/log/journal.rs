//! The journal: a small write-ahead log that makes a batch durable with one
//! `fdatasync` of a preallocated file, instead of a sled flush.
//!
//! sled's `flush` hands its buffer to an IO thread, waits for
//! `sync_file_range`, and still needs an `fdatasync` on top (see `durable`):
//! two device round trips and two thread handoffs per batch. The journal
//! needs one `pwrite` and one `fdatasync` of a file whose blocks are already
//! allocated, so no metadata is written either. This is etcd's shape (a WAL in
//! front of bbolt), with sled as the store behind it.
//!
//! # How it keeps acknowledged writes
//! - The writer plans a batch, appends one entry holding every key the batch
//!   writes, in order, with the revisions it spans, and syncs it. Only then
//!   does it make the writes in sled, and then it answers. The revision
//!   counter is the batch's last write.
//! - sled writes its buffers on its own as they fill, but never syncs them
//!   before a **checkpoint**: the full barrier of `durable`. After it,
//!   everything sled holds is on disk and the journal starts again at offset
//!   0. A checkpoint runs before an entry that does not fit, at start-up
//!   after a replay, and at shutdown.
//! - On open, sled recovers a prefix of its writes. Its revision `R` names
//!   the last batch it holds whole; it may hold the start of the next. The
//!   journal's entries are read from offset 0 while their checksums hold and
//!   their revisions follow on from each other; those ending at or before `R`
//!   are already in sled and skipped, the rest are applied in order (writing
//!   again what sled already has of a batch changes nothing, since each write
//!   sets a key's final value). Entries left from before the last checkpoint
//!   have lower revisions than the ones after it, so the chain of revisions
//!   ends the scan at them, as does a torn entry, which was never applied to
//!   sled nor answered.
//!
//! # Format
//! The file is [`CAPACITY`] bytes, zero-filled when made. An entry is
//! `len: u32 LE`, `crc32(payload): u32 LE`, then the payload: `first: u64`,
//! `last: u64` (the revisions the batch spans), then each write as
//! `tree: u8`, `key_len: u32`, key, `present: u8`, and when present
//! `value_len: u32` and the value. A zero length ends the entries.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::store::engine::barrier::sync_dir;
use crate::store::layout::{Effect, MAX_REVISION, TreeId};

/// Size of the journal file. A checkpoint runs each time it fills, and at
/// start-up at most this much is replayed, which bounds start-up time.
pub const CAPACITY: u64 = 4 * 1024 * 1024;

const HEADER: usize = 8;

/// The writes of one batch and the revisions it spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// First revision of the batch.
    pub first: u64,
    /// Last revision of the batch.
    pub last: u64,
    /// Every write, in the order made.
    pub effects: Vec<Effect>,
}

impl Entry {
    /// The entry as it is written: header and payload.
    pub fn encode(&self) -> Vec<u8> {
        let size = HEADER
            + 16
            + self
                .effects
                .iter()
                .map(|e| 10 + e.key.len() + e.value.as_ref().map_or(0, |v| 4 + v.len()))
                .sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&[0; HEADER]);
        out.extend_from_slice(&self.first.to_le_bytes());
        out.extend_from_slice(&self.last.to_le_bytes());
        for effect in &self.effects {
            out.push(effect.tree as u8);
            put_bytes(&mut out, &effect.key);
            match &effect.value {
                Some(value) => {
                    out.push(1);
                    put_bytes(&mut out, value);
                }
                None => out.push(0),
            }
        }
        let len = (out.len() - HEADER) as u32;
        let crc = crc32fast::hash(&out[HEADER..]);
        out[..4].copy_from_slice(&len.to_le_bytes());
        out[4..HEADER].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// An entry from its payload (after the header), if it decodes.
    pub fn decode_payload(payload: &[u8]) -> Option<Entry> {
        Entry::decode(payload)
    }

    fn decode(payload: &[u8]) -> Option<Entry> {
        let mut r = Reader(payload);
        let first = r.u64()?;
        let last = r.u64()?;
        let mut effects = Vec::new();
        while !r.0.is_empty() {
            let tree = TreeId::from_byte(r.u8()?)?;
            let key = r.bytes()?.to_vec();
            let value = match r.u8()? {
                0 => None,
                1 => Some(r.bytes()?.to_vec()),
                _ => return None,
            };
            effects.push(Effect { tree, key, value });
        }
        Some(Entry { first, last, effects })
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// The open journal file and where the next entry goes.
pub struct Journal {
    file: File,
    path: PathBuf,
    offset: u64,
}

/// What the journal holds: the chain of entries from offset 0, and what lies
/// after the chain's end.
#[derive(Debug)]
pub struct Chain {
    /// The entries whose checksums hold and whose revisions follow on, oldest
    /// first.
    pub entries: Vec<Entry>,
    /// Where the chain stops: past its last entry.
    pub end: u64,
    /// The whole, valid entry after `end` with the highest revisions, if any.
    pub beyond: Option<Beyond>,
}

/// A whole, valid entry found after the end of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beyond {
    /// Where it starts.
    pub offset: u64,
    /// Its first revision.
    pub first: u64,
    /// Its last revision.
    pub last: u64,
}

impl Chain {
    /// Whether the chain was cut by damage rather than by its end, for a
    /// store at `revision` once the chain is replayed.
    ///
    /// Only the last append can be torn, since each is synced before the
    /// next; what follows a torn entry, or the clean end of the chain, is
    /// zeros or entries from before the last checkpoint, whose revisions the
    /// store already holds. A whole entry after the end holding revisions the
    /// store does not hold was acknowledged after the entry at `end`, so that
    /// entry is damage, and replaying only up to it would drop acknowledged
    /// writes.
    pub fn damage(&self, revision: u64) -> Option<Beyond> {
        self.beyond.filter(|b| b.last > revision)
    }
}

impl Journal {
    /// Opens the journal at `path`, making and zero-filling it when missing or
    /// short, and returns it with the chain of entries it holds, oldest first.
    /// The next append goes to offset 0: call [`Journal::append`] only after a
    /// checkpoint has made the entries returned here durable in sled.
    pub fn open(path: &Path) -> io::Result<(Journal, Chain)> {
        let file = crate::store::files::no_follow()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let len = file.metadata()?.len();
        let mut contents = vec![0; len.min(CAPACITY) as usize];
        file.read_exact_at(&mut contents, 0)?;
        if len < CAPACITY {
            // Zero-filled rather than fallocated, so later writes change no
            // extent state and an fdatasync writes no metadata (after the
            // first append's, which makes the zeros and the size durable
            // with the entry). Its name is synced here.
            let zeros = vec![0; (CAPACITY - len) as usize];
            file.write_all_at(&zeros, len)?;
            if let Some(dir) = path.parent() {
                crate::fault::sync("journal-create-dir", || sync_dir(dir))?;
            }
        }
        let chain = read_chain(&contents);
        Ok((
            Journal {
                file,
                path: path.to_owned(),
                offset: 0,
            },
            chain,
        ))
    }

    /// Writes `entry` (from [`Entry::encode`]) after the last one and syncs
    /// it. Returns `false`, writing nothing, when it does not fit: the caller
    /// must then checkpoint, which makes the batch durable, and [`reset`].
    /// A failure names the journal file.
    ///
    /// [`reset`]: Journal::reset
    pub fn append(&mut self, entry: &[u8]) -> io::Result<bool> {
        if self.offset + entry.len() as u64 > CAPACITY {
            return Ok(false);
        }
        let named = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what} {}: {e}", self.path.display()));
        self.file
            .write_all_at(entry, self.offset)
            .map_err(|e| named("writing the journal", e))?;
        crate::fault::sync("journal-append", || self.file.sync_data()).map_err(|e| named("syncing the journal", e))?;
        self.offset += entry.len() as u64;
        Ok(true)
    }

    /// The chain of entries the file holds now, as [`Journal::open`] reads
    /// it: what a recovery without a restart replays.
    pub fn read(&self) -> io::Result<Chain> {
        let mut contents = vec![0; CAPACITY as usize];
        self.file.read_exact_at(&mut contents, 0)?;
        Ok(read_chain(&contents))
    }

    /// After a checkpoint: the next entry goes to the start again.
    pub fn reset(&mut self) {
        self.offset = 0;
    }

    /// Zero-fills the whole journal and syncs it, leaving no entry, old or
    /// new: a repair's last step, once the engine holds what it keeps.
    pub fn erase(&mut self) -> io::Result<()> {
        self.file.write_all_at(&vec![0; CAPACITY as usize], 0)?;
        crate::fault::sync("journal-erase", || self.file.sync_data())?;
        self.offset = 0;
        Ok(())
    }
}

/// What a journal file holding `contents` holds, as `Journal::open` reads
/// it.
pub fn read_journal(contents: &[u8]) -> Chain {
    read_chain(contents)
}

/// The entries from offset 0 while checksums hold, contents decode, and
/// each entry's first revision follows the previous entry's last; and the
/// valid entry after them with the highest revisions.
fn read_chain(contents: &[u8]) -> Chain {
    let mut entries: Vec<Entry> = Vec::new();
    let mut at = 0usize;
    while at + HEADER <= contents.len() {
        let len = u32::from_le_bytes(contents[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(contents[at + 4..at + HEADER].try_into().expect("4 bytes"));
        let Some(payload) = contents.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if len == 0 || crc32fast::hash(payload) != crc {
            break;
        }
        // A checksum that holds over contents that do not decode is damage
        // too: the chain ends, and the scan beyond it judges.
        let Some(entry) = Entry::decode(payload).filter(|e| e.first <= e.last) else {
            break;
        };
        if let Some(previous) = entries.last()
            && entry.first != previous.last + 1
        {
            break;
        }
        entries.push(entry);
        at += HEADER + len;
    }
    let beyond = find_beyond(contents, at, entries.last().map_or(0, |e| e.last));
    Chain {
        entries,
        end: at as u64,
        beyond,
    }
}

/// The whole entry with the highest revisions after `floor` at any offset
/// from `from` on (an entry at or below the chain's last revision can never
/// say that acknowledged writes were lost). Each offset is tried, since a
/// damaged length cannot be trusted to skip by; only headers whose length
/// fits and whose revisions are plausible (after `floor`, below the
/// ceiling, and no more of them than the entry has bytes) have their
/// checksum computed, which keeps the scan of a full journal cheap.
fn find_beyond(contents: &[u8], from: usize, floor: u64) -> Option<Beyond> {
    let mut best: Option<Beyond> = None;
    let mut at = from;
    while at + HEADER + 16 <= contents.len() {
        let word = |i: usize, n: usize| &contents[at + i..at + i + n];
        let len = u32::from_le_bytes(word(0, 4).try_into().expect("4 bytes")) as usize;
        let plausible = len >= 16 && at + HEADER + len <= contents.len();
        if plausible {
            let first = u64::from_le_bytes(word(HEADER, 8).try_into().expect("8 bytes"));
            let last = u64::from_le_bytes(word(HEADER + 8, 8).try_into().expect("8 bytes"));
            let crc = u32::from_le_bytes(word(4, 4).try_into().expect("4 bytes"));
            let newer = last > floor && best.is_none_or(|b| last > b.last);
            let span = first >= 1 && first <= last && last - first < len as u64 && last <= MAX_REVISION;
            if span && newer && crc32fast::hash(&contents[at + HEADER..at + HEADER + len]) == crc {
                best = Some(Beyond {
                    offset: at as u64,
                    first,
                    last,
                });
            }
        }
        at += 1;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn entry(first: u64, last: u64, n: u8) -> Entry {
        Entry {
            first,
            last,
            effects: vec![
                Effect {
                    tree: TreeId::Images,
                    key: vec![n; 3],
                    value: Some(vec![n; 40]),
                },
                Effect {
                    tree: TreeId::Index,
                    key: vec![b'd', n],
                    value: None,
                },
                Effect {
                    tree: TreeId::Meta,
                    key: b"revision".to_vec(),
                    value: Some(last.to_be_bytes().to_vec()),
                },
            ],
        }
    }

    fn reopen(path: &Path) -> Vec<Entry> {
        Journal::open(path).unwrap().1.entries
    }

    #[test]
    fn entries_round_trip_and_a_new_journal_is_empty_and_preallocated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut journal, entries) = Journal::open(&path).unwrap();
        assert!(entries.entries.is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), CAPACITY);
        let written = [entry(1, 1, 1), entry(2, 4, 2), entry(5, 5, 3)];
        for e in &written {
            assert!(journal.append(&e.encode()).unwrap());
        }
        drop(journal);
        assert_eq!(reopen(&path), written);
    }

    #[test]
    fn a_torn_entry_ends_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut journal, _) = Journal::open(&path).unwrap();
        let first = entry(1, 1, 1).encode();
        journal.append(&first).unwrap();
        journal.append(&entry(2, 2, 2).encode()).unwrap();
        drop(journal);
        // The second entry's last byte never reached the disk.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        let second_end = first.len() + entry(2, 2, 2).encode().len();
        file.write_all_at(&[0xff], second_end as u64 - 1).unwrap();
        assert_eq!(reopen(&path), [entry(1, 1, 1)]);
    }

    #[test]
    fn entries_from_before_a_checkpoint_are_not_taken_for_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut journal, _) = Journal::open(&path).unwrap();
        // A long old cycle, then a checkpoint and one shorter new entry.
        for r in 1..=5 {
            journal.append(&entry(r, r, r as u8).encode()).unwrap();
        }
        journal.reset();
        let new = entry(6, 6, 6);
        assert_eq!(new.encode().len(), entry(1, 1, 1).encode().len());
        journal.append(&new.encode()).unwrap();
        drop(journal);
        // The next bytes are the old second entry, whole and with a valid
        // checksum, but its revision does not follow: the chain stops.
        assert_eq!(reopen(&path), [new]);
    }

    #[test]
    fn an_entry_that_does_not_fit_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut journal, _) = Journal::open(&path).unwrap();
        let big = Entry {
            first: 1,
            last: 1,
            effects: vec![Effect {
                tree: TreeId::Images,
                key: b"k".to_vec(),
                value: Some(vec![7; CAPACITY as usize / 2]),
            }],
        };
        assert!(journal.append(&big.encode()).unwrap());
        let bigger = Entry {
            first: 2,
            last: 2,
            ..big
        };
        assert!(!journal.append(&bigger.encode()).unwrap());
        drop(journal);
        assert_eq!(reopen(&path).len(), 1);
    }

    #[test]
    fn a_damaged_entry_followed_by_valid_ones_is_damage_and_a_torn_tail_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut journal, _) = Journal::open(&path).unwrap();
        let sizes: Vec<usize> = (1..=3).map(|r| entry(r, r, r as u8).encode().len()).collect();
        for r in 1..=3 {
            journal.append(&entry(r, r, r as u8).encode()).unwrap();
        }
        drop(journal);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        // A torn last entry: nothing after it, so not damage.
        let last = (sizes[0] + sizes[1] + sizes[2] - 1) as u64;
        file.write_all_at(&[0xee], last).unwrap();
        let chain = Journal::open(&path).unwrap().1;
        assert_eq!(chain.entries.len(), 2);
        assert_eq!(chain.damage(2), None);
        // A bit flipped in the second of three whole entries: the third,
        // acknowledged after it, lies beyond the chain's end.
        let (mut journal, _) = Journal::open(&path).unwrap();
        for r in 1..=3 {
            journal.append(&entry(r, r, r as u8).encode()).unwrap();
        }
        drop(journal);
        file.write_all_at(&[0x55], (sizes[0] + 20) as u64).unwrap();
        let chain = Journal::open(&path).unwrap().1;
        assert_eq!(chain.entries, [entry(1, 1, 1)]);
        assert_eq!(chain.end, sizes[0] as u64);
        let damage = chain.damage(1).expect("damage found");
        assert_eq!(
            (damage.offset, damage.first, damage.last),
            ((sizes[0] + sizes[1]) as u64, 3, 3)
        );
        // A store that already holds revision 3 (sled wrote it out) loses
        // nothing by the damage.
        assert_eq!(chain.damage(3), None);
    }

    #[test]
    fn garbage_anywhere_in_the_journal_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut contents = vec![0u8; 64 * 1024];
        for round in 0..50 {
            for b in contents.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = if round % 2 == 0 {
                    seed as u8
                } else {
                    (seed as u8) & 0x03
                };
            }
            std::fs::write(&path, &contents).unwrap();
            let _ = Journal::open(&path).unwrap();
        }
    }
}
