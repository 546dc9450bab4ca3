//! What a container may do: its capabilities, its seccomp mode and `no_new_privs`, as docker's
//! `--privileged`, `--cap-add`, `--cap-drop` and `--security-opt` set them. Defaults are docker's
//! default profile: 14 capabilities, the default seccomp filter, masked and read-only paths.

use std::collections::BTreeSet;

use caps::{CapSet, Capability, CapsHashSet};
use serde::{Deserialize, Serialize};

/// docker's default capabilities (bits 0x00000000a80425fb).
pub const DEFAULT_CAPS: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// Which seccomp filter the container gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// docker's default profile.
    #[default]
    Default,
    /// No filter (`seccomp=unconfined`).
    Unconfined,
    /// A profile in docker's JSON format (the file's contents, read when the container was
    /// created, as docker does).
    Profile {
        /// Where it was read from (for `inspect`).
        path: String,
        /// The JSON text.
        json: String,
    },
}

/// The security settings of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Security {
    /// All capabilities, no seccomp filter, no masked or read-only paths, all devices.
    pub privileged: bool,
    /// Capabilities added to the default set (`CAP_` names, or `ALL`).
    pub cap_add: Vec<String>,
    /// Capabilities removed from it (`CAP_` names, or `ALL`).
    pub cap_drop: Vec<String>,
    /// Seccomp filter.
    pub seccomp: SeccompMode,
    /// Set `no_new_privs`: setuid binaries and file capabilities grant nothing.
    pub no_new_privileges: bool,
}

