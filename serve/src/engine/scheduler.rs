//! Scheduling policy, as pure functions of queue lengths (the model thread in `worker` applies
//! them): how many waiting sequences to admit, and which prefill forward to run next.
//!
//! - **Admission**: a sequence leaves the wait queue when fewer than `max_batch` sequences are
//!   running (being prefilled or decoded), first come first served. The batch limit bounds the
//!   KV cache memory and the decode step's width.
//! - **Token budget**: one loop runs at most one prefill forward of at most `budget` tokens,
//!   padding included, then one decode step. Several short prompts share one left-padded
//!   forward; a prompt longer than the budget is prefilled alone, a chunk per loop. So a long
//!   prompt delays the running sequences by one chunk per token they generate, never by its
//!   whole length.

/// A sequence waiting for (more) prefill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Prompt tokens not yet in its KV cache.
    pub remaining: usize,
    /// Part of its prompt is already cached (it is being chunked).
    pub started: bool,
}

/// The next prefill forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefillPlan {
    /// The first sequence alone, `tokens` more of its prompt (all of it if that fits).
    Chunk {
        /// Prompt tokens to feed.
        tokens: usize,
    },
    /// The first `count` sequences, whole prompts, left-padded to `width` in one forward.
    Group {
        /// Sequences from the front of the queue.
        count: usize,
        /// The longest of their prompts.
        width: usize,
    },
}

/// How many of `waiting` sequences to admit while `running` run, under `max_batch`.
pub fn admissions(running: usize, waiting: usize, max_batch: usize) -> usize {
    max_batch.saturating_sub(running).min(waiting)
}

/// The prefill forward to run for `queue` (first come first served) within `budget` tokens,
/// or `None` when nothing waits for prefill.
///
/// # Panics
/// If `budget` is 0.
pub fn plan_prefill(queue: &[Pending], budget: usize) -> Option<PrefillPlan> {
    assert!(budget > 0, "the prefill budget must be positive");
    let head = queue.first()?;
    if head.started || head.remaining > budget {
        return Some(PrefillPlan::Chunk {
            tokens: head.remaining.min(budget),
        });
    }
    let (mut count, mut width) = (1, head.remaining);
    for next in &queue[1..] {
        let wider = width.max(next.remaining);
        if next.started || wider * (count + 1) > budget {
            break;
        }
        (count, width) = (count + 1, wider);
    }
    Some(PrefillPlan::Group { count, width })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(lens: &[usize]) -> Vec<Pending> {
        lens.iter()
            .map(|&remaining| Pending {
                remaining,
                started: false,
            })
            .collect()
    }

    #[test]
    fn admission_fills_the_batch_and_no_more() {
        assert_eq!(admissions(0, 40, 32), 32);
        assert_eq!(admissions(30, 40, 32), 2);
        assert_eq!(admissions(32, 40, 32), 0);
        assert_eq!(admissions(3, 1, 32), 1);
    }

    #[test]
    fn short_prompts_share_one_forward_within_the_budget() {
        // 4 prompts of <= 10 tokens: 4 * 10 = 40 <= 64; a fifth would make 5 * 20 > 64.
        let plan = plan_prefill(&fresh(&[10, 3, 7, 10, 20]), 64);
        assert_eq!(
            plan,
            Some(PrefillPlan::Group {
                count: 4,
                width: 10
            })
        );
    }

    #[test]
    fn a_long_prompt_is_chunked_alone_and_never_stalls_for_more_than_the_budget() {
        let mut queue = fresh(&[300, 5]);
        let mut forwards = 0;
        loop {
            match plan_prefill(&queue, 128).unwrap() {
                PrefillPlan::Chunk { tokens } => {
                    assert!(tokens <= 128);
                    queue[0].remaining -= tokens;
                    queue[0].started = true;
                    forwards += 1;
                    if queue[0].remaining == 0 {
                        queue.remove(0);
                    }
                }
                PrefillPlan::Group { count, width } => {
                    assert_eq!((count, width), (1, 5), "the short prompt comes next");
                    break;
                }
            }
        }
        assert_eq!(forwards, 3, "300 tokens in chunks of 128, 128, 44");
    }

    #[test]
    fn nothing_to_prefill_plans_nothing() {
        assert_eq!(plan_prefill(&[], 8), None);
    }
}
