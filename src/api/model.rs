//! The API's resources with Firecracker's names and JSON fields, the routing of a request to
//! one of them, and the pre-boot description of a VM they build up (also read whole from
//! `--config-file`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::http::{Method, Request, Response};
use devices::virtio::BlockEngine;

use crate::boot::{VcpuCount, VcpuCountError};
use crate::cli::{parse_mac, MacError, MIN_MEM_BYTES};
use crate::vm::{DiskConfig, NetConfig};

/// What is wrong with a VM description (PUT bodies or a config file); answered as a 400 with
/// this text, or reported with the config file's name.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("invalid vcpu_count: {0}")]
    VcpuCount(#[source] VcpuCountError),
    #[error("smt is not supported")]
    Smt,
    #[error("mem_size_mib {0} is too large")]
    MemTooLarge(u64),
    #[error("mem_size_mib must be at least {min}, not {0}", min = MIN_MEM_BYTES >> 20)]
    MemTooSmall(u64),
    #[error("drive_id must not be empty")]
    EmptyDriveId,
    #[error("drive '{drive}' cannot be the root device: another drive ('{root}') is already the root device")]
    SecondRootDrive { drive: String, root: String },
    #[error("iface_id must not be empty")]
    EmptyIfaceId,
    #[error("guest_mac of '{iface}': {source}")]
    GuestMac {
        iface: String,
        #[source]
        source: MacError,
    },
    #[error("no boot source: PUT /boot-source first")]
    NoBootSource,
}

/// What is wrong with the memory file fields of `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemBackendError {
    #[error("give either mem_backend or mem_file_path, not both")]
    Both,
    #[error("mem_backend.backend_type '{0}' is not supported (only File)")]
    BackendType(String),
    #[error("mem_backend is missing")]
    Missing,
}

/// `PUT /boot-source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSourceBody {
    pub kernel_image_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// `PUT /machine-config`, `GET /machine-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigBody {
    pub vcpu_count: u8,
    pub mem_size_mib: u64,
    /// Volt has no SMT siblings; `true` is refused.
    #[serde(default)]
    pub smt: bool,
    /// Accepted for Firecracker compatibility; Volt snapshots are always full.
    #[serde(default)]
    pub track_dirty_pages: bool,
}

impl Default for MachineConfigBody {
    fn default() -> Self {
        MachineConfigBody {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
        }
    }
}

/// `PUT /drives/{drive_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveBody {
    pub drive_id: String,
    pub path_on_host: String,
    pub is_root_device: bool,
    #[serde(default)]
    pub is_read_only: bool,
}

/// `PUT /network-interfaces/{iface_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetBody {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: ActionType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum VmStateName {
    Paused,
    Resumed,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmStateBody {
    state: VmStateName,
}

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateBody {
    pub snapshot_path: PathBuf,
    pub mem_file_path: PathBuf,
    /// Only "Full" exists in Volt.
    #[serde(default)]
    pub snapshot_type: Option<String>,
}

/// The memory backend of `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    pub backend_path: PathBuf,
    /// Only "File" exists in Volt.
    pub backend_type: String,
}

/// `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadBody {
    pub snapshot_path: PathBuf,
    #[serde(default)]
    pub mem_backend: Option<MemBackend>,
    /// Firecracker's older spelling of `mem_backend.backend_path`.
    #[serde(default)]
    pub mem_file_path: Option<PathBuf>,
    #[serde(default)]
    pub resume_vm: bool,
    #[serde(default)]
    pub enable_diff_snapshots: bool,
}

impl SnapshotLoadBody {
    /// The memory file, from whichever field named it.
    pub fn mem_path(&self) -> Result<PathBuf, MemBackendError> {
        match (&self.mem_backend, &self.mem_file_path) {
            (Some(_), Some(_)) => Err(MemBackendError::Both),
            (Some(backend), None) if backend.backend_type != "File" => {
                Err(MemBackendError::BackendType(backend.backend_type.clone()))
            }
            (Some(backend), None) => Ok(backend.backend_path.clone()),
            (None, Some(path)) => Ok(path.clone()),
            (None, None) => Err(MemBackendError::Missing),
        }
    }
}

/// A request the API understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    GetInfo,
    GetMachineConfig,
    GetMetrics,
    PutBootSource(BootSourceBody),
    PutMachineConfig(MachineConfigBody),
    PutDrive(DriveBody),
    PutNet(NetBody),
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
    Pause,
    Resume,
    SnapshotCreate(SnapshotCreateBody),
    SnapshotLoad(SnapshotLoadBody),
}

fn body<'a, T: Deserialize<'a>>(request: &'a Request, what: &str) -> Result<T, Response> {
    serde_json::from_slice(&request.body)
        .map_err(|e| Response::error(400, format!("invalid {what} body: {e}")))
}

