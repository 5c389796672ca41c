//! Mask expansion: a 32-byte seed stretched into a stream of `u32` words with ChaCha20.
//!
//! Every mask in a round (a partner's self mask PRG(b_i) and each pairwise mask PRG(s_ij)) is
//! the ChaCha20 keystream (RFC 8439) under the full 256-bit seed as key, with an all-zero
//! nonce and the block counter starting at 0, read as little-endian `u32` words. A fixed nonce
//! is safe because every seed is fresh per round and masks exactly one vector; word w of the
//! mask is keystream bytes 4w..4w+4, so the coordinator and each partner derive identical
//! masks without exchanging anything but the seed.
//!
//! Masks are added or subtracted into the target slice in place, a 4 KiB block at a time:
//! every mask's keystream for the block is summed in a buffer that stays in L1 and the block
//! is then touched once, so unmasking a sum of d words needs O(d) memory however many masks
//! are removed, and combining k masks costs k keystreams plus one pass over the target.
//! The 32-bit block counter limits a mask to 2^36 words; [`MAX_WORDS`] stays well below.

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};

/// Bytes in a mask seed.
pub const SEED_LEN: usize = 32;
/// Longest vector a round may mask (2^31 words, 8 GiB; ChaCha20's counter allows 2^36).
pub const MAX_WORDS: usize = 1 << 31;

/// Keystream bytes produced per step: a multiple of the 64-byte ChaCha block (and of the
/// 1 KiB a wide backend makes per call), small enough for the stack and for L1.
const BUF_BYTES: usize = 4096;

fn cipher(seed: &[u8; SEED_LEN]) -> ChaCha20 {
    ChaCha20::new(&(*seed).into(), &[0u8; 12].into())
}

/// Adds the mask expanded from `seed` into `v`, word by word, wrapping mod 2^32.
///
/// # Panics
///
/// If `v` is longer than 2^36 words, where the ChaCha20 block counter would wrap
/// ([`crate::secagg::RoundParams`] allows at most [`MAX_WORDS`]).
pub fn add_mask(seed: &[u8; SEED_LEN], v: &mut [u32]) {
    combine_blocks(v, 0, &[*seed], &[], Target::Add);
}

/// Subtracts the mask expanded from `seed` from `v`, word by word, wrapping mod 2^32.
///
/// # Panics
///
/// As [`add_mask`].
pub fn sub_mask(seed: &[u8; SEED_LEN], v: &mut [u32]) {
    combine_blocks(v, 0, &[], &[*seed], Target::Add);
}

/// Fewest words of the vector a thread of [`apply_masks`] takes on: below this, starting a
/// thread costs more than it saves.
const MIN_WORDS_PER_THREAD: usize = 1 << 16;

/// Words of the target summed at a time by [`combine_blocks`]: every mask's keystream for
/// one block is added into a buffer that stays in L1, and the block is written once.
const BLOCK_WORDS: usize = BUF_BYTES / 4;

/// What [`combine_blocks`] does with the total mask of a block.
#[derive(Clone, Copy)]
enum Target {
    /// Adds it into the words there.
    Add,
    /// Writes it over them without reading them: into freshly allocated memory this touches
    /// each page once, by a write, where a read first would map the shared zero page and the
    /// write then copy it (a second fault, and a TLB flush on every core).
    Overwrite,
}

