//! The store's metadata file (`kernels.json`): one record per kernel plus the default's name.

use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::durable::write_atomically;
use super::image::KernelFormat;
use super::naming::validate_name;
use super::KernelStoreError;

/// What the store knows about one kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelEntry {
    /// The store name (`[A-Za-z0-9._-]`, not starting with '.').
    pub name: String,
    /// The image's file name inside the store's `images/` directory.
    pub file: String,
    pub format: KernelFormat,
    /// The kernel release (first word of the version string), e.g. `6.1.0`.
    pub version: Option<String>,
    /// The whole version string found in the image.
    pub version_string: Option<String>,
    /// Image size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the image.
    pub sha256: String,
    /// When it was added, RFC 3339 UTC.
    pub added: String,
    /// The path it was copied from.
    pub source: String,
}

/// The whole metadata file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreMetadata {
    #[serde(default)]
    pub default: Option<String>,
    /// Kept sorted by name.
    #[serde(default)]
    pub kernels: Vec<KernelEntry>,
}

impl StoreMetadata {
    /// Reads `path`; a missing file is an empty store.
    pub fn load(path: &Path) -> Result<Self, KernelStoreError> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(KernelStoreError::io("cannot read", path)(e)),
        };
        Self::parse(&bytes, path)
    }

    /// Parses and checks the contents of the metadata file `path` (named in errors).
    ///
    /// The file is input like any other: every name and image file name must be a valid store
    /// name (so an image path can never leave `images/`), every digest 64 lowercase hex
    /// digits, and names unique. Entries are sorted by name, which lookups rely on.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, KernelStoreError> {
        let mut metadata: StoreMetadata =
            serde_json::from_slice(bytes).map_err(|source| KernelStoreError::Metadata {
                path: path.to_path_buf(),
                source,
            })?;
        let invalid = |reason: String| KernelStoreError::InvalidMetadata {
            path: path.to_path_buf(),
            reason,
        };
        for entry in &metadata.kernels {
            validate_name(&entry.name).map_err(|e| invalid(format!("kernel entry: {e}")))?;
            validate_name(&entry.file)
                .map_err(|e| invalid(format!("image file of kernel `{}`: {e}", entry.name)))?;
            let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
            if entry.sha256.len() != 64 || !entry.sha256.bytes().all(hex) {
                return Err(invalid(format!(
                    "kernel `{}` has sha256 `{}`, not 64 lowercase hex digits",
                    entry.name, entry.sha256
                )));
            }
        }
        metadata.kernels.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(pair) = metadata.kernels.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(invalid(format!(
                "kernel `{}` is listed twice",
                pair[0].name
            )));
        }
        if let Some(default) = &metadata.default {
            validate_name(default).map_err(|e| invalid(format!("default kernel: {e}")))?;
        }
        Ok(metadata)
    }

    /// Replaces `path` atomically with this metadata.
    pub fn save(&self, path: &Path) -> Result<(), KernelStoreError> {
        let mut json =
            serde_json::to_vec_pretty(self).map_err(|source| KernelStoreError::Metadata {
                path: path.to_path_buf(),
                source,
            })?;
        json.push(b'\n');
        write_atomically(path, &json)
    }

    pub fn get(&self, name: &str) -> Option<&KernelEntry> {
        self.kernels.iter().find(|k| k.name == name)
    }

    /// Inserts `entry`, returning the entry it replaced under the same name.
    pub fn upsert(&mut self, entry: KernelEntry) -> Option<KernelEntry> {
        match self.kernels.binary_search_by(|k| k.name.cmp(&entry.name)) {
            Ok(i) => Some(std::mem::replace(&mut self.kernels[i], entry)),
            Err(i) => {
                self.kernels.insert(i, entry);
                None
            }
        }
    }

    /// Removes the entry called `name`, clearing the default if it was the default.
    pub fn remove(&mut self, name: &str) -> Option<KernelEntry> {
        let i = self.kernels.iter().position(|k| k.name == name)?;
        if self.default.as_deref() == Some(name) {
            self.default = None;
        }
        Some(self.kernels.remove(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> KernelEntry {
        KernelEntry {
            name: name.into(),
            file: format!("{name}-0123"),
            format: KernelFormat::Elf,
            version: Some("6.1.0".into()),
            version_string: Some("6.1.0 #1".into()),
            size: 10,
            sha256: "00".repeat(32),
            added: "2026-01-01T00:00:00Z".into(),
            source: "/tmp/x".into(),
        }
    }

    #[test]
    fn upsert_keeps_sorted_and_replaces() {
        let mut meta = StoreMetadata::default();
        assert!(meta.upsert(entry("b")).is_none());
        assert!(meta.upsert(entry("a")).is_none());
        let mut newer = entry("b");
        newer.size = 99;
        assert_eq!(meta.upsert(newer).map(|e| e.size), Some(10));
        let names: Vec<_> = meta.kernels.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(meta.get("b").unwrap().size, 99);
    }

    #[test]
    fn removing_default_clears_it() {
        let mut meta = StoreMetadata::default();
        meta.upsert(entry("a"));
        meta.upsert(entry("b"));
        meta.default = Some("a".into());
        meta.remove("b");
        assert_eq!(meta.default.as_deref(), Some("a"));
        meta.remove("a");
        assert_eq!(meta.default, None);
        assert!(meta.remove("a").is_none());
    }

    #[test]
    fn round_trips_through_disk_and_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kernels.json");
        assert_eq!(
            StoreMetadata::load(&path).unwrap(),
            StoreMetadata::default()
        );
        let mut meta = StoreMetadata::default();
        meta.upsert(entry("a"));
        meta.default = Some("a".into());
        meta.save(&path).unwrap();
        assert_eq!(StoreMetadata::load(&path).unwrap(), meta);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"format\": \"elf\""), "{text}");
    }

    #[test]
    fn garbage_metadata_is_a_named_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kernels.json");
        fs::write(&path, b"{not json").unwrap();
        let err = StoreMetadata::load(&path).unwrap_err();
        assert!(err.to_string().contains("kernels.json"), "{err}");
    }

    fn parse(json: &str) -> Result<StoreMetadata, KernelStoreError> {
        StoreMetadata::parse(json.as_bytes(), Path::new("kernels.json"))
    }

    fn entry_json(name: &str, file: &str, sha: &str) -> String {
        format!(
            r#"{{"name":"{name}","file":"{file}","format":"elf","version":null,"version_string":null,"size":1,"sha256":"{sha}","added":"x","source":"y"}}"#
        )
    }

    #[test]
    fn metadata_cannot_point_outside_the_images_directory() {
        let sha = "ab".repeat(32);
        for file in ["../../etc/passwd", "/etc/passwd", "..", "a/b", ".hidden"] {
            let json = format!(r#"{{"kernels":[{}]}}"#, entry_json("k", file, &sha));
            let err = parse(&json).unwrap_err().to_string();
            assert!(err.contains("image file of kernel `k`"), "{file}: {err}");
        }
        let json = format!(r#"{{"kernels":[{}]}}"#, entry_json("../k", "k-1", &sha));
        assert!(parse(&json).is_err());
    }

    #[test]
    fn metadata_digests_and_duplicates_are_checked_and_entries_sorted() {
        let sha = "ab".repeat(32);
        let bad = format!(r#"{{"kernels":[{}]}}"#, entry_json("k", "k-1", "AB"));
        assert!(parse(&bad).unwrap_err().to_string().contains("sha256"));
        let twice = format!(
            r#"{{"kernels":[{},{}]}}"#,
            entry_json("k", "k-1", &sha),
            entry_json("k", "k-2", &sha)
        );
        assert!(parse(&twice)
            .unwrap_err()
            .to_string()
            .contains("listed twice"));
        let unsorted = format!(
            r#"{{"default":"b","kernels":[{},{}]}}"#,
            entry_json("b", "b-1", &sha),
            entry_json("a", "a-1", &sha)
        );
        let metadata = parse(&unsorted).unwrap();
        let names: Vec<_> = metadata.kernels.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(metadata.get("b").unwrap().file, "b-1");
    }
}