fn id_matches(path_id: &str, body_id: &str, field: &str) -> Result<(), Response> {
    if path_id.is_empty() || path_id.contains('/') {
        return Err(Response::error(400, format!("invalid {field} in the path")));
    }
    if path_id != body_id {
        return Err(Response::error(
            400,
            format!("the {field} in the path ('{path_id}') and in the body ('{body_id}') differ"),
        ));
    }
    Ok(())
}

/// Maps a request onto a resource, or says what is wrong with it.
pub fn route(request: &Request) -> Result<ApiRequest, Response> {
    let path = request.path.split('?').next().unwrap_or("");
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let wrong_method = || {
        Response::error(
            405,
            format!("{:?} is not allowed on {path}", request.method).to_uppercase(),
        )
    };
    use Method::*;
    let parsed = match (request.method, path) {
        (Get, "/") => ApiRequest::GetInfo,
        (_, "/") => return Err(wrong_method()),
        (Get, "/machine-config") => ApiRequest::GetMachineConfig,
        (Put, "/machine-config") => ApiRequest::PutMachineConfig(body(request, "machine-config")?),
        (_, "/machine-config") => return Err(wrong_method()),
        (Get, "/metrics") => ApiRequest::GetMetrics,
        (_, "/metrics") => return Err(wrong_method()),
        (Put, "/boot-source") => ApiRequest::PutBootSource(body(request, "boot-source")?),
        (_, "/boot-source") => return Err(wrong_method()),
        (Put, "/actions") => match body::<ActionBody>(request, "actions")?.action_type {
            ActionType::InstanceStart => ApiRequest::InstanceStart,
            ActionType::SendCtrlAltDel => ApiRequest::SendCtrlAltDel,
            ActionType::FlushMetrics => ApiRequest::FlushMetrics,
        },
        (_, "/actions") => return Err(wrong_method()),
        (Patch, "/vm") => match body::<VmStateBody>(request, "vm")?.state {
            VmStateName::Paused => ApiRequest::Pause,
            VmStateName::Resumed => ApiRequest::Resume,
        },
        (_, "/vm") => return Err(wrong_method()),
        (Put, "/snapshot/create") => ApiRequest::SnapshotCreate(body(request, "snapshot/create")?),
        (Put, "/snapshot/load") => ApiRequest::SnapshotLoad(body(request, "snapshot/load")?),
        (_, "/snapshot/create" | "/snapshot/load") => return Err(wrong_method()),
        (method, path) => {
            if let Some(id) = path.strip_prefix("/drives/") {
                if method != Put {
                    return Err(wrong_method());
                }
                let drive: DriveBody = body(request, "drive")?;
                id_matches(id, &drive.drive_id, "drive_id")?;
                ApiRequest::PutDrive(drive)
            } else if let Some(id) = path.strip_prefix("/network-interfaces/") {
                if method != Put {
                    return Err(wrong_method());
                }
                let net: NetBody = body(request, "network-interface")?;
                id_matches(id, &net.iface_id, "iface_id")?;
                ApiRequest::PutNet(net)
            } else {
                return Err(Response::error(404, format!("no resource {path}")));
            }
        }
    };
    Ok(parsed)
}

/// A VM described through the API (or a config file) before it is started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    #[serde(rename = "boot-source", default)]
    pub boot_source: Option<BootSourceBody>,
    #[serde(rename = "machine-config", default)]
    pub machine_config: MachineConfigBody,
    #[serde(default)]
    pub drives: Vec<DriveBody>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetBody>,
}

/// What a [`VmSpec`] amounts to, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedSpec {
    pub vcpus: VcpuCount,
    pub mem_bytes: u64,
    /// A path or a kernel-store name; `None` is the store's default kernel.
    pub kernel: Option<String>,
    pub boot_args: Option<String>,
    pub initrd: Option<PathBuf>,
    /// The root drive first.
    pub disks: Vec<DiskConfig>,
    pub nets: Vec<NetConfig>,
}

impl VmSpec {
    /// Reads a `--config-file`: the bodies of the PUTs in one JSON object.
    pub fn from_json(text: &str) -> Result<VmSpec, SpecError> {
        let spec: VmSpec = serde_json::from_str(text)?;
        check_machine_config(&spec.machine_config)?;
        let mut checked = VmSpec {
            machine_config: spec.machine_config.clone(),
            boot_source: spec.boot_source.clone(),
            ..VmSpec::default()
        };
        for drive in spec.drives {
            checked.put_drive(drive)?;
        }
        for net in spec.network_interfaces {
            checked.put_net(net)?;
        }
        Ok(checked)
    }

    pub fn put_machine_config(&mut self, config: MachineConfigBody) -> Result<(), SpecError> {
        check_machine_config(&config)?;
        self.machine_config = config;
        Ok(())
    }

