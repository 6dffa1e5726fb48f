//! Ending the VM.

/// Flushes filesystems and ends the VM. Never returns.
///
/// The microvm machine runs without ACPI, so the guest cannot power off; the kernel command line
/// has `reboot=t` and QEMU runs with `-no-reboot`, which turns this restart into QEMU exiting.
pub fn off() -> ! {
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    eprintln!("bulkhead-guest: reboot failed: {err:?}");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
