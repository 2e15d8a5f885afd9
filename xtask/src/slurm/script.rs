//! The sbatch script of a training job: one task per GPU (or `--ntasks-per-node` CPU tasks),
//! composer's rank environment from Slurm's, and a self-requeue after a retryable failure.
//!
//! What the script does, in order:
//! 1. `MASTER_ADDR` is the allocation's first host (`scontrol show hostnames`), `WORLD_SIZE` is
//!    `SLURM_NTASKS`; each task maps `SLURM_PROCID`/`SLURM_LOCALID`/`SLURM_NODEID` to `RANK`/
//!    `LOCAL_RANK`/`NODE_RANK` before it starts tessera.
//! 2. `srun --kill-on-bad-exit=1` runs the ranks: when one fails, Slurm stops the others.
//! 3. Each task records its exit code; the script reads them and decides, with the launcher's
//!    table (`launch/exit.rs`): exit 2 or 3 anywhere ends the job (never retried); any other
//!    failure requeues the job (`scontrol requeue`, which needs `--requeue` and the cluster's
//!    `JobRequeue=1`) while `SLURM_RESTART_COUNT < max_restarts`. The requeued job autoresumes
//!    from `latest`.
//! 4. A background watcher treats no new `metrics.jsonl` line for `max(floor, 2 × median step)`
//!    as a hang (the launcher's rule), kills the job's steps and the job is requeued.
//! 5. It appends `rank_failure`, `hang`, `restart` and `recovered` lines to the run's `incidents.jsonl`
//!    (`"source": "slurm"`, the launcher's fields), as complete lines, while no rank runs.
//!
//! The run folder and checkpoints must be on a filesystem every node sees (they are for any
//! multi-node training).

use std::fmt::Write;
use std::path::PathBuf;

use crate::launch::exit;

/// Everything the script needs, resolved.
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub job_name: String,
    pub nodes: u32,
    /// GPUs per node; 0 for a CPU job.
    pub gpus_per_node: u32,
    /// Tasks (ranks) per node: the GPU count, or the CPU job's `--ntasks-per-node`.
    pub tasks_per_node: u32,
    pub cpus_per_task: Option<u32>,
    pub partition: Option<String>,
    pub time: Option<String>,
    pub account: Option<String>,
    pub max_restarts: u32,
    /// The hang window's floor and the limit before an attempt's first line, in whole seconds
    /// (see `launch/progress.rs`).
    pub hang_floor_s: u64,
    pub start_timeout_s: u64,
    pub master_port: u16,
    /// Absolute paths as the nodes see them.
    pub tessera: PathBuf,
    pub workdir: PathBuf,
    pub run_dir: PathBuf,
    pub save_folder: PathBuf,
    /// The job's log (`%j` is the job id); appended to across requeues.
    pub log: PathBuf,
    /// The arguments after `tessera`: `train CONFIG … --run-dir RUN_DIR`.
    pub tessera_args: Vec<String>,
    /// The command that wrote the script, for its header.
    pub rendered_by: String,
}

/// Quotes `s` for bash (single quotes, each `'` as `'\''`).
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn path(p: &std::path::Path) -> String {
    sh_quote(&p.display().to_string())
}

/// The sbatch script.
pub fn render(job: &TrainJob) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "#!/bin/bash");
    let _ = writeln!(w, "# Written by: {}", job.rendered_by);
    let _ = writeln!(
        w,
        "# {} node(s) x {} task(s): one tessera rank per {}. Requeues itself after a retryable\n\
         # failure, at most {} time(s); exit codes 2 (config) and 3 (diverged) are never retried.",
        job.nodes,
        job.tasks_per_node,
        if job.gpus_per_node > 0 { "GPU" } else { "task" },
        job.max_restarts
    );
    let _ = writeln!(w, "#SBATCH --job-name={}", sh_quote(&job.job_name));
    let _ = writeln!(w, "#SBATCH --nodes={}", job.nodes);
    let _ = writeln!(w, "#SBATCH --ntasks-per-node={}", job.tasks_per_node);
    if job.gpus_per_node > 0 {
        let _ = writeln!(w, "#SBATCH --gpus-per-node={}", job.gpus_per_node);
    }
    if let Some(c) = job.cpus_per_task {
        let _ = writeln!(w, "#SBATCH --cpus-per-task={c}");
    }
    for (flag, value) in [
        ("partition", &job.partition),
        ("time", &job.time),
        ("account", &job.account),
    ] {
        if let Some(v) = value {
            let _ = writeln!(w, "#SBATCH --{flag}={}", sh_quote(v));
        }
    }
    let _ = writeln!(w, "#SBATCH --requeue");
    let _ = writeln!(w, "#SBATCH --open-mode=append");
    let _ = writeln!(w, "#SBATCH --output={}", path(&job.log));
    let _ = writeln!(w, "#SBATCH --chdir={}", path(&job.workdir));
    let _ = writeln!(w);
    let _ = writeln!(w, "set -uo pipefail");
    let _ = writeln!(w, "TESSERA={}", path(&job.tessera));
    let _ = writeln!(w, "RUN_DIR={}", path(&job.run_dir));
    let _ = writeln!(w, "SAVE_FOLDER={}", path(&job.save_folder));
    let _ = writeln!(w, "MAX_RESTARTS={}", job.max_restarts);
    let _ = writeln!(w, "HANG_FLOOR_S={}", job.hang_floor_s);
    let _ = writeln!(w, "START_TIMEOUT_S={}", job.start_timeout_s);
    let args: Vec<String> = job.tessera_args.iter().map(|a| sh_quote(a)).collect();
    let _ = writeln!(w, "TESSERA_ARGS=({})", args.join(" "));
    let _ = writeln!(
        w,
        "\n# Composer's rank environment; each task adds its own RANK, LOCAL_RANK and NODE_RANK."
    );
    let _ = writeln!(
        w,
        "export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n1)"
    );
    let _ = writeln!(w, "export MASTER_PORT={}", job.master_port);
    let _ = writeln!(w, "export WORLD_SIZE=$SLURM_NTASKS");
    let _ = writeln!(w, "export LOCAL_WORLD_SIZE={}", job.tasks_per_node);
    s.push_str(
        &BODY
            .replace("@CONFIG_ERROR@", &exit::CONFIG_ERROR.to_string())
            .replace("@DIVERGED@", &exit::DIVERGED.to_string()),
    );
    s
}