    /// Adds a drive or replaces the one with the same id.
    pub fn put_drive(&mut self, drive: DriveBody) -> Result<(), SpecError> {
        if drive.drive_id.is_empty() {
            return Err(SpecError::EmptyDriveId);
        }
        if drive.is_root_device {
            if let Some(root) = self
                .drives
                .iter()
                .find(|d| d.is_root_device && d.drive_id != drive.drive_id)
            {
                return Err(SpecError::SecondRootDrive {
                    drive: drive.drive_id,
                    root: root.drive_id.clone(),
                });
            }
        }
        match self
            .drives
            .iter_mut()
            .find(|d| d.drive_id == drive.drive_id)
        {
            Some(existing) => *existing = drive,
            None => self.drives.push(drive),
        }
        Ok(())
    }

    /// Adds a network interface or replaces the one with the same id.
    pub fn put_net(&mut self, net: NetBody) -> Result<(), SpecError> {
        if net.iface_id.is_empty() {
            return Err(SpecError::EmptyIfaceId);
        }
        guest_mac(&net)?;
        match self
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == net.iface_id)
        {
            Some(existing) => *existing = net,
            None => self.network_interfaces.push(net),
        }
        Ok(())
    }

    /// Everything needed to build the VM, or what is missing.
    pub fn check(&self) -> Result<CheckedSpec, SpecError> {
        let boot = self.boot_source.as_ref().ok_or(SpecError::NoBootSource)?;
        let vcpus = check_machine_config(&self.machine_config)?;
        let mut drives: Vec<&DriveBody> = self.drives.iter().collect();
        // The root drive becomes /dev/vda.
        drives.sort_by_key(|d| !d.is_root_device);
        let disks = drives
            .iter()
            .map(|d| DiskConfig {
                path: PathBuf::from(&d.path_on_host),
                read_only: d.is_read_only,
                engine: BlockEngine::default(),
            })
            .collect();
        let nets = self
            .network_interfaces
            .iter()
            .map(|n| {
                Ok(NetConfig {
                    tap: n.host_dev_name.clone(),
                    mac: guest_mac(n)?,
                })
            })
            .collect::<Result<_, SpecError>>()?;
        Ok(CheckedSpec {
            vcpus,
            mem_bytes: self.machine_config.mem_size_mib << 20,
            kernel: Some(boot.kernel_image_path.clone()),
            boot_args: boot.boot_args.clone(),
            initrd: boot.initrd_path.as_ref().map(PathBuf::from),
            disks,
            nets,
        })
    }
}

fn guest_mac(net: &NetBody) -> Result<Option<[u8; 6]>, SpecError> {
    net.guest_mac
        .as_deref()
        .map(parse_mac)
        .transpose()
        .map_err(|source| SpecError::GuestMac {
            iface: net.iface_id.clone(),
            source,
        })
}

