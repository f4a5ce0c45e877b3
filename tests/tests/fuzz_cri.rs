//! A seeded fuzz of every unary CRI RPC: valid requests (with the ids of a
//! live pod, container and image) are encoded, then mutated at the
//! protobuf wire level — every length-delimited value (string, bytes or
//! nested message) may become huge, empty, NUL-laden, a path traversal or
//! not UTF-8; every varint an extreme; fields repeated thousands of times —
//! and sent raw. Asserted: no request hangs (10 s), none gets `Unknown`
//! or `Internal` (a panic or an unmapped error), no file appears where a
//! traversal pointed, the daemon's RSS stays bounded, and it still serves.

mod common;

use std::time::Duration;

use berth_cri::proto;
use common::*;
use prost::Message;
use tonic::Code;

/// xorshift64*: seeded, so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Where traversals in the fuzzed strings point; nothing may appear there.
const ESCAPE: &str = "/tmp/berth-fuzz-escape";

/// Replacement values for a length-delimited field.
fn bad_bytes(rng: &mut Rng) -> Vec<u8> {
    match rng.below(9) {
        0 => Vec::new(),
        1 => vec![b'a'; 1 << 20],
        2 => b"a\0b".to_vec(),
        3 => format!("../../../../../../..{ESCAPE}").into_bytes(),
        4 => ESCAPE.as_bytes().to_vec(),
        5 => vec![0xff, 0xfe, 0xfd],
        6 => "/".repeat(5000).into_bytes(),
        7 => b"-1".to_vec(),
        _ => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn get_varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// `msg` with some of its fields (recursively, into nested messages when
/// they parse as such) replaced, repeated or dropped.
fn mutate(msg: &[u8], rng: &mut Rng, depth: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < msg.len() {
        let start = i;
        let Some(key) = get_varint(msg, &mut i) else {
            out.extend_from_slice(&msg[start..]);
            break;
        };
        let (field, wire) = (key >> 3, key & 7);
        let mut value = Vec::new();
        let ok = match wire {
            0 => get_varint(msg, &mut i).map(|v| {
                let v = match rng.below(6) {
                    0 => u64::MAX,
                    1 => i64::MIN as u64,
                    2 => i64::MAX as u64,
                    3 => 0,
                    _ => v,
                };
                put_varint(&mut value, v);
            }),
            2 => get_varint(msg, &mut i).and_then(|len| {
                let end = i.checked_add(usize::try_from(len).ok()?)?;
                let inner = msg.get(i..end)?;
                i = end;
                let inner = match rng.below(4) {
                    0 => bad_bytes(rng),
                    1 if depth < 6 => mutate(inner, rng, depth + 1),
                    _ => inner.to_vec(),
                };
                put_varint(&mut value, inner.len() as u64);
                value.extend_from_slice(&inner);
                Some(())
            }),
            1 => msg.get(i..i + 8).map(|b| {
                value.extend_from_slice(b);
                i += 8;
            }),
            5 => msg.get(i..i + 4).map(|b| {
                value.extend_from_slice(b);
                i += 4;
            }),
            _ => None,
        };
        if ok.is_none() {
            out.extend_from_slice(&msg[start..]);
            break;
        }
        let mut field_bytes = Vec::new();
        put_varint(&mut field_bytes, (field << 3) | wire);
        field_bytes.extend_from_slice(&value);
        // Thousands of small repeats; a big value is sent once (the
        // server's 4 MiB message limit is tested by the 1 MiB values and
        // the repeats, not by the test pushing gigabytes).
        let times = match rng.below(12) {
            0 => 0,
            1 if field_bytes.len() <= 1024 => 3000,
            _ => 1,
        };
        for _ in 0..times {
            out.extend_from_slice(&field_bytes);
        }
    }
    out
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_requests_get_clear_errors_and_change_nothing_outside() {
    let test = "fuzzed_requests_get_clear_errors_and_change_nothing_outside";
    let Some(mut env) = env(test).await else {
        return;
    };
    let _ = std::fs::remove_file(ESCAPE);
    let cfg = container(&env, "c", &["sleep", "1000"], &[]);
    let ctr = create(&mut env, cfg.clone()).await.unwrap();
    start(&mut env.rt, &ctr).await.unwrap();
    let pod_cfg = pod_config(env.dir.path());
    let image = proto::ImageSpec {
        image: env.image.clone(),
        ..Default::default()
    };
    let rt = "/runtime.v1.RuntimeService/";
    let im = "/runtime.v1.ImageService/";
    let bases: Vec<(String, Vec<u8>)> = vec![
        (
            format!("{rt}Version"),
            proto::VersionRequest {
                version: "v1".into(),
            }
            .encode_to_vec(),
        ),
        (
            format!("{rt}RunPodSandbox"),
            proto::RunPodSandboxRequest {
                config: Some(pod_cfg.clone()),
                runtime_handler: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            format!("{rt}StopPodSandbox"),
            proto::StopPodSandboxRequest {
                pod_sandbox_id: "0".repeat(64),
            }
            .encode_to_vec(),
        ),
        (
            format!("{rt}RemovePodSandbox"),
            proto::RemovePodSandboxRequest {
                pod_sandbox_id: "0".repeat(64),
            }
            .encode_to_vec(),
        ),
        (
            format!("{rt}PodSandboxStatus"),
            proto::PodSandboxStatusRequest {
                pod_sandbox_id: env.pod.clone(),
                verbose: true,
            }
            .encode_to_vec(),
        ),
        (
            format!("{rt}ListPodSandbox"),
            proto::ListPodSandboxRequest::default().encode_to_vec(),
        ),
        (
            format!("{rt}CreateContainer"),
            proto::CreateContainerRequest {
                pod_sandbox_id: env.pod.clone(),
                config: Some(cfg.clone()),
                sandbox_config: Some(pod_cfg.clone()),
            }
            .encode_to_vec(),
        ),
        (
            format!("{rt}StartContainer"),
            proto::StartContainerRequest {
                container_id: "0".repeat(64),
            }
            .encode_to_vec(),
        ),
        (
            format!("{rt}StopContainer"),
            proto::StopContainerRequest {
                container_id: "0".repeat(64),
                timeout: 1,
            }
            .encode_to_vec(),
        ),
        (
            format!("{rt}RemoveContainer"),
            proto::RemoveContainerRequest {
                container_id: "0".repeat(64),
            }
            .encode_to_vec(),
        ),
        (
            format!("{rt}ListContainers"),
            proto::ListContainersRequest::default().encode_to_vec(),
        ),
        (
            format!("{rt}ContainerStatus"),
            proto::ContainerStatusRequest {
                container_id: ctr.clone(),
                verbose: true,
            }
            .encode_to_vec(),
        ),
        (
            format!("{rt}UpdateContainerResources"),
            proto::UpdateContainerResourcesRequest {
                container_id: ctr.clone(),
                linux: Some(proto::LinuxContainerResources {
                    cpu_shares: 512,
                    memory_limit_in_bytes: 256 << 20,
                    ..Default::default()
                }),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            format!("{rt}ReopenContainerLog"),
            proto::ReopenContainerLogRequest {
                container_id: ctr.clone(),
            }
            .encode_to_vec(),
        ),
        (
            format!("{rt}ExecSync"),
            proto::ExecSyncRequest {
                container_id: ctr.clone(),
                cmd: vec!["true".into()],
                timeout: 5,
            }
            .encode_to_vec(),
        ),
        (
            format!("{rt}Exec"),
            proto::ExecRequest {
                container_id: ctr.clone(),
                cmd: vec!["true".into()],
                stdout: true,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            format!("{rt}Attach"),
            proto::AttachRequest {
                container_id: ctr.clone(),
                stdout: true,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            format!("{rt}PortForward"),
            proto::PortForwardRequest {
                pod_sandbox_id: env.pod.clone(),
                port: vec![80],
            }
            .encode_to_vec(),
        ),
        (
            format!("{rt}ContainerStats"),
            proto::ContainerStatsRequest {
                container_id: ctr.clone(),
            }
            .encode_to_vec(),
        ),
        (
            format!("{rt}ListContainerStats"),
            proto::ListContainerStatsRequest::default().encode_to_vec(),
        ),
        (
            format!("{rt}PodSandboxStats"),
            proto::PodSandboxStatsRequest {
                pod_sandbox_id: env.pod.clone(),
            }
            .encode_to_vec(),
        ),
        (
            format!("{rt}ListPodSandboxStats"),
            proto::ListPodSandboxStatsRequest::default().encode_to_vec(),
        ),
        (
            format!("{rt}UpdateRuntimeConfig"),
            proto::UpdateRuntimeConfigRequest {
                runtime_config: Some(proto::RuntimeConfig {
                    network_config: Some(proto::NetworkConfig {
                        pod_cidr: "10.88.0.0/16".into(),
                    }),
                }),
            }
            .encode_to_vec(),
        ),
        (
            format!("{rt}Status"),
            proto::StatusRequest { verbose: true }.encode_to_vec(),
        ),
        (
            format!("{rt}CheckpointContainer"),
            proto::CheckpointContainerRequest {
                container_id: "0".repeat(64),
                location: format!("{ESCAPE}.tar"),
                timeout: 1,
            }
            .encode_to_vec(),
        ),
        (
            format!("{rt}ListMetricDescriptors"),
            proto::ListMetricDescriptorsRequest::default().encode_to_vec(),
        ),
        (
            format!("{rt}ListPodSandboxMetrics"),
            proto::ListPodSandboxMetricsRequest::default().encode_to_vec(),
        ),
        (
            format!("{rt}RuntimeConfig"),
            proto::RuntimeConfigRequest::default().encode_to_vec(),
        ),
        (
            format!("{rt}UpdatePodSandboxResources"),
            proto::UpdatePodSandboxResourcesRequest {
                pod_sandbox_id: env.pod.clone(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            format!("{im}ListImages"),
            proto::ListImagesRequest::default().encode_to_vec(),
        ),
        (
            format!("{im}ImageStatus"),
            proto::ImageStatusRequest {
                image: Some(image.clone()),
                verbose: true,
            }
            .encode_to_vec(),
        ),
        (
            format!("{im}PullImage"),
            proto::PullImageRequest {
                image: Some(proto::ImageSpec {
                    image: "127.0.0.1:1/nothing:v1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            format!("{im}RemoveImage"),
            proto::RemoveImageRequest {
                image: Some(proto::ImageSpec {
                    image: "nothing:v1".into(),
                    ..Default::default()
                }),
            }
            .encode_to_vec(),
        ),
        (
            format!("{im}ImageFsInfo"),
            proto::ImageFsInfoRequest::default().encode_to_vec(),
        ),
    ];
    let pid = env.daemon.pid();
    let rss_before = rss_kib(pid);
    let mut grpc = tonic::client::Grpc::new(env.daemon.channel().await);
    let seed = std::env::var("BERTH_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0001_u64);
    let rounds: usize = std::env::var("BERTH_FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500);
    let mut rng = Rng(seed);
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    let mut bad = Vec::new();
    let mut last = String::new();
    for round in 0..rounds {
        let (path, base) = &bases[rng.below(bases.len())];
        let body = mutate(base, &mut rng, 0);
        let body_copy = body.clone();
        grpc.ready().await.unwrap();
        let path_q = tonic::codegen::http::uri::PathAndQuery::try_from(path.as_str()).unwrap();
        let call = grpc.unary(tonic::Request::new(body), path_q, raw::Raw);
        let code = match tokio::time::timeout(Duration::from_secs(10), call).await {
            Err(_) => panic!(
                "round {round} (seed {seed}): {path} hung; request bytes (first 200): {:?}",
                &body_copy[..body_copy.len().min(200)]
            ),
            Ok(Ok(_)) => Code::Ok,
            Ok(Err(s)) => {
                if matches!(
                    s.code(),
                    Code::Cancelled | Code::Internal | Code::ResourceExhausted
                ) && std::env::var_os("BERTH_FUZZ_VERBOSE").is_some()
                {
                    println!(
                        "round {round} {path}: {:?} {} (len {}); before: {last}",
                        s.code(),
                        s.message(),
                        body_copy.len()
                    );
                }
                if matches!(s.code(), Code::Unknown | Code::Internal) {
                    bad.push(format!(
                        "round {round} {path}: {:?} {}",
                        s.code(),
                        s.message()
                    ));
                }
                s.code()
            }
        };
        *codes.entry(format!("{code:?}")).or_default() += 1;
        last = format!("{path} len {} -> {code:?}", body_copy.len());
    }
    println!("fuzz (seed {seed}, {rounds} requests): {codes:?}");
    let rss_after = rss_kib(pid);
    println!("daemon RSS {rss_before} KiB → {rss_after} KiB");
    assert!(
        bad.is_empty(),
        "Unknown/Internal answers:\n{}",
        bad.join("\n")
    );
    assert!(
        !std::path::Path::new(ESCAPE).exists(),
        "a traversal wrote {ESCAPE}"
    );
    assert!(!std::path::Path::new(&format!("{ESCAPE}.tar")).exists());
    assert!(
        rss_after < rss_before + 256 * 1024,
        "RSS grew by {} KiB",
        rss_after - rss_before
    );
    // Still serving, the container still there.
    assert_eq!(status(&mut env.rt, &ctr).await.id, ctr);
}

/// Raw request bytes through tonic.
mod raw {
    #[derive(Clone, Copy, Default)]
    pub struct Raw;
    pub struct RawEnc;
    pub struct RawDec;

    impl tonic::codec::Encoder for RawEnc {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(
            &mut self,
            item: Vec<u8>,
            buf: &mut tonic::codec::EncodeBuf<'_>,
        ) -> Result<(), tonic::Status> {
            bytes::BufMut::put_slice(buf, &item);
            Ok(())
        }
    }

    impl tonic::codec::Decoder for RawDec {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn decode(
            &mut self,
            buf: &mut tonic::codec::DecodeBuf<'_>,
        ) -> Result<Option<Vec<u8>>, tonic::Status> {
            let n = bytes::Buf::remaining(buf);
            Ok(Some(bytes::Buf::copy_to_bytes(buf, n).to_vec()))
        }
    }

    impl tonic::codec::Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = RawEnc;
        type Decoder = RawDec;
        fn encoder(&mut self) -> RawEnc {
            RawEnc
        }
        fn decoder(&mut self) -> RawDec {
            RawDec
        }
    }
}
