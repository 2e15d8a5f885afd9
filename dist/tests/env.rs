//! The rank environment: composer's variables, Slurm's fallback, a single process, and an error
//! naming the variable and value for every inconsistency. `RankEnv::from_vars` is a pure
//! function of the map, so nothing here touches the process environment.

use tessera_dist::env::DEFAULT_MASTER_PORT;
use tessera_dist::{DistError, EnvSource, RankEnv};

fn parse(pairs: &[(&str, &str)]) -> Result<RankEnv, DistError> {
    let vars = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    RankEnv::from_vars(&vars)
}

fn error(pairs: &[(&str, &str)]) -> String {
    parse(pairs).unwrap_err().to_string()
}

const COMPOSER: [(&str, &str); 7] = [
    ("RANK", "5"),
    ("WORLD_SIZE", "8"),
    ("LOCAL_RANK", "1"),
    ("LOCAL_WORLD_SIZE", "4"),
    ("NODE_RANK", "1"),
    ("MASTER_ADDR", "node01"),
    ("MASTER_PORT", "1234"),
];

fn composer_with(
    changes: &[(&'static str, Option<&'static str>)],
) -> Vec<(&'static str, &'static str)> {
    let mut vars: Vec<_> = COMPOSER.to_vec();
    for (name, value) in changes {
        vars.retain(|(k, _)| k != name);
        if let Some(v) = value {
            vars.push((name, v));
        }
    }
    vars
}

#[test]
fn no_variables_is_a_single_process() {
    assert_eq!(parse(&[("HOME", "/root")]).unwrap(), RankEnv::single());
    // MASTER_* alone does not make a distributed run.
    let env = parse(&[("MASTER_ADDR", "h"), ("MASTER_PORT", "7")]).unwrap();
    assert_eq!((env.world_size, env.source), (1, EnvSource::Single));
}

#[test]
fn composer_variables_give_the_full_layout() {
    let env = parse(&COMPOSER).unwrap();
    assert_eq!(
        env,
        RankEnv {
            rank: 5,
            world_size: 8,
            local_rank: 1,
            local_world_size: 4,
            node_rank: 1,
            master_addr: "node01".into(),
            master_port: 1234,
            source: EnvSource::Composer,
        }
    );
    assert_eq!(env.num_nodes(), 2);
}

#[test]
fn composer_without_local_variables_is_one_node() {
    let env = parse(&[
        ("RANK", "2"),
        ("WORLD_SIZE", "3"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "9"),
    ])
    .unwrap();
    assert_eq!(
        (env.local_rank, env.local_world_size, env.node_rank),
        (2, 3, 0)
    );
    // World size 1 needs no master.
    let env = parse(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap();
    assert_eq!(
        (env.master_addr.as_str(), env.master_port),
        ("127.0.0.1", DEFAULT_MASTER_PORT)
    );
}

#[test]
fn composer_errors_name_the_variable_and_value() {
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            composer_with(&[("RANK", Some("8"))]),
            "RANK=8 is not below WORLD_SIZE=8",
        ),
        (
            composer_with(&[("RANK", None)]),
            "RANK is not set, but WORLD_SIZE=8",
        ),
        (
            composer_with(&[("WORLD_SIZE", None)]),
            "WORLD_SIZE is not set, but RANK=5",
        ),
        (composer_with(&[("WORLD_SIZE", Some("0"))]), "WORLD_SIZE=0"),
        (
            composer_with(&[("RANK", Some("-1"))]),
            "RANK=\"-1\" is not a non-negative integer",
        ),
        (
            composer_with(&[("WORLD_SIZE", Some("four"))]),
            "WORLD_SIZE=\"four\"",
        ),
        (
            composer_with(&[("NODE_RANK", None)]),
            "NODE_RANK is not set, but RANK=5",
        ),
        (
            composer_with(&[("LOCAL_RANK", Some("4"))]),
            "LOCAL_RANK=4 is not below LOCAL_WORLD_SIZE=4",
        ),
        (
            composer_with(&[("LOCAL_WORLD_SIZE", Some("3"))]),
            "WORLD_SIZE=8 is not a multiple of LOCAL_WORLD_SIZE=3",
        ),
        (
            composer_with(&[("LOCAL_WORLD_SIZE", Some("0"))]),
            "LOCAL_WORLD_SIZE=0",
        ),
        (
            composer_with(&[("NODE_RANK", Some("2"))]),
            "NODE_RANK=2 is not below the node count",
        ),
        (
            composer_with(&[("NODE_RANK", Some("0"))]),
            "RANK=5 does not match NODE_RANK=0",
        ),
        (
            composer_with(&[("MASTER_ADDR", None)]),
            "MASTER_ADDR is not set, and WORLD_SIZE=8",
        ),
        (
            composer_with(&[("MASTER_ADDR", Some(" "))]),
            "MASTER_ADDR is set but empty",
        ),
        (
            composer_with(&[("MASTER_PORT", None)]),
            "MASTER_PORT is not set, and WORLD_SIZE=8",
        ),
        (
            composer_with(&[("MASTER_PORT", Some("70000"))]),
            "MASTER_PORT=\"70000\" is not a port",
        ),
        (
            composer_with(&[("MASTER_PORT", Some("0"))]),
            "MASTER_PORT=\"0\"",
        ),
    ];
    for (vars, expected) in cases {
        let err = error(&vars);
        assert!(
            err.contains(expected),
            "{vars:?}:\n  got {err:?}\n  expected {expected:?}"
        );
    }
}

