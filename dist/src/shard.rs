//! Which part of a flat buffer each rank owns.
//!
//! One rule everywhere: of a buffer of `len` elements split over `world` ranks, rank `r` owns
//! `[r·len/world, (r+1)·len/world)` (integer division). The chunks are contiguous, in rank order,
//! cover the buffer, and differ in length by at most one. When `len` is a multiple of `world`
//! every chunk is exactly `len/world` long, which is what `reduce_scatter` requires: its input is
//! `world × shard` elements and rank `r` receives the sum of `input[r·shard..(r+1)·shard]`.
//! A caller that shards a parameter vector whose length is not a multiple pads it to one.

use std::ops::Range;

/// The chunk of a `len`-element buffer that `rank` of `world` owns (see the module docs).
///
/// # Panics
/// If `world` is 0 or `rank >= world` (a programmer error: ranks come from the communicator).
pub fn shard_range(len: usize, world: usize, rank: usize) -> Range<usize> {
    assert!(rank < world, "rank {rank} is not below world size {world}");
    // u128: `rank · len` cannot overflow.
    let at = |r: usize| (r as u128 * len as u128 / world as u128) as usize;
    at(rank)..at(rank + 1)
}

/// Every rank's chunk, in rank order.
pub(crate) fn shard_ranges(len: usize, world: usize) -> Vec<Range<usize>> {
    (0..world).map(|r| shard_range(len, world, r)).collect()
}

/// Splits `buf` into the disjoint, contiguous, in-order `ranges` (as from [`shard_ranges`]).
pub(crate) fn split_mut<'a, T>(mut buf: &'a mut [T], ranges: &[Range<usize>]) -> Vec<&'a mut [T]> {
    let mut parts = Vec::with_capacity(ranges.len());
    let mut offset = 0;
    for range in ranges {
        debug_assert_eq!(range.start, offset, "ranges must be contiguous");
        let (part, rest) = buf.split_at_mut(range.len());
        parts.push(part);
        buf = rest;
        offset = range.end;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_buffer_in_order_and_differ_by_at_most_one() {
        for len in [0usize, 1, 2, 3, 7, 8, 1000, 1001] {
            for world in 1..=5 {
                let ranges = shard_ranges(len, world);
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[world - 1].end, len);
                for pair in ranges.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start);
                }
                let (min, max) = (
                    ranges.iter().map(|r| r.len()).min().unwrap(),
                    ranges.iter().map(|r| r.len()).max().unwrap(),
                );
                assert!(max - min <= 1, "len {len} world {world}: {ranges:?}");
            }
        }
    }

    #[test]
    fn divisible_lengths_give_equal_contiguous_shards() {
        assert_eq!(shard_ranges(12, 4), [0..3, 3..6, 6..9, 9..12]);
        assert_eq!(shard_range(10, 3, 1), 3..6);
        assert_eq!(shard_range(usize::MAX, 2, 1), usize::MAX / 2..usize::MAX);
    }
}
