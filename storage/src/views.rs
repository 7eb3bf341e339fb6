//! Comparisons of values in binary view arrays, the type scans carry row
//! keys, qualifiers and values in. A view holds a value's length and first
//! four bytes (all of it up to 12 bytes), so most comparisons of row keys
//! and qualifiers are settled by the views alone, without following them
//! into the data buffers.

use std::cmp::Ordering;

use arrow::array::BinaryViewArray;

/// Byte order of `a[i]` and `b[j]`.
///
/// # Panics
/// If an index is out of bounds.
#[inline]
pub fn cmp(a: &BinaryViewArray, i: usize, b: &BinaryViewArray, j: usize) -> Ordering {
    let (va, vb) = (a.views()[i], b.views()[j]);
    if (va as u32) <= 12 && (vb as u32) <= 12 {
        // Both inline: the data big-endian, then the length, in one integer.
        return BinaryViewArray::inline_key_fast(va).cmp(&BinaryViewArray::inline_key_fast(vb));
    }
    // The first four bytes (zero-padded) decide unless they are equal.
    let prefix = |v: u128| ((v >> 32) as u32).swap_bytes();
    prefix(va)
        .cmp(&prefix(vb))
        .then_with(|| a.value(i).cmp(b.value(j)))
}

/// Whether `a[i]` and `b[j]` hold the same bytes.
///
/// # Panics
/// If an index is out of bounds.
#[inline]
pub fn eq(a: &BinaryViewArray, i: usize, b: &BinaryViewArray, j: usize) -> bool {
    let (va, vb) = (a.views()[i], b.views()[j]);
    // The low 64 bits are the length and the first four bytes.
    if va as u64 != vb as u64 {
        return false;
    }
    if (va as u32) <= 12 {
        // Inline: the rest of the view is the rest of the value, zero-padded.
        return va == vb;
    }
    a.value(i) == b.value(j)
}

/// The view a value of up to 12 bytes has in any binary view array (its
/// length, then its bytes, zero-padded), or `None` for a longer value,
/// whose view also names a buffer.
pub fn inline_view(value: &[u8]) -> Option<u128> {
    if value.len() > 12 {
        return None;
    }
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&(value.len() as u32).to_le_bytes());
    b[4..4 + value.len()].copy_from_slice(value);
    Some(u128::from_le_bytes(b))
}

/// Whether `a[i]` holds `value`, whose [`inline_view`] is `view`.
#[inline]
pub fn is(a: &BinaryViewArray, i: usize, value: &[u8], view: Option<u128>) -> bool {
    match view {
        Some(v) => a.views()[i] == v,
        None => a.value(i) == value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn values() -> impl Strategy<Value = Vec<Vec<u8>>> {
        // Short and long values over a small alphabet, so equal values,
        // shared prefixes and prefixes of each other are common.
        proptest::collection::vec(proptest::collection::vec(0u8..3, 0..20), 1..40)
    }

    proptest! {
        #[test]
        fn comparisons_agree_with_the_bytes(a in values(), b in values()) {
            let av = BinaryViewArray::from_iter_values(a.iter());
            let bv = BinaryViewArray::from_iter_values(b.iter());
            for (i, x) in a.iter().enumerate() {
                for (j, y) in b.iter().enumerate() {
                    prop_assert_eq!(cmp(&av, i, &bv, j), x.cmp(y));
                    prop_assert_eq!(eq(&av, i, &bv, j), x == y);
                    prop_assert_eq!(is(&av, i, y, inline_view(y)), x == y);
                }
            }
        }
    }
}
