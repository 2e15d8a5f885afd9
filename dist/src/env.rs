//! Where this process sits in the run: its rank, the world size, its node, and where rank 0
//! listens. Read from composer's (torchrun's) variables, else from Slurm's under `srun`, else a
//! single process.
//!
//! Parsing is a pure function of a variable map ([`RankEnv::from_vars`]), so every rule is tested
//! without touching the process environment.

use std::collections::HashMap;

use crate::error::DistError;
use crate::hostlist::{expand_hostlist, expand_tasks_per_node};

/// The port rank 0 listens on when nothing names one (torchrun's default).
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// Under Slurm without `MASTER_PORT`, the port is `SLURM_PORT_BASE + job id % SLURM_PORT_SPAN`:
/// two jobs sharing a node rarely collide, and the range stays below Linux's ephemeral ports
/// (32768 and up), where outgoing connections could already hold it.
const SLURM_PORT_BASE: u16 = 12000;
const SLURM_PORT_SPAN: u64 = 20000;

/// composer's per-process variables. Any of them set means "composer/torchrun launched me".
/// `MASTER_ADDR` and `MASTER_PORT` are not among them: batch scripts often export those for
/// `srun` too.
const COMPOSER_RANK_VARS: [&str; 5] = [
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
];

/// Which launcher's variables described this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvSource {
    /// No launcher variables: one process, world size 1.
    Single,
    /// composer's launcher or torchrun (`RANK`, `WORLD_SIZE`, …).
    Composer,
    /// Slurm's `srun` (`SLURM_PROCID`, `SLURM_NTASKS`, …).
    Slurm,
}

/// This process's place in the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankEnv {
    /// Global rank, `0..world_size`.
    pub rank: usize,
    /// Number of processes in the run.
    pub world_size: usize,
    /// Rank among the processes on this node (picks the GPU).
    pub local_rank: usize,
    /// Number of processes on this node.
    pub local_world_size: usize,
    /// Index of this node, `0..world_size / local_world_size` for composer.
    pub node_rank: usize,
    /// Host of rank 0's rendezvous listener.
    pub master_addr: String,
    /// Port of rank 0's rendezvous listener.
    pub master_port: u16,
    /// Which variables this came from.
    pub source: EnvSource,
}

impl RankEnv {
    /// One process alone: rank 0 of 1.
    pub fn single() -> RankEnv {
        RankEnv {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            local_world_size: 1,
            node_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: DEFAULT_MASTER_PORT,
            source: EnvSource::Single,
        }
    }

    /// Reads the process environment (see [`RankEnv::from_vars`]).
    pub fn from_process_env() -> Result<RankEnv, DistError> {
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
            .collect();
        RankEnv::from_vars(&vars)
    }

