//! Kernel arguments for guests under software emulation (TCG): the clock, and CPU features that
//! cost more than they give.
//!
//! Under TCG the guest's TSC runs at the host's TSC rate, but the guest kernel has to measure
//! that rate against the PIT at boot, and on a busy host the measurement fails ("Unable to
//! calibrate against PIT"): the kernel then marks the TSC unstable and keeps time with jiffies,
//! at 10 ms resolution. A template saved from such a boot would hand that clock to every
//! container restored from it. So bulkhead measures the host's TSC rate itself (once per host
//! boot, cached in the store) and tells the guest (`tsc_early_khz=`), with `tsc=reliable` so
//! that the clocksource watchdog does not disown the TSC when an emulated vCPU is descheduled.
//! Under KVM the guest has kvmclock and needs none of this.

use std::time::Duration;

use bulkhead_vmm::Accel;

use crate::Paths;

/// The guest kernel arguments for `accel`'s clock (empty when the guest needs none).
pub fn guest_cmdline(paths: &Paths, accel: Accel) -> String {
    if accel != Accel::Tcg {
        return String::new();
    }
    match host_tsc_khz(paths) {
        Some(khz) => format!("{TRIM} tsc_early_khz={khz} tsc=reliable"),
        None => TRIM.to_owned(),
    }
}

/// CPU features the emulated CPU offers that cost every restored VM more than they give a
/// container: 5-level paging (57-bit addresses; every page walk in the emulated MMU goes one
/// level deeper, and a microVM never needs 128 PiB) and memory protection keys (PKRU switched on
/// every context switch). Measured: `run --rm` from a template about 8% faster with both off.
const TRIM: &str = "no5lvl nopku";

/// The host's TSC rate in kHz, rounded to 10 kHz; measured once per host boot (the cache names
/// the boot it was measured in).
fn host_tsc_khz(paths: &Paths) -> Option<u64> {
    let cache = paths.cache_dir().join("host-tsc-khz");
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?.trim().to_owned();
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Some(khz) = text.strip_prefix(&format!("{boot}\n")).and_then(|s| s.trim().parse().ok()) {
            return Some(khz);
        }
    }
    let khz = measure_tsc_khz()?;
    crate::paths::write_cache_file(&cache, &format!("{boot}\n{khz}\n"));
    Some(khz)
}

#[cfg(target_arch = "x86_64")]
fn measure_tsc_khz() -> Option<u64> {
    use nix::time::{clock_gettime, ClockId};
    // A TSC that stops in idle states or changes rate says nothing about the guest's.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags"))?;
    if !flags.split_whitespace().any(|f| f == "constant_tsc") {
        return None;
    }
    let sample = || {
        let ns = |t: nix::sys::time::TimeSpec| t.tv_sec() as i128 * 1_000_000_000 + i128::from(t.tv_nsec());
        // The pair closest together in time (least disturbed by preemption) of a few tries.
        (0..5)
            .filter_map(|_| {
                let before = clock_gettime(ClockId::CLOCK_MONOTONIC_RAW).ok()?;
                // SAFETY: RDTSC reads the time-stamp counter; it touches no memory and every
                // x86_64 CPU has it.
                let tsc = unsafe { core::arch::x86_64::_rdtsc() };
                let after = clock_gettime(ClockId::CLOCK_MONOTONIC_RAW).ok()?;
                Some((ns(after) - ns(before), (ns(before) + ns(after)) / 2, tsc))
            })
            .min_by_key(|(spread, _, _)| *spread)
            .map(|(_, at, tsc)| (at, tsc))
    };
    let (start_ns, start_tsc) = sample()?;
    std::thread::sleep(Duration::from_millis(100));
    let (end_ns, end_tsc) = sample()?;
    let elapsed_ns = u64::try_from(end_ns - start_ns).ok().filter(|&ns| ns > 0)?;
    let khz = u128::from(end_tsc.checked_sub(start_tsc)?) * 1_000_000 / u128::from(elapsed_ns);
    let khz = u64::try_from((khz + 5) / 10 * 10).ok()?;
    (100_000..=20_000_000).contains(&khz).then_some(khz)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure_tsc_khz() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_once_and_cached_per_host_boot() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().join("store"), dir.path().join("run"));
        let first = guest_cmdline(&paths, Accel::Tcg);
        assert_eq!(guest_cmdline(&paths, Accel::Kvm), "");
        if first == TRIM {
            return; // no constant TSC on this host
        }
        assert!(
            first.starts_with("no5lvl nopku tsc_early_khz=") && first.ends_with(" tsc=reliable"),
            "{first}"
        );
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        std::fs::write(paths.cache_dir().join("host-tsc-khz"), format!("{}\n1234560\n", boot.trim()))
            .unwrap();
        assert_eq!(guest_cmdline(&paths, Accel::Tcg), "no5lvl nopku tsc_early_khz=1234560 tsc=reliable");
        // Measured in another boot: measured again.
        std::fs::write(paths.cache_dir().join("host-tsc-khz"), "another-boot\n1234560\n").unwrap();
        let again = guest_cmdline(&paths, Accel::Tcg);
        assert!(again.starts_with("no5lvl nopku tsc_early_khz=") && !again.contains("1234560"), "{again}");
    }
}
