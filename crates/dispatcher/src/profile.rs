//! The hardened worker profile: the resource limits and privileges every
//! worker container gets unless the operator configures otherwise.

/// Limits and privileges of a worker container. [`HardenedProfile::strict`]
/// is the default of CONTRACT.md.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardenedProfile {
    /// Memory limit in bytes.
    pub memory_bytes: i64,
    /// Memory plus swap in bytes; equal to `memory_bytes` means no swap.
    pub memory_swap_bytes: i64,
    /// CPU quota in billionths of a CPU.
    pub nano_cpus: i64,
    /// Most processes (and threads) at once.
    pub pids_limit: i64,
    /// `uid:gid` the worker runs as; never root.
    pub user: String,
    /// Capabilities added back after dropping ALL (empty by default).
    pub cap_add: Vec<String>,
    /// Whether `no-new-privileges` is set.
    pub no_new_privileges: bool,
    /// Whether Docker's init (tini) runs as PID 1 and forwards signals.
    pub init: bool,
}

impl HardenedProfile {
    /// 2 GiB memory, no extra swap, 2 CPUs, 512 pids, uid 65532, no
    /// capabilities, `no-new-privileges`, init.
    pub fn strict() -> Self {
        let memory_bytes = 2 * 1024 * 1024 * 1024;
        Self {
            memory_bytes,
            memory_swap_bytes: memory_bytes,
            nano_cpus: 2_000_000_000,
            pids_limit: 512,
            user: "65532:65532".to_owned(),
            cap_add: Vec::new(),
            no_new_privileges: true,
            init: true,
        }
    }

    /// The seed project's profile, for images whose entrypoint drops
    /// privileges itself: CHOWN, FOWNER, SETUID and SETGID added back.
    pub fn with_privilege_drop_caps(mut self) -> Self {
        self.cap_add = ["CHOWN", "FOWNER", "SETUID", "SETGID"].map(str::to_owned).to_vec();
        self
    }

    /// Sets the memory limit, keeping swap equal to it.
    pub fn with_memory(mut self, bytes: i64) -> Self {
        self.memory_bytes = bytes;
        self.memory_swap_bytes = bytes;
        self
    }
}
