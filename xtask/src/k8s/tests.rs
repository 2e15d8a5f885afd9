//! The rendered YAML read back into k8s-openapi's types, field by field, and the pod's
//! entrypoint run from the manifest itself.

use super::*;

fn h100_args() -> RenderArgs {
    RenderArgs {
        config: "/workspace/yamls/mpt-7b.yaml".into(),
        nodes: 8,
        gpus_per_node: 8,
        procs_per_node: None,
        image: "registry.example.com/tessera:0.1.0-cuda".into(),
        name: None,
        namespace: Some("llm".into()),
        max_restarts: 10,
        master_port: 29500,
        tessera_bin: "/usr/local/bin/tessera".into(),
        device: None,
        shm_size: "64Gi".into(),
        cpu: Some("96".into()),
        memory: Some("1000Gi".into()),
        volume_claim: Some("llm-shared".into()),
        mount_path: "/workspace".into(),
        overrides: vec!["save_folder=/workspace/ck/{run_name}".into()],
        out: None,
    }
}

/// The file's two documents, parsed as the API types.
fn parse(text: &str) -> (Service, Job) {
    let docs: Vec<&str> = text.split("\n---\n").collect();
    assert_eq!(docs.len(), 2, "{text}");
    let service: Service = serde_saphyr::from_str(docs[0]).expect("a Service");
    let job: Job = serde_saphyr::from_str(docs[1]).expect("a Job");
    (service, job)
}

#[test]
fn the_rendered_yaml_reads_back_as_a_headless_service_and_an_indexed_job() {
    let args = h100_args();
    let text = render(&args).unwrap();
    assert!(
        text.contains("apiVersion: v1\n") && text.contains("kind: Service\n"),
        "{text}"
    );
    assert!(text.contains("apiVersion: batch/v1\n") && text.contains("kind: Job\n"));
    let (service, job) = parse(&text);
    assert_eq!((service.clone(), job.clone()), objects(&args).unwrap());

    let name = "tessera-mpt-7b";
    assert_eq!(service.metadata.name.as_deref(), Some(name));
    assert_eq!(service.metadata.namespace.as_deref(), Some("llm"));
    let s = service.spec.unwrap();
    assert_eq!(s.cluster_ip.as_deref(), Some("None"), "headless");
    assert_eq!(s.publish_not_ready_addresses, Some(true));
    assert_eq!(
        s.selector.unwrap()["batch.kubernetes.io/job-name"],
        name,
        "selects the Job's pods"
    );
    assert_eq!(s.ports.unwrap()[0].port, 29500);

    assert_eq!(job.metadata.name.as_deref(), Some(name));
    let spec = job.spec.unwrap();
    assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
    assert_eq!((spec.completions, spec.parallelism), (Some(8), Some(8)));
    assert_eq!(spec.backoff_limit, Some(80), "10 restarts of 8 pods");
    let rules = spec.pod_failure_policy.unwrap().rules;
    assert_eq!(rules[0].action, "FailJob");
    let codes = rules[0].on_exit_codes.as_ref().unwrap();
    assert_eq!(codes.container_name.as_deref(), Some("trainer"));
    assert_eq!(
        (codes.operator.as_str(), codes.values.clone()),
        ("In", vec![2, 3])
    );
    assert_eq!(rules[1].action, "Ignore");
    assert_eq!(
        rules[1].on_pod_conditions.as_ref().unwrap()[0].type_,
        "DisruptionTarget"
    );

    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(
        pod.subdomain.as_deref(),
        Some(name),
        "pods resolve as <job>-<i>.<service>"
    );
    let c = &pod.containers[0];
    assert_eq!(c.name, "trainer");
    assert_eq!(c.image.as_deref(), Some(args.image.as_str()));
    assert_eq!(c.working_dir.as_deref(), Some("/workspace"));
    let env: BTreeMap<&str, &EnvVar> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| (e.name.as_str(), e))
        .collect();
    assert_eq!(
        env["MASTER_ADDR"].value.as_deref(),
        Some("tessera-mpt-7b-0.tessera-mpt-7b")
    );
    assert_eq!(env["MASTER_PORT"].value.as_deref(), Some("29500"));
    assert_eq!(env["WORLD_SIZE"].value.as_deref(), Some("64"));
    assert_eq!(env["LOCAL_WORLD_SIZE"].value.as_deref(), Some("8"));
    assert_eq!(
        env["NODE_RANK"]
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    );
    let res = c.resources.as_ref().unwrap();
    assert_eq!(res.limits.as_ref().unwrap()["nvidia.com/gpu"].0, "8");
    assert_eq!(res.requests.as_ref().unwrap()["nvidia.com/gpu"].0, "8");
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "96");
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "1000Gi");
    let mounts: BTreeMap<&str, &str> = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    assert_eq!(mounts["dshm"], "/dev/shm");
    assert_eq!(mounts["shared"], "/workspace");
    let volumes = pod.volumes.unwrap();
    let shm = volumes[0].empty_dir.as_ref().unwrap();
    assert_eq!(shm.medium.as_deref(), Some("Memory"));
    assert_eq!(shm.size_limit.as_ref().unwrap().0, "64Gi");
    assert_eq!(
        volumes[1]
            .persistent_volume_claim
            .as_ref()
            .unwrap()
            .claim_name,
        "llm-shared"
    );
    assert_eq!(
        c.command.as_ref().unwrap()[..2],
        ["bash".to_string(), "-c".to_string()]
    );
    assert_eq!(
        c.args.as_ref().unwrap()[1..],
        [
            "/usr/local/bin/tessera",
            "--device",
            "cuda",
            "train",
            "/workspace/yamls/mpt-7b.yaml",
            "--set",
            "save_folder=/workspace/ck/{run_name}"
        ]
    );
}

