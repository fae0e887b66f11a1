//! Figures about this process read from `/proc` at scrape time: memory for `/usage` and
//! the standard `process_*` series Soketi's Prometheus client exports with its prefix.
//!
//! Every reader returns `None` where the file is missing or unparsable (not Linux, a
//! locked-down `/proc`): a scrape never fails because of them.

use std::fs;

/// Memory as Soketi's `/usage` reports it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    /// Bytes the process uses: its resident set.
    pub used: u64,
    /// Bytes it may use: the cgroup's memory limit when one is set, else the machine's
    /// memory.
    pub total: u64,
    /// `total - used`, never below zero.
    pub free: u64,
    /// `used / total * 100`.
    pub percent: f64,
}

/// Reads the `/usage` figures; zeros where `/proc` cannot tell.
#[must_use]
pub fn usage() -> Usage {
    let used = resident_bytes().unwrap_or(0);
    let machine = meminfo_total_bytes();
    let total = match (cgroup_limit_bytes(), machine) {
        (Some(limit), Some(machine)) => limit.min(machine),
        (limit, machine) => limit.or(machine).unwrap_or(0),
    };
    let percent = if total == 0 {
        0.0
    } else {
        used as f64 / total as f64 * 100.0
    };
    Usage {
        used,
        total,
        free: total.saturating_sub(used),
        percent,
    }
}

/// The `process_*` figures of one scrape.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_user_seconds: Option<f64>,
    pub cpu_system_seconds: Option<f64>,
    pub start_time_seconds: Option<f64>,
    pub resident_memory_bytes: Option<u64>,
    pub virtual_memory_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

/// Reads the `process_*` figures.
#[must_use]
pub fn stats() -> ProcessStats {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mut out = ProcessStats {
        resident_memory_bytes: kib_field(&status, "VmRSS:").map(|kib| kib * 1024),
        virtual_memory_bytes: kib_field(&status, "VmSize:").map(|kib| kib * 1024),
        open_fds: fs::read_dir("/proc/self/fd")
            .ok()
            .map(|dir| dir.count() as u64),
        max_fds: max_open_files(),
        ..ProcessStats::default()
    };
    if let Some(stat) = fs::read_to_string("/proc/self/stat")
        .ok()
        .as_deref()
        .and_then(parse_stat)
    {
        let ticks = clock_ticks_per_second();
        out.cpu_user_seconds = Some(stat.utime_ticks as f64 / ticks);
        out.cpu_system_seconds = Some(stat.stime_ticks as f64 / ticks);
        out.start_time_seconds =
            boot_time_seconds().map(|boot| boot as f64 + stat.start_ticks as f64 / ticks);
    }
    out
}

fn resident_bytes() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    kib_field(&status, "VmRSS:").map(|kib| kib * 1024)
}

/// The value of a `Name:   1234 kB` line.
fn kib_field(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

fn meminfo_total_bytes() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    kib_field(&meminfo, "MemTotal:").map(|kib| kib * 1024)
}

/// The memory limit of this process's cgroup (v2 `memory.max`, else v1
/// `memory.limit_in_bytes`); `None` when unlimited or unknown. Inside a cgroup
/// namespace the process's own group is the mount's root, so the root file is tried
/// after the path `/proc/self/cgroup` names.
fn cgroup_limit_bytes() -> Option<u64> {
    let cgroup = fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut candidates = Vec::new();
    for line in cgroup.lines() {
        // "hierarchy-ID:controller-list:path"; v2 has an empty controller list.
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            candidates.push(format!("/sys/fs/cgroup{path}/memory.max"));
            candidates.push("/sys/fs/cgroup/memory.max".to_owned());
        } else if controllers.split(',').any(|c| c == "memory") {
            candidates.push(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"));
            candidates.push("/sys/fs/cgroup/memory/memory.limit_in_bytes".to_owned());
        }
    }
    candidates.iter().find_map(|file| {
        let limit = fs::read_to_string(file).ok()?.trim().parse::<u64>().ok()?;
        // v2 says "max" (no parse); v1 says "no limit" with a number near i64::MAX.
        (limit < (1 << 60)).then_some(limit)
    })
}

fn max_open_files() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    // "Max open files   <soft>   <hard>   files"
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn boot_time_seconds() -> Option<u64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("btime "))?;
    line["btime ".len()..].trim().parse().ok()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the C library; it has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// The fields of `/proc/self/stat` this module uses, in clock ticks.
#[derive(Debug, PartialEq)]
struct Stat {
    utime_ticks: u64,
    stime_ticks: u64,
    start_ticks: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // `rest` starts at field 3 (state); field n is at index n - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime_ticks: field(14)?,
        stime_ticks: field(15)?,
        start_ticks: field(22)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    7 3 0 0 20 0 4 0 123456 1000000 250 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                utime_ticks: 7,
                stime_ticks: 3,
                start_ticks: 123456,
            })
        );
    }

    #[test]
    fn kib_fields_parse() {
        let status = "Name:\tcorecast\nVmSize:\t  20480 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(kib_field(status, "VmRSS:"), Some(1024));
        assert_eq!(kib_field(status, "VmSize:"), Some(20480));
        assert_eq!(kib_field(status, "VmSwap:"), None);
    }

    #[test]
    fn usage_reports_this_process() {
        let u = usage();
        if cfg!(target_os = "linux") {
            assert!(u.used > 0);
            assert!(u.total >= u.used);
            assert_eq!(u.free, u.total - u.used);
            assert!(u.percent > 0.0 && u.percent <= 100.0);
        }
    }
}
