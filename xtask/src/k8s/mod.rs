//! `cargo xtask k8s render CONFIG --nodes N --gpus-per-node G --image IMAGE`: a training job for
//! Kubernetes as two typed objects (k8s-openapi), written as one YAML file:
//!
//! - a headless **Service** whose DNS name gives rank 0's address: pod `<job>-0` of an Indexed
//!   Job with `subdomain: <job>` is `<job>-0.<job>`, resolvable before it is ready
//!   (`publishNotReadyAddresses`), since the rendezvous happens before any readiness;
//! - an **Indexed Job** of N pods, one per node: the completion index is `NODE_RANK` (from the pod
//!   annotation `batch.kubernetes.io/job-completion-index`). Each pod asks for G
//!   `nvidia.com/gpu` and mounts a memory-backed `/dev/shm` (NCCL and data loaders use shared
//!   memory; the container default is 64 MiB).
//!
//! **One process per GPU inside a pod.** The container runs a small bash entrypoint
//! (`entrypoint.sh`, embedded in the manifest) that starts `LOCAL_WORLD_SIZE` ranks with
//! `RANK = NODE_RANK × G + LOCAL_RANK` and ends the pod with the first failing rank's exit code.
//! It needs only bash in the image, not cargo or xtask.
//!
//! **Restarts.** `restartPolicy: Never` and a `podFailurePolicy`: exit 2 (config) or 3
//! (diverged) fails the whole Job at once, never retried; a pod disrupted by the cluster
//! (eviction, preemption, node drain: the `DisruptionTarget` condition) is replaced without
//! counting; any other failure counts against `backoffLimit`. One failure of the job typically
//! fails every pod (the others lose their peer and exit 75), so `backoffLimit` is
//! `max_restarts × nodes`: about `max_restarts` restarts of the whole job. Each new pod
//! autoresumes from `latest`, which therefore must be on the shared volume (`--volume-claim`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ObjectFieldSelector,
    PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, ResourceRequirements, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::launch::exit;

/// The entrypoint every pod runs (see the module docs).
pub const ENTRYPOINT: &str = include_str!("entrypoint.sh");

/// The name of the training container (the podFailurePolicy names it).
const CONTAINER: &str = "trainer";
/// The label the Job controller puts on its pods (Kubernetes 1.27+).
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
/// The pod annotation that holds the completion index.
const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";

#[derive(clap::Subcommand)]
pub enum Command {
    /// Write the Service and Indexed Job of a training run as one YAML file.
    Render(RenderArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct RenderArgs {
    /// The training YAML, as a path inside the container.
    pub config: String,
    /// Pods (nodes).
    #[arg(long)]
    pub nodes: u32,
    /// GPUs per pod, one rank each; 0 for CPU pods (then --procs-per-node).
    #[arg(long)]
    pub gpus_per_node: u32,
    /// Ranks per CPU pod (default: --gpus-per-node).
    #[arg(long)]
    pub procs_per_node: Option<u32>,
    /// The container image (it must hold the tessera binary and bash).
    #[arg(long)]
    pub image: String,
    /// Job and Service name (a DNS label; default: tessera-<config stem>).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub namespace: Option<String>,
    /// Restarts of the whole job (backoffLimit = this × nodes).
    #[arg(long, default_value_t = 3)]
    pub max_restarts: u32,
    #[arg(long, default_value_t = 29500)]
    pub master_port: u16,
    /// The tessera binary inside the image.
    #[arg(long, default_value = "tessera")]
    pub tessera_bin: String,
    /// `--device` for the ranks (default: cuda with GPUs, else cpu).
    #[arg(long)]
    pub device: Option<String>,
    /// Size limit of the memory-backed /dev/shm.
    #[arg(long, default_value = "64Gi")]
    pub shm_size: String,
    /// CPU and memory requests per pod (e.g. 96 and 1000Gi).
    #[arg(long)]
    pub cpu: Option<String>,
    #[arg(long)]
    pub memory: Option<String>,
    /// A PersistentVolumeClaim shared by every pod (data, run folder, checkpoints).
    #[arg(long)]
    pub volume_claim: Option<String>,
    /// Where the claim is mounted, and the ranks' working folder.
    #[arg(long, default_value = "/workspace")]
    pub mount_path: String,
    /// Config overrides passed to `tessera train --set`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// The output file (default: <name>.k8s.yaml).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Render(args) => {
            let text = render(&args)?;
            let out = args
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{}.k8s.yaml", job_name(&args))));
            crate::util::write_atomic(&out, text.as_bytes())
                .with_context(|| format!("writing {}", out.display()))?;
            println!("{}", out.display());
            Ok(0)
        }
    }
}

/// The Job's name: `--name`, else `tessera-<config stem>`, as a DNS label.
pub fn job_name(a: &RenderArgs) -> String {
    if let Some(n) = &a.name {
        return n.clone();
    }
    let stem = std::path::Path::new(&a.config)
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let label: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("tessera-{}", label.trim_matches('-'))
        .chars()
        .take(50)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string()
}

/// The Service and the Job, as a two-document YAML file.
pub fn render(a: &RenderArgs) -> anyhow::Result<String> {
    let (service, job) = objects(a)?;
    let header = format!(
        "# Written by: cargo xtask k8s render {} --nodes {} --gpus-per-node {} --image {}\n",
        a.config, a.nodes, a.gpus_per_node, a.image
    );
    let service = serde_saphyr::to_string(&service).context("writing the Service as YAML")?;
    let job = serde_saphyr::to_string(&job).context("writing the Job as YAML")?;
    Ok(format!("{header}{service}---\n{job}"))
}

