//! Reading the guest's serial console after the fact.

use std::path::Path;

/// The first kernel panic line in the console log at `path`, if any.
///
/// The log is guest output and hostile: only its tail is read, and the line is cut to a bounded
/// length with control characters removed before it reaches a terminal.
pub fn find_panic(path: &Path) -> Option<String> {
    const TAIL: u64 = 256 * 1024;
    const MAX_LINE: usize = 300;
    let bytes = read_tail(path, TAIL)?;
    let text = String::from_utf8_lossy(&bytes);
    let line = text.lines().find(|line| line.contains("Kernel panic - not syncing"))?;
    let start = line.find("Kernel panic").unwrap_or(0);
    let clean: String = line[start..].chars().filter(|c| !c.is_control()).take(MAX_LINE).collect();
    Some(clean.trim_end().to_owned())
}

/// The last `max` bytes of the file at `path`.
pub(crate) fn read_tail(path: &Path, max: u64) -> Option<Vec<u8>> {
    read_tail_of(&std::fs::File::open(path).ok()?, max)
}

/// The last `max` bytes of an open file, read without moving its offset.
pub(crate) fn read_tail_of(file: &std::fs::File, max: u64) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata().ok()?.len();
    let start = len.saturating_sub(max);
    let mut bytes = vec![0; usize::try_from(len - start).ok()?];
    file.read_exact_at(&mut bytes, start).ok()?;
    Some(bytes)
}

/// The last non-empty line of hostile text, bounded and without control characters.
pub(crate) fn clean_last_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line = text.trim().lines().last().unwrap_or("");
    line.chars().filter(|c| !c.is_control()).take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_panic_line_and_cleans_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(
            &log,
            "[    0.5] Run /init as init process\n[    0.6] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\x1b[31m\n[    0.6] CPU: 0 PID: 1\n",
        )
        .unwrap();
        assert_eq!(
            find_panic(&log).as_deref(),
            Some("Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100[31m")
        );
        std::fs::write(&log, "all is well\n").unwrap();
        assert_eq!(find_panic(&log), None);
        assert_eq!(find_panic(&dir.path().join("missing")), None);
    }
}
