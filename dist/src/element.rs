//! The element types collectives carry, and how each is summed.
//!
//! Sums run in rank order (see the crate docs); this file says in which type:
//! - `f32`, `f64`: in their own type, so `((x0 + x1) + x2)` is exactly what one process adding
//!   the same values in the same order computes;
//! - `bf16`, `f16`: widened to `f32`, summed in rank order in `f32`, rounded once at the end
//!   (round to nearest even): `bf16::from_f32(((x0 as f32 + x1 as f32) + x2 as f32))`;
//! - `u64`: exactly; an overflow is an error, never a wrapped count.

use half::{bf16, f16};

mod sealed {
    pub trait Sealed {}
}

/// A type a collective can carry. Implemented for `f32`, `f64`, `u64`, `bf16` and `f16`.
pub trait Element: bytemuck::Pod + Send + Sync + sealed::Sealed {
    /// The name used in errors (`f32`).
    const NAME: &'static str;
    /// The type sums are computed in.
    #[doc(hidden)]
    type Acc: Copy + Default + Send + Sync;
    #[doc(hidden)]
    const CODE: u8;
    /// `acc = x`, widened.
    #[doc(hidden)]
    fn start(acc: &mut [Self::Acc], x: &[Self]);
    /// `acc += x`, element by element; false when a sum overflows (integers only).
    #[doc(hidden)]
    fn accumulate(acc: &mut [Self::Acc], x: &[Self]) -> bool;
    /// `out = acc`, narrowed.
    #[doc(hidden)]
    fn finish(acc: &[Self::Acc], out: &mut [Self]);
}

/// Floats summed in their own type.
macro_rules! exact_float {
    ($t:ty, $name:literal, $code:literal) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const NAME: &'static str = $name;
            type Acc = $t;
            const CODE: u8 = $code;
            fn start(acc: &mut [$t], x: &[$t]) {
                acc.copy_from_slice(x);
            }
            fn accumulate(acc: &mut [$t], x: &[$t]) -> bool {
                for (a, x) in acc.iter_mut().zip(x) {
                    *a += *x;
                }
                true
            }
            fn finish(acc: &[$t], out: &mut [$t]) {
                out.copy_from_slice(acc);
            }
        }
    };
}

/// Half-precision floats summed in `f32` and rounded once.
macro_rules! widened_half {
    ($t:ty, $name:literal, $code:literal) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const NAME: &'static str = $name;
            type Acc = f32;
            const CODE: u8 = $code;
            fn start(acc: &mut [f32], x: &[$t]) {
                for (a, x) in acc.iter_mut().zip(x) {
                    *a = x.to_f32();
                }
            }
            fn accumulate(acc: &mut [f32], x: &[$t]) -> bool {
                for (a, x) in acc.iter_mut().zip(x) {
                    *a += x.to_f32();
                }
                true
            }
            fn finish(acc: &[f32], out: &mut [$t]) {
                for (o, a) in out.iter_mut().zip(acc) {
                    *o = <$t>::from_f32(*a);
                }
            }
        }
    };
}

exact_float!(f32, "f32", 1);
exact_float!(f64, "f64", 2);
widened_half!(bf16, "bf16", 4);
widened_half!(f16, "f16", 5);

impl sealed::Sealed for u64 {}
impl Element for u64 {
    const NAME: &'static str = "u64";
    type Acc = u64;
    const CODE: u8 = 3;
    fn start(acc: &mut [u64], x: &[u64]) {
        acc.copy_from_slice(x);
    }
    fn accumulate(acc: &mut [u64], x: &[u64]) -> bool {
        let mut ok = true;
        for (a, x) in acc.iter_mut().zip(x) {
            let (sum, overflow) = a.overflowing_add(*x);
            *a = sum;
            ok &= !overflow;
        }
        ok
    }
    fn finish(acc: &[u64], out: &mut [u64]) {
        out.copy_from_slice(acc);
    }
}

/// The element name for a wire code, for error messages (`bytes` for raw byte blobs).
pub(crate) fn name_of_code(code: u8) -> &'static str {
    match code {
        0 => "bytes",
        1 => f32::NAME,
        2 => f64::NAME,
        3 => u64::NAME,
        4 => bf16::NAME,
        5 => f16::NAME,
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sums `values` in order the way a collective does, one element wide.
    fn sum_in_order<T: Element>(values: &[T]) -> (T, bool) {
        let mut acc = [T::Acc::default()];
        T::start(&mut acc, &values[..1]);
        let mut ok = true;
        for v in &values[1..] {
            ok &= T::accumulate(&mut acc, std::slice::from_ref(v));
        }
        let mut out = [values[0]];
        T::finish(&acc, &mut out);
        (out[0], ok)
    }

    #[test]
    fn f32_sums_in_order_without_widening() {
        // (1e8 + 1) + -1e8 is 0 in f32 (1e8 + 1 rounds to 1e8); in f64 it would be 1.
        assert_eq!(sum_in_order(&[1e8f32, 1.0, -1e8]).0, 0.0);
        assert_eq!(sum_in_order(&[1e8f32, -1e8, 1.0]).0, 1.0);
    }

    #[test]
    fn bf16_sums_in_f32_and_rounds_once() {
        let v = [
            bf16::from_f32(256.0),
            bf16::from_f32(1.0),
            bf16::from_f32(1.0),
        ];
        // In bf16 step by step, 256 + 1 rounds back to 256 (8 bits of mantissa), twice; in f32
        // the sum is 258, which bf16 holds exactly.
        assert_eq!(sum_in_order(&v).0.to_f32(), 258.0);
    }

    #[test]
    fn u64_overflow_is_reported() {
        assert_eq!(sum_in_order(&[u64::MAX - 1, 1]), (u64::MAX, true));
        assert!(!sum_in_order(&[u64::MAX, 1]).1);
    }
}
