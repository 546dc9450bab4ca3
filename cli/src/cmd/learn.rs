//! Learned profiles from the CLI: `run --learn` and `profile --publish` record what a run
//! read and publish it beside the image in its registry (`strata_image::learned`).

use anyhow::Context as _;
use strata_formats::profile::Profile;
use strata_image::Images;
use strata_oci::digest::Digest;
use strata_storage::store::ImageRecord;

/// Whether a run of `img` with `--learn` records: only when the image has no profile, of
/// its own or learned (a replayed run would record the profile, not the program).
pub fn wants(ctx: &Images, img: &ImageRecord, learn: bool) -> bool {
    learn && ctx.profiles().profile_of(img).is_none()
}

/// Publishes `profile` as the learned profile of `img` in the registry it came from and
/// keeps it locally. Returns the referrer artifact's digest.
pub fn publish(
    ctx: &Images,
    rt: &tokio::runtime::Runtime,
    img: &ImageRecord,
    profile: &Profile,
) -> anyhow::Result<Digest> {
    let repo = strata_image::catalog::source_ref(img)?;
    let bytes = ctx.store().get_blob(&img.manifest)?;
    let what = img.manifest.to_string();
    let media_type = strata_oci::manifest::Manifest::from_slice(&bytes, &what)?
        .media_type_or_oci()
        .to_string();
    let artifact = rt
        .block_on(strata_image::learned::publish(
            ctx.client(),
            &repo,
            &img.manifest,
            &bytes,
            &media_type,
            profile,
        ))
        .with_context(|| {
            format!(
                "publishing the learned profile of {}",
                repo.full_repository()
            )
        })?;
    ctx.profiles().learn(&img.manifest, profile)?;
    Ok(artifact)
}

/// The line `profile` and `run --learn` print about a profile.
pub fn summary(profile: &Profile) -> String {
    format!(
        "{} files, {} chunks, {:.1} MB to prefetch",
        profile.files.len(),
        profile.chunk_count(),
        profile.bytes() as f64 / 1e6
    )
}
