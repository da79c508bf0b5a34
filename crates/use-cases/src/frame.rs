//! The video editor's filter both sides run: brightness on RGBA frames, in place.
//!
//! Every run alternates +[`STEP`] and -[`STEP`]: the frames' colour values lie in 64..=191,
//! so neither direction saturates and each second run gives back the frames it started from;
//! every run of either side therefore starts from the same pixels.

use std::ops::Range;

/// 3840 × 2160 pixels of 4 bytes (RGBA).
pub const FRAME_BYTES: usize = 3840 * 2160 * 4;

/// The brightness change of one run.
pub const STEP: i8 = 16;

/// Fills frames with a fixed pseudo-random picture (colour values 64..=191, alpha 255).
pub fn fill(frames: &mut [u8]) {
    // Four xorshift64 generators (Marsaglia), one for each 8 bytes of every 32: cheap, the
    // same on every run, and four chains side by side instead of one, so that the picture is
    // drawn about as fast as memory is written.
    let mut lanes: [u64; 4] =
        [0x9e37_79b9_7f4a_7c15, 0xbf58_476d_1ce4_e5b9, 0x94d0_49bb_1331_11eb, 0x2545_f491_4f6c_dd1d];
    let mut blocks = frames.chunks_exact_mut(32);
    for block in &mut blocks {
        for (px, x) in block.chunks_exact_mut(8).zip(&mut lanes) {
            px.copy_from_slice(&pixels(x));
        }
    }
    for px in blocks.into_remainder().chunks_exact_mut(8) {
        px.copy_from_slice(&pixels(&mut lanes[0]));
    }
}

/// Two RGBA pixels from the next number of a xorshift64 generator.
fn pixels(x: &mut u64) -> [u8; 8] {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    let v = (*x & 0x7f7f_7f7f_7f7f_7f7f) | 0x4040_4040_4040_4040;
    ((v & 0x00ff_ffff_00ff_ffff) | 0xff00_0000_ff00_0000).to_le_bytes()
}

/// Changes the brightness of the pixels in `bytes` (whole RGBA pixels) by `delta`; alpha stays.
pub fn brighten(bytes: &mut [u8], delta: i8) {
    // 16 pixels at a time with a fixed pattern (alpha gets 0), so that the compiler can use
    // vector instructions; the rest pixel by pixel.
    let pattern: [i8; 64] = std::array::from_fn(|i| if i % 4 == 3 { 0 } else { delta });
    let mut blocks = bytes.chunks_exact_mut(64);
    for block in &mut blocks {
        for (c, d) in block.iter_mut().zip(pattern) {
            *c = c.saturating_add_signed(d);
        }
    }
    for px in blocks.into_remainder().chunks_exact_mut(4) {
        for c in &mut px[..3] {
            *c = c.saturating_add_signed(delta);
        }
    }
}

/// [`brighten`] a MiB at a time, stopping if `until` passes: false if it stopped early. For a
/// worker that nobody can kill at a deadline (a thread), so it keeps the deadline itself.
pub fn brighten_until(bytes: &mut [u8], delta: i8, until: std::time::Instant) -> bool {
    for piece in bytes.chunks_mut(1 << 20) {
        if std::time::Instant::now() > until {
            return false;
        }
        brighten(piece, delta);
    }
    true
}

/// The change of run `i`: +STEP, -STEP, +STEP, ...
pub fn delta_of(run: u64) -> i8 {
    if run % 2 == 0 { STEP } else { -STEP }
}

/// Splits `len` bytes into `n` disjoint ranges of whole pixels, one per worker.
pub fn chunks(len: usize, n: usize) -> Vec<Range<usize>> {
    let pixels = len / 4;
    let per = pixels.div_ceil(n.max(1));
    (0..n).map(|i| (i * per * 4).min(len)..((i + 1) * per * 4).min(len)).filter(|r| !r.is_empty()).collect()
}

/// The lengths of the pieces `len` bytes go in, `piece` at a time.
pub fn pieces(len: usize, piece: usize) -> impl Iterator<Item = usize> {
    (0..len).step_by(piece.max(1)).map(move |at| piece.min(len - at))
}

/// The piece of `range` that starts `done` bytes into it, at most `piece` long; empty once
/// `done` reaches the range's end, so that chunks of different lengths can go side by side.
pub fn piece_at(range: &Range<usize>, done: usize, piece: usize) -> Range<usize> {
    let from = range.start.saturating_add(done).min(range.end);
    from..range.end.min(from.saturating_add(piece))
}

/// A checksum of the frames: four FNV-style lanes over 64-bit words.
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut lanes = [0xcbf2_9ce4_8422_2325u64; 4];
    let mut words = bytes.chunks_exact(32);
    for block in &mut words {
        for (i, lane) in lanes.iter_mut().enumerate() {
            let w = u64::from_le_bytes(block[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            *lane = (*lane ^ w).wrapping_mul(0x0100_0000_01b3);
        }
    }
    let mut h = lanes.iter().fold(0u64, |h, l| (h ^ l).wrapping_mul(0x0100_0000_01b3));
    for &b in words.remainder() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_runs_give_the_frames_back_and_alpha_stays() {
        let mut f = vec![0u8; 4096];
        fill(&mut f);
        let before = checksum(&f);
        assert!(f.chunks_exact(4).all(|p| p[3] == 255 && p[..3].iter().all(|c| (64..=191).contains(c))));
        brighten(&mut f, delta_of(0));
        assert_ne!(checksum(&f), before);
        brighten(&mut f, delta_of(1));
        assert_eq!(checksum(&f), before);
    }

    #[test]
    fn chunks_cover_everything_once() {
        let c = chunks(4 * 10, 3);
        assert_eq!(c, vec![0..16, 16..32, 32..40]);
        assert_eq!(chunks(8, 4), vec![0..4, 4..8]);
    }

    #[test]
    fn pieces_of_a_shorter_chunk_end_empty() {
        assert_eq!(piece_at(&(16..40), 0, 16), 16..32);
        assert_eq!(piece_at(&(16..40), 16, 16), 32..40);
        assert_eq!(piece_at(&(16..40), 32, 16), 40..40);
        assert_eq!(piece_at(&(16..40), usize::MAX, 16), 40..40);
    }
}
