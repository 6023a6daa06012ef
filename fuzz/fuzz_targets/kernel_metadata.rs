//! The kernel store's metadata file (`kernels.json`) from hostile bytes. Checked: parse never
//! panics, and what it accepts is safe to use: names and image files are plain store names
//! (an image path stays inside `images/`), entries are sorted and unique, and saving and
//! parsing again gives the same metadata.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use volt::kernel_store::{validate_name, StoreMetadata};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("kernels.json");
    let Ok(metadata) = StoreMetadata::parse(data, path) else {
        return;
    };
    for entry in &metadata.kernels {
        validate_name(&entry.name).unwrap();
        let image = Path::new("images").join(&entry.file);
        assert!(image
            .components()
            .all(|c| matches!(c, Component::Normal(_))));
        assert_eq!(image.components().count(), 2);
        assert_eq!(metadata.get(&entry.name), Some(entry));
    }
    assert!(metadata.kernels.windows(2).all(|w| w[0].name < w[1].name));
    let json = serde_json::to_vec(&metadata).unwrap();
    assert_eq!(StoreMetadata::parse(&json, path).unwrap(), metadata);
});
