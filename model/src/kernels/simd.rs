//! Compiling one function body for several SIMD levels, picked at run time.
//!
//! The fused kernels' arithmetic is written as plain loops that LLVM vectorises; compiled only
//! for the baseline x86-64 target it would use SSE2. `multiversion!` compiles such a body for
//! AVX-512, for AVX2+FMA and for the baseline, and dispatches on what the CPU has. The macro is
//! private to this crate: code elsewhere calls the public kernels built with it (for example
//! [`super::adam_block`]).

/// Defines `fn $name` (with its visibility) whose `body` is compiled three times: for AVX-512 (F, BW, DQ, VL) and
/// for AVX2+FMA, each picked at run time when the CPU has them, and for the baseline target.
///
/// The bodies are written without floating-point contractions or reassociation (Rust allows
/// neither), so all three compute the same values; only the vector width differs.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn generic($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx512($($arg: $ty),*) { generic($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($arg: $ty),*) { generic($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports every feature enabled for `avx512`, checked above.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}

pub(crate) use multiversion;
