//! Client-to-server payload unmasking (RFC 6455 section 5.3).
//!
//! tungstenite 0.30 keeps its `apply_mask` private, so this is our own. Every byte a
//! client sends passes through here, so it works eight bytes at a time with unaligned
//! loads (`as_chunks_mut`), which LLVM vectorizes; it needs no `unsafe` and no alignment
//! prologue because a whole number of 8-byte words keeps the 4-byte mask phase at zero.

/// XORs `buf` with `mask`, the first byte of `buf` taking `mask[0]`.
#[inline]
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let (words, tail) = buf.as_chunks_mut::<8>();
    for word in words {
        *word = (u64::from_ne_bytes(*word) ^ wide).to_ne_bytes();
    }
    // `words` covered a multiple of 8 bytes, so the tail starts at mask phase 0.
    for (i, byte) in tail.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// XORs `buf` with `mask` as if `buf` started `offset` bytes into the payload: used when
/// a payload arrives in several reads and each piece is unmasked as it lands.
#[inline]
pub fn apply_mask_at(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    apply_mask(buf, rotate_mask(mask, offset));
}

/// The mask seen from payload position `offset`.
#[inline]
fn rotate_mask(mask: [u8; 4], offset: usize) -> [u8; 4] {
    let k = offset & 3;
    [
        mask[k],
        mask[(k + 1) & 3],
        mask[(k + 2) & 3],
        mask[(k + 3) & 3],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The obviously correct loop the fast path must match.
    fn plain_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte ^= mask[(offset + i) & 3];
        }
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    #[test]
    fn fast_mask_matches_plain_loop_at_every_alignment_and_length() {
        let mask = [0x6d, 0xb6, 0xb2, 0x80];
        let data = sample(80);
        for start in 0..16 {
            for len in 0..(data.len() - start) {
                let mut fast = data.clone();
                let mut plain = data.clone();
                apply_mask(&mut fast[start..start + len], mask);
                plain_mask(&mut plain[start..start + len], mask, 0);
                assert_eq!(fast, plain, "start {start} len {len}");
            }
        }
    }

    #[test]
    fn mask_from_offset_matches_plain_loop() {
        let mask = [1, 2, 3, 250];
        let data = sample(37);
        for offset in 0..9 {
            for start in 0..8 {
                let mut fast = data.clone();
                let mut plain = data.clone();
                apply_mask_at(&mut fast[start..], mask, offset);
                plain_mask(&mut plain[start..], mask, offset);
                assert_eq!(fast, plain, "offset {offset} start {start}");
            }
        }
    }

    #[test]
    fn unmasking_in_pieces_equals_unmasking_at_once() {
        let mask = [0xde, 0xad, 0xbe, 0xef];
        let data = sample(50);
        let mut whole = data.clone();
        apply_mask(&mut whole, mask);
        for cut in 0..=data.len() {
            let mut pieces = data.clone();
            let (left, right) = pieces.split_at_mut(cut);
            apply_mask_at(left, mask, 0);
            apply_mask_at(right, mask, cut);
            assert_eq!(pieces, whole, "cut {cut}");
        }
    }

    #[test]
    fn masking_twice_restores_the_payload() {
        let mask = [9, 8, 7, 6];
        let data = sample(33);
        let mut buf = data.clone();
        apply_mask(&mut buf, mask);
        assert_ne!(buf, data);
        apply_mask(&mut buf, mask);
        assert_eq!(buf, data);
    }
}