/// The part of the script that does not depend on the job.
const BODY: &str = r#"
RESTART=${SLURM_RESTART_COUNT:-0}
INCIDENTS="$RUN_DIR/incidents.jsonl"
STATE="$RUN_DIR/slurm"            # per-job bookkeeping: exit codes, the failure time
mkdir -p "$STATE"

# The last train step in metrics.jsonl and its tokens; the step `latest` points at.
train_line() { grep -F '"kind":"train"' "$RUN_DIR/metrics.jsonl" 2>/dev/null | grep -F "$1" | tail -n1; }
field() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }
reached_step() { train_line '"step":' | field step; }
checkpoint_step() { sed -n 's/^ba\([0-9]*\)$/\1/p' "$SAVE_FOLDER/latest" 2>/dev/null; }

# incident KIND DETAIL [EXTRA_JSON]: one line in incidents.jsonl with the run's position (a torn
# last line, from a rank killed mid-write, is cut first, as the trainer does when it reopens).
incident() {
  local reached ck reached_tok ck_tok lost lost_tok
  reached=$(reached_step); reached=${reached:-0}
  ck=$(checkpoint_step)
  reached_tok=$(train_line "\"step\":$reached," | field tokens); reached_tok=${reached_tok:-0}
  ck_tok=0; [ -n "$ck" ] && ck_tok=$(train_line "\"step\":$ck," | field tokens); ck_tok=${ck_tok:-0}
  # Only the failure line carries the loss, so a sum over the file counts it once.
  lost=0; lost_tok=0
  if [ "$1" = rank_failure ] || [ "$1" = hang ]; then
    lost=$(( reached - ${ck:-0} )); [ $lost -lt 0 ] && lost=0
    lost_tok=$(( reached_tok - ck_tok )); [ $lost_tok -lt 0 ] && lost_tok=0
  fi
  if [ -s "$INCIDENTS" ] && [ -n "$(tail -c1 "$INCIDENTS")" ]; then sed -i '$d' "$INCIDENTS"; fi
  printf '{"step":%d,"kind":"%s","detail":"%s","lost_steps":%d,"lost_tokens":%d,"unix_time":%s,"source":"slurm","attempt":%d,"job_id":"%s"%s%s}\n' \
    "$reached" "$1" "$2" "$lost" "$lost_tok" "$(date +%s.%N)" "$RESTART" "$SLURM_JOB_ID" \
    "${ck:+,\"checkpoint_step\":$ck}" "${3:+,$3}" >>"$INCIDENTS"
}

if [ "$RESTART" -gt 0 ]; then
  ck=$(checkpoint_step)
  from=${ck:+checkpoint ba$ck}
  incident restart "requeued job $SLURM_JOB_ID, restart $RESTART of $MAX_RESTARTS, resumes from ${from:-the start}"
  # The first train step after the restart (metrics.jsonl written since the restart began, past
  # the checkpoint): how long the failure cost, from the moment the script saw it.
  touch "$STATE/restart_$RESTART"
  (
    failed_at=$(cat "$STATE/failed_at" 2>/dev/null || true)
    while sleep 0.5; do
      reached=$(reached_step)
      if [ "$RUN_DIR/metrics.jsonl" -nt "$STATE/restart_$RESTART" ] && [ "${reached:-0}" -gt "${ck:-0}" ]; then
        if [ -n "$failed_at" ]; then
          rec=$(awk -v now="$(date +%s.%N)" -v then="$failed_at" 'BEGIN { printf "%.3f", now - then }')
          incident recovered "first step after restart $RESTART, $rec s after the failure" "\"recovery_s\":$rec"
        fi
        break
      fi
    done
  ) &
  WATCHER=$!