    /// Parses a variable map:
    /// - any of `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `NODE_RANK` set: composer's
    ///   layout, where `RANK` and `WORLD_SIZE` are required, the three local variables come all
    ///   together or not at all (absent: one node), and
    ///   `RANK = NODE_RANK × LOCAL_WORLD_SIZE + LOCAL_RANK`;
    /// - else `SLURM_PROCID` set: Slurm's under `srun`, step variables winning over job
    ///   variables (a step may use part of the allocation): rank `SLURM_PROCID`; world
    ///   `SLURM_STEP_NUM_TASKS`, else `SLURM_NTASKS`, else `SLURM_NPROCS`; `SLURM_LOCALID`;
    ///   `SLURM_NODEID`; tasks on this node from `SLURM_STEP_TASKS_PER_NODE`, else
    ///   `SLURM_TASKS_PER_NODE` (`2(x3),1` syntax), else `SLURM_NTASKS_PER_NODE`; `MASTER_ADDR`
    ///   if set, else the first host of `SLURM_STEP_NODELIST`, else of `SLURM_JOB_NODELIST` (task
    ///   0 runs on the step's first node); `MASTER_PORT` if set, else
    ///   `12000 + SLURM_JOB_ID % 20000`, else 29500;
    /// - else a single process.
    ///
    /// `MASTER_ADDR` and `MASTER_PORT` are required when the world has more than one process
    /// (Slurm derives them when absent). Every error names the variable and its value.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<RankEnv, DistError> {
        let vars = Vars(vars);
        if COMPOSER_RANK_VARS.iter().any(|v| vars.get(v).is_some()) {
            RankEnv::from_composer(&vars)
        } else if vars.get("SLURM_PROCID").is_some() {
            RankEnv::from_slurm(&vars)
        } else {
            Ok(RankEnv::single())
        }
    }

    fn from_composer(vars: &Vars) -> Result<RankEnv, DistError> {
        let present = COMPOSER_RANK_VARS
            .iter()
            .filter_map(|v| vars.get(v).map(|value| format!("{v}={value}")))
            .collect::<Vec<_>>()
            .join(", ");
        let required = |name: &str| {
            vars.get(name).ok_or_else(|| {
                DistError::Env(format!(
                    "{name} is not set, but {present} is: composer's RANK and WORLD_SIZE must be \
                     set together"
                ))
            })
        };
        required("RANK")?;
        required("WORLD_SIZE")?;
        let rank = vars.number("RANK")?;
        let world_size = vars.number("WORLD_SIZE")?;
        if world_size == 0 {
            return Err(DistError::Env(
                "WORLD_SIZE=0: a run needs at least one process".into(),
            ));
        }
        if rank >= world_size {
            return Err(DistError::Env(format!(
                "RANK={rank} is not below WORLD_SIZE={world_size}"
            )));
        }

        let locals = ["LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK"];
        let (local_rank, local_world_size, node_rank) =
            if locals.iter().all(|v| vars.get(v).is_none()) {
                (rank, world_size, 0)
            } else {
                if let Some(missing) = locals.iter().find(|v| vars.get(v).is_none()) {
                    return Err(DistError::Env(format!(
                        "{missing} is not set, but {present} is: LOCAL_RANK, LOCAL_WORLD_SIZE \
                         and NODE_RANK come together"
                    )));
                }
                (
                    vars.number("LOCAL_RANK")?,
                    vars.number("LOCAL_WORLD_SIZE")?,
                    vars.number("NODE_RANK")?,
                )
            };
        check_local(
            local_rank,
            local_world_size,
            "LOCAL_RANK",
            "LOCAL_WORLD_SIZE",
        )?;
        if world_size % local_world_size != 0 {
            return Err(DistError::Env(format!(
                "WORLD_SIZE={world_size} is not a multiple of LOCAL_WORLD_SIZE={local_world_size}"
            )));
        }
        let nodes = world_size / local_world_size;
        if node_rank >= nodes {
            return Err(DistError::Env(format!(
                "NODE_RANK={node_rank} is not below the node count WORLD_SIZE/LOCAL_WORLD_SIZE = \
                 {world_size}/{local_world_size} = {nodes}"
            )));
        }
        if rank != node_rank * local_world_size + local_rank {
            return Err(DistError::Env(format!(
                "RANK={rank} does not match NODE_RANK={node_rank} × \
                 LOCAL_WORLD_SIZE={local_world_size} + LOCAL_RANK={local_rank} (composer numbers \
                 ranks node by node)"
            )));
        }
        let (master_addr, master_port) = vars.master(world_size, None)?;
        Ok(RankEnv {
            rank,
            world_size,
            local_rank,
            local_world_size,
            node_rank,
            master_addr,
            master_port,
            source: EnvSource::Composer,
        })
    }

    /// Slurm's layout under `srun` (the rules are on [`RankEnv::from_vars`]).
    fn from_slurm(vars: &Vars) -> Result<RankEnv, DistError> {
        let rank = vars.number("SLURM_PROCID")?;
        let (world_var, world_size) = vars
            .first_number(&["SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS"])?
            .ok_or_else(|| {
                DistError::Env(format!(
                    "SLURM_PROCID={rank} is set, but none of SLURM_STEP_NUM_TASKS, SLURM_NTASKS \
                     or SLURM_NPROCS is: cannot tell the world size"
                ))
            })?;
        if world_size == 0 {
            return Err(DistError::Env(format!("{world_var}=0: a run needs a task")));
        }
        if rank >= world_size {
            return Err(DistError::Env(format!(
                "SLURM_PROCID={rank} is not below {world_var}={world_size}"
            )));
        }
        let local_rank = vars.required_number("SLURM_LOCALID")?;
        let node_rank = vars.required_number("SLURM_NODEID")?;

        let (tasks_var, local_world_size) =
            match vars.first_of(&["SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"]) {
                Some((name, spec)) => {
                    let per_node = expand_tasks_per_node(spec)
                        .map_err(|e| DistError::Env(format!("{name}: {e}")))?;
                    let total: usize = per_node.iter().sum();
                    if total != world_size {
                        return Err(DistError::Env(format!(
                            "{name}={spec} adds up to {total} tasks, but {world_var}={world_size}"
                        )));
                    }
                    let here = *per_node.get(node_rank).ok_or_else(|| {
                        DistError::Env(format!(
                            "SLURM_NODEID={node_rank} is not below the {} nodes of {name}={spec}",
                            per_node.len()
                        ))
                    })?;
                    (format!("{name}={spec}"), here)
                }
                None => {
                    let n = vars.required_number("SLURM_NTASKS_PER_NODE")?;
                    (format!("SLURM_NTASKS_PER_NODE={n}"), n)
                }
            };
        if local_rank >= local_world_size {
            return Err(DistError::Env(format!(
                "SLURM_LOCALID={local_rank} is not below the {local_world_size} task(s) of node \
                 {node_rank} ({tasks_var})"
            )));
        }

        let first_host = match vars.first_of(&[
            "SLURM_STEP_NODELIST",
            "SLURM_JOB_NODELIST",
            "SLURM_NODELIST",
        ]) {
            Some((name, list)) => {
                let hosts =
                    expand_hostlist(list).map_err(|e| DistError::Env(format!("{name}: {e}")))?;
                if node_rank >= hosts.len() {
                    return Err(DistError::Env(format!(
                        "SLURM_NODEID={node_rank} is not below the {} hosts of {name}={list}",
                        hosts.len()
                    )));
                }
                hosts.into_iter().next()
            }
            None => None,
        };
        let (master_addr, master_port) = vars.master(world_size, first_host)?;
        Ok(RankEnv {
            rank,
            world_size,
            local_rank,
            local_world_size,
            node_rank,
            master_addr,
            master_port,
            source: EnvSource::Slurm,
        })
    }

    /// Number of nodes, assuming every node runs `local_world_size` processes.
    pub fn num_nodes(&self) -> usize {
        self.world_size.div_ceil(self.local_world_size)
    }
}

