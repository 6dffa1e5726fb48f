//! Docker's semantics for what a container runs: command line, environment, memory and CPU
//! sizes, restart policies, env files.

use std::fmt;
use std::str::FromStr;

use bulkhead_image::RunConfig;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The smallest VM the guest kernel and init run in.
pub const MIN_MEMORY_MIB: u32 = bulkhead_vmm::MIN_MEMORY_MIB;
/// VM memory when `--memory` is not given.
pub const DEFAULT_MEMORY_MIB: u32 = 256;

/// The process arguments: `--entrypoint` replaces the image's entrypoint and drops its `Cmd`
/// (Docker's rule); a command given on the command line replaces `Cmd`.
pub fn process_args(
    image: &RunConfig,
    entrypoint: Option<&str>,
    cmd: &[String],
) -> Result<Vec<String>, Error> {
    let (entry, default_cmd): (Vec<String>, &[String]) = match entrypoint {
        Some("") => (Vec::new(), &[]),
        Some(e) => (vec![e.to_owned()], &[]),
        None => (image.entrypoint.clone(), &image.cmd),
    };
    let mut args = entry;
    args.extend_from_slice(if cmd.is_empty() { default_cmd } else { cmd });
    if args.is_empty() {
        return Err(Error::Invalid(
            "no command specified: the image has no Entrypoint or Cmd, and none was given".into(),
        ));
    }
    Ok(args)
}

/// The environment: the image's, then the user's (`-e`, `--env-file`), later keys replacing
/// earlier ones in place; `HOSTNAME` set like Docker does.
pub fn process_env(image: &[String], user: &[String], hostname: &str) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    let mut set = |entry: String| {
        let key = entry.split('=').next().unwrap_or("").to_owned();
        match env.iter_mut().find(|e| e.split('=').next() == Some(key.as_str())) {
            Some(slot) => *slot = entry,
            None => env.push(entry),
        }
    };
    set(format!("HOSTNAME={hostname}"));
    for entry in image.iter().chain(user) {
        set(entry.clone());
    }
    env
}

/// One `-e` argument: `KEY=value`, or `KEY` to take the value from bulkhead's own environment
/// (skipped when unset, as Docker does).
pub fn env_arg(arg: &str) -> Result<Option<String>, Error> {
    let key = arg.split('=').next().unwrap_or("");
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(Error::Invalid(format!("invalid environment variable {arg:?}: expected KEY=value")));
    }
    if arg.contains('=') {
        return Ok(Some(arg.to_owned()));
    }
    Ok(std::env::var(key).ok().map(|value| format!("{key}={value}")))
}

/// The entries of an env file: one `KEY=value` (or `KEY`) per line, `#` comments and blank
/// lines skipped.
pub fn parse_env_file(text: &str, name: &str) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let entry = env_arg(line).map_err(|_| {
            Error::Invalid(format!("env file {name} line {}: {line:?} is not KEY=value", number + 1))
        })?;
        out.extend(entry);
    }
    Ok(out)
}

/// `--memory`: bytes with an optional `b`, `k`, `m` or `g` suffix, as MiB (rounded up), at
/// least [`MIN_MEMORY_MIB`].
pub fn parse_memory(text: &str) -> Result<u32, Error> {
    let bad = || {
        Error::Invalid(format!(
            "invalid memory size {text:?}: expected a number with b, k, m or g, e.g. 256m"
        ))
    };
    let lower = text.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('b').filter(|s| s.ends_with(['k', 'm', 'g'])).unwrap_or(&lower);
    let (digits, unit) = match lower.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&lower[..i], c),
        _ => (lower, 'b'),
    };
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match unit {
        'b' => 0,
        'k' => 10,
        'm' => 20,
        'g' => 30,
        _ => return Err(bad()),
    };
    let bytes = number.checked_shl(shift).filter(|b| b >> shift == number).ok_or_else(bad)?;
    let mib = u32::try_from(bytes.div_ceil(1 << 20)).map_err(|_| bad())?;
    if mib < MIN_MEMORY_MIB {
        return Err(Error::Invalid(format!(
            "memory {text} is too small: a container VM needs at least {MIN_MEMORY_MIB} MiB"
        )));
    }
    Ok(mib)
}

/// `--cpus`: a positive number; the VM gets that many vCPUs, rounded up.
pub fn parse_cpus(text: &str) -> Result<u32, Error> {
    let cpus: f64 = text
        .trim()
        .parse()
        .map_err(|_| Error::Invalid(format!("invalid --cpus {text:?}: expected a number")))?;
    if !(cpus > 0.0 && cpus <= f64::from(bulkhead_vmm::MAX_VCPUS)) {
        return Err(Error::Invalid(format!("--cpus {text} is outside 0..{}", bulkhead_vmm::MAX_VCPUS)));
    }
    // In range 0..=32, so the cast cannot truncate or lose the sign.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(cpus.ceil() as u32)
}

/// `--restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", tag = "policy")]
pub enum RestartPolicy {
    #[default]
    No,
    /// Restart on a non-zero exit, at most `max` times (unlimited when `None`).
    OnFailure {
        max: Option<u32>,
    },
    Always,
    UnlessStopped,
}

