//! Checking that a file is a kernel QEMU can boot directly: an x86_64 ELF `vmlinux` with the PVH
//! entry note (`XEN_ELFNOTE_PHYS32_ENTRY`), before QEMU gives a vaguer error.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::Error;

const PT_NOTE: u32 = 4;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const EM_X86_64: u16 = 62;
/// More program headers than any kernel has; bounds the work on a hostile file.
const MAX_PHDRS: u16 = 64;
const MAX_NOTE_SEGMENT: u64 = 1 << 20;

/// Checks that `path` is an x86_64 ELF64 `vmlinux` with a PVH entry point.
pub fn check_kernel(path: &Path) -> Result<(), Error> {
    let not = |reason: String| Error::NotAKernel { path: path.to_owned(), reason };
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::KernelMissing(path.to_owned()),
        _ => Error::Io { what: "opening kernel", path: path.to_owned(), source: e },
    })?;
    let mut header = [0u8; 64];
    file.read_exact_at(&mut header, 0).map_err(|_| not("shorter than an ELF header".into()))?;
    if &header[..4] != b"\x7fELF" {
        return Err(not(
            "no ELF magic (a compressed bzImage is not supported; use the uncompressed vmlinux)".into(),
        ));
    }
    if header[4] != 2 || header[5] != 1 {
        return Err(not("not a little-endian 64-bit ELF file".into()));
    }
    let machine = u16::from_le_bytes([header[18], header[19]]);
    if machine != EM_X86_64 {
        return Err(not(format!("ELF machine {machine} is not x86_64 ({EM_X86_64})")));
    }
    let phoff = u64::from_le_bytes(header[32..40].try_into().expect("8 bytes"));
    let phentsize = u16::from_le_bytes([header[54], header[55]]);
    let phnum = u16::from_le_bytes([header[56], header[57]]);
    if phentsize < 56 || phnum > MAX_PHDRS {
        return Err(not(format!("implausible program headers ({phnum} of {phentsize} bytes)")));
    }
    for index in 0..u64::from(phnum) {
        let mut phdr = [0u8; 56];
        let at = phoff.saturating_add(index * u64::from(phentsize));
        file.read_exact_at(&mut phdr, at)
            .map_err(|_| not(format!("program header {index} lies past the end")))?;
        if u32::from_le_bytes(phdr[0..4].try_into().expect("4 bytes")) != PT_NOTE {
            continue;
        }
        let offset = u64::from_le_bytes(phdr[8..16].try_into().expect("8 bytes"));
        let size = u64::from_le_bytes(phdr[32..40].try_into().expect("8 bytes")).min(MAX_NOTE_SEGMENT);
        let mut notes = vec![0u8; usize::try_from(size).expect("bounded by MAX_NOTE_SEGMENT")];
        file.read_exact_at(&mut notes, offset)
            .map_err(|_| not(format!("note segment {index} lies past the end")))?;
        if has_pvh_note(&notes) {
            return Ok(());
        }
    }
    Err(not("no PVH entry note (build the kernel with CONFIG_PVH=y)".into()))
}

fn has_pvh_note(mut notes: &[u8]) -> bool {
    let align4 = |n: usize| n.checked_add(3).map(|n| n & !3);
    while notes.len() >= 12 {
        let word = |i: usize| u32::from_le_bytes(notes[i..i + 4].try_into().expect("4 bytes"));
        let (namesz, descsz, kind) = (word(0) as usize, word(4) as usize, word(8));
        let Some(name_end) = align4(namesz).and_then(|n| n.checked_add(12)) else {
            return false;
        };
        let Some(desc_end) = align4(descsz).and_then(|n| n.checked_add(name_end)) else {
            return false;
        };
        if desc_end > notes.len() {
            return false;
        }
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && notes.get(12..12 + namesz) == Some(b"Xen\0".as_slice()) {
            return true;
        }
        notes = &notes[desc_end..];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 x86_64 file with one PT_NOTE segment holding `note`.
    pub(crate) fn fake_vmlinux(machine: u16, note: &[u8]) -> Vec<u8> {
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[18..20].copy_from_slice(&machine.to_le_bytes());
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = &mut elf[64..];
        ph[0..4].copy_from_slice(&PT_NOTE.to_le_bytes());
        ph[8..16].copy_from_slice(&120u64.to_le_bytes());
        ph[32..40].copy_from_slice(&(note.len() as u64).to_le_bytes());
        elf.extend_from_slice(note);
        elf
    }

    fn pvh_note() -> Vec<u8> {
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&0x100_0000u32.to_le_bytes());
        note
    }

    fn check(bytes: &[u8]) -> Result<(), Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinux");
        std::fs::write(&path, bytes).unwrap();
        check_kernel(&path)
    }

    #[test]
    fn accepts_a_pvh_vmlinux() {
        check(&fake_vmlinux(EM_X86_64, &pvh_note())).unwrap();
    }

    #[test]
    fn rejects_what_is_not_a_pvh_vmlinux() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"hello".to_vec(), "shorter than an ELF header"),
            (vec![0x55; 4096], "no ELF magic"),
            (fake_vmlinux(183, &pvh_note()), "ELF machine 183"),
            (fake_vmlinux(EM_X86_64, &[0; 16]), "no PVH entry note"),
            (fake_vmlinux(EM_X86_64, &pvh_note())[..100].to_vec(), "past the end"),
            (
                {
                    let mut note = pvh_note();
                    note[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
                    fake_vmlinux(EM_X86_64, &note)
                },
                "no PVH entry note",
            ),
        ];
        for (bytes, want) in cases {
            let err = check(&bytes).unwrap_err().to_string();
            assert!(err.contains(want), "{err} does not contain {want:?}");
        }
        let err = check_kernel(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(matches!(err, Error::KernelMissing(_)), "{err}");
    }
}
