//! `Stats` and `Top`, read from the guest's `/proc`.
//!
//! The whole VM belongs to one container, so CPU and memory are the guest's; processes are
//! those in the container's pid namespace.

use std::path::Path;

use bulkhead_proto::{GuestStats, ProcessInfo};

use crate::users;

/// CPU, memory and process count of the guest.
pub fn stats(pid_namespace: Option<&Path>) -> Result<GuestStats, String> {
    let read = |path: &str| std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"));
    let cpu_ticks = cpu_ticks(&read("/proc/stat")?).ok_or("/proc/stat has no cpu line")?;
    let meminfo = read("/proc/meminfo")?;
    let kib = |key| meminfo_kib(&meminfo, key).ok_or(format!("/proc/meminfo has no {key}"));
    let total = kib("MemTotal")?;
    let available = kib("MemAvailable")?;
    let pids = pid_namespace.map_or(0, |ns| container_pids(ns).len());
    Ok(GuestStats {
        cpu_usage_ns: cpu_ticks.saturating_mul(1_000_000_000 / clock_ticks()),
        memory_used_bytes: total.saturating_sub(available).saturating_mul(1024),
        memory_total_bytes: total.saturating_mul(1024),
        pids: u32::try_from(pids).unwrap_or(u32::MAX),
    })
}

/// The container's processes, by pid, with user names from the container's `passwd`.
pub fn top(pid_namespace: Option<&Path>, passwd: &str) -> Vec<ProcessInfo> {
    let Some(ns) = pid_namespace else {
        return Vec::new();
    };
    let ms_per_tick = 1000 / clock_ticks().max(1);
    let page = page_size();
    container_pids(ns)
        .into_iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let stat = parse_stat(&stat)?;
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let user =
                effective_uid(&status).map_or_else(|| "?".to_owned(), |uid| users::name_of(uid, passwd));
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let command = command_line(&cmdline).unwrap_or_else(|| format!("[{}]", stat.comm));
            Some(ProcessInfo {
                pid,
                ppid: stat.ppid,
                user,
                cpu_ms: stat.cpu_ticks.saturating_mul(ms_per_tick),
                rss_bytes: stat.rss_pages.saturating_mul(page),
                command,
            })
        })
        .collect()
}

/// Pids (as the guest sees them) whose pid namespace is `ns`, in order.
fn container_pids(ns: &Path) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|link| link == ns))
        .collect();
    pids.sort_unstable();
    pids
}

/// Busy time of all CPUs in clock ticks: everything but idle and iowait.
fn cpu_ticks(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    Some(fields.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum())
}

fn meminfo_kib(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

struct Stat {
    comm: String,
    ppid: i32,
    cpu_ticks: u64,
    rss_pages: u64,
}

/// `/proc/<pid>/stat`; the command name is in parentheses and may hold spaces and parentheses.
fn parse_stat(stat: &str) -> Option<Stat> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // fields[0] is field 3 of proc(5): state; ppid is 4, utime 14, stime 15, rss 24.
    let field = |n: usize| fields.get(n - 3).copied();
    let utime: u64 = field(14)?.parse().ok()?;
    let stime: u64 = field(15)?.parse().ok()?;
    Some(Stat {
        comm,
        ppid: field(4)?.parse().ok()?,
        cpu_ticks: utime.saturating_add(stime),
        rss_pages: field(24)?.parse().ok()?,
    })
}

fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn command_line(cmdline: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(cmdline);
    let words: Vec<&str> = text.split('\0').filter(|w| !w.is_empty()).collect();
    (!words.is_empty()).then(|| words.join(" "))
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_excludes_idle_and_iowait() {
        let stat = "cpu  10 1 5 1000 7 2 3 4 0 0\ncpu0 10 1 5 1000 7 2 3 4 0 0\n";
        assert_eq!(cpu_ticks(stat), Some(10 + 1 + 5 + 2 + 3 + 4));
        assert_eq!(cpu_ticks("intr 1\n"), None);
    }

    #[test]
    fn meminfo_values_are_found_by_exact_key() {
        let info = "MemTotal:       2048 kB\nMemFree:   10 kB\nMemAvailable:   1024 kB\n";
        assert_eq!(meminfo_kib(info, "MemTotal"), Some(2048));
        assert_eq!(meminfo_kib(info, "MemAvailable"), Some(1024));
        assert_eq!(meminfo_kib(info, "Mem"), None);
    }

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let line = "42 (a) b (c) S 7 42 42 0 -1 4194560 100 0 0 0 12 30 0 0 20 0 1 0 500 1000000 250 x";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.comm, "a) b (c");
        assert_eq!(stat.ppid, 7);
        assert_eq!(stat.cpu_ticks, 42);
        assert_eq!(stat.rss_pages, 250);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn status_and_cmdline_parse() {
        assert_eq!(effective_uid("Name:\tsh\nUid:\t0\t1000\t1000\t1000\n"), Some(1000));
        assert_eq!(command_line(b"sleep\x00100\x00"), Some("sleep 100".into()));
        assert_eq!(command_line(b""), None);
    }
}
