//! The envelope of a record batch, as Kafka defines it (magic 2).
//!
//! The log stores producers' record batches byte for byte, with only the base
//! offset rewritten, so a fetch returns stored bytes unchanged. This module
//! reads and checks the 61-byte batch header; the records inside (and their
//! compression) are the business of the layers above.
//!
//! ```text
//! 0   i64 BE  base offset                (rewritten on append)
//! 8   i32 BE  batch length               (bytes after this field)
//! 12  i32 BE  partition leader epoch
//! 16  i8      magic = 2
//! 17  u32 BE  CRC-32C of bytes 21..end
//! 21  i16 BE  attributes                 (bits 0-2 compression, 3 timestamp type,
//!                                         4 transactional, 5 control)
//! 23  i32 BE  last offset delta
//! 27  i64 BE  base timestamp
//! 35  i64 BE  max timestamp
//! 43  i64 BE  producer id
//! 51  i16 BE  producer epoch
//! 53  i32 BE  base sequence
//! 57  i32 BE  record count
//! 61  records
//! ```

/// Bytes before the records.
pub const BATCH_HEADER_LEN: usize = 61;
/// Bytes before the length field's payload (base offset and length).
pub const LOG_OVERHEAD: usize = 12;

/// Why a byte string is not a record batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("truncated record batch: {have} bytes, need {need}")]
    Truncated { have: usize, need: usize },
    #[error("unsupported record batch magic {0} (only 2 is supported)")]
    Magic(i8),
    #[error("record batch length {0} is invalid")]
    Length(i32),
    #[error("record batch checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("record batch header is inconsistent: {0}")]
    Header(&'static str),
}

/// The fields of a batch header the log uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Whole batch size in bytes, header included.
    pub size: usize,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }
    pub fn compression(&self) -> u8 {
        (self.attributes & 0x7) as u8
    }
    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    i32::from_be_bytes(a)
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

/// Reads the header at the start of `b` (at least [`BATCH_HEADER_LEN`]
/// bytes) without touching the records. Checks magic and lengths.
pub fn parse_header(b: &[u8]) -> Result<BatchHeader, BatchError> {
    if b.len() < BATCH_HEADER_LEN {
        return Err(BatchError::Truncated {
            have: b.len(),
            need: BATCH_HEADER_LEN,
        });
    }
    let magic = b[16] as i8;
    if magic != 2 {
        return Err(BatchError::Magic(magic));
    }
    let length = be_i32(b, 8);
    if length < (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32 {
        return Err(BatchError::Length(length));
    }
    let h = BatchHeader {
        base_offset: be_i64(b, 0),
        size: LOG_OVERHEAD + length as usize,
        attributes: be_i16(b, 21),
        last_offset_delta: be_i32(b, 23),
        base_timestamp: be_i64(b, 27),
        max_timestamp: be_i64(b, 35),
        producer_id: be_i64(b, 43),
        producer_epoch: be_i16(b, 51),
        base_sequence: be_i32(b, 53),
        record_count: be_i32(b, 57),
    };
    if h.record_count < 0 || h.last_offset_delta < 0 {
        return Err(BatchError::Header("negative record count or offset delta"));
    }
    Ok(h)
}

/// Parses and checksums the batch at the start of `b`; returns its header.
pub fn check_batch(b: &[u8]) -> Result<BatchHeader, BatchError> {
    let h = parse_header(b)?;
    if b.len() < h.size {
        return Err(BatchError::Truncated {
            have: b.len(),
            need: h.size,
        });
    }
    let stored = be_i32(b, 17) as u32;
    let computed = crc32c::crc32c(&b[21..h.size]);
    if stored != computed {
        return Err(BatchError::Checksum { stored, computed });
    }
    Ok(h)
}

/// Splits a buffer of concatenated batches into checked headers. Fails on
/// the first bad batch; an empty buffer is an error too.
pub fn check_batches(mut b: &[u8]) -> Result<Vec<BatchHeader>, BatchError> {
    if b.is_empty() {
        return Err(BatchError::Truncated {
            have: 0,
            need: BATCH_HEADER_LEN,
        });
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let h = check_batch(b)?;
        b = &b[h.size..];
        out.push(h);
    }
    Ok(out)
}

/// Rewrites a batch's base offset in place (the checksum does not cover it).
pub fn set_base_offset(batch: &mut [u8], offset: i64) {
    batch[..8].copy_from_slice(&offset.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built batch with `n` empty records' worth of header fields.
    pub(crate) fn sample(count: i32, ts: i64, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; BATCH_HEADER_LEN];
        b[16] = 2;
        b[23..27].copy_from_slice(&(count - 1).to_be_bytes());
        b[27..35].copy_from_slice(&ts.to_be_bytes());
        b[35..43].copy_from_slice(&ts.to_be_bytes());
        b[43..51].copy_from_slice(&(-1i64).to_be_bytes());
        b[57..61].copy_from_slice(&count.to_be_bytes());
        b.extend_from_slice(payload);
        let len = (b.len() - LOG_OVERHEAD) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn header_round_trip_and_checks() {
        let b = sample(3, 1000, b"abc");
        let h = check_batch(&b).unwrap();
        assert_eq!(
            (h.record_count, h.last_offset_delta, h.max_timestamp, h.size),
            (3, 2, 1000, 64)
        );
        let mut bad = b.clone();
        bad[62] ^= 1;
        assert!(matches!(
            check_batch(&bad),
            Err(BatchError::Checksum { .. })
        ));
        let mut moved = b.clone();
        set_base_offset(&mut moved, 77);
        assert_eq!(check_batch(&moved).unwrap().base_offset, 77);
        for cut in 0..b.len() {
            assert!(check_batch(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut magic = b.clone();
        magic[16] = 1;
        assert_eq!(check_batch(&magic), Err(BatchError::Magic(1)));
    }

    #[test]
    fn random_bytes_never_panic() {
        use proptest::prelude::*;
        proptest!(|(bytes in proptest::collection::vec(any::<u8>(), 0..200))| {
            let _ = check_batches(&bytes);
        });
    }
}
