//! Container IDs (64 hex digits, shown as 12, found by any unique prefix) and generated names.

use std::io::Read;

/// A fresh random 64-hex-digit ID.
pub fn new_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// The 12-digit form shown in listings.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Whether `name` is acceptable as a container name (Docker's rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 128
}

const ADJECTIVES: &[&str] = &[
    "brave", "calm", "clever", "eager", "fierce", "gentle", "happy", "jolly", "keen", "lucid", "merry",
    "nimble", "proud", "quiet", "rapid", "sharp", "steady", "swift", "tidy", "vivid", "wise", "zen", "bold",
    "crisp",
];
const NOUNS: &[&str] = &[
    "anchor", "beacon", "bulwark", "cabin", "compass", "deck", "dinghy", "galley", "harbor", "hatch", "hull",
    "keel", "lantern", "mast", "oar", "pier", "rudder", "sail", "skiff", "stern", "tide", "wharf", "bow",
    "reef",
];

/// A readable name derived from an ID, e.g. `swift_keel_3fa2`.
pub fn generated_name(id: &str) -> String {
    let byte = |i: usize| usize::from(u8::from_str_radix(id.get(i..i + 2).unwrap_or("00"), 16).unwrap_or(0));
    format!(
        "{}_{}_{}",
        ADJECTIVES[byte(0) % ADJECTIVES.len()],
        NOUNS[byte(2) % NOUNS.len()],
        &id[4..8.min(id.len())]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names() {
        let id = new_id().unwrap();
        assert_eq!(id.len(), 64);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(short(&id).len(), 12);
        assert!(valid_name(&generated_name(&id)));
        for bad in ["", "-x", "a b", "a/b", "ünï"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_name("web-1.prod_x"));
    }
}
