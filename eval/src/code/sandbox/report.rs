//! Which isolation layers are active, and what each one stops.
//!
//! The sandbox probes the kernel once and falls back layer by layer; the result is reported
//! rather than assumed, in every evaluation's output and on the command line.

use std::fmt;

use serde::Serialize;

/// One isolation mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// Each program leads its own process group.
    ProcessGroup,
    /// A user namespace: the namespaces below need no host privilege, and the program's uid
    /// maps to an unprivileged host uid.
    UserNamespace,
    /// A PID namespace whose init is the supervisor: its exit kills every descendant.
    PidNamespace,
    /// A network namespace with only a loopback interface that is down.
    NetworkNamespace,
    /// A private root holding only allow-listed paths, bound read-only, plus the tmpfs folder.
    MountNamespace,
    /// Every mount read-only except the sandbox folder (`mount_setattr`).
    ReadOnlyMounts,
    /// A procfs of the PID namespace, showing only the sandbox's processes.
    FreshProc,
    /// IPC, UTS and cgroup namespaces.
    IpcUtsCgroupNamespaces,
    /// The program runs as an unprivileged uid with no supplementary groups.
    UnprivilegedUser,
    /// Landlock rules on files, TCP and (ABI 6) signals.
    Landlock,
    /// A seccomp-BPF filter on network sockets and dangerous system calls.
    Seccomp,
    /// CPU time, address space, file size, process count, open files, core dumps.
    Rlimits,
    /// A size-limited tmpfs as the only writable folder.
    DiskQuota,
    /// Only `PATH`, `LANG`, `HOME` and `TMPDIR` are set.
    EmptyEnvironment,
    /// A wall-clock deadline after which the whole tree is killed.
    WallClockTimeout,
}

/// Whether a layer is active, and what it does (or why it is not active).
#[derive(Debug, Clone, Serialize)]
pub struct LayerStatus {
    /// The layer.
    pub layer: Layer,
    /// Whether it is active on this machine.
    pub active: bool,
    /// What it does here, or why it is off.
    pub detail: String,
}

/// The isolation a sandbox actually has on this machine.
#[derive(Debug, Clone, Serialize)]
pub struct IsolationReport {
    /// Every layer, active or not.
    pub layers: Vec<LayerStatus>,
    /// For each threat, the active layers that stop it (empty: nothing does).
    pub guarantees: Vec<Guarantee>,
    /// The interpreter the programs run with.
    pub python: String,
}

/// A threat and the active layers that contain it.
#[derive(Debug, Clone, Serialize)]
pub struct Guarantee {
    /// The threat, e.g. network access or writes outside the sandbox folder.
    pub threat: &'static str,
    /// The active layers that stop it; empty when nothing does.
    pub blocked_by: Vec<Layer>,
    /// How well: e.g. "per sandbox" or "shared by all concurrent sandboxes".
    pub note: String,
}

impl IsolationReport {
    /// Whether `layer` is active.
    pub fn is_active(&self, layer: Layer) -> bool {
        self.layers.iter().any(|l| l.layer == layer && l.active)
    }

    /// The guarantee for `threat`, if listed.
    pub fn guarantee(&self, threat: &str) -> Option<&Guarantee> {
        self.guarantees.iter().find(|g| g.threat == threat)
    }

    /// Markdown: a table of layers and one of threats.
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "Sandbox for `{}`\n\n| layer | active | what it does |\n|---|---|---|\n",
            self.python
        );
        for l in &self.layers {
            s.push_str(&format!(
                "| {} | {} | {} |\n",
                layer_name(l.layer),
                if l.active { "yes" } else { "NO" },
                l.detail.replace('|', "\\|")
            ));
        }
        s.push_str("\n| threat | blocked by | note |\n|---|---|---|\n");
        for g in &self.guarantees {
            let by: Vec<&str> = g.blocked_by.iter().map(|l| layer_name(*l)).collect();
            let by = if by.is_empty() {
                "NOTHING".to_string()
            } else {
                by.join(", ")
            };
            s.push_str(&format!("| {} | {} | {} |\n", g.threat, by, g.note));
        }
        s
    }
}

impl fmt::Display for IsolationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_markdown())
    }
}

/// A short name for a layer, as the report prints it.
pub fn layer_name(l: Layer) -> &'static str {
    match l {
        Layer::ProcessGroup => "process group",
        Layer::UserNamespace => "user namespace",
        Layer::PidNamespace => "PID namespace",
        Layer::NetworkNamespace => "network namespace",
        Layer::MountNamespace => "mount namespace (private root)",
        Layer::ReadOnlyMounts => "read-only mounts",
        Layer::FreshProc => "fresh /proc",
        Layer::IpcUtsCgroupNamespaces => "IPC/UTS/cgroup namespaces",
        Layer::UnprivilegedUser => "unprivileged user",
        Layer::Landlock => "Landlock",
        Layer::Seccomp => "seccomp",
        Layer::Rlimits => "rlimits",
        Layer::DiskQuota => "disk quota",
        Layer::EmptyEnvironment => "empty environment",
        Layer::WallClockTimeout => "wall-clock timeout",
    }
}