/// Composer's local rank against its local world size.
fn check_local(
    local: usize,
    local_world: usize,
    local_name: &str,
    world_name: &str,
) -> Result<(), DistError> {
    if local_world == 0 {
        return Err(DistError::Env(format!(
            "{world_name}=0: a node needs a process"
        )));
    }
    if local >= local_world {
        return Err(DistError::Env(format!(
            "{local_name}={local} is not below {world_name}={local_world}"
        )));
    }
    Ok(())
}

/// The variable map, with typed lookups whose errors name the variable.
struct Vars<'a>(&'a HashMap<String, String>);

impl Vars<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.trim())
    }

    fn first_of(&self, names: &[&'static str]) -> Option<(&'static str, &str)> {
        names.iter().find_map(|n| Some((*n, self.get(n)?)))
    }

    /// The variable as a non-negative integer; absent is an error too.
    fn number(&self, name: &str) -> Result<usize, DistError> {
        let value = self
            .get(name)
            .ok_or_else(|| DistError::Env(format!("{name} is not set")))?;
        value
            .parse::<usize>()
            .map_err(|_| DistError::Env(format!("{name}={value:?} is not a non-negative integer")))
    }

    fn required_number(&self, name: &str) -> Result<usize, DistError> {
        if self.get(name).is_none() {
            return Err(DistError::Env(format!(
                "{name} is not set, but SLURM_PROCID is (is this process running under srun?)"
            )));
        }
        self.number(name)
    }

    fn first_number(
        &self,
        names: &[&'static str],
    ) -> Result<Option<(&'static str, usize)>, DistError> {
        match self.first_of(names) {
            Some((name, _)) => Ok(Some((name, self.number(name)?))),
            None => Ok(None),
        }
    }

    /// `MASTER_ADDR` and `MASTER_PORT`, with the fallbacks described on [`RankEnv::from_vars`].
    fn master(
        &self,
        world_size: usize,
        slurm_host: Option<String>,
    ) -> Result<(String, u16), DistError> {
        let slurm = slurm_host.is_some() || self.get("SLURM_PROCID").is_some();
        let addr = match (self.get("MASTER_ADDR"), slurm_host) {
            (Some(""), _) => {
                return Err(DistError::Env("MASTER_ADDR is set but empty".into()));
            }
            (Some(addr), _) => addr.to_string(),
            (None, Some(host)) => host,
            (None, None) if world_size == 1 => "127.0.0.1".to_string(),
            (None, None) => {
                return Err(DistError::Env(format!(
                    "MASTER_ADDR is not set, and WORLD_SIZE={world_size} needs rank 0's address{}",
                    if slurm {
                        " (nor is SLURM_STEP_NODELIST or SLURM_JOB_NODELIST)"
                    } else {
                        ""
                    }
                )));
            }
        };
        let port = match self.get("MASTER_PORT") {
            Some(value) => match value.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => {
                    return Err(DistError::Env(format!(
                        "MASTER_PORT={value:?} is not a port number (1-65535)"
                    )));
                }
            },
            None if slurm => match self.get("SLURM_JOB_ID") {
                Some(id) => {
                    let id = id.parse::<u64>().map_err(|_| {
                        DistError::Env(format!("SLURM_JOB_ID={id:?} is not a number"))
                    })?;
                    SLURM_PORT_BASE + (id % SLURM_PORT_SPAN) as u16
                }
                None => DEFAULT_MASTER_PORT,
            },
            None if world_size == 1 => DEFAULT_MASTER_PORT,
            None => {
                return Err(DistError::Env(format!(
                    "MASTER_PORT is not set, and WORLD_SIZE={world_size} needs rank 0's port"
                )));
            }
        };
        Ok((addr, port))
    }
}