const SLURM: [(&str, &str); 7] = [
    ("SLURM_PROCID", "5"),
    ("SLURM_NTASKS", "7"),
    ("SLURM_LOCALID", "1"),
    ("SLURM_NODEID", "2"),
    ("SLURM_TASKS_PER_NODE", "2(x3),1"),
    ("SLURM_JOB_NODELIST", "gpu[07-09],cpu1"),
    ("SLURM_JOB_ID", "123456"),
];

fn slurm_with(
    changes: &[(&'static str, Option<&'static str>)],
) -> Vec<(&'static str, &'static str)> {
    let mut vars: Vec<_> = SLURM.to_vec();
    for (name, value) in changes {
        vars.retain(|(k, _)| k != name);
        if let Some(v) = value {
            vars.push((name, v));
        }
    }
    vars
}

#[test]
fn slurm_variables_are_the_fallback() {
    let env = parse(&SLURM).unwrap();
    assert_eq!(
        env,
        RankEnv {
            rank: 5,
            world_size: 7,
            local_rank: 1,
            local_world_size: 2,
            node_rank: 2,
            master_addr: "gpu07".into(),
            master_port: 12000 + (123456 % 20000) as u16,
            source: EnvSource::Slurm,
        }
    );
}

#[test]
fn slurm_step_variables_win_over_job_variables_and_master_overrides() {
    let vars = slurm_with(&[
        ("SLURM_STEP_NUM_TASKS", Some("4")),
        ("SLURM_STEP_TASKS_PER_NODE", Some("1(x4)")),
        ("SLURM_STEP_NODELIST", Some("gpu[08-11]")),
        ("SLURM_PROCID", Some("3")),
        ("SLURM_LOCALID", Some("0")),
        ("SLURM_NODEID", Some("3")),
    ]);
    let env = parse(&vars).unwrap();
    assert_eq!((env.rank, env.world_size, env.local_world_size), (3, 4, 1));
    assert_eq!(env.master_addr, "gpu08");

    let vars = slurm_with(&[
        ("MASTER_ADDR", Some("10.0.0.1")),
        ("MASTER_PORT", Some("4000")),
    ]);
    let env = parse(&vars).unwrap();
    assert_eq!(
        (env.master_addr.as_str(), env.master_port),
        ("10.0.0.1", 4000)
    );

    let vars = slurm_with(&[
        ("SLURM_TASKS_PER_NODE", None),
        ("SLURM_NTASKS_PER_NODE", Some("3")),
        ("SLURM_JOB_ID", None),
    ]);
    let env = parse(&vars).unwrap();
    assert_eq!(
        (env.local_world_size, env.master_port),
        (3, DEFAULT_MASTER_PORT)
    );
}

#[test]
fn slurm_errors_name_the_variable_and_value() {
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            slurm_with(&[("SLURM_PROCID", Some("7"))]),
            "SLURM_PROCID=7 is not below SLURM_NTASKS=7",
        ),
        (
            slurm_with(&[("SLURM_NTASKS", None)]),
            "none of SLURM_STEP_NUM_TASKS, SLURM_NTASKS",
        ),
        (
            slurm_with(&[("SLURM_LOCALID", None)]),
            "SLURM_LOCALID is not set, but SLURM_PROCID is",
        ),
        (
            slurm_with(&[("SLURM_LOCALID", Some("2"))]),
            "SLURM_LOCALID=2 is not below the 2 task(s) of node 2 (SLURM_TASKS_PER_NODE=2(x3),1)",
        ),
        (
            slurm_with(&[("SLURM_NODEID", Some("4"))]),
            "SLURM_NODEID=4 is not below the 4 nodes of SLURM_TASKS_PER_NODE",
        ),
        (
            slurm_with(&[("SLURM_TASKS_PER_NODE", Some("2(x3)"))]),
            "SLURM_TASKS_PER_NODE=2(x3) adds up to 6 tasks, but SLURM_NTASKS=7",
        ),
        (
            slurm_with(&[("SLURM_TASKS_PER_NODE", Some("2(y3),1"))]),
            "SLURM_TASKS_PER_NODE: tasks per node \"2(y3),1\"",
        ),
        (
            slurm_with(&[("SLURM_TASKS_PER_NODE", None)]),
            "SLURM_NTASKS_PER_NODE is not set",
        ),
        (
            slurm_with(&[("SLURM_JOB_NODELIST", Some("gpu[07-08]"))]),
            "SLURM_NODEID=2 is not below the 2 hosts of SLURM_JOB_NODELIST=gpu[07-08]",
        ),
        (
            slurm_with(&[("SLURM_JOB_NODELIST", Some("gpu[07-08"))]),
            "SLURM_JOB_NODELIST: host list \"gpu[07-08\"",
        ),
        (
            slurm_with(&[("SLURM_JOB_NODELIST", None)]),
            "MASTER_ADDR is not set, and WORLD_SIZE=7 needs rank 0's address (nor is SLURM_STEP_NODELIST",
        ),
        (
            slurm_with(&[("SLURM_JOB_ID", Some("abc"))]),
            "SLURM_JOB_ID=\"abc\" is not a number",
        ),
    ];
    for (vars, expected) in cases {
        let err = error(&vars);
        assert!(
            err.contains(expected),
            "{vars:?}:\n  got {err:?}\n  expected {expected:?}"
        );
    }
}

#[test]
fn composer_variables_win_over_slurm() {
    let mut vars = SLURM.to_vec();
    vars.extend([("RANK", "0"), ("WORLD_SIZE", "1")]);
    assert_eq!(parse(&vars).unwrap().source, EnvSource::Composer);
}