impl RestartPolicy {
    /// Whether a container that exited with `code` after `restarts` restarts goes again.
    pub fn should_restart(self, code: i32, restarts: u32, stopped_by_user: bool) -> bool {
        if stopped_by_user {
            return false;
        }
        match self {
            RestartPolicy::No => false,
            RestartPolicy::OnFailure { max } => code != 0 && max.is_none_or(|max| restarts < max),
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
        }
    }
}

impl FromStr for RestartPolicy {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self, Error> {
        let bad = || {
            Error::Invalid(format!(
                "invalid restart policy {text:?}: expected no, on-failure[:N], always or unless-stopped"
            ))
        };
        Ok(match text.split_once(':') {
            None if text == "no" => RestartPolicy::No,
            None if text == "always" => RestartPolicy::Always,
            None if text == "unless-stopped" => RestartPolicy::UnlessStopped,
            None if text == "on-failure" => RestartPolicy::OnFailure { max: None },
            Some(("on-failure", n)) => RestartPolicy::OnFailure { max: Some(n.parse().map_err(|_| bad())?) },
            _ => return Err(bad()),
        })
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartPolicy::No => f.write_str("no"),
            RestartPolicy::OnFailure { max: None } => f.write_str("on-failure"),
            RestartPolicy::OnFailure { max: Some(n) } => write!(f, "on-failure:{n}"),
            RestartPolicy::Always => f.write_str("always"),
            RestartPolicy::UnlessStopped => f.write_str("unless-stopped"),
        }
    }
}

/// Signal names and numbers for `kill -s` (`KILL`, `SIGKILL`, `9`).
pub fn parse_signal(text: &str) -> Result<i32, Error> {
    if let Ok(n) = text.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| Error::Invalid(format!("invalid signal {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entrypoint: &[&str], cmd: &[&str]) -> RunConfig {
        RunConfig {
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            ..RunConfig::default()
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn entrypoint_and_cmd_follow_docker() {
        let img = image(&["/entry", "-x"], &["default"]);
        assert_eq!(process_args(&img, None, &[]).unwrap(), strings(&["/entry", "-x", "default"]));
        assert_eq!(
            process_args(&img, None, &strings(&["mine"])).unwrap(),
            strings(&["/entry", "-x", "mine"])
        );
        assert_eq!(process_args(&img, Some("/other"), &[]).unwrap(), strings(&["/other"]));
        assert_eq!(process_args(&img, Some("/other"), &strings(&["a"])).unwrap(), strings(&["/other", "a"]));
        assert_eq!(process_args(&img, Some(""), &strings(&["sh"])).unwrap(), strings(&["sh"]));
        let err = process_args(&image(&[], &[]), None, &[]).unwrap_err();
        assert!(err.to_string().contains("no command specified"), "{err}");
    }

    #[test]
    fn env_merges_by_key() {
        let env = process_env(&strings(&["PATH=/bin", "A=1"]), &strings(&["A=2", "B=3"]), "box");
        assert_eq!(env, strings(&["HOSTNAME=box", "PATH=/bin", "A=2", "B=3"]));
        let file = parse_env_file("# comment\n\nX=1\n  Y=two words\n", "f").unwrap();
        assert_eq!(file, strings(&["X=1", "Y=two words"]));
        assert!(parse_env_file("=oops\n", "f").unwrap_err().to_string().contains("line 1"));
        assert!(env_arg("A B=1").is_err());
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("256m").unwrap(), 256);
        assert_eq!(parse_memory("1g").unwrap(), 1024);
        assert_eq!(parse_memory("1GB").unwrap(), 1024);
        assert_eq!(parse_memory("134217728").unwrap(), 128);
        assert_eq!(parse_memory("65537k").unwrap(), 65);
        let small = parse_memory("32m").unwrap_err().to_string();
        assert!(small.contains("at least 64 MiB"), "{small}");
        for bad in ["", "m", "12x", "-5m", "99999999999g", "1.5g"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpus_restart_and_signals() {
        assert_eq!(parse_cpus("1.5").unwrap(), 2);
        assert_eq!(parse_cpus("2").unwrap(), 2);
        assert!(parse_cpus("0").is_err() && parse_cpus("abc").is_err() && parse_cpus("100").is_err());

        assert_eq!(
            "on-failure:2".parse::<RestartPolicy>().unwrap(),
            RestartPolicy::OnFailure { max: Some(2) }
        );
        assert!(
            "sometimes".parse::<RestartPolicy>().is_err() && "on-failure:x".parse::<RestartPolicy>().is_err()
        );
        let p = RestartPolicy::OnFailure { max: Some(2) };
        assert!(p.should_restart(1, 0, false) && p.should_restart(1, 1, false));
        assert!(
            !p.should_restart(1, 2, false) && !p.should_restart(0, 0, false) && !p.should_restart(1, 0, true)
        );
        assert!(RestartPolicy::Always.should_restart(0, 100, false));

        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("sigterm").unwrap(), 15);
        assert_eq!(parse_signal("10").unwrap(), 10);
        assert!(parse_signal("NOPE").is_err() && parse_signal("0").is_err());
    }
}
