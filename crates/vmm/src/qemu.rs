//! Finding QEMU and building its command line.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Accel, Error, VmConfig};

const BINARY: &str = "qemu-system-x86_64";

/// The QEMU binary: `BULKHEAD_QEMU` if set, else `qemu-system-x86_64` on `PATH`.
pub fn find_qemu() -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os("BULKHEAD_QEMU") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::QemuNotFound { binary: path.display().to_string(), searched: "BULKHEAD_QEMU".into() })
        };
    }
    let searched = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&searched)
        .map(|dir| dir.join(BINARY))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| Error::QemuNotFound {
            binary: BINARY.into(),
            searched: searched.to_string_lossy().into_owned(),
        })
}

/// QEMU's version string, e.g. `7.2.22`, from `qemu -version`.
pub fn qemu_version(qemu: &Path) -> Result<String, Error> {
    let out = Command::new(qemu)
        .arg("-version")
        .output()
        .map_err(|source| Error::Spawn { path: qemu.to_owned(), source })?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .and_then(|line| line.split("version ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .ok_or_else(|| Error::QemuUnusable {
            path: qemu.to_owned(),
            reason: format!("unexpected -version output {text:?}"),
        })
}

/// The kernel command line bulkhead's guests always get, before the caller's part.
///
/// `reboot=t` + QEMU's `-no-reboot`: without ACPI the guest cannot power off, so a reboot by
/// triple fault makes QEMU exit. `panic=-1` turns a panic into that reboot at once, so a panicked
/// guest ends its VM instead of hanging (the panic line stays in the console log).
pub const BASE_CMDLINE: &str =
    "console=ttyS0 reboot=t panic=-1 quiet nokaslr random.trust_cpu=on 8250.nr_uarts=1";