fi

# Hang detection, as `cargo xtask launch` does it: once this attempt has written metrics.jsonl,
# no new line for max(HANG_FLOOR_S, 2 x the median step time of the last 50 steps) is a hang;
# before that, START_TIMEOUT_S. The steps' tasks are then killed (not this script), and the
# failure below is recorded as a hang and requeued like any other.
hang_watch() {
  local start m median window age
  start=$(date +%s)
  touch "$STATE/attempt_$RESTART"
  while sleep 2; do
    m=$(stat -c %Y "$RUN_DIR/metrics.jsonl" 2>/dev/null || echo 0)
    # Written since the attempt began (-nt compares to the nanosecond).
    if [ "$RUN_DIR/metrics.jsonl" -nt "$STATE/attempt_$RESTART" ]; then
      median=$(grep -F '"kind":"train"' "$RUN_DIR/metrics.jsonl" | tail -n 51 |
        sed -n 's/.*"elapsed_s":\([0-9.eE+-]*\).*/\1/p' |
        awk 'NR > 1 { d = $1 - p; if (d > 0) print d } { p = $1 }' | sort -g |
        awk '{ a[NR] = $1 } END { print (NR ? a[int((NR + 1) / 2)] : 0) }')
      window=$(awk -v f="$HANG_FLOOR_S" -v m="$median" 'BEGIN { w = 2 * m; if (w < f) w = f; printf "%d", w + 0.999 }')
      age=$(( $(date +%s) - m ))
    else
      window=$START_TIMEOUT_S
      age=$(( $(date +%s) - start ))
    fi
    if [ "$age" -gt "$window" ]; then
      echo "no new metrics.jsonl line for $age s (window $window s = max(floor $HANG_FLOOR_S s, 2 x median step))" >"$STATE/hang.$RESTART"
      for step in $(squeue -h -s -j "$SLURM_JOB_ID" -o %i | grep -E '\.[0-9]+$'); do
        scancel --signal=KILL "$step"
      done
      return
    fi
  done
}

rm -f "$STATE/exit.$RESTART".* "$STATE/hang.$RESTART"
hang_watch &
HANG_WATCHER=$!
srun --kill-on-bad-exit=1 bash -c '
  export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID NODE_RANK=$SLURM_NODEID
  "$@"; code=$?
  echo "$code" >"$0/exit.${SLURM_RESTART_COUNT:-0}.$SLURM_PROCID"
  exit $code' "$STATE" "$TESSERA" "${TESSERA_ARGS[@]}"
CODE=$?
kill "$HANG_WATCHER" 2>/dev/null
[ -n "${WATCHER:-}" ] && kill "$WATCHER" 2>/dev/null

