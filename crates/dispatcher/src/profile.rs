//! The hardened worker profile: the resource limits and privileges every
//! worker container gets unless the operator configures otherwise.

use crate::engine::Protection;

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
    /// Largest log file of the container, in bytes, before the engine
    /// rotates it (json-file `max-size`).
    pub log_max_bytes: i64,
    /// Log files the engine keeps per container (json-file `max-file`): a
    /// worker's output on the host's disk is at most this times `log_max_bytes`.
    pub log_max_files: u32,
    /// Whether the root filesystem is read-only. The worker then writes only
    /// to memory-backed tmpfs mounts at `/tmp` and at the image's `HOME`, so
    /// nothing it writes lands on the host's Docker storage.
    pub read_only_root: bool,
    /// Most bytes each of those tmpfs mounts holds; what is written there is
    /// memory, counted against `memory_bytes`.
    pub scratch_bytes: i64,
}

impl HardenedProfile {
    /// The protections this profile asks the engine to enforce, in
    /// [`Protection::ALL`] order.
    pub fn protections(&self) -> Vec<Protection> {
        let root =
            self.user.split(':').next().is_none_or(|user| user.is_empty() || user == "0" || user == "root");
        let asked = |protection| match protection {
            Protection::MemoryLimit => self.memory_bytes > 0,
            // Equal to memory, or any positive figure: both bound the swap.
            Protection::SwapLimit => self.memory_swap_bytes > 0,
            Protection::CpuLimit => self.nano_cpus > 0,
            Protection::PidsLimit => self.pids_limit > 0,
            Protection::NonRootUser => !root,
            // Every worker drops every capability; `cap_add` adds some back.
            Protection::DropAllCapabilities => true,
            Protection::NoNewPrivileges => self.no_new_privileges,
            Protection::Init => self.init,
            Protection::LogLimits => self.log_max_bytes > 0,
            Protection::ReadOnlyRoot => self.read_only_root,
            Protection::ScratchTmpfs => self.read_only_root && self.scratch_bytes > 0,
        };
        Protection::ALL.into_iter().filter(|protection| asked(*protection)).collect()
    }

    /// 2 GiB memory, no extra swap, 2 CPUs, 512 pids, uid 65532, no
    /// capabilities, `no-new-privileges`, init, logs of at most 3 files of
    /// 10 MiB, and a read-only root with 1 GiB tmpfs at `/tmp` and `HOME`.
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
            log_max_bytes: 10 * 1024 * 1024,
            log_max_files: 3,
            read_only_root: true,
            scratch_bytes: 1024 * 1024 * 1024,
        }
    }

    /// The seed project's profile, for images whose entrypoint drops
    /// privileges itself: CHOWN, FOWNER, SETUID and SETGID added back.
    pub fn with_privilege_drop_caps(mut self) -> Self {
        self.cap_add = ["CHOWN", "FOWNER", "SETUID", "SETGID"].map(str::to_owned).to_vec();
        self
    }

    /// Sets how much of its output the engine keeps per worker: `files`
    /// files of at most `bytes` each.
    pub fn with_log_limits(mut self, bytes: i64, files: u32) -> Self {
        self.log_max_bytes = bytes;
        self.log_max_files = files;
        self
    }

    /// Sets the root filesystem's writability and the size of each scratch tmpfs.
    pub fn with_scratch(mut self, read_only_root: bool, scratch_bytes: i64) -> Self {
        self.read_only_root = read_only_root;
        self.scratch_bytes = scratch_bytes;
        self
    }

    /// Sets the memory limit, keeping swap equal to it.
    pub fn with_memory(mut self, bytes: i64) -> Self {
        self.memory_bytes = bytes;
        self.memory_swap_bytes = bytes;
        self
    }
}
