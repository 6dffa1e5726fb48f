//! Platform selection in multi-platform indexes (`linux/amd64` unless told otherwise).

use std::fmt;

use oci_spec::image::ImageIndex;

use crate::{Digest, Error};

/// An `os/architecture[/variant]` triple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// e.g. `v8`, if any.
    pub variant: Option<String>,
}

impl Default for Platform {
    fn default() -> Self {
        Platform { os: "linux".into(), architecture: "amd64".into(), variant: None }
    }
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform, Error> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => {
                Ok(Platform { os: os.to_string(), architecture: arch.to_string(), variant: None })
            }
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(Error::Invalid(format!(
                "invalid platform {s:?}: expected os/arch[/variant], e.g. linux/amd64"
            ))),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The digest of the first manifest in `index` matching `want` (a variant is only compared when
/// `want` names one).
pub fn select(index: &ImageIndex, want: &Platform) -> Option<Digest> {
    index.manifests().iter().find_map(|m| {
        let p = m.platform().as_ref()?;
        let matches = p.os().to_string() == want.os
            && p.architecture().to_string() == want.architecture
            && want.variant.as_ref().is_none_or(|v| p.variant().as_deref() == Some(v.as_str()));
        if matches {
            Digest::parse(m.digest().as_ref()).ok()
        } else {
            None
        }
    })
}