# The rank that failed first, and how (the exit files are written in the order ranks ended).
FIRST_RANK=""; FIRST_CODE=""; FATAL=""
for f in $(ls -tr "$STATE/exit.$RESTART".* 2>/dev/null); do
  c=$(cat "$f")
  case "$c" in @CONFIG_ERROR@|@DIVERGED@) FATAL=$c ;; esac
  if [ "$c" != 0 ] && [ -z "$FIRST_RANK" ]; then FIRST_RANK=${f##*.}; FIRST_CODE=$c; fi
done
[ -z "$FIRST_CODE" ] && FIRST_CODE=$CODE

if [ "$CODE" -eq 0 ] && [ -z "$FIRST_RANK" ]; then
  echo "tessera-slurm: every rank finished"
  exit 0
fi
describe="exit code $FIRST_CODE"; extra="\"exit_code\":$FIRST_CODE"
if [ "$FIRST_CODE" -gt 128 ]; then
  describe="killed by signal $(( FIRST_CODE - 128 ))"; extra="\"signal\":$(( FIRST_CODE - 128 ))"
fi
extra="$extra${FIRST_RANK:+,\"rank\":$FIRST_RANK}"
date +%s.%N >"$STATE/failed_at"
if [ -f "$STATE/hang.$RESTART" ]; then
  what=$(cat "$STATE/hang.$RESTART")
  if [ "$RESTART" -lt "$MAX_RESTARTS" ]; then
    incident hang "$what; requeueing (restart $(( RESTART + 1 )) of $MAX_RESTARTS)" '"cause":"hang","will_restart":true'
    echo "tessera-slurm: $what; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    sleep 60
    exit 0
  fi
  incident hang "$what; no restarts left" '"cause":"hang","will_restart":false'
  exit @STALL@
fi
if [ -n "$FATAL" ]; then
  incident rank_failure "rank ${FIRST_RANK:-?} failed: $describe; not retryable" "$extra,\"cause\":\"$([ "$FATAL" = @CONFIG_ERROR@ ] && echo config_error || echo diverged)\",\"will_restart\":false"
  echo "tessera-slurm: rank ${FIRST_RANK:-?} failed ($describe); exit $FATAL is never retried"
  exit "$FATAL"
fi
if [ "$RESTART" -lt "$MAX_RESTARTS" ]; then
  incident rank_failure "rank ${FIRST_RANK:-?} failed: $describe; requeueing (restart $(( RESTART + 1 )) of $MAX_RESTARTS)" "$extra,\"will_restart\":true"
  echo "tessera-slurm: rank ${FIRST_RANK:-?} failed ($describe); requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
  # Slurm ends this script as it requeues the job; if it has not yet, wait for it.
  sleep 60
  exit 0
fi
incident rank_failure "rank ${FIRST_RANK:-?} failed: $describe; no restarts left ($MAX_RESTARTS used)" "$extra,\"will_restart\":false"
echo "tessera-slurm: rank ${FIRST_RANK:-?} failed ($describe); no restarts left"
exit "$FIRST_CODE"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    pub fn h100_job() -> TrainJob {
        TrainJob {
            job_name: "mpt-7b".into(),
            nodes: 8,
            gpus_per_node: 8,
            tasks_per_node: 8,
            cpus_per_task: Some(12),
            partition: Some("h100".into()),
            time: Some("3-00:00:00".into()),
            account: Some("llm".into()),
            max_restarts: 10,
            hang_floor_s: 300,
            start_timeout_s: 1800,
            master_port: 29500,
            tessera: "/shared/bin/tessera".into(),
            workdir: "/shared/work".into(),
            run_dir: "/shared/work/runs/mpt-7b".into(),
            save_folder: "/shared/ck/mpt-7b".into(),
            log: "/shared/work/runs/mpt-7b/slurm-%j.log".into(),
            tessera_args: vec![
                "--device".into(),
                "cuda".into(),
                "train".into(),
                "mpt-7b.yaml".into(),
                "--run-dir".into(),
                "/shared/work/runs/mpt-7b".into(),
            ],
            rendered_by: "cargo xtask slurm render mpt-7b.yaml --nodes 8 --gpus-per-node 8".into(),
        }
    }

    #[test]
    fn the_script_asks_for_one_task_per_gpu_and_requeues() {
        let s = render(&h100_job());
        for line in [
            "#SBATCH --nodes=8",
            "#SBATCH --ntasks-per-node=8",
            "#SBATCH --gpus-per-node=8",
            "#SBATCH --cpus-per-task=12",
            "#SBATCH --partition=h100",
            "#SBATCH --time=3-00:00:00",
            "#SBATCH --account=llm",
            "#SBATCH --requeue",
            "#SBATCH --open-mode=append",
            "export WORLD_SIZE=$SLURM_NTASKS",
            "export LOCAL_WORLD_SIZE=8",
            "export MASTER_PORT=29500",
            "MAX_RESTARTS=10",
            "TESSERA_ARGS=(--device cuda train mpt-7b.yaml --run-dir /shared/work/runs/mpt-7b)",
        ] {
            assert!(s.lines().any(|l| l == line), "{line:?} missing:\n{s}");
        }
        assert!(s.contains("scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n1"));
        assert!(s.contains(
            "export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID NODE_RANK=$SLURM_NODEID"
        ));
        assert!(s.contains("scontrol requeue \"$SLURM_JOB_ID\""));
        assert!(s.contains("case \"$c\" in 2|3) FATAL=$c"));
        assert!(!s.contains("@CONFIG_ERROR@") && !s.contains("@DIVERGED@"));
    }

    #[test]
    fn a_cpu_job_asks_for_no_gpus() {
        let mut job = h100_job();
        job.gpus_per_node = 0;
        job.tasks_per_node = 2;
        let s = render(&job);
        assert!(!s.contains("#SBATCH --gpus-per-node"), "{s}");
        assert!(s.lines().any(|l| l == "#SBATCH --ntasks-per-node=2"));
    }

    #[test]
    fn the_script_is_valid_bash() {
        let dir = std::env::temp_dir().join(format!("xtask-sbatch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("train.sbatch");
        std::fs::write(&file, render(&h100_job())).unwrap();
        let out = std::process::Command::new("bash")
            .arg("-n")
            .arg(&file)
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn quoting_survives_spaces_and_quotes() {
        assert_eq!(sh_quote("plain/path-1.yaml"), "plain/path-1.yaml");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }
}
