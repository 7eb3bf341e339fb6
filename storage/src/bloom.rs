//! A bloom filter over row keys (or row + qualifier).
//!
//! Layout: `u32 LE` number of hash functions, then the bit array. Bits are
//! chosen by double hashing of the 64-bit xxh3 hash.

use xxhash_rust::xxh3::xxh3_64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bloom {
    hashes: u32,
    bits: Vec<u8>,
}

impl Bloom {
    /// A filter sized for `items` keys at about a 1% false-positive rate
    /// (10 bits per key, 7 hash functions).
    pub fn with_capacity(items: usize) -> Self {
        let bits = (items.max(1) * 10).div_ceil(8);
        Self {
            hashes: 7,
            bits: vec![0; bits],
        }
    }

    /// The bit positions of `key`.
    fn positions(hashes: u32, nbits: u64, key: &[u8]) -> impl Iterator<Item = usize> {
        let h = xxh3_64(key);
        let (h1, h2) = (h as u32 as u64, h >> 32);
        (0..u64::from(hashes)).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % nbits) as usize)
    }

    fn nbits(&self) -> u64 {
        (self.bits.len() * 8) as u64
    }

    pub fn insert(&mut self, key: &[u8]) {
        for p in Self::positions(self.hashes, self.nbits(), key) {
            self.bits[p / 8] |= 1 << (p % 8);
        }
    }

    /// False means the key is certainly absent.
    pub fn may_contain(&self, key: &[u8]) -> bool {
        Self::positions(self.hashes, self.nbits(), key)
            .all(|p| self.bits[p / 8] & (1 << (p % 8)) != 0)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.bits.len());
        out.extend_from_slice(&self.hashes.to_le_bytes());
        out.extend_from_slice(&self.bits);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let hashes = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
        let bits = bytes.get(4..)?.to_vec();
        if bits.is_empty() || hashes == 0 || hashes > 32 {
            return None;
        }
        Some(Self { hashes, bits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_about_one_percent_false_positives() {
        let n = 20_000;
        let mut b = Bloom::with_capacity(n);
        for i in 0..n {
            b.insert(format!("present-{i}").as_bytes());
        }
        for i in 0..n {
            assert!(b.may_contain(format!("present-{i}").as_bytes()));
        }
        let fp = (0..n)
            .filter(|i| b.may_contain(format!("absent-{i}").as_bytes()))
            .count();
        let rate = fp as f64 / n as f64;
        assert!((0.002..0.02).contains(&rate), "false-positive rate {rate}");
        assert_eq!(Bloom::decode(&b.encode()), Some(b));
        assert_eq!(Bloom::decode(&[1, 2]), None);
    }
}
