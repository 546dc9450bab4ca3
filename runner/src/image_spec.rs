//! The container spec from an image's config: the one place where what an image says about
//! its containers (entrypoint, command, environment, working directory, user) meets what the
//! caller decides. `run` and the builder's RUN both start containers from it.

use std::borrow::Cow;

use strata_oci::config::ContainerConfig;

use crate::{Spec, command_line, merge_env};

/// What the caller decides about a container's process; the image's config fills in the rest.
#[derive(Debug, Default, Clone)]
pub struct Process {
    /// The command line, already combined (see [`image_command`]).
    pub args: Vec<String>,
    /// `KEY=VALUE` entries (or `KEY`, taken from the host) over the image's `Env`; later ones
    /// win.
    pub env: Vec<String>,
    /// The working directory; the image's `WorkingDir` (or `/`) when `None`.
    pub workdir: Option<String>,
    /// `user[:group]`; the image's `User` (or root) when `None`.
    pub user: Option<String>,
}

/// The command line of a container of `image` given `--entrypoint` and the arguments after
/// the image name, combined as docker does (see [`command_line`]).
pub fn image_command(
    image: &ContainerConfig,
    entrypoint: Option<&str>,
    args: &[String],
) -> Vec<String> {
    command_line(
        image.entrypoint.get().map_or(&[][..], Vec::as_slice),
        image.cmd.get().map_or(&[][..], Vec::as_slice),
        entrypoint,
        args,
    )
}

/// The spec of a container of `image`: the process from `process` over the image's config,
/// everything else (root filesystem, state directory, host name, network, mounts, security,
/// resources) from `host`, whose process fields are ignored.
pub fn container_spec(image: Option<&ContainerConfig>, process: Process, host: Spec) -> Spec {
    let image = match image {
        Some(c) => Cow::Borrowed(c),
        None => Cow::Owned(ContainerConfig::default()),
    };
    let image_env = image.env.get().map_or(&[][..], Vec::as_slice);
    Spec {
        args: process.args,
        env: merge_env(image_env, &process.env),
        cwd: process
            .workdir
            .or_else(|| image.workdir().map(str::to_string))
            .unwrap_or_else(|| "/".into()),
        user: process
            .user
            .unwrap_or_else(|| image.user_or_default().to_string()),
        ..host
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_oci::nullable::Nullable;

    #[test]
    fn the_image_fills_in_what_the_caller_leaves_open() {
        let image = ContainerConfig {
            env: Nullable::Set(vec!["A=1".into(), "PATH=/bin".into()]),
            entrypoint: Nullable::Set(vec!["/e".into()]),
            cmd: Nullable::Set(vec!["c".into()]),
            working_dir: Nullable::Set("/w".into()),
            user: Nullable::Set("u".into()),
            ..ContainerConfig::default()
        };
        assert_eq!(image_command(&image, None, &[]), ["/e", "c"]);
        assert_eq!(image_command(&image, Some("/x"), &[]), ["/x"]);
        let process = Process {
            args: vec!["sh".into()],
            env: vec!["A=2".into()],
            ..Process::default()
        };
        let spec = container_spec(Some(&image), process, Spec::default());
        assert_eq!(spec.env, ["PATH=/bin", "A=2"]);
        assert_eq!((spec.cwd.as_str(), spec.user.as_str()), ("/w", "u"));
        let process = Process {
            workdir: Some("/o".into()),
            user: Some("0".into()),
            ..Process::default()
        };
        let spec = container_spec(None, process, Spec::default());
        assert_eq!((spec.cwd.as_str(), spec.user.as_str()), ("/o", "0"));
        assert!(spec.env[0].starts_with("PATH="));
    }
}