/// For the words of `v` at mask positions `first..first + v.len()`: the sum of the masks of
/// `add` minus those of `sub`, added into `v` or written over it, block by block. Each
/// keystream is read once, sequentially; the words of `v` are touched once.
fn combine_blocks(
    v: &mut [u32],
    first: usize,
    add: &[[u8; SEED_LEN]],
    sub: &[[u8; SEED_LEN]],
    target: Target,
) {
    let start = |seed: &[u8; SEED_LEN]| {
        let mut c = cipher(seed);
        if first > 0 {
            c.seek(first as u64 * 4);
        }
        c
    };
    let mut adders: Vec<ChaCha20> = add.iter().map(start).collect();
    let mut subtractors: Vec<ChaCha20> = sub.iter().map(start).collect();
    let mut acc = [0u32; BLOCK_WORDS];
    let mut buf = [0u8; BUF_BYTES];
    for block in v.chunks_mut(BLOCK_WORDS) {
        let acc = &mut acc[..block.len()];
        let bytes = &mut buf[..block.len() * 4];
        // The first keystream is written into the accumulator, the others folded in.
        let mut fresh = true;
        for c in &mut adders {
            c.write_keystream(bytes);
            if fresh {
                fold(acc, bytes, |_, m| m);
            } else {
                fold(acc, bytes, u32::wrapping_add);
            }
            fresh = false;
        }
        for c in &mut subtractors {
            c.write_keystream(bytes);
            if fresh {
                fold(acc, bytes, |_, m| 0u32.wrapping_sub(m));
            } else {
                fold(acc, bytes, u32::wrapping_sub);
            }
            fresh = false;
        }
        if fresh {
            acc.fill(0);
        }
        match target {
            Target::Add => {
                for (w, m) in block.iter_mut().zip(acc.iter()) {
                    *w = w.wrapping_add(*m);
                }
            }
            Target::Overwrite => block.copy_from_slice(acc),
        }
    }
}