/// Errors in security options.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A capability name that is not one.
    #[error("unknown capability: {0:?}")]
    UnknownCapability(String),
    /// A `--security-opt` that is not understood.
    #[error("invalid --security-opt: {0:?}")]
    BadOption(String),
    /// A seccomp profile that cannot be read.
    #[error("opening seccomp profile ({path}) failed: {source}")]
    ProfileRead {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A seccomp profile that is not a valid profile.
    #[error("decoding seccomp profile ({path}) failed: {source}")]
    ProfileParse {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// `NET_ADMIN`, `net_admin` and `CAP_NET_ADMIN` all name CAP_NET_ADMIN; `ALL` stays `ALL`.
pub fn normalize_cap(name: &str) -> Result<String, SecurityError> {
    let upper = name.to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(upper);
    }
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    full.parse::<Capability>()
        .map(|c| c.to_string())
        .map_err(|_| SecurityError::UnknownCapability(name.to_string()))
}

impl Security {
    /// Applies one `--security-opt` (`seccomp=unconfined`, `seccomp=PROFILE.json`,
    /// `no-new-privileges[=true|false]`; `:` works in place of `=` as in old docker).
    pub fn apply_opt(&mut self, opt: &str) -> Result<(), SecurityError> {
        let (key, value) = match opt.split_once(['=', ':']) {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        match (key, value) {
            ("no-new-privileges", None | Some("true")) => self.no_new_privileges = true,
            ("no-new-privileges", Some("false")) => self.no_new_privileges = false,
            ("seccomp", Some("unconfined")) => self.seccomp = SeccompMode::Unconfined,
            ("seccomp", Some(path)) if !path.is_empty() => {
                let json =
                    std::fs::read_to_string(path).map_err(|source| SecurityError::ProfileRead {
                        path: path.to_string(),
                        source,
                    })?;
                crate::seccomp::Profile::parse(&json).map_err(|source| {
                    SecurityError::ProfileParse {
                        path: path.to_string(),
                        source,
                    }
                })?;
                self.seccomp = SeccompMode::Profile {
                    path: path.to_string(),
                    json,
                };
            }
            _ => return Err(SecurityError::BadOption(opt.to_string())),
        }
        Ok(())
    }

    /// The options as docker's `HostConfig.SecurityOpt` lists them.
    pub fn security_opt(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.seccomp {
            SeccompMode::Default => {}
            SeccompMode::Unconfined => out.push("seccomp=unconfined".to_string()),
            SeccompMode::Profile { path, .. } => out.push(format!("seccomp={path}")),
        }
        if self.no_new_privileges {
            out.push("no-new-privileges".to_string());
        }
        out
    }

    /// The capability set the container gets, limited to what `available` holds (the caller's
    /// bounding set), by docker's rules (moby `oci/caps` TweakCapabilities): `privileged` is
    /// everything; `ALL` in `cap_add` is everything but `cap_drop`; `ALL` in `cap_drop` is just
    /// `cap_add`; else docker's defaults minus `cap_drop`, then plus `cap_add` (so
    /// `--cap-drop X --cap-add X` keeps X).
    pub fn capabilities(&self, available: &CapsHashSet) -> CapsHashSet {
        let named = |list: &[String]| -> BTreeSet<String> {
            list.iter().filter_map(|n| normalize_cap(n).ok()).collect()
        };
        let parsed = |names: &BTreeSet<String>| -> CapsHashSet {
            names
                .iter()
                .filter_map(|n| n.parse::<Capability>().ok())
                .collect()
        };
        let (add, drop) = (named(&self.cap_add), named(&self.cap_drop));
        let mut set: CapsHashSet = if self.privileged {
            available.clone()
        } else if add.contains("ALL") {
            available.difference(&parsed(&drop)).copied().collect()
        } else if drop.contains("ALL") {
            parsed(&add)
        } else {
            let mut set: CapsHashSet = DEFAULT_CAPS.into_iter().collect();
            set.retain(|c| !parsed(&drop).contains(c));
            set.extend(parsed(&add));
            set
        };
        set.retain(|c| available.contains(c));
        set
    }
}

/// The capabilities of `set` as a `/proc/PID/status` bit mask.
pub fn mask(set: &CapsHashSet) -> u64 {
    set.iter().fold(0, |m, c| m | (1u64 << c.index()))
}

/// Removes from the bounding set every capability not in `keep` (needs CAP_SETPCAP, so it
/// runs while the process is still fully privileged).
pub(crate) fn limit_bounding(keep: &CapsHashSet) -> Result<(), caps::errors::CapsError> {
    for c in caps::read(None, CapSet::Bounding)? {
        if !keep.contains(&c) {
            caps::drop(None, CapSet::Bounding, c)?;
        }
    }
    Ok(())
}

/// Sets the effective and permitted sets to `keep` and clears the inheritable and ambient
/// sets, as docker does since moby 20.10.14 (CVE-2022-24769: an inheritable set lets a
/// file's inheritable capabilities raise an unprivileged exec; checked on dockerd
/// v2.0.0-beta.24 + runc 1.3.3: `CapInh 0000000000000000`, default and `--privileged`).
/// After a change of user this needs `PR_SET_KEEPCAPS` to have kept the permitted set.
pub(crate) fn set_capabilities(keep: &CapsHashSet) -> Result<(), caps::errors::CapsError> {
    caps::set(None, CapSet::Effective, keep)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Permitted, keep)?;
    caps::clear(None, CapSet::Ambient)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sec(add: &[&str], drop: &[&str]) -> Security {
        Security {
            cap_add: add.iter().map(|s| s.to_string()).collect(),
            cap_drop: drop.iter().map(|s| s.to_string()).collect(),
            ..Security::default()
        }
    }

    #[test]
    fn drop_then_add_as_docker() {
        let all = caps::all();
        let both = sec(&["chown"], &["chown"]).capabilities(&all);
        assert_eq!(mask(&both), 0xa80425fb, "--cap-drop X --cap-add X keeps X");
        let all_but = sec(&["ALL"], &["NET_RAW"]).capabilities(&all);
        assert!(all_but.len() > 30 && !all_but.contains(&Capability::CAP_NET_RAW));
        let only = sec(&["NET_ADMIN"], &["ALL"]).capabilities(&all);
        assert_eq!(only, [Capability::CAP_NET_ADMIN].into_iter().collect());
    }

    #[test]
    fn capability_sets_follow_docker() {
        let all = caps::all();
        assert_eq!(mask(&Security::default().capabilities(&all)), 0xa80425fb);
        let net = 1u64 << Capability::CAP_NET_ADMIN.index();
        assert_eq!(
            mask(&sec(&["net_admin"], &[]).capabilities(&all)),
            0xa80425fb | net
        );
        assert_eq!(mask(&sec(&[], &["ALL"]).capabilities(&all)), 0);
        assert_eq!(
            mask(&sec(&["CHOWN"], &["ALL"]).capabilities(&all)),
            1 << Capability::CAP_CHOWN.index()
        );
        assert_eq!(
            mask(&sec(&[], &["CAP_CHOWN"]).capabilities(&all)),
            0xa80425fb & !1
        );
        let privileged = Security {
            privileged: true,
            cap_drop: vec!["ALL".into()],
            ..Security::default()
        };
        assert_eq!(privileged.capabilities(&all), all);
        // Never more than the caller has.
        let few: CapsHashSet = [Capability::CAP_CHOWN].into_iter().collect();
        assert_eq!(Security::default().capabilities(&few), few);
    }

    #[test]
    fn names_and_options() {
        assert_eq!(normalize_cap("sys_admin").unwrap(), "CAP_SYS_ADMIN");
        assert_eq!(normalize_cap("all").unwrap(), "ALL");
        assert!(normalize_cap("FLY").is_err());
        let mut s = Security::default();
        s.apply_opt("no-new-privileges").unwrap();
        s.apply_opt("seccomp=unconfined").unwrap();
        assert_eq!(
            s.security_opt(),
            ["seccomp=unconfined", "no-new-privileges"]
        );
        assert!(s.apply_opt("apparmor=x").is_err());
        let err = s.apply_opt("seccomp=/nonexistent.json").unwrap_err();
        assert!(err.to_string().contains("/nonexistent.json"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{").unwrap();
        assert!(s.apply_opt(&format!("seccomp={}", bad.display())).is_err());
        let good = dir.path().join("good.json");
        std::fs::write(&good, r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).unwrap();
        s.apply_opt(&format!("seccomp:{}", good.display())).unwrap();
        assert!(matches!(s.seccomp, SeccompMode::Profile { .. }));
    }
}