/// Builds the two objects.
pub fn objects(a: &RenderArgs) -> anyhow::Result<(Service, Job)> {
    let name = job_name(a);
    if name.is_empty()
        || name.len() > 63
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || name.starts_with('-')
        || name.ends_with('-')
    {
        bail!("--name {name:?} is not a DNS label (lowercase letters, digits and '-', at most 63)");
    }
    if a.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let procs = match (a.gpus_per_node, a.procs_per_node) {
        (0, None) => bail!("CPU pods (--gpus-per-node 0) need --procs-per-node"),
        (0, Some(n)) => n,
        (g, None) => g,
        (g, Some(n)) if n == g => n,
        (g, Some(n)) => bail!("--procs-per-node {n} with --gpus-per-node {g}: one rank per GPU"),
    };
    let metadata = |labels: Option<BTreeMap<String, String>>| ObjectMeta {
        name: Some(name.clone()),
        namespace: a.namespace.clone(),
        labels,
        ..Default::default()
    };
    let app_labels = BTreeMap::from([("app.kubernetes.io/name".to_string(), name.clone())]);

    let service = Service {
        metadata: metadata(Some(app_labels.clone())),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(BTreeMap::from([(JOB_NAME_LABEL.to_string(), name.clone())])),
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![ServicePort {
                name: Some("rendezvous".into()),
                port: i32::from(a.master_port),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };

    let env_value = |k: &str, v: String| EnvVar {
        name: k.into(),
        value: Some(v),
        ..Default::default()
    };
    let env = vec![
        env_value("MASTER_ADDR", format!("{name}-0.{name}")),
        env_value("MASTER_PORT", a.master_port.to_string()),
        env_value("WORLD_SIZE", (a.nodes * procs).to_string()),
        env_value("LOCAL_WORLD_SIZE", procs.to_string()),
        EnvVar {
            name: "NODE_RANK".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: format!("metadata.annotations['{INDEX_ANNOTATION}']"),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    let device = a
        .device
        .clone()
        .unwrap_or_else(|| if a.gpus_per_node > 0 { "cuda" } else { "cpu" }.into());
    let mut args = vec![
        "tessera-entrypoint".to_string(), // $0 of the entrypoint
        a.tessera_bin.clone(),
        "--device".into(),
        device,
        "train".into(),
        a.config.clone(),
    ];
    for o in &a.overrides {
        args.extend(["--set".into(), o.clone()]);
    }
    let mut limits = BTreeMap::new();
    let mut requests = BTreeMap::new();
    if a.gpus_per_node > 0 {
        let gpus = Quantity(a.gpus_per_node.to_string());
        limits.insert("nvidia.com/gpu".to_string(), gpus.clone());
        requests.insert("nvidia.com/gpu".to_string(), gpus);
    }
    if let Some(cpu) = &a.cpu {
        requests.insert("cpu".to_string(), Quantity(cpu.clone()));
    }
    if let Some(mem) = &a.memory {
        requests.insert("memory".to_string(), Quantity(mem.clone()));
        limits.insert("memory".to_string(), Quantity(mem.clone()));
    }
    let mut mounts = vec![VolumeMount {
        name: "dshm".into(),
        mount_path: "/dev/shm".into(),
        ..Default::default()
    }];
    let mut volumes = vec![Volume {
        name: "dshm".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(Quantity(a.shm_size.clone())),
        }),
        ..Default::default()
    }];
    if let Some(claim) = &a.volume_claim {
        mounts.push(VolumeMount {
            name: "shared".into(),
            mount_path: a.mount_path.clone(),
            ..Default::default()
        });
        volumes.push(Volume {
            name: "shared".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let container = Container {
        name: CONTAINER.into(),
        image: Some(a.image.clone()),
        command: Some(vec!["bash".into(), "-c".into(), ENTRYPOINT.into()]),
        args: Some(args),
        working_dir: a.volume_claim.as_ref().map(|_| a.mount_path.clone()),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("rendezvous".into()),
            container_port: i32::from(a.master_port),
            ..Default::default()
        }]),
        resources: Some(ResourceRequirements {
            limits: (!limits.is_empty()).then_some(limits),
            requests: (!requests.is_empty()).then_some(requests),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    let pod = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(app_labels.clone()),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            subdomain: Some(name.clone()),
            containers: vec![container],
            volumes: Some(volumes),
            ..Default::default()
        }),
    };
    let never_retry = PodFailurePolicyRule {
        action: "FailJob".into(),
        on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
            container_name: Some(CONTAINER.into()),
            operator: "In".into(),
            values: vec![exit::CONFIG_ERROR, exit::DIVERGED],
        }),
        ..Default::default()
    };
    let disrupted = PodFailurePolicyRule {
        action: "Ignore".into(),
        on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
        }]),
        ..Default::default()
    };
    let backoff = i32::try_from(a.max_restarts.saturating_mul(a.nodes))
        .context("--max-restarts × --nodes is too large")?;
    let job = Job {
        metadata: metadata(Some(app_labels)),
        spec: Some(JobSpec {
            completion_mode: Some("Indexed".into()),
            completions: Some(a.nodes as i32),
            parallelism: Some(a.nodes as i32),
            backoff_limit: Some(backoff),
            pod_failure_policy: Some(PodFailurePolicy {
                rules: vec![never_retry, disrupted],
            }),
            template: pod,
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok((service, job))
}

#[cfg(test)]
mod tests;