/// Checks a machine config; its vCPU count is where the API's and config file's count is
/// validated.
fn check_machine_config(config: &MachineConfigBody) -> Result<VcpuCount, SpecError> {
    let vcpus = VcpuCount::new(config.vcpu_count).map_err(SpecError::VcpuCount)?;
    if config.smt {
        return Err(SpecError::Smt);
    }
    let bytes = config
        .mem_size_mib
        .checked_mul(1 << 20)
        .ok_or(SpecError::MemTooLarge(config.mem_size_mib))?;
    if bytes < MIN_MEM_BYTES {
        return Err(SpecError::MemTooSmall(config.mem_size_mib));
    }
    Ok(vcpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, path: &str, body: &str) -> Request {
        Request {
            method,
            path: path.to_string(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn firecracker_bodies_route_to_their_resources() {
        let put = |path, body| route(&request(Method::Put, path, body));
        assert_eq!(
            put(
                "/boot-source",
                r#"{"kernel_image_path":"vmlinux","boot_args":"console=ttyS0"}"#
            )
            .unwrap(),
            ApiRequest::PutBootSource(BootSourceBody {
                kernel_image_path: "vmlinux".into(),
                boot_args: Some("console=ttyS0".into()),
                initrd_path: None
            })
        );
        assert_eq!(
            put("/actions", r#"{"action_type":"InstanceStart"}"#).unwrap(),
            ApiRequest::InstanceStart
        );
        assert_eq!(
            route(&request(Method::Patch, "/vm", r#"{"state":"Paused"}"#)).unwrap(),
            ApiRequest::Pause
        );
        let drive = put(
            "/drives/rootfs",
            r#"{"drive_id":"rootfs","path_on_host":"a.img","is_root_device":true,"is_read_only":false}"#,
        )
        .unwrap();
        assert!(matches!(drive, ApiRequest::PutDrive(d) if d.is_root_device));
        let load = put(
            "/snapshot/load",
            r#"{"snapshot_path":"s","mem_backend":{"backend_path":"m","backend_type":"File"},"resume_vm":true}"#,
        )
        .unwrap();
        match load {
            ApiRequest::SnapshotLoad(body) => {
                assert_eq!(body.mem_path().unwrap(), PathBuf::from("m"));
                assert!(body.resume_vm);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_bodies_paths_and_methods_name_the_problem() {
        let fault = |r: Result<ApiRequest, Response>| {
            let response = r.unwrap_err();
            (response.status, response.fault_message().unwrap())
        };
        let (status, message) = fault(route(&request(
            Method::Put,
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":128,"colour":"red"}"#,
        )));
        assert_eq!(status, 400);
        assert!(message.contains("unknown field `colour`"), "{message}");
        let (status, message) = fault(route(&request(Method::Put, "/boot-source", "{")));
        assert_eq!(status, 400);
        assert!(message.contains("boot-source"), "{message}");
        let (status, _) = fault(route(&request(
            Method::Put,
            "/actions",
            r#"{"action_type":"Explode"}"#,
        )));
        assert_eq!(status, 400);
        let (status, message) = fault(route(&request(
            Method::Put,
            "/drives/a",
            r#"{"drive_id":"b","path_on_host":"x","is_root_device":false}"#,
        )));
        assert_eq!(status, 400);
        assert!(message.contains("differ"), "{message}");
        assert_eq!(fault(route(&request(Method::Get, "/nope", ""))).0, 404);
        assert_eq!(fault(route(&request(Method::Put, "/metrics", ""))).0, 405);
        assert_eq!(fault(route(&request(Method::Get, "/drives/a", ""))).0, 405);
    }

    #[test]
    fn a_config_file_checks_like_the_puts() {
        let spec = VmSpec::from_json(
            r#"{"boot-source":{"kernel_image_path":"k"},
                "machine-config":{"vcpu_count":2,"mem_size_mib":256},
                "drives":[{"drive_id":"data","path_on_host":"d.img","is_root_device":false,"is_read_only":true},
                          {"drive_id":"root","path_on_host":"r.img","is_root_device":true}],
                "network-interfaces":[{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"52:54:00:00:00:01"}]}"#,
        )
        .unwrap();
        let checked = spec.check().unwrap();
        assert_eq!(checked.vcpus.get(), 2);
        assert_eq!(checked.mem_bytes, 256 << 20);
        assert_eq!(checked.disks[0].path, PathBuf::from("r.img"));
        assert!(checked.disks[1].read_only);
        assert_eq!(checked.nets[0].mac, Some([0x52, 0x54, 0, 0, 0, 1]));
        for bad in [
            r#"{"machine-config":{"vcpu_count":0,"mem_size_mib":128}}"#,
            r#"{"machine-config":{"vcpu_count":1,"mem_size_mib":1}}"#,
            r#"{"logger":{}}"#,
            r#"{"network-interfaces":[{"iface_id":"a","host_dev_name":"t","guest_mac":"01:00:00:00:00:00"}]}"#,
            r#"{"drives":[{"drive_id":"a","path_on_host":"a","is_root_device":true},{"drive_id":"b","path_on_host":"b","is_root_device":true}]}"#,
        ] {
            assert!(VmSpec::from_json(bad).is_err(), "{bad}");
        }
        // Each refusal names the field and the value.
        let text = |json: &str| VmSpec::from_json(json).unwrap_err().to_string();
        assert_eq!(
            text(r#"{"machine-config":{"vcpu_count":0,"mem_size_mib":128}}"#),
            "invalid vcpu_count: the vCPU count must be 1 to 254, not 0"
        );
        assert_eq!(
            text(r#"{"machine-config":{"vcpu_count":1,"mem_size_mib":1}}"#),
            "mem_size_mib must be at least 16, not 1"
        );
        assert_eq!(
            text(
                r#"{"drives":[{"drive_id":"a","path_on_host":"a","is_root_device":true},{"drive_id":"b","path_on_host":"b","is_root_device":true}]}"#
            ),
            "drive 'b' cannot be the root device: another drive ('a') is already the root device"
        );
        assert_eq!(
            text(r#"{"network-interfaces":[{"iface_id":"eth0","host_dev_name":"t","guest_mac":"01:00:00:00:00:00"}]}"#),
            "guest_mac of 'eth0': '01:00:00:00:00:00' is a multicast address; a network card needs a unicast MAC"
        );
        assert!(matches!(
            VmSpec::from_json(r#"{"logger":{}}"#),
            Err(SpecError::Json(_))
        ));
        assert!(VmSpec::default()
            .check()
            .unwrap_err()
            .to_string()
            .contains("boot-source"));
    }
}
