//! Composer's rank environment, the variables every tessera rank reads to find its place in the
//! job (the names torchrun and composer's launcher set).

/// Where one rank sits in the job.
#[derive(Debug, Clone, PartialEq)]
pub struct RankEnv {
    /// Global rank, `node_rank * local_world_size + local_rank`.
    pub rank: usize,
    pub world_size: usize,
    /// Rank on this node (the GPU index on a GPU node).
    pub local_rank: usize,
    pub local_world_size: usize,
    pub node_rank: usize,
    /// Rank 0's host and port (its rendezvous listener).
    pub master_addr: String,
    pub master_port: u16,
}

impl RankEnv {
    /// The ranks of a single-node job of `nproc` processes.
    pub fn single_node(nproc: usize, master_port: u16) -> Vec<RankEnv> {
        (0..nproc)
            .map(|r| RankEnv {
                rank: r,
                world_size: nproc,
                local_rank: r,
                local_world_size: nproc,
                node_rank: 0,
                master_addr: "127.0.0.1".into(),
                master_port,
            })
            .collect()
    }

    /// `(name, value)` pairs to set in the rank's environment.
    pub fn vars(&self) -> Vec<(String, String)> {
        [
            ("RANK", self.rank.to_string()),
            ("WORLD_SIZE", self.world_size.to_string()),
            ("LOCAL_RANK", self.local_rank.to_string()),
            ("LOCAL_WORLD_SIZE", self.local_world_size.to_string()),
            ("NODE_RANK", self.node_rank.to_string()),
            ("MASTER_ADDR", self.master_addr.clone()),
            ("MASTER_PORT", self.master_port.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_node_ranks_are_numbered_locally_and_globally_alike() {
        let envs = RankEnv::single_node(3, 29500);
        assert_eq!(envs.len(), 3);
        let vars: std::collections::BTreeMap<_, _> = envs[2].vars().into_iter().collect();
        assert_eq!(vars["RANK"], "2");
        assert_eq!(vars["LOCAL_RANK"], "2");
        assert_eq!(vars["WORLD_SIZE"], "3");
        assert_eq!(vars["LOCAL_WORLD_SIZE"], "3");
        assert_eq!(vars["NODE_RANK"], "0");
        assert_eq!(vars["MASTER_ADDR"], "127.0.0.1");
        assert_eq!(vars["MASTER_PORT"], "29500");
    }
}
