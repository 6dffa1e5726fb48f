//! Making a VM its own machine, whether it booted fresh or was restored from a template.
//!
//! A template is a VM saved while its init waits for the first `Hello`; every container started
//! from it resumes in that exact state. What must then differ per VM, and where it is made so:
//! 1. Randomness: the host's `Hello` carries 64 fresh bytes; [`reseed`] mixes them into the
//!    kernel's pool with credit (`RNDADDENTROPY`) and forces the CRNG to reseed from it
//!    (`RNDRESEEDCRNG`) before any process runs, so `/dev/urandom`, the boot id (generated on
//!    first read, which happens after this) and every key differ between restored VMs.
//! 2. The clock: `Hello` carries the host's time; the agent sets `CLOCK_REALTIME` from it.
//! 3. Block devices: the template saw placeholder disks. [`forget_block_cache`] drops every
//!    cached block of the container's disks (`BLKFLSBUF`) before they are mounted, so nothing
//!    the template read survives; the placeholders are as large as the largest real disk, so the
//!    device sizes the template recorded are never too small. An image's specialisation of a
//!    template (its root mounted before the save, see `rootfs::premount`) is restored only on a
//!    byte-for-byte copy of the disk it mounted, so what its kernel holds of the disk is what the
//!    disk holds; every container writes its own copy.
//! 4. The clock source: under TCG the host passes its TSC rate (`tsc_early_khz=`) so that no
//!    template keeps time with jiffies after a failed PIT calibration.
//! 5. Name, MAC and address: set by `Setup` (hostname in the container's UTS namespace; the
//!    network card gets the container's MAC and address), which a template never ran.

use std::os::fd::AsRawFd;

/// Mixes `entropy` into the kernel's RNG, credits it, and forces a CRNG reseed.
pub fn reseed(entropy: &[u8]) {
    if entropy.is_empty() {
        return;
    }
    let Ok(random) = std::fs::OpenOptions::new().write(true).open("/dev/urandom") else {
        eprintln!("bulkhead-guest: cannot open /dev/urandom to reseed");
        return;
    };
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let bytes = &entropy[..entropy.len().min(512)];
    let mut info = Vec::with_capacity(8 + bytes.len());
    let bits = i32::try_from(bytes.len() * 8).unwrap_or(i32::MAX);
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&i32::try_from(bytes.len()).unwrap_or(0).to_ne_bytes());
    info.extend_from_slice(bytes);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info header followed by buf_size bytes; `info`
    // holds exactly that and outlives the call.
    let added = unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) };
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let reseeded = unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) };
    if added != 0 || reseeded != 0 {
        eprintln!("bulkhead-guest: reseeding the RNG: {}", std::io::Error::last_os_error());
    }
}

/// Drops the cached blocks of `device` (a disk the template may have seen as a placeholder).
pub fn forget_block_cache(device: &str) -> std::io::Result<()> {
    let file = std::fs::File::open(device)?;
    // SAFETY: BLKFLSBUF takes no argument beyond the descriptor, which is open.
    if unsafe { libc::ioctl(file.as_raw_fd(), BLKFLSBUF) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

// From <linux/random.h> and <linux/fs.h>: _IOW('R', 0x03, int[2]), _IO('R', 0x07), _IO(0x12, 97).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
const BLKFLSBUF: libc::c_ulong = 0x1261;
