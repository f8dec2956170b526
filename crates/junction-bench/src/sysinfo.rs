//! Facts about the machine and about a running process, read from `/proc` (Linux only).
//!
//! Contract: every reader returns `None`/defaults instead of failing when a file is missing, so
//! a report can always be printed; CPU time is `utime + stime` of `/proc/PID/stat` in seconds
//! (machine-wide: the busy columns of `/proc/stat`);
//! peak RSS is `VmHWM`; disk usage walks a directory summing `st_blocks * 512` (used) and
//! `st_size` (apparent), like `du` and `du --apparent-size`.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

/// The machine, for the report header.
pub struct Machine {
    pub nproc: usize,
    pub model: String,
    pub kernel: String,
    pub mem_total_gib: f64,
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let mem_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:").and_then(first_number))
            })
            .unwrap_or(0);
        Self {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            model,
            kernel,
            mem_total_gib: mem_kib as f64 / (1024.0 * 1024.0),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{} CPU(s), {}, {:.1} GiB RAM, Linux {}",
            self.nproc, self.model, self.mem_total_gib, self.kernel
        )
    }

    pub fn to_json(&self) -> Value {
        json!({ "nproc": self.nproc, "model": self.model, "kernel": self.kernel, "mem_total_gib": (self.mem_total_gib * 10.0).round() / 10.0 })
    }
}

fn first_number(s: &str) -> Option<u64> {
    s.split_whitespace().next()?.parse().ok()
}

/// Clock ticks per second for `/proc/PID/stat` (from `getconf CLK_TCK`, else 100).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

/// User + system CPU seconds consumed so far by `pid`.
pub fn cpu_seconds(pid: u32, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3 (`state`).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// User + system CPU seconds of every live thread of `pid`, as `(thread id, thread name,
/// seconds)` sorted by thread id (empty once the process is gone). An exited thread is no
/// longer listed (its time stays in the process's [`cpu_seconds`]).
pub fn thread_cpu_seconds(pid: u32, ticks: f64) -> Vec<(u32, String, f64)> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut threads: Vec<(u32, String, f64)> = entries
        .flatten()
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let name = stat[stat.find('(')? + 1..stat.rfind(')')?].to_string();
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((tid, name, (utime + stime) / ticks))
        })
        .collect();
    threads.sort_by_key(|t| t.0);
    threads
}

/// CPU seconds spent busy (user, nice, system, irq, softirq, steal) by the whole machine.
pub fn machine_busy_seconds(ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| f.get(i))
        .sum::<f64>();
    Some(busy / ticks)
}

/// A `Vm*` line of `/proc/PID/status` in KiB (e.g. `VmHWM`, `VmRSS`).
pub fn vm_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .and_then(first_number)
    })
}

/// Disk usage of a directory tree.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub used_bytes: u64,
    pub apparent_bytes: u64,
    pub files: u64,
}

pub fn disk_usage(path: &Path) -> Usage {
    use std::os::unix::fs::MetadataExt;
    let mut u = Usage::default();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else {
            u.used_bytes += meta.blocks() * 512;
            u.apparent_bytes += meta.len();
            u.files += 1;
        }
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let ticks = clock_ticks();
        assert!(cpu_seconds(std::process::id(), ticks).is_some());
        assert!(!thread_cpu_seconds(std::process::id(), ticks).is_empty());
        assert!(machine_busy_seconds(ticks).unwrap() > 0.0);
        assert!(vm_kib(std::process::id(), "VmHWM").unwrap() > 0);
        assert!(Machine::read().nproc >= 1);
    }

    #[test]
    fn du_counts_files() {
        let dir = std::env::temp_dir().join(format!("jb-du-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/a"), vec![1u8; 10_000]).unwrap();
        std::fs::write(dir.join("b"), b"xy").unwrap();
        let u = disk_usage(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(u.files, 2);
        assert_eq!(u.apparent_bytes, 10_002);
        assert!(u.used_bytes >= 10_000);
    }
}