#[test]
fn cpu_pods_ask_for_no_gpus_and_bad_names_are_refused() {
    let mut args = h100_args();
    args.gpus_per_node = 0;
    args.procs_per_node = Some(4);
    let (_, job) = objects(&args).unwrap();
    let c = &job.spec.unwrap().template.spec.unwrap().containers[0];
    let res = c.resources.as_ref().unwrap();
    assert!(!res.limits.as_ref().unwrap().contains_key("nvidia.com/gpu"));
    assert!(c.args.as_ref().unwrap().contains(&"cpu".to_string()));

    args.procs_per_node = None;
    assert!(objects(&args).is_err());
    let mut args = h100_args();
    args.name = Some("Bad_Name".into());
    let e = objects(&args).unwrap_err().to_string();
    assert!(e.contains("DNS label"), "{e}");
}

#[test]
fn the_pods_entrypoint_numbers_ranks_by_node_and_ends_with_the_first_failure() {
    let dir = std::env::temp_dir().join(format!("xtask-k8s-ep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A fake tessera: prints its place, local rank 1 fails with the stall code, the others wait.
    let fake = dir.join("tessera");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho \"rank $RANK local $LOCAL_RANK of $WORLD_SIZE: $*\"\n\
         if [ $LOCAL_RANK = 1 ]; then sleep 0.2; exit 75; fi\nexec sleep 30\n",
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&fake)
        .status()
        .unwrap();
    let mut args = h100_args();
    args.gpus_per_node = 3;
    args.nodes = 2;
    args.tessera_bin = fake.display().to_string();
    let (_, job) = objects(&args).unwrap();
    let c = job.spec.unwrap().template.spec.unwrap().containers[0].clone();
    let command = c.command.unwrap();
    let mut cmd = std::process::Command::new(&command[0]);
    cmd.args(&command[1..]).args(c.args.unwrap());
    for e in c.env.unwrap() {
        if let Some(v) = e.value {
            cmd.env(e.name, v);
        }
    }
    // What the annotation gives pod 1.
    cmd.env("NODE_RANK", "1").env("GRACE_S", "2");
    let started = std::time::Instant::now();
    let out = cmd.output().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(75), "{stdout}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    for (rank, local) in [(3, 0), (4, 1), (5, 2)] {
        let line = format!(
            "rank {rank} local {local} of 6: --device cuda train /workspace/yamls/mpt-7b.yaml"
        );
        assert!(
            stdout.lines().any(|l| l.starts_with(&line)),
            "{line:?} in {stdout}"
        );
    }
}
