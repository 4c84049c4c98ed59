//! Per-run control groups for the process backend: a memory limit the kernel
//! enforces on the whole tree, a pids limit that stops fork bombs, and a
//! reliable way to kill everything a run started.
//!
//! Both hierarchies are supported: cgroup v2 (unified, `cgroup.kill`) and v1
//! (separate `memory` and `pids` controllers). When neither is writable the
//! backend falls back to rlimits, which are weaker (see the README).
//!
//! Groups are named `run-<worker pid>-<n>` under Kiln's parent group; those
//! of a worker that died are removed by the next [`Cgroups::detect`].
//! Moving a process into a group is slow on v1 (the kernel waits for an RCU
//! grace period, often 5–30 ms), which is why the process backend does it
//! ahead of the run.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Where Kiln may create cgroups on this machine.
#[derive(Debug, Clone)]
pub enum Cgroups {
    /// `root` is Kiln's parent group in the unified hierarchy.
    V2 { root: PathBuf },
    /// Kiln's parent groups in the v1 `memory` and `pids` hierarchies.
    V1 { memory: PathBuf, pids: PathBuf },
}

/// The cgroup(s) of one run; removed (after killing what is left) on drop.
#[derive(Debug)]
pub struct RunGroup {
    dirs: Vec<PathBuf>,
    version: u8,
}

const BASE: &str = "/sys/fs/cgroup";

impl Cgroups {
    /// Finds a writable hierarchy with memory and pids control, creating
    /// Kiln's parent group in it. `None` when there is none.
    pub fn detect() -> Option<Cgroups> {
        let base = Path::new(BASE);
        if let Ok(controllers) = fs::read_to_string(base.join("cgroup.controllers"))
            && controllers.split_whitespace().any(|c| c == "memory")
            && controllers.split_whitespace().any(|c| c == "pids")
        {
            let root = base.join("kiln");
            let enabled = fs::create_dir_all(&root).is_ok()
                && fs::write(base.join("cgroup.subtree_control"), "+memory +pids").is_ok()
                && fs::write(root.join("cgroup.subtree_control"), "+memory +pids").is_ok();
            if enabled {
                remove_orphans(&root);
                return Some(Cgroups::V2 { root });
            }
        }
        let memory = base.join("memory");
        let pids = base.join("pids");
        if memory.join("memory.limit_in_bytes").exists() && pids.join("cgroup.procs").exists() {
            let memory = memory.join("kiln");
            let pids = pids.join("kiln");
            if fs::create_dir_all(&memory).is_ok() && fs::create_dir_all(&pids).is_ok() {
                remove_orphans(&memory);
                remove_orphans(&pids);
                return Some(Cgroups::V1 { memory, pids });
            }
        }
        None
    }

    /// Creates the (not yet limited) groups for one run.
    pub fn create(&self, name: &str) -> io::Result<RunGroup> {
        let (dirs, version) = match self {
            Cgroups::V2 { root } => (vec![root.join(name)], 2),
            Cgroups::V1 { memory, pids } => (vec![memory.join(name), pids.join(name)], 1),
        };
        let mut group = RunGroup {
            dirs: Vec::new(),
            version,
        };
        for dir in dirs {
            fs::create_dir(&dir)?;
            group.dirs.push(dir);
        }
        Ok(group)
    }
}

/// Removes the empty run groups of workers that are gone.
fn remove_orphans(parent: &Path) {
    for entry in fs::read_dir(parent).into_iter().flatten().flatten() {
        if super::left_by_dead_process(&entry.file_name(), "run-") {
            // Fails (harmlessly) while something still runs in it.
            let _ = fs::remove_dir(entry.path());
        }
    }
}

impl RunGroup {
    /// The `cgroup.procs` files a process's pid is written into to join.
    fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Sets the run's memory limit (swap included, where the kernel
    /// accounts it) and process limit.
    pub fn set_limits(&self, memory_mb: u64, pids: u64) -> io::Result<()> {
        let bytes = (memory_mb * 1024 * 1024).to_string();
        if self.version == 2 {
            let dir = &self.dirs[0];
            fs::write(dir.join("memory.max"), &bytes)?;
            // Swap would let a memory bomb outlive the limit (slowly).
            let _ = fs::write(dir.join("memory.swap.max"), "0");
            fs::write(dir.join("pids.max"), pids.to_string())
        } else {
            let (mem_dir, pids_dir) = (&self.dirs[0], &self.dirs[1]);
            // memsw must never be below the memory limit: lower it last when
            // shrinking, raise it first when growing; one of the two orders
            // fails, so try both. Present only with swap accounting; where
            // absent there is no swap to limit.
            let memsw = mem_dir.join("memory.memsw.limit_in_bytes");
            let _ = fs::write(&memsw, &bytes);
            fs::write(mem_dir.join("memory.limit_in_bytes"), &bytes)?;
            let _ = fs::write(&memsw, &bytes);
            fs::write(pids_dir.join("pids.max"), pids.to_string())
        }
    }

    /// Moves process `pid` into the run's groups. Its children follow it;
    /// so it must not have started any yet.
    pub fn join(&self, pid: u32) -> io::Result<()> {
        for file in self.procs_files() {
            fs::write(file, pid.to_string())?;
        }
        Ok(())
    }

    /// Memory the group's processes use now, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        let file = if self.version == 2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        fs::read_to_string(self.dirs[0].join(file))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    /// A count that grows each time the memory limit kills (v2, and v1
    /// kernels that count kills) or is hit (v1): a change across a run
    /// means the run met its limit.
    pub fn memory_limit_events(&self) -> u64 {
        let dir = &self.dirs[0];
        let count = |text: String, key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key).map(|v| v.trim().parse::<u64>().unwrap_or(0)))
                .unwrap_or(0)
        };
        if self.version == 2 {
            fs::read_to_string(dir.join("memory.events")).map_or(0, |t| count(t, "oom_kill "))
        } else {
            fs::read_to_string(dir.join("memory.oom_control")).map_or(0, |t| count(t, "oom_kill "))
                + fs::read_to_string(dir.join("memory.failcnt")).map_or(0, |t| t.trim().parse::<u64>().unwrap_or(0))
        }
    }

    /// Whether the kernel killed something for exceeding the memory limit
    /// (or, on v1, the limit was hit) since the group was made.
    pub fn oom_killed(&self) -> bool {
        self.memory_limit_events() > 0
    }

    /// Kills every process in the run's groups and waits until they are gone.
    pub fn kill_all(&self) {
        if self.version == 2 && fs::write(self.dirs[0].join("cgroup.kill"), "1").is_ok() {
            self.wait_empty();
            return;
        }
        // v1 (or v2 before cgroup.kill): kill what is listed until nothing is;
        // the pids limit bounds how many can appear between rounds.
        for _ in 0..200 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn pids(&self) -> Vec<i32> {
        self.procs_files()
            .iter()
            .filter_map(|f| fs::read_to_string(f).ok())
            .flat_map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<i32>>())
            .collect()
    }

    fn wait_empty(&self) {
        for _ in 0..200 {
            if self.pids().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for RunGroup {
    fn drop(&mut self) {
        self.kill_all();
        for dir in &self.dirs {
            // A group can only be removed once its last process is reaped.
            for _ in 0..100 {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
