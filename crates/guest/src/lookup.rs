//! Finding the program a `Start` names, inside the container and before anything is forked, so
//! a missing or unusable program gets Docker's exit code and words.

use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{fstat, Mode, SFlag};

use crate::rootfs::Rootfs;

/// Docker's exit codes for a process that could not start.
pub const EXIT_OTHER: i32 = 125;
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
pub const EXIT_NOT_FOUND: i32 = 127;

/// Why a `Start` failed, as `StartFailed` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFailure {
    pub exit_code: i32,
    pub message: String,
}

impl StartFailure {
    pub fn other(message: impl Into<String>) -> StartFailure {
        StartFailure { exit_code: EXIT_OTHER, message: message.into() }
    }

    /// The exit code for an `execve` (or lookup) that failed with `errno`: not found 127, cannot
    /// be executed 126, anything else 125.
    pub fn from_exec_errno(errno: Errno, message: String) -> StartFailure {
        let exit_code = match errno {
            Errno::ENOENT | Errno::ENOTDIR => EXIT_NOT_FOUND,
            Errno::EACCES | Errno::EPERM | Errno::EISDIR | Errno::ENOEXEC | Errno::ETXTBSY => {
                EXIT_CANNOT_EXECUTE
            }
            _ => EXIT_OTHER,
        };
        StartFailure { exit_code, message }
    }
}

/// `path` made absolute against the working directory `cwd`.
pub fn absolute(cwd: &str, path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{}/{}", cwd.trim_end_matches('/'), path)
    }
}

/// What is at a path inside the container, following symlinks inside it.
enum Found {
    Executable,
    NotExecutable,
    Directory,
}

fn probe(rootfs: &Rootfs, path: &str) -> Result<Found, Errno> {
    let fd = rootfs.open(path, OFlag::O_PATH, Mode::empty())?;
    let stat = fstat(fd.as_raw_fd())?;
    let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
    Ok(if kind == SFlag::S_IFDIR {
        Found::Directory
    } else if stat.st_mode & 0o111 != 0 {
        Found::Executable
    } else {
        Found::NotExecutable
    })
}

/// The absolute path inside the container of the program `name`: `name` itself when it has a
/// `/` (relative to `cwd`), else the first executable file called `name` in `path_env`, as
/// Go's `exec.LookPath` (and so Docker) finds it.
pub fn find_program(rootfs: &Rootfs, name: &str, path_env: &str, cwd: &str) -> Result<String, StartFailure> {
    if name.contains('/') {
        let path = absolute(cwd, name);
        return match probe(rootfs, &path) {
            Ok(Found::Executable) => Ok(path),
            Ok(Found::Directory) => {
                Err(StartFailure::from_exec_errno(Errno::EISDIR, format!("exec: {name:?}: is a directory")))
            }
            Ok(Found::NotExecutable) => Err(StartFailure::from_exec_errno(
                Errno::EACCES,
                format!("exec: {name:?}: permission denied"),
            )),
            Err(errno) => Err(StartFailure::from_exec_errno(
                errno,
                format!("exec: {name:?}: stat {name}: {}", errno.desc().to_lowercase()),
            )),
        };
    }
    if !name.is_empty() {
        for dir in path_env.split(':') {
            let dir = if dir.is_empty() { "." } else { dir };
            let candidate = absolute(cwd, &format!("{}/{name}", dir.trim_end_matches('/')));
            if let Ok(Found::Executable) = probe(rootfs, &candidate) {
                return Ok(candidate);
            }
        }
    }
    Err(StartFailure {
        exit_code: EXIT_NOT_FOUND,
        message: format!("exec: {name:?}: executable file not found in $PATH"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_join_the_working_directory() {
        assert_eq!(absolute("/work", "bin/x"), "/work/bin/x");
        assert_eq!(absolute("/", "x"), "/x");
        assert_eq!(absolute("/work/", "/abs"), "/abs");
    }

    #[test]
    fn exec_errors_get_docker_exit_codes() {
        let code = |e| StartFailure::from_exec_errno(e, String::new()).exit_code;
        assert_eq!(code(Errno::ENOENT), 127);
        assert_eq!(code(Errno::EACCES), 126);
        assert_eq!(code(Errno::ENOEXEC), 126);
        assert_eq!(code(Errno::EISDIR), 126);
        assert_eq!(code(Errno::ENOMEM), 125);
    }
}
