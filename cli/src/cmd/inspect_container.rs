//! A container's `inspect` JSON in the shape of docker 28's `ContainerJSON`: every key docker
//! prints, each with what strata knows to be true of the container (its spec, its record,
//! its image) and docker's zero value where strata has no such setting (no log driver
//! options, no restart policy, no port bindings, no cgroup namespace choice).

use serde_json::{Value, json};
use strata_runner::state::{Container, Containers, State};

use crate::cmd::inspect_json::time;
use crate::cmd::ps_filter::Extra;

/// What a container's inspect JSON needs from its image.
#[derive(Debug, Default)]
pub struct ContainerImage {
    /// The image config's `Env`.
    pub env: Vec<String>,
    /// The manifest the container was made from: media type, digest, size.
    pub manifest: Option<(String, String, u64)>,
}

/// docker's `HostConfig`: strata's settings where it has them (network mode, binds, limits,
/// capabilities, security options, masked paths), docker's defaults for the rest.
fn host_config(spec: &strata_runner::Spec) -> Value {
    let sec = &spec.security;
    let or_null = |v: &[String]| if v.is_empty() { json!(null) } else { json!(v) };
    let binds: Vec<String> = spec
        .binds
        .iter()
        .map(|b| {
            let ro = if b.readonly { ":ro" } else { "" };
            format!("{}:{}{ro}", b.source.display(), b.target)
        })
        .collect();
    let settings = json!({
        "Binds": or_null(&binds),
        "ContainerIDFile": "",
        "LogConfig": {"Type": "json-file", "Config": {}},
        "NetworkMode": network_name(spec),
        "PortBindings": {},
        "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
        "AutoRemove": false,
        "VolumeDriver": "",
        "VolumesFrom": null,
        "ConsoleSize": [0, 0],
        "CapAdd": or_null(&sec.cap_add),
        "CapDrop": or_null(&sec.cap_drop),
        "CgroupnsMode": "private",
        "Dns": [],
        "DnsOptions": [],
        "DnsSearch": [],
        "ExtraHosts": null,
        "GroupAdd": null,
        "IpcMode": "private",
        "Cgroup": "",
        "Links": null,
        "OomScoreAdj": 0,
        "PidMode": "",
        "Privileged": sec.privileged,
        "PublishAllPorts": false,
        "ReadonlyRootfs": false,
        "SecurityOpt": or_null(&sec.security_opt()),
        "UTSMode": "",
    });
    let limits = host_resources(spec);
    let mut out = settings;
    if let (Some(o), Value::Object(l)) = (out.as_object_mut(), limits) {
        o.extend(l);
    }
    out
}

/// The resource half of docker's `HostConfig` (limits, devices, masked paths).
fn host_resources(spec: &strata_runner::Spec) -> Value {
    let (sec, res) = (&spec.security, &spec.resources);
    let paths = |list: &[&str]| -> Value {
        if sec.privileged {
            json!(null)
        } else {
            json!(list.iter().map(|p| format!("/{p}")).collect::<Vec<_>>())
        }
    };
    json!({
        "UsernsMode": "",
        "ShmSize": 67108864,
        "Runtime": "strata",
        "Isolation": "",
        "CpuShares": 0,
        "Memory": res.memory,
        "NanoCpus": res.nano_cpus,
        "CgroupParent": "",
        "BlkioWeight": 0,
        "BlkioWeightDevice": [],
        "BlkioDeviceReadBps": [],
        "BlkioDeviceWriteBps": [],
        "BlkioDeviceReadIOps": [],
        "BlkioDeviceWriteIOps": [],
        "CpuPeriod": 0,
        "CpuQuota": 0,
        "CpuRealtimePeriod": 0,
        "CpuRealtimeRuntime": 0,
        "CpusetCpus": "",
        "CpusetMems": "",
        "Devices": [],
        "DeviceCgroupRules": null,
        "DeviceRequests": null,
        "MemoryReservation": 0,
        "MemorySwap": 0,
        "MemorySwappiness": null,
        "OomKillDisable": null,
        "PidsLimit": (res.pids_limit > 0).then_some(res.pids_limit),
        "Ulimits": [],
        "CpuCount": 0,
        "CpuPercent": 0,
        "IOMaximumIOps": 0,
        "IOMaximumBandwidth": 0,
        "MaskedPaths": paths(&strata_runner::MASKED_PATHS),
        "ReadonlyPaths": paths(&strata_runner::READONLY_PATHS),
    })
}

/// The network a container is on, as docker names it: `host` or `none`.
fn network_name(spec: &strata_runner::Spec) -> &'static str {
    match spec.network {
        strata_runner::Network::Host => "host",
        strata_runner::Network::None => "none",
    }
}

/// docker's `NetworkSettings`: the container shares the host's network (or has none), so
/// there is no sandbox, address or gateway of its own.
fn network_settings(spec: &strata_runner::Spec) -> Value {
    let endpoint = json!({
        "IPAMConfig": null,
        "Links": null,
        "Aliases": null,
        "MacAddress": "",
        "DriverOpts": null,
        "GwPriority": 0,
        "NetworkID": "",
        "EndpointID": "",
        "Gateway": "",
        "IPAddress": "",
        "IPPrefixLen": 0,
        "IPv6Gateway": "",
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "DNSNames": null,
    });
    let mut networks = serde_json::Map::new();
    networks.insert(network_name(spec).to_string(), endpoint);
    json!({
        "SandboxID": "",
        "SandboxKey": "",
        "Ports": {},
        "EndpointID": "",
        "Gateway": "",
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "IPAddress": "",
        "IPPrefixLen": 0,
        "IPv6Gateway": "",
        "MacAddress": "",
        "Networks": networks,
    })
}

