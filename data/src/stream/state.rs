//! The resume state: a few integers that pin down exactly where a run is in its data.
//!
//! Because the global order is a pure function of `(seed, epoch, num_canonical_nodes)` and the
//! ranks consume it as one contiguous prefix per epoch (see `partition`), "where we are" is
//! `(epoch, sample_in_epoch)`: resuming drops the first `sample_in_epoch` positions of that
//! epoch's order and continues, on any world size the canonical nodes allow. The field names
//! and meaning match streaming's `state_dict` (`shuffle_seed` is spelled `seed` here but read
//! under either name).

use serde::{Deserialize, Serialize};

/// Where a run is in its data stream; store it in every checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamState {
    /// Epoch being read (0-based).
    pub epoch: u64,
    /// Global samples (summed over all ranks) already consumed in `epoch`.
    pub sample_in_epoch: u64,
    /// The shuffle seed of the run.
    #[serde(alias = "shuffle_seed")]
    pub seed: u64,
    /// Canonical node count of the run; fixed for its whole life.
    pub num_canonical_nodes: u64,
    /// Physical nodes of the run that wrote the first state (streaming's
    /// `initial_physical_nodes`); lets `relaxed` partitioning resume on an incompatible node
    /// count. Absent in older states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_physical_nodes: Option<u64>,
}

impl StreamState {
    /// The start of a run.
    pub fn start(seed: u64, num_canonical_nodes: u64) -> StreamState {
        StreamState {
            epoch: 0,
            sample_in_epoch: 0,
            seed,
            num_canonical_nodes,
            initial_physical_nodes: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_reads_streamings_state_dict() {
        let s = StreamState {
            epoch: 2,
            sample_in_epoch: 96,
            seed: 17,
            num_canonical_nodes: 4,
            initial_physical_nodes: Some(2),
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<StreamState>(&json).unwrap(), s);
        // streaming's `StreamingDataset.state_dict()` layout.
        let theirs = r#"{"epoch": 1, "sample_in_epoch": 64, "num_canonical_nodes": 2,
                         "shuffle_seed": 9176, "initial_physical_nodes": 1}"#;
        let parsed: StreamState = serde_json::from_str(theirs).unwrap();
        assert_eq!(parsed.seed, 9176);
        assert_eq!(parsed.initial_physical_nodes, Some(1));
        assert!(serde_json::from_str::<StreamState>(r#"{"epoch": 1}"#).is_err());
    }
}
