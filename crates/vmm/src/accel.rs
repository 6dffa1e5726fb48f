//! Choosing the accelerator: KVM where it can run an ordinary guest, TCG everywhere else.
//!
//! `/dev/kvm` alone proves nothing. Some hosts expose a paravirtual KVM (PVM, `kvm_pvm`) that
//! accepts the ioctls but cannot boot an ordinary Linux guest: it crawls, then fails with an
//! emulation error. KVM is chosen automatically only when the device is usable, the CPU reports
//! hardware virtualization (`vmx`/`svm`), and the KVM module is not PVM.

use std::fmt;
use std::fs::OpenOptions;
use std::path::Path;

use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelRequest {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl std::str::FromStr for AccelRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AccelRequest::Auto),
            "kvm" => Ok(AccelRequest::Kvm),
            "tcg" => Ok(AccelRequest::Tcg),
            other => Err(format!("unknown accelerator {other:?}: expected auto, kvm or tcg")),
        }
    }
}

/// The accelerator to use and why, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
}

/// The host facts the choice depends on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostFacts {
    /// `/dev/kvm` exists.
    pub kvm_device: bool,
    /// `/dev/kvm` opens read-write (permissions, not just presence).
    pub kvm_usable: bool,
    /// The CPU flag that proves hardware virtualization, if any (`vmx` or `svm`).
    pub cpu_virt_flag: Option<String>,
    /// The KVM module is the paravirtual PVM flavour.
    pub kvm_pvm: bool,
}

impl HostFacts {
    /// Reads the facts from this host.
    pub fn probe() -> HostFacts {
        HostFacts::probe_at(Path::new("/"))
    }

    /// Reads the facts below `root` (`root/dev/kvm`, `root/proc/cpuinfo`, `root/sys/module`), so
    /// tests can describe a host without being on it.
    pub fn probe_at(root: &Path) -> HostFacts {
        let dev = root.join("dev/kvm");
        let kvm_device = dev.exists();
        let kvm_usable = kvm_device && OpenOptions::new().read(true).write(true).open(&dev).is_ok();
        let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
        let cpu_virt_flag = cpuinfo
            .lines()
            .filter(|line| line.starts_with("flags"))
            .flat_map(|line| line.split_whitespace())
            .find(|flag| *flag == "vmx" || *flag == "svm")
            .map(str::to_owned);
        let kvm_pvm = root.join("sys/module/kvm_pvm").exists();
        HostFacts { kvm_device, kvm_usable, cpu_virt_flag, kvm_pvm }
    }

    /// Why KVM cannot run an ordinary guest here, or `None` if it can.
    pub fn kvm_unfit(&self) -> Option<String> {
        if !self.kvm_device {
            Some("/dev/kvm does not exist".into())
        } else if !self.kvm_usable {
            Some("/dev/kvm cannot be opened read-write".into())
        } else if self.kvm_pvm {
            Some("/dev/kvm is the paravirtual PVM KVM (kvm_pvm is loaded), which cannot boot an ordinary guest".into())
        } else if self.cpu_virt_flag.is_none() {
            Some("the CPU reports no hardware virtualization (no vmx or svm flag)".into())
        } else {
            None
        }
    }
}

/// Picks the accelerator for `request` on a host with `facts`.
///
/// `Auto` never fails: it falls back to TCG with the reason. An explicit `Kvm` fails only when
/// `/dev/kvm` cannot be opened at all; on an unfit KVM it is honoured with a warning in the reason.
pub fn choose_accel(request: AccelRequest, facts: &HostFacts) -> Result<AccelChoice, Error> {
    let unfit = facts.kvm_unfit();
    match (request, unfit) {
        (AccelRequest::Tcg, _) => {
            Ok(AccelChoice { accel: Accel::Tcg, reason: "requested (--accel tcg)".into() })
        }
        (AccelRequest::Auto, None) => Ok(AccelChoice {
            accel: Accel::Kvm,
            reason: format!(
                "/dev/kvm is usable and the CPU has {}",
                facts.cpu_virt_flag.as_deref().unwrap_or("hardware virtualization")
            ),
        }),
        (AccelRequest::Auto, Some(why)) => {
            Ok(AccelChoice { accel: Accel::Tcg, reason: format!("software emulation because {why}") })
        }
        (AccelRequest::Kvm, None) => {
            Ok(AccelChoice { accel: Accel::Kvm, reason: "requested (--accel kvm)".into() })
        }
        (AccelRequest::Kvm, Some(why)) if facts.kvm_usable => {
            Ok(AccelChoice { accel: Accel::Kvm, reason: format!("requested (--accel kvm), although {why}") })
        }
        (AccelRequest::Kvm, Some(why)) => Err(Error::AccelUnavailable { accel: "kvm", reason: why }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(kvm: bool, flag: Option<&str>, pvm: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        if kvm {
            std::fs::write(dir.path().join("dev/kvm"), "").unwrap();
        }
        let flags = format!("flags\t\t: fpu vme de pse {}\n", flag.unwrap_or(""));
        std::fs::write(dir.path().join("proc/cpuinfo"), format!("processor\t: 0\n{flags}")).unwrap();
        if pvm {
            std::fs::create_dir_all(dir.path().join("sys/module/kvm_pvm")).unwrap();
        }
        dir
    }

    #[test]
    fn hardware_kvm_is_chosen() {
        let dir = host(true, Some("vmx"), false);
        let choice = choose_accel(AccelRequest::Auto, &HostFacts::probe_at(dir.path())).unwrap();
        assert_eq!(choice.accel, Accel::Kvm);
        assert!(choice.reason.contains("vmx"), "{}", choice.reason);
    }

    #[test]
    fn paravirtual_kvm_is_rejected_by_auto() {
        let dir = host(true, None, true);
        let facts = HostFacts::probe_at(dir.path());
        let choice = choose_accel(AccelRequest::Auto, &facts).unwrap();
        assert_eq!(choice.accel, Accel::Tcg);
        assert!(choice.reason.contains("PVM"), "{}", choice.reason);
        // An explicit request is honoured, with the warning.
        let forced = choose_accel(AccelRequest::Kvm, &facts).unwrap();
        assert_eq!(forced.accel, Accel::Kvm);
        assert!(forced.reason.contains("although"), "{}", forced.reason);
    }

    #[test]
    fn no_virt_flag_or_no_device_means_tcg() {
        let dir = host(true, None, false);
        let choice = choose_accel(AccelRequest::Auto, &HostFacts::probe_at(dir.path())).unwrap();
        assert_eq!(choice.accel, Accel::Tcg);
        assert!(choice.reason.contains("no vmx or svm"), "{}", choice.reason);

        let dir = host(false, Some("svm"), false);
        let facts = HostFacts::probe_at(dir.path());
        assert_eq!(choose_accel(AccelRequest::Auto, &facts).unwrap().accel, Accel::Tcg);
        let err = choose_accel(AccelRequest::Kvm, &facts).unwrap_err();
        assert!(err.to_string().contains("/dev/kvm does not exist"), "{err}");
        assert_eq!(choose_accel(AccelRequest::Tcg, &facts).unwrap().accel, Accel::Tcg);
    }

    #[test]
    fn request_parses() {
        assert_eq!("auto".parse::<AccelRequest>().unwrap(), AccelRequest::Auto);
        assert!("hvf".parse::<AccelRequest>().unwrap_err().contains("hvf"));
    }
}