/// docker's `Mounts`: the container's bind mounts.
fn mounts(spec: &strata_runner::Spec) -> Value {
    spec.binds
        .iter()
        .map(|b| {
            json!({
                "Type": "bind",
                "Source": b.source,
                "Destination": b.target,
                "Mode": if b.readonly { "ro" } else { "" },
                "RW": !b.readonly,
                "Propagation": "rprivate",
            })
        })
        .collect()
}

/// docker's `State`.
fn state(c: &Container) -> Value {
    let running = c.state == State::Running;
    let status = match c.state {
        State::Created => "created",
        State::Running => "running",
        State::Exited => "exited",
    };
    json!({
        "Status": status,
        "Running": running,
        "Paused": false,
        "Restarting": false,
        "OOMKilled": false,
        "Dead": false,
        "Pid": if running { c.pid.unwrap_or(0) } else { 0 },
        "ExitCode": c.exit_code.unwrap_or(0),
        "Error": "",
        "StartedAt": time(Some(c.started.unwrap_or(c.created))),
        "FinishedAt": time(c.finished),
    })
}

/// docker's `Config`: the container's process settings, with the entrypoint apart from the
/// command as docker keeps them.
fn config(c: &Container, spec: &strata_runner::Spec, extra: &Extra, image_env: &[String]) -> Value {
    let (entrypoint, cmd) = match &extra.entrypoint {
        Some(e) if c.command.starts_with(e) => (json!(e), c.command[e.len()..].to_vec()),
        _ => (json!(null), c.command.clone()),
    };
    let labels = if extra.labels.is_empty() {
        json!({})
    } else {
        json!(extra.labels)
    };
    let attached = !extra.detached;
    json!({
        "Hostname": spec.hostname,
        "Domainname": "",
        "User": spec.user,
        "AttachStdin": attached && extra.interactive,
        "AttachStdout": attached,
        "AttachStderr": attached,
        "Tty": spec.tty,
        "OpenStdin": extra.interactive,
        "StdinOnce": attached && extra.interactive,
        "Env": docker_env(&spec.env, image_env),
        "Cmd": if cmd.is_empty() { json!(null) } else { json!(cmd) },
        "Image": c.image,
        "Volumes": null,
        "WorkingDir": spec.cwd,
        "Entrypoint": entrypoint,
        "NetworkDisabled": spec.network == strata_runner::Network::None,
        "Labels": labels,
    })
}

/// A container's environment as docker's `Config.Env` lists it: what `run` set first, then
/// the image's variables it did not change.
fn docker_env(env: &[String], image_env: &[String]) -> Vec<String> {
    let (from_image, own): (Vec<&String>, Vec<&String>) =
        env.iter().partition(|e| image_env.contains(e));
    own.into_iter().chain(from_image).cloned().collect()
}

/// A container's inspect JSON; `size` adds `SizeRw` and `SizeRootFs`.
pub fn container(cs: &Containers, c: &Container, size: bool, image: &ContainerImage) -> Value {
    let dir = cs.dir_of(&c.id);
    let spec: strata_runner::Spec = std::fs::read(dir.join("spec.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| strata_runner::Spec {
            args: c.command.clone(),
            ..Default::default()
        });
    let extra = Extra::load(cs, c);
    let platform = if extra.os.is_empty() {
        "linux"
    } else {
        &extra.os
    };
    let state_file = |name: &str| {
        let p = spec.state_dir.join(name);
        if spec.state_dir.as_os_str().is_empty() || !p.exists() {
            String::new()
        } else {
            p.display().to_string()
        }
    };
    let log = dir.join("container.log");
    let descriptor = image.manifest.as_ref().map(|(media_type, digest, size)| {
        json!({
            "mediaType": media_type,
            "digest": digest,
            "size": size,
            "platform": {"architecture": extra.arch, "os": platform},
        })
    });
    let mut out = json!({
        "Id": c.id,
        "Created": time(Some(c.created)),
        "Path": spec.args.first().cloned().unwrap_or_default(),
        "Args": spec.args.iter().skip(1).collect::<Vec<_>>(),
        "State": state(c),
        "Image": c.image_id,
        "ResolvConfPath": state_file("resolv.conf"),
        "HostnamePath": state_file("hostname"),
        "HostsPath": state_file("hosts"),
        "LogPath": if log.exists() { log.display().to_string() } else { String::new() },
        "Name": format!("/{}", c.name),
        "RestartCount": 0,
        "Driver": "overlay",
        "Platform": platform,
        "ImageManifestDescriptor": descriptor,
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": null,
        "HostConfig": host_config(&spec),
        "GraphDriver": {"Data": null, "Name": "overlay"},
        "Mounts": mounts(&spec),
        "Config": config(c, &spec, &extra, &image.env),
        "NetworkSettings": network_settings(&spec),
    });
    if size {
        let rw = extra.size_rw();
        out["SizeRw"] = json!(rw);
        out["SizeRootFs"] = json!(rw + extra.image_size);
    }
    out
}
