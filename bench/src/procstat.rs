//! CPU time and resident memory of a process, read from `/proc/<pid>/stat` (`utime` +
//! `stime`, every thread, in clock ticks) and `/proc/<pid>/status` (`VmRSS`, KiB), as
//! proc(5) describes them. Only these fields are read: the `procfs` crate's `Status`
//! parser insists on every field of today's kernels, so it only supplies the tick rate.

use std::time::Duration;

use anyhow::Context as _;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessSample {
    /// User plus system CPU time since the process started.
    pub cpu: Duration,
    /// Resident memory (`VmRSS`), KiB; 0 for a process without the line (a zombie).
    pub rss_kib: u64,
    /// Its anonymous part (`RssAnon`: heap, stacks), KiB: the memory the process made
    /// for itself, without its binary's resident code and data (`RssFile`), which the
    /// kernel can drop and read again.
    pub rss_anon_kib: u64,
}

/// Reads process `pid` now.
///
/// # Errors
/// The process is gone or its files do not parse.
pub fn sample(pid: u32) -> anyhow::Result<ProcessSample> {
    let stat = std::fs::read(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let status = std::fs::read(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse(&stat, &status, procfs::ticks_per_second())
}

/// Parses the contents of `/proc/<pid>/stat` and `/proc/<pid>/status`, the CPU times
/// being in clock ticks of `ticks_per_second` each.
///
/// # Errors
/// Text that is not in the kernel's format.
pub fn parse(stat: &[u8], status: &[u8], ticks_per_second: u64) -> anyhow::Result<ProcessSample> {
    let stat = String::from_utf8_lossy(stat);
    // The command name (field 2) is in parentheses and may hold anything, `)` included:
    // the fields after it start after the last `)`. There, state is field 3, so utime
    // (field 14) and stime (15) are the 12th and 13th.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("/proc/<pid>/stat has no `(command)` field")?;
    let mut fields = after_name.split_ascii_whitespace().skip(11);
    let mut next_number = |name: &str| {
        fields
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .with_context(|| format!("/proc/<pid>/stat has no {name} field"))
    };
    let ticks = next_number("utime")? + next_number("stime")?;
    let status = String::from_utf8_lossy(status);
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .map(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>())
            .transpose()
            .with_context(|| format!("/proc/<pid>/status has a malformed {field} line"))
            .map(Option::unwrap_or_default)
    };
    let rss_kib = kib("VmRSS:")?;
    let rss_anon_kib = kib("RssAnon:")?;
    let ticks_per_second = ticks_per_second.max(1);
    let cpu = Duration::from_secs(ticks / ticks_per_second)
        + Duration::from_nanos((ticks % ticks_per_second) * 1_000_000_000 / ticks_per_second);
    Ok(ProcessSample {
        cpu,
        rss_kib,
        rss_anon_kib,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;

    /// A real line, with a command name that holds a space and a parenthesis.
    const STAT: &str = "4242 (user (svc) x) S 1 4242 4242 0 -1 4194560 2361 0 0 0 \
        150 37 0 0 20 0 5 0 123456 1207959552 3210 18446744073709551615 1 1 0 0 0 0 0 \
        4096 17642 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

    const STATUS: &str = "Name:\tuser-service\nUmask:\t0022\nState:\tS (sleeping)\n\
        Tgid:\t4242\nNgid:\t0\nPid:\t4242\nPPid:\t1\nTracerPid:\t0\nUid:\t0\t0\t0\t0\n\
        Gid:\t0\t0\t0\t0\nFDSize:\t64\nGroups:\t0 \nVmPeak:\t 1179648 kB\nVmSize:\t 1179648 kB\n\
        VmLck:\t       0 kB\nVmPin:\t       0 kB\nVmHWM:\t   13000 kB\nVmRSS:\t   12840 kB\n\
        RssAnon:\t    2100 kB\nRssFile:\t   10740 kB\nThreads:\t5\n";

    #[test]
    fn cpu_is_user_plus_system_ticks_and_memory_is_vmrss() -> anyhow::Result<()> {
        let sample = parse(STAT.as_bytes(), STATUS.as_bytes(), 100)?;
        assert_eq!(sample.cpu, Duration::from_millis(1870));
        assert_eq!(sample.rss_kib, 12_840);
        assert_eq!(sample.rss_anon_kib, 2_100);
        Ok(())
    }

    #[test]
    fn the_running_test_process_can_be_read() -> anyhow::Result<()> {
        let sample = sample(std::process::id())?;
        assert!(sample.rss_kib > 0, "{sample:?}");
        Ok(())
    }

    #[test]
    fn text_that_is_not_a_stat_line_is_an_error() {
        assert!(parse(b"garbage", STATUS.as_bytes(), 100).is_err());
        assert!(parse(b"1 (x) S 1 2 3", STATUS.as_bytes(), 100).is_err());
    }

    #[test]
    fn a_process_without_vmrss_has_no_resident_memory() -> anyhow::Result<()> {
        let sample = parse(STAT.as_bytes(), b"Name:\tzombie\nState:\tZ (zombie)\n", 250)?;
        assert_eq!(sample.rss_kib, 0);
        assert_eq!(sample.cpu, Duration::from_millis(748));
        Ok(())
    }
}
