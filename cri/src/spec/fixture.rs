//! The one base fixture every spec test starts from: a plain pod (pinned
//! net/ipc/uts, own pid namespace, pod shm, kubelet's cgroup parent), an
//! image with Entrypoint, Cmd, Env, WorkingDir and User, and a minimal
//! request. A test changes one field and checks one thing.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use berth_core::config::{DeviceKind, OverlayRootfs, SeccompProfile};

use super::{
    container_spec, ContainerSpec, HostDevice, HostDevices, PidMode, PodContext, SpecError,
};
use crate::image::rootfs::ImageConfig;
use crate::proto;

/// Owned inputs of [`container_spec`]; [`Fixture::pod`] borrows them.
pub(super) struct Fixture {
    pub req: proto::ContainerConfig,
    pub image: ImageConfig,
    pub hostname: String,
    pub net_ns: Option<PathBuf>,
    pub ipc_ns: Option<PathBuf>,
    pub uts_ns: Option<PathBuf>,
    pub pid: PidMode,
    pub shm: Option<PathBuf>,
    pub cgroup_parent: String,
    pub cgroup_driver: berth_core::cgroups::Driver,
    pub cgroup_view: Option<super::CgroupView>,
    pub sysctls: BTreeMap<String, String>,
    pub host_lsm: super::lsm::HostLsm,
    /// Host device nodes the fake lookup knows.
    pub host_devices: HashMap<PathBuf, HostDevice>,
    /// Localhost seccomp profiles the fake loader knows.
    pub seccomp_files: HashMap<String, SeccompProfile>,
}

const POD_DIR: &str = "/run/berth/pods/p1";

impl Fixture {
    pub fn new() -> Self {
        let req = proto::ContainerConfig {
            metadata: Some(proto::ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            image: Some(proto::ImageSpec {
                image: "docker.io/library/app:1".into(),
                ..Default::default()
            }),
            linux: Some(proto::LinuxContainerConfig {
                resources: None,
                security_context: Some(proto::LinuxContainerSecurityContext::default()),
            }),
            ..Default::default()
        };
        let image = ImageConfig {
            entrypoint: vec!["/docker-entrypoint.sh".into()],
            cmd: vec!["nginx".into(), "-g".into(), "daemon off;".into()],
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                "NGINX_VERSION=1.27".into(),
            ],
            working_dir: "/srv".into(),
            user: String::new(),
            stop_signal: String::new(),
            ..Default::default()
        };
        let mut host_devices = HashMap::new();
        host_devices.insert(
            PathBuf::from("/dev/fuse"),
            HostDevice {
                kind: DeviceKind::Char,
                major: 10,
                minor: 229,
                file_mode: 0o666,
                uid: 0,
                gid: 0,
            },
        );
        Fixture {
            req,
            image,
            hostname: "web-0".into(),
            net_ns: Some(format!("{POD_DIR}/ns/net").into()),
            ipc_ns: Some(format!("{POD_DIR}/ns/ipc").into()),
            uts_ns: Some(format!("{POD_DIR}/ns/uts").into()),
            pid: PidMode::Container,
            shm: Some(format!("{POD_DIR}/ns/shm").into()),
            cgroup_parent: "/kubepods/burstable/pod1234".into(),
            cgroup_driver: Default::default(),
            cgroup_view: None,
            sysctls: BTreeMap::new(),
            host_lsm: Default::default(),
            host_devices,
            seccomp_files: HashMap::new(),
        }
    }

    /// The request's security context (created by `new`).
    pub fn sc(&mut self) -> &mut proto::LinuxContainerSecurityContext {
        self.req
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
    }

    /// The request's resources (created on first use).
    pub fn resources(&mut self) -> &mut proto::LinuxContainerResources {
        self.req
            .linux
            .get_or_insert_with(Default::default)
            .resources
            .get_or_insert_with(Default::default)
    }

    pub fn pod(&self) -> PodContext<'_> {
        PodContext {
            hostname: &self.hostname,
            net_ns: self.net_ns.as_deref(),
            user_ns: None,
            cgroup_view: self.cgroup_view.clone(),
            ipc_ns: self.ipc_ns.as_deref(),
            uts_ns: self.uts_ns.as_deref(),
            pid: self.pid.clone(),
            shm: self.shm.as_deref(),
            resolv_conf: Path::new("/run/berth/pods/p1/resolv.conf"),
            hosts: Path::new("/run/berth/pods/p1/hosts"),
            hostname_file: Path::new("/run/berth/pods/p1/hostname"),
            cgroup_parent: &self.cgroup_parent,
            cgroup_driver: self.cgroup_driver,
            sysctls: &self.sysctls,
            host_lsm: self.host_lsm,
            selinux: None,
        }
    }

    pub fn run(&self) -> Result<ContainerSpec, SpecError> {
        let devices = FixtureDevices(&self.host_devices);
        let seccomp = |r: &str| {
            self.seccomp_files
                .get(r)
                .cloned()
                .ok_or_else(|| "no such file".to_string())
        };
        container_spec(
            "c1",
            &self.req,
            &self.pod(),
            &self.image,
            OverlayRootfs {
                lowerdirs: vec!["/var/lib/berth/layers/l1/fs".into()],
                upperdir: "/var/lib/berth/containers/c1/upper".into(),
                workdir: "/var/lib/berth/containers/c1/work".into(),
            },
            Path::new("/run/berth/c1/rootfs"),
            &devices,
            &seccomp,
            &|r: &str, sub: &Path| {
                let layers: Vec<PathBuf> = match r {
                    "vol:1" => vec!["/var/lib/berth/layers/v1/fs".into()],
                    "vol:2" => vec![
                        "/var/lib/berth/layers/v2b/fs".into(),
                        "/var/lib/berth/layers/v2a/fs".into(),
                    ],
                    _ => return Err("not pulled".to_string()),
                };
                // In this fake every layer has every sub path but `missing`.
                Ok(if sub == Path::new("missing") {
                    Vec::new()
                } else {
                    layers.into_iter().map(|l| l.join(sub)).collect()
                })
            },
        )
    }

    /// The translation, which must succeed.
    pub fn spec(&self) -> ContainerSpec {
        self.run().expect("the fixture translates")
    }

    /// The field named by the error, which must be an error.
    pub fn err_field(&self) -> String {
        match self.run() {
            Ok(_) => panic!("expected an error"),
            Err(SpecError::InvalidArgument { field, .. })
            | Err(SpecError::Unsupported { field, .. })
            | Err(SpecError::SeccompProfile { field, .. }) => field,
        }
    }
}

/// The fixture's host devices: `all` is every one of them (what a
/// privileged container gets).
struct FixtureDevices<'a>(&'a HashMap<PathBuf, HostDevice>);

impl HostDevices for FixtureDevices<'_> {
    fn get(&self, path: &Path) -> Option<HostDevice> {
        self.0.get(path).copied()
    }
    fn all(&self) -> Vec<(PathBuf, HostDevice)> {
        let mut v: Vec<_> = self.0.iter().map(|(p, d)| (p.clone(), *d)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}