/// The argument vector for `config`, with QMP and the agent channel connecting to `qmp_socket` and
/// `agent_socket`, which the caller is listening on.
pub(crate) fn args(config: &VmConfig, qmp_socket: &Path, agent_socket: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
    let path = |p: &Path| p.to_string_lossy().into_owned();

    let machine = "microvm,acpi=off,x-option-roms=off,isa-serial=on,rtc=on";
    match &config.memory_file {
        None => push(&["-M", machine]),
        Some(file) => {
            let share = if file.shared { "on" } else { "off" };
            let backend = format!(
                "memory-backend-file,id=ram,size={}M,mem-path={},share={share}",
                config.memory_mib,
                path(&file.path)
            );
            push(&["-object", &backend, "-M", &format!("{machine},memory-backend=ram")]);
        }
    }
    match config.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host,-arch-capabilities"]),
        Accel::Tcg => push(&["-accel", "tcg", "-cpu", "max"]),
    }
    let memory = format!("{}M", config.memory_mib);
    let smp = config.vcpus.to_string();
    push(&["-m", &memory, "-smp", &smp]);
    push(&["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]);
    push(&["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]);

    // A restored VM's memory already holds its kernel, which reading and loading the image again
    // would only cost time for: QEMU writes nothing of it into a VM that is waiting for its state.
    if config.incoming.is_none() {
        push(&["-kernel", &path(&config.kernel)]);
        if let Some(initrd) = &config.initrd {
            push(&["-initrd", &path(initrd)]);
        }
        let cmdline = format!("{BASE_CMDLINE} {}", config.cmdline);
        push(&["-append", cmdline.trim_end()]);
    }

    push(&["-chardev", &format!("file,id=console,path={}", path(&config.console_log))]);
    push(&["-serial", "chardev:console"]);
    push(&["-chardev", &format!("socket,id=qmp,path={}", path(qmp_socket))]);
    push(&["-mon", "chardev=qmp,mode=control"]);

    push(&["-device", "virtio-serial-device,max_ports=2"]);
    push(&["-chardev", &format!("socket,id=agent,path={}", path(agent_socket))]);
    push(&["-device", &format!("virtserialport,chardev=agent,name={}", AGENT_PORT)]);

    push(&["-object", "rng-random,id=rng,filename=/dev/urandom"]);
    push(&["-device", "virtio-rng-device,rng=rng"]);

    for (index, disk) in config.disks.iter().enumerate() {
        let readonly = if disk.read_only { "on" } else { "off" };
        push(&[
            "-drive",
            &format!(
                "id=disk{index},file={},format={},if=none,readonly={readonly},cache=unsafe,discard=unmap",
                path(&disk.path),
                disk.format.as_str()
            ),
        ]);
        push(&["-device", &format!("virtio-blk-device,drive=disk{index}")]);
    }
    if config.incoming.is_some() {
        // The state arrives on the descriptor Vm::start places at this number; with the RAM in a
        // file, only once Vm::start has told QEMU over QMP not to expect the RAM in the state.
        let from = if config.memory_file.is_some() { "defer" } else { INCOMING_FD_ARG };
        args.extend(["-incoming", from].map(OsString::from));
    }
    if let Some(net) = &config.net {
        args.extend(net.args().into_iter().map(OsString::from));
    }
    args
}

/// The file descriptor number a restored VM reads its saved state from.
pub(crate) const INCOMING_FD: i32 = 3;
pub(crate) const INCOMING_FD_ARG: &str = "fd:3";

/// The virtio-serial port name the guest looks for; must match `bulkhead_proto::AGENT_PORT_NAME`.
pub(crate) const AGENT_PORT: &str = "bulkhead.agent";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Disk;

    #[test]
    fn command_line_has_what_was_asked_and_nothing_else() {
        let config = VmConfig {
            qemu: None,
            kernel: "/k/vmlinux".into(),
            initrd: Some("/k/initrd".into()),
            cmdline: "rdinit=/init".into(),
            memory_mib: 256,
            vcpus: 2,
            disks: vec![
                Disk::raw("/d/root.img", true),
                Disk { path: "/d/rw.qcow2".into(), read_only: false, format: crate::DiskFormat::Qcow2 },
            ],
            accel: Accel::Tcg,
            run_dir: "/r".into(),
            console_log: "/r/console.log".into(),
            net: None,
            incoming: None,
            memory_file: None,
        };
        let args: Vec<String> = args(&config, Path::new("/r/qmp.sock"), Path::new("/r/agent.sock"))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let joined = args.join(" ");
        for want in [
            "-M microvm,acpi=off",
            "-accel tcg",
            "-m 256M -smp 2",
            "-nodefaults",
            "-no-reboot",
            "-sandbox on,",
            "-kernel /k/vmlinux -initrd /k/initrd",
            "file,id=console,path=/r/console.log",
            "socket,id=qmp,path=/r/qmp.sock",
            "name=bulkhead.agent",
            "file=/d/root.img,format=raw,if=none,readonly=on",
            "file=/d/rw.qcow2,format=qcow2,if=none,readonly=off",
        ] {
            assert!(joined.contains(want), "{want:?} missing from {joined}");
        }
        let append = args.iter().position(|a| a == "-append").unwrap();
        assert!(args[append + 1].ends_with("rdinit=/init"), "{}", args[append + 1]);
        assert_eq!(args.iter().filter(|a| *a == "-device").count(), 5, "serial bus, port, rng, two disks");
        assert!(!joined.contains("netdev"), "no network device unless asked");
        assert!(!joined.contains("memory-backend"), "anonymous memory unless asked");

        let restored = VmConfig {
            memory_file: Some(crate::MemoryFile { path: "/t/memory".into(), shared: false }),
            incoming: Some("/t/state".into()),
            ..config
        };
        let joined = super::args(&restored, Path::new("/r/qmp.sock"), Path::new("/r/agent.sock"))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect::<Vec<_>>()
            .join(" ");
        for want in [
            "-object memory-backend-file,id=ram,size=256M,mem-path=/t/memory,share=off",
            "-M microvm,acpi=off,x-option-roms=off,isa-serial=on,rtc=on,memory-backend=ram",
            "-incoming defer",
        ] {
            assert!(joined.contains(want), "{want:?} missing from {joined}");
        }
        assert!(!joined.contains("-kernel"), "a restored VM loads no kernel: {joined}");
    }
}
