//! The memory-bandwidth probe that memory-bound kernels are measured against (`kernel-report`,
//! `lowbit cpu --bandwidth`, and through it the Mistral-7B scale bench's decode bound).

/// A streaming read of `buf` with the widest loads this CPU has (the f32 dot kernel of the best
/// ISA, fed the same slice twice so each cache line is fetched from memory once), on the threads
/// decode's products run on: the team as large as the current rayon pool ([`crate::team`]).
/// Returns a checksum so the reads cannot be optimised away.
pub fn bandwidth_probe(buf: &[f32]) -> f32 {
    const CHUNK: usize = 1 << 16;
    let k = crate::kernels();
    let mut sums = vec![0f32; buf.len().div_ceil(CHUNK)];
    crate::team::for_each_chunk_mut(
        &mut sums,
        1,
        || (),
        |_, i, s| {
            let c = &buf[i * CHUNK..((i + 1) * CHUNK).min(buf.len())];
            s[0] = k.dot_f32(c, c);
        },
    );
    sums.iter().sum()
}