/// `acc[i] = op(acc[i], word i of the keystream bytes)`; generic, so `op` is inlined and the
/// loop vectorised.
#[inline(always)]
fn fold(acc: &mut [u32], bytes: &[u8], op: impl Fn(u32, u32) -> u32) {
    for (a, m) in acc.iter_mut().zip(bytes.chunks_exact(4)) {
        *a = op(*a, u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
    }
}

/// Adds the masks of every seed in `add` to `v` and subtracts those in `sub`, wrapping mod
/// 2^32: the same result as [`add_mask`] and [`sub_mask`] seed by seed, but with `v` split
/// into contiguous parts masked on the machine's cores at once, each reading its own stretch
/// of every keystream, block by block (see [`combine_blocks`]).
///
/// # Panics
///
/// As [`add_mask`].
pub fn apply_masks(v: &mut [u32], add: &[[u8; SEED_LEN]], sub: &[[u8; SEED_LEN]]) {
    apply_masks_on(v, add, sub, Target::Add, cores());
}

/// The total mask of `add` minus `sub` for a vector of `len` words, as a vector of its own:
/// what [`apply_masks`] would add to a vector of zeros.
///
/// # Panics
///
/// As [`add_mask`].
pub fn expand_masks(len: usize, add: &[[u8; SEED_LEN]], sub: &[[u8; SEED_LEN]]) -> Vec<u32> {
    let mut words = vec![0u32; len];
    apply_masks_on(&mut words, add, sub, Target::Overwrite, cores());
    words
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn apply_masks_on(
    v: &mut [u32],
    add: &[[u8; SEED_LEN]],
    sub: &[[u8; SEED_LEN]],
    target: Target,
    threads: usize,
) {
    if add.is_empty() && sub.is_empty() && matches!(target, Target::Add) {
        return;
    }
    let threads = threads.min(v.len() / MIN_WORDS_PER_THREAD).max(1);
    if threads == 1 {
        combine_blocks(v, 0, add, sub, target);
        return;
    }
    // Parts start on a 64-byte block boundary, so no thread seeks into the middle of a block.
    let per = v.len().div_ceil(threads).next_multiple_of(16);
    std::thread::scope(|scope| {
        for (i, part) in v.chunks_mut(per).enumerate() {
            scope.spawn(move || combine_blocks(part, i * per, add, sub, target));
        }
    });
}

/// Fills `buf` with the raw ChaCha20 keystream of `seed` (zero nonce, counter 0): the same
/// bytes [`add_mask`] reads as words, for comparing mask expansion with raw ChaCha20
/// throughput.
///
/// # Panics
///
/// As [`add_mask`], for buffers over 2^38 bytes.
pub fn keystream(seed: &[u8; SEED_LEN], buf: &mut [u8]) {
    cipher(seed).write_keystream(buf);
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
            self.cipher.write_keystream(&mut self.block);
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

    /// Split across threads and blocks, the masks come out as the raw keystreams summed word
    /// by word, and as one seed at a time on one thread.
    #[test]
    fn parallel_masks_match_serial() {
        let add = [[1u8; SEED_LEN], [2; SEED_LEN], [3; SEED_LEN]];
        let sub = [[4u8; SEED_LEN], [5; SEED_LEN]];
        for len in [
            0,
            1,
            17,
            MIN_WORDS_PER_THREAD * 2 - 1,
            MIN_WORDS_PER_THREAD * 3 + 5,
        ] {
            let input: Vec<u32> = (0..len as u32)
                .map(|i| i.wrapping_mul(2_654_435_761))
                .collect();
            // The expectation straight from the raw keystream, word by word.
            let words_of = |seed: &[u8; SEED_LEN]| {
                let mut bytes = vec![0u8; len * 4];
                keystream(seed, &mut bytes);
                bytes
                    .chunks_exact(4)
                    .map(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]))
                    .collect::<Vec<u32>>()
            };
            let mut alone = vec![0u32; len];
            for seed in &add {
                for (a, m) in alone.iter_mut().zip(words_of(seed)) {
                    *a = a.wrapping_add(m);
                }
            }
            for seed in &sub {
                for (a, m) in alone.iter_mut().zip(words_of(seed)) {
                    *a = a.wrapping_sub(m);
                }
            }
            let expected: Vec<u32> = input
                .iter()
                .zip(&alone)
                .map(|(w, m)| w.wrapping_add(*m))
                .collect();
            let mut serial = input.clone();
            for seed in &add {
                add_mask(seed, &mut serial);
            }
            for seed in &sub {
                sub_mask(seed, &mut serial);
            }
            assert!(serial == expected, "len {len}, seed by seed");
            for threads in 1..=4 {
                let mut v = input.clone();
                apply_masks_on(&mut v, &add, &sub, Target::Add, threads);
                assert!(v == expected, "len {len}, {threads} threads");
                // Overwriting ignores what was there: garbage in, the mask alone out.
                let mut v = input.clone();
                apply_masks_on(&mut v, &add, &sub, Target::Overwrite, threads);
                assert!(v == alone, "len {len}, {threads} threads, overwrite");
            }
            let mut v = input.clone();
            apply_masks(&mut v, &add, &sub);
            assert!(v == expected, "len {len}, all cores");
            assert!(
                expand_masks(len, &add, &sub) == alone,
                "len {len}, expanded"
            );
            assert!(
                expand_masks(len, &[], &[]) == vec![0; len],
                "len {len}, no masks"
            );
        }
    }

    /// `below(bound)` is the textbook rejection sampler on the same words: accept a word below
    /// the largest multiple of `bound` that fits in 2^32, return it mod `bound`. Checked draw by
    /// draw against a reference that reads the raw words, for bounds where the rejection zone
    /// is empty (powers of two), half the range (2^31 + 1) or a single value (2^32 − 1).
    #[test]
    fn below_is_the_reference_rejection_sampler() {
        let seed = [11u8; SEED_LEN];
        for bound in [
            1u32,
            2,
            3,
            5,
            7,
            10,
            1000,
            1 << 16,
            (1 << 30) + 7,
            1 << 31,
            (1 << 31) + 1,
            3 << 30,
            u32::MAX - 1,
            u32::MAX,
        ] {
            let mut s = WordStream::new(&seed);
            let mut raw = WordStream::new(&seed);
            let accept_below = u64::from(bound) * ((1u64 << 32) / u64::from(bound));
            for draw in 0..2000 {
                let want = loop {
                    let v = raw.next_u32();
                    if u64::from(v) < accept_below {
                        break v % bound;
                    }
                };
                let got = s.below(bound);
                assert!(got < bound, "bound {bound}: {got}");
                assert_eq!(got, want, "bound {bound}, draw {draw}");
            }
        }
    }

    /// Chi-square of `below(n)` over its n values for several n, 600 draws per cell expected.
    /// The critical value at α = 0.001 for k = n − 1 degrees of freedom is taken from the
    /// Wilson–Hilferty approximation k (1 − 2/(9k) + 3.09 √(2/(9k)))³ (accurate to well under
    /// 1 % for these k), so each check raises a false alarm with probability about 0.1 %.
    #[test]
    fn below_is_uniform_for_several_bounds() {
        let mut s = WordStream::new(&[12u8; SEED_LEN]);
        for bound in [2u32, 3, 6, 7, 10, 13, 37, 64, 100] {
            let per_cell = 600.0;
            let draws = (per_cell * f64::from(bound)) as usize;
            let mut counts = vec![0u32; bound as usize];
            for _ in 0..draws {
                let v = s.below(bound);
                assert!(v < bound);
                counts[v as usize] += 1;
            }
            let chi2: f64 = counts
                .iter()
                .map(|&c| (f64::from(c) - per_cell).powi(2) / per_cell)
                .sum();
            let k = f64::from(bound - 1);
            let critical = k * (1.0 - 2.0 / (9.0 * k) + 3.09 * (2.0 / (9.0 * k)).sqrt()).powi(3);
            assert!(chi2 < critical, "bound {bound}: chi2 {chi2} >= {critical}");
        }
    }

    /// Vector lengths on either side of one and two 4 KiB blocks (1024 words), masked with
    /// several seeds, equal the per-seed keystreams summed word by word.
    #[test]
    fn masks_are_exact_across_the_block_boundary() {
        let add = [[21u8; SEED_LEN], [22; SEED_LEN]];
        let sub = [[23u8; SEED_LEN]];
        let naive = |seed: &[u8; SEED_LEN], len: usize| -> Vec<u32> {
            // One ChaCha20 block (16 words) at a time, counter from 0, as RFC 8439 defines.
            let mut c = cipher(seed);
            let mut words = Vec::with_capacity(len);
            while words.len() < len {
                let mut block = [0u8; 64];
                c.apply_keystream(&mut block);
                words.extend(
                    block
                        .chunks_exact(4)
                        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                );
            }
            words.truncate(len);
            words
        };
        for len in [1023, 1024, 1025, 2047, 2048, 2049] {
            let input: Vec<u32> = (0..len as u32)
                .map(|i| i.wrapping_mul(0x9e37_79b9))
                .collect();
            let mut alone = vec![0u32; len];
            for seed in &add {
                for (a, m) in alone.iter_mut().zip(naive(seed, len)) {
                    *a = a.wrapping_add(m);
                }
            }
            for seed in &sub {
                for (a, m) in alone.iter_mut().zip(naive(seed, len)) {
                    *a = a.wrapping_sub(m);
                }
            }
            let expected: Vec<u32> = input
                .iter()
                .zip(&alone)
                .map(|(x, m)| x.wrapping_add(*m))
                .collect();
            let mut one = input.clone();
            add_mask(&add[0], &mut one);
            let first = naive(&add[0], len);
            for (w, ((x, m), got)) in input.iter().zip(&first).zip(&one).enumerate() {
                assert_eq!(*got, x.wrapping_add(*m), "len {len}, word {w}, one seed");
            }
            let mut v = input.clone();
            combine_blocks(&mut v, 0, &add, &sub, Target::Add);
            for (w, (got, want)) in v.iter().zip(&expected).enumerate() {
                assert_eq!(got, want, "len {len}, word {w}, add");
            }
            let mut v = input.clone();
            combine_blocks(&mut v, 0, &add, &sub, Target::Overwrite);
            for (w, (got, want)) in v.iter().zip(&alone).enumerate() {
                assert_eq!(got, want, "len {len}, word {w}, overwrite");
            }
            // Starting mid-stream at a 16-word boundary just before a block boundary.
            let first = 1024 - 16;
            let mut v = input[first..].to_vec();
            combine_blocks(&mut v, first, &add, &sub, Target::Add);
            assert!(v == expected[first..], "len {len}, from word {first}");
        }
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
