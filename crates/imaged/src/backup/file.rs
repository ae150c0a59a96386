//! The backup file's framing: writing it as a copy runs, and reading it
//! back with every check made (docs/BACKUP.md is the specification).
//!
//! ```text
//! magic "IMAGEDBK" (8 bytes) | version: u32 BE
//! frame*:  kind: u8 | len: u32 BE | payload (len bytes) | crc32(kind, len, payload): u32 BE
//!          kind 1 = BackupHeader (first), 2 = BackupRecord, 3 = BackupTrailer (last)
//! sha256 of every byte before it (32 bytes), ending the file
//! ```

use std::io::{self, Read, Write};

use imaged_api::imaged::admin::v1::{BackupHeader, BackupRecord, BackupTrailer};
use prost::Message;
use sha2::{Digest, Sha256};

/// The file's first bytes.
pub const MAGIC: &[u8; 8] = b"IMAGEDBK";

/// The format version this imaged writes, and the newest it reads.
pub const VERSION: u32 = 1;

/// The largest payload of one frame. A record holds one image or one
/// namespace, each bounded far below this.
pub const MAX_FRAME_BYTES: u32 = 16 << 20;

const HEADER: u8 = 1;
const RECORD: u8 = 2;
const TRAILER: u8 = 3;

/// Writes a backup file to `out`, frame by frame.
pub struct Writer<W: Write> {
    out: W,
    sha: Sha256,
    records: u64,
    frame: Vec<u8>,
}

impl<W: Write> Writer<W> {
    /// Starts the file: magic, version and `header`.
    pub fn new(out: W, header: &BackupHeader) -> io::Result<Writer<W>> {
        let mut writer = Writer {
            out,
            sha: Sha256::new(),
            records: 0,
            frame: Vec::new(),
        };
        let mut start = MAGIC.to_vec();
        start.extend_from_slice(&VERSION.to_be_bytes());
        writer.put(&start)?;
        writer.frame(HEADER, header)?;
        Ok(writer)
    }

    /// Adds one record.
    pub fn record(&mut self, record: &BackupRecord) -> io::Result<()> {
        self.records += 1;
        self.frame(RECORD, record)
    }

    /// Ends the file with the trailer at `revision` and the checksum of the
    /// whole; returns the output.
    pub fn finish(mut self, revision: u64) -> io::Result<W> {
        let records = self.records;
        self.frame(TRAILER, &BackupTrailer { revision, records })?;
        let sum = self.sha.finalize_reset();
        self.out.write_all(&sum)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn frame(&mut self, kind: u8, message: &impl Message) -> io::Result<()> {
        let len = message.encoded_len();
        if len > MAX_FRAME_BYTES as usize {
            return Err(io::Error::other(format!(
                "a record of {len} bytes is larger than a frame may be ({MAX_FRAME_BYTES})"
            )));
        }
        let mut frame = std::mem::take(&mut self.frame);
        frame.clear();
        frame.push(kind);
        frame.extend_from_slice(&(len as u32).to_be_bytes());
        message.encode(&mut frame).map_err(io::Error::other)?;
        let crc = crc32fast::hash(&frame);
        frame.extend_from_slice(&crc.to_be_bytes());
        let written = self.put(&frame);
        self.frame = frame;
        written
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sha.update(bytes);
        self.out.write_all(bytes)
    }
}

/// Why a backup file was refused: what is wrong, and at which byte.
#[derive(Debug, thiserror::Error)]
#[error("backup file refused at byte {offset}: {problem}")]
pub struct FileError {
    /// Where the problem starts.
    pub offset: u64,
    /// What it is.
    pub problem: String,
}

/// What a whole, checked file said.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Its header.
    pub header: BackupHeader,
    /// The revision its records are consistent at.
    pub revision: u64,
    /// How many records it held.
    pub records: u64,
}

/// Reads a backup file from `input`, handing each record to `apply` in
/// order, and checks everything: magic, version, each frame's checksum,
/// the order of frames, the record count, the whole file's checksum, and
/// that nothing follows. `apply` sees records before the whole is checked:
/// the caller must keep what it does aside until this returns `Ok`.
pub fn read(input: impl Read, mut apply: impl FnMut(BackupRecord) -> Result<(), String>) -> Result<Summary, FileError> {
    let mut input = Hashing {
        input,
        sha: Sha256::new(),
        offset: 0,
    };
    let mut start = [0u8; 12];
    input.exact(&mut start, "the file ends before its 12-byte start (magic and version)")?;
    if &start[..8] != MAGIC {
        return Err(FileError {
            offset: 0,
            problem: format!("it does not start with {:?}: not an imaged backup", "IMAGEDBK"),
        });
    }
    let version = u32::from_be_bytes(start[8..].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(FileError {
            offset: 8,
            problem: format!(
                "format version {version}; this imaged reads version {VERSION}{}",
                if version > VERSION {
                    ": restore it with a newer imaged"
                } else {
                    ""
                }
            ),
        });
    }
    let (offset, kind, payload) = input.frame()?;
    if kind != HEADER {
        return Err(FileError {
            offset,
            problem: format!("the first frame is of kind {kind}, not the header (1)"),
        });
    }
    let header = decode::<BackupHeader>(offset, &payload)?;
    let mut records = 0u64;
    let trailer = loop {
        let (offset, kind, payload) = input.frame()?;
        match kind {
            RECORD => {
                let record = decode::<BackupRecord>(offset, &payload)?;
                apply(record).map_err(|problem| FileError {
                    offset,
                    problem: format!("record {}: {problem}", records + 1),
                })?;
                records += 1;
            }
            TRAILER => break (offset, decode::<BackupTrailer>(offset, &payload)?),
            other => {
                return Err(FileError {
                    offset,
                    problem: format!("a frame of unknown kind {other}"),
                });
            }
        }
    };
    let (trailer_at, trailer) = trailer;
    if trailer.records != records {
        return Err(FileError {
            offset: trailer_at,
            problem: format!(
                "the trailer counts {} records, the file holds {records}",
                trailer.records
            ),
        });
    }
    let expected = input.sha.finalize_reset();
    let sum_at = input.offset;
    let mut sum = [0u8; 32];
    input.exact(&mut sum, "the file ends before its closing sha256")?;
    if sum[..] != expected[..] {
        return Err(FileError {
            offset: sum_at,
            problem: "the file's sha256 does not match its contents".into(),
        });
    }
    let mut more = [0u8; 1];
    if input.input.read(&mut more).map_err(|e| io_error(input.offset, e))? != 0 {
        return Err(FileError {
            offset: input.offset,
            problem: "bytes follow the file's closing checksum".into(),
        });
    }
    Ok(Summary {
        header,
        revision: trailer.revision,
        records,
    })
}

