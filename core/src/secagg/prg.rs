//! Mask expansion: a 32-byte seed stretched into a stream of `u32` words with ChaCha20.
//!
//! Every mask in a round (a partner's self mask PRG(b_i) and each pairwise mask PRG(s_ij)) is
//! the ChaCha20 keystream (RFC 8439) under the full 256-bit seed as key, with an all-zero
//! nonce and the block counter starting at 0, read as little-endian `u32` words. A fixed nonce
//! is safe because every seed is fresh per round and masks exactly one vector; word w of the
//! mask is keystream bytes 4w..4w+4, so the coordinator and each partner derive identical
//! masks without exchanging anything but the seed.
//!
//! Masks are added or subtracted into the target slice in place, one keystream buffer at a
//! time, so unmasking a sum of d words needs O(d) memory however many masks are removed.
//! The 32-bit block counter limits a mask to 2^36 words; [`MAX_WORDS`] stays well below.

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};

/// Bytes in a mask seed.
pub const SEED_LEN: usize = 32;
/// Longest vector a round may mask (2^31 words, 8 GiB; ChaCha20's counter allows 2^36).
pub const MAX_WORDS: usize = 1 << 31;

/// Keystream bytes produced per step: a multiple of the 64-byte ChaCha block, small enough for
/// the stack.
const BUF_BYTES: usize = 1024;

fn cipher(seed: &[u8; SEED_LEN]) -> ChaCha20 {
    ChaCha20::new(&(*seed).into(), &[0u8; 12].into())
}

/// Applies `op(word, mask_word)` to every word of `v`, with the mask expanded from `seed`.
fn combine(seed: &[u8; SEED_LEN], v: &mut [u32], op: impl Fn(u32, u32) -> u32) {
    let mut c = cipher(seed);
    let mut buf = [0u8; BUF_BYTES];
    for chunk in v.chunks_mut(BUF_BYTES / 4) {
        let bytes = &mut buf[..chunk.len() * 4];
        bytes.fill(0);
        c.apply_keystream(bytes);
        for (w, m) in chunk.iter_mut().zip(bytes.chunks_exact(4)) {
            *w = op(*w, u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
        }
    }
}

/// Adds the mask expanded from `seed` into `v`, word by word, wrapping mod 2^32.
///
/// # Panics
///
/// If `v` is longer than 2^36 words, where the ChaCha20 block counter would wrap
/// ([`crate::secagg::RoundParams`] allows at most [`MAX_WORDS`]).
pub fn add_mask(seed: &[u8; SEED_LEN], v: &mut [u32]) {
    combine(seed, v, u32::wrapping_add);
}

/// Subtracts the mask expanded from `seed` from `v`, word by word, wrapping mod 2^32.
///
/// # Panics
///
/// As [`add_mask`].
pub fn sub_mask(seed: &[u8; SEED_LEN], v: &mut [u32]) {
    combine(seed, v, u32::wrapping_sub);
}

/// Fills `buf` with the raw ChaCha20 keystream of `seed` (zero nonce, counter 0): the same
/// bytes [`add_mask`] reads as words, for comparing mask expansion with raw ChaCha20
/// throughput.
///
/// # Panics
///
/// As [`add_mask`], for buffers over 2^38 bytes.
pub fn keystream(seed: &[u8; SEED_LEN], buf: &mut [u8]) {
    buf.fill(0);
    cipher(seed).apply_keystream(buf);
}

/// An endless stream of uniform words from a seed, for deterministic choices every party must
/// repeat identically (such as the neighbour graph's permutation). Independent of the
/// generator in `rand`, whose algorithms may change between versions.
pub(crate) struct WordStream {
    cipher: ChaCha20,
    block: [u8; 64],
    pos: usize,
}

impl WordStream {
    pub(crate) fn new(seed: &[u8; SEED_LEN]) -> Self {
        Self {
            cipher: cipher(seed),
            block: [0; 64],
            pos: 64,
        }
    }

    pub(crate) fn next_u32(&mut self) -> u32 {
        if self.pos == self.block.len() {
            self.block = [0; 64];
            self.cipher.apply_keystream(&mut self.block);
            self.pos = 0;
        }
        let b = &self.block[self.pos..self.pos + 4];
        self.pos += 4;
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// A uniform integer in `0..bound` (`bound` ≥ 1), by rejection so there is no modulo bias.
    pub(crate) fn below(&mut self, bound: u32) -> u32 {
        // Largest multiple of `bound` that fits in 2^32, as a count of accepted values.
        let zone = u32::MAX - (u32::MAX - bound + 1) % bound;
        loop {
            let v = self.next_u32();
            if v <= zone {
                return v % bound;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 8439 section 2.4.2: key 00..1f, nonce 00:00:00:00:00:00:00:4a:00:00:00:00, counter 1.
    #[test]
    fn keystream_is_rfc8439_chacha20() {
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let nonce = [0, 0, 0, 0, 0, 0, 0, 0x4a, 0, 0, 0, 0];
        let plaintext = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let expected = hex(
            "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b
             f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8
             07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736
             5af90bbf74a35be6b40b8eedf2785e42874d",
        );
        let mut c = ChaCha20::new(&key.into(), &nonce.into());
        let mut skip = [0u8; 64]; // counter 0
        c.apply_keystream(&mut skip);
        let mut buf = plaintext.to_vec();
        c.apply_keystream(&mut buf);
        assert_eq!(buf, expected);
    }

    /// RFC 8439 appendix A.1 test vector #1: all-zero key and nonce, counter 0, which is
    /// exactly how [`keystream`] and the masks use ChaCha20.
    #[test]
    fn mask_words_are_the_zero_nonce_keystream() {
        let expected = hex(
            "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7
             da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586",
        );
        let mut buf = [0u8; 64];
        keystream(&[0; SEED_LEN], &mut buf);
        assert_eq!(buf.to_vec(), expected);
        let mut v = vec![0u32; 16];
        add_mask(&[0; SEED_LEN], &mut v);
        let words: Vec<u32> = expected
            .chunks(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(v, words);
    }

    #[test]
    fn mask_is_continuous_across_buffers() {
        let seed = [9u8; SEED_LEN];
        let n = BUF_BYTES / 4 * 3 + 5;
        let mut bytes = vec![0u8; n * 4];
        keystream(&seed, &mut bytes);
        let mut v = vec![0u32; n];
        add_mask(&seed, &mut v);
        for (w, b) in v.iter().zip(bytes.chunks(4)) {
            assert_eq!(*w, u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        }
    }

    #[test]
    fn word_stream_matches_keystream_and_is_unbiased_in_range() {
        let seed = [3u8; SEED_LEN];
        let mut bytes = [0u8; 256];
        keystream(&seed, &mut bytes);
        let mut s = WordStream::new(&seed);
        for b in bytes.chunks(4) {
            assert_eq!(s.next_u32(), u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        }
        let mut s = WordStream::new(&seed);
        assert_eq!(s.below(1), 0);
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            counts[s.below(3) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (900..1100).contains(&c)),
            "{counts:?}"
        );
    }

    proptest! {
        /// Adding then subtracting the same mask restores the input; different seeds give
        /// different masks.
        #[test]
        fn add_then_sub_restores(input in proptest::collection::vec(any::<u32>(), 0..700), seed in any::<[u8; 32]>()) {
            let mut v = input.clone();
            add_mask(&seed, &mut v);
            if input.len() >= 4 {
                prop_assert_ne!(&v, &input);
            }
            sub_mask(&seed, &mut v);
            prop_assert_eq!(v, input);
        }
    }
}
