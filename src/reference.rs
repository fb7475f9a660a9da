//! Image references as users write them (`HOST[:PORT]/REPO:TAG`,
//! `HOST/REPO@sha256:…`): parsed and checked here, so a recipe can be checked
//! without the registry client. oci-client's own parser does the work.

pub use oci_client::Reference;

/// A registry reference, or an error that shows the expected form.
pub fn parse_reference(text: &str) -> anyhow::Result<Reference> {
    use anyhow::Context;
    text.parse::<Reference>()
        .with_context(|| format!("`{text}` is not an image reference like HOST[:PORT]/REPO:TAG or HOST/REPO@sha256:…"))
}
