//! Profiles stored with an image: reading the one an image's manifest carries, and storing an
//! image again with a new one. The profile format itself is [`strata_formats::profile`];
//! fetching what it names is [`crate::prefetch`].

use strata_formats::profile::{ANNOTATION, Profile, profile_in};
use strata_oci::digest::Digest;
use strata_oci::manifest::Manifest;
use strata_storage::store::{ImageRecord, Store};

use crate::error::ImageError;

/// Reads and writes the prefetch profiles kept in image manifests.
#[derive(Debug, Clone)]
pub struct Profiles {
    store: Store,
}

impl Profiles {
    /// Profiles of the images in `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The profile stored with `img`'s manifest, else one learned for it (a referrer another
    /// run published, see [`crate::learned`]).
    pub fn profile_of(&self, img: &ImageRecord) -> Option<Profile> {
        let bytes = self.store.get_blob(&img.manifest).ok()?;
        profile_in(&bytes, img.layers.len()).or_else(|| self.learned_of(img))
    }

    /// Whether `img`'s manifest itself carries a profile.
    pub fn has_own_profile(&self, img: &ImageRecord) -> bool {
        self.store
            .get_blob(&img.manifest)
            .ok()
            .and_then(|b| profile_in(&b, img.layers.len()))
            .is_some()
    }

    /// The learned profile kept for `img`, if any (a malformed one is ignored, with a warning).
    pub fn learned_of(&self, img: &ImageRecord) -> Option<Profile> {
        let bytes = self.store.learned_profile(&img.manifest)?;
        let text = String::from_utf8_lossy(&bytes);
        match Profile::parse(&text, img.layers.len()) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(image = %img.manifest, error = %e, "ignoring the learned profile");
                None
            }
        }
    }

    /// Keeps `profile` as learned for the image with manifest `manifest`.
    pub fn learn(&self, manifest: &Digest, profile: &Profile) -> Result<(), ImageError> {
        Ok(self
            .store
            .put_learned_profile(manifest, profile.encode().as_bytes())?)
    }

    /// Stores `img` again with `profile` in its manifest's annotations: a new manifest (and so a
    /// new image) with the same config and layers. Returns the new record.
    pub fn with_profile(
        &self,
        img: &ImageRecord,
        profile: &Profile,
    ) -> Result<ImageRecord, ImageError> {
        let bytes = self.store.get_blob(&img.manifest)?;
        let mut m = Manifest::from_slice(&bytes, &img.manifest.to_string())?;
        m.annotations
            .get_or_insert_with(Default::default)
            .insert(ANNOTATION.into(), profile.encode());
        let out = m.to_vec();
        let manifest = Digest::of(&out);
        self.store.put_blob(&manifest, &out)?;
        let rec = ImageRecord {
            manifest,
            index: None,
            ..img.clone()
        };
        self.store.put_image(&rec)?;
        Ok(rec)
    }
}