fn decode<M: Message + Default>(offset: u64, payload: &[u8]) -> Result<M, FileError> {
    M::decode(payload).map_err(|e| FileError {
        offset,
        problem: format!("the frame's payload does not decode: {e}"),
    })
}

fn io_error(offset: u64, e: io::Error) -> FileError {
    FileError {
        offset,
        problem: format!("reading: {e}"),
    }
}

/// The input, hashed and counted as it is read.
struct Hashing<R: Read> {
    input: R,
    sha: Sha256,
    offset: u64,
}

impl<R: Read> Hashing<R> {
    fn exact(&mut self, buf: &mut [u8], short: &str) -> Result<(), FileError> {
        let at = self.offset;
        self.input.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                FileError {
                    offset: at,
                    problem: format!("{short}: the file is truncated"),
                }
            } else {
                io_error(at, e)
            }
        })?;
        self.sha.update(&*buf);
        self.offset += buf.len() as u64;
        Ok(())
    }

    /// The next frame: where it starts, its kind and its payload, checked.
    fn frame(&mut self) -> Result<(u64, u8, Vec<u8>), FileError> {
        let at = self.offset;
        let mut head = [0u8; 5];
        self.exact(
            &mut head,
            "the file ends where a frame should start, before its trailer",
        )?;
        let len = u32::from_be_bytes(head[1..].try_into().expect("4 bytes"));
        if len > MAX_FRAME_BYTES {
            return Err(FileError {
                offset: at,
                problem: format!("a frame claims {len} bytes, more than the {MAX_FRAME_BYTES} a frame may hold"),
            });
        }
        let mut rest = vec![0u8; len as usize + 4];
        self.exact(&mut rest, "the file ends inside a frame")?;
        let (payload, crc) = rest.split_at(len as usize);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&head);
        hasher.update(payload);
        if hasher.finalize().to_be_bytes() != crc {
            return Err(FileError {
                offset: at,
                problem: "the frame's crc32 does not match its contents (the file is damaged)".into(),
            });
        }
        rest.truncate(len as usize);
        Ok((at, head[0], rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imaged_api::imaged::admin::v1::backup_record::Record;
    use imaged_api::imaged::admin::v1::{BackupNamespace, BackupRemoval};

    fn sample() -> Vec<u8> {
        let header = BackupHeader {
            start_revision: 3,
            ..Default::default()
        };
        let mut writer = Writer::new(Vec::new(), &header).unwrap();
        for i in 0..5 {
            writer
                .record(&BackupRecord {
                    record: Some(Record::Namespace(BackupNamespace {
                        name: format!("ns{i}"),
                        labels: Default::default(),
                    })),
                })
                .unwrap();
        }
        writer
            .record(&BackupRecord {
                record: Some(Record::NamespaceRemoved(BackupRemoval {
                    namespace: "ns0".into(),
                    name: String::new(),
                })),
            })
            .unwrap();
        writer.finish(9).unwrap()
    }

    #[test]
    fn a_whole_file_reads_back() {
        let file = sample();
        let mut seen = 0;
        let summary = read(&file[..], |_| {
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((summary.revision, summary.records, seen), (9, 6, 6));
        assert_eq!(summary.header.start_revision, 3);
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let file = sample();
        for len in 0..file.len() {
            let e = read(&file[..len], |_| Ok(())).unwrap_err();
            assert!(e.offset <= len as u64, "{len}: {e}");
        }
        for at in 0..file.len() {
            for bit in [0x01, 0x80] {
                let mut bad = file.clone();
                bad[at] ^= bit;
                assert!(read(&bad[..], |_| Ok(())).is_err(), "flip at {at} was read");
            }
        }
        let mut longer = file.clone();
        longer.push(0);
        assert!(read(&longer[..], |_| Ok(())).unwrap_err().problem.contains("follow"));
    }

    #[test]
    fn a_newer_version_is_refused_by_name() {
        let mut file = sample();
        file[11] = 2;
        let e = read(&file[..], |_| Ok(())).unwrap_err();
        assert_eq!(e.offset, 8);
        assert!(e.problem.contains("version 2"), "{e}");
        assert!(e.problem.contains("newer imaged"), "{e}");
    }
}
