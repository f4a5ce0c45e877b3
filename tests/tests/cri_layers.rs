//! Images of many layers, end to end: past about 40 layers the absolute
//! `lowerdir=` paths of the image store outgrow the one page `mount(2)`
//! takes. Docker builds images of up to 127 layers and containerd runs
//! them; a 128-layer image from the registry runs as a container's rootfs
//! and mounts as an image volume, both read from the container, and runs
//! in a pod with its own user namespace (every layer idmapped).
//! (Checkpoint and restore of one: `cri_checkpoint.rs`.)

mod common;

use berth_cri::proto::{self, ImageSpec};
use common::*;

/// Layers of the test image: Docker's limit plus one.
const LAYERS: usize = 128;

/// Pushes the [`LAYERS`]-layer image to the env's registry and pulls it.
async fn many_layers(env: &Env) -> String {
    let addr = env._reg.addr();
    berth_e2e::images::many_layers_image(&addr, "test/many", "v1", LAYERS)
        .await
        .unwrap();
    let image = format!("{addr}/test/many:v1");
    pull(env.daemon.channel().await, &image).await;
    image
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_of_128_layers_runs_and_mounts_as_a_volume() {
    let Some(mut env) = env("an_image_of_128_layers_runs_and_mounts_as_a_volume").await else {
        return;
    };
    let image = many_layers(&env).await;

    let mut c = container(&env, "many", &["sleep", "1000"], &[]);
    let spec = Some(ImageSpec {
        image: image.clone(),
        ..Default::default()
    });
    c.image = spec.clone();
    c.mounts = vec![proto::Mount {
        container_path: "/img".into(),
        image: spec,
        readonly: true,
        ..Default::default()
    }];
    let id = create(&mut env, c)
        .await
        .unwrap_or_else(|e| panic!("create from {LAYERS} layers: {}", e.message()));
    start(&mut env.rt, &id)
        .await
        .unwrap_or_else(|e| panic!("start: {}", e.message()));
    let top = LAYERS - 1;
    let script = format!(
        "test -x /bin/busybox && echo bottom; cat /layers/1 /layers/{top} /layers/top; \
         echo written > /layers/new && cat /layers/new; \
         cat /img/layers/{top} /img/layers/top; touch /img/x 2>/dev/null || echo read-only"
    );
    let out = sh_in(&mut env.rt, &id, &script).await;
    let (last, top) = (format!("layer {top}"), top.to_string());
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "bottom",
            "layer 1",
            &last,
            &top,
            "written",
            &last,
            &top,
            "read-only"
        ],
        "the bottom, second and top layers in order, writable; the same image as a read-only volume"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_of_128_layers_in_a_pod_with_its_own_user_namespace() {
    let test = "an_image_of_128_layers_in_a_pod_with_its_own_user_namespace";
    let Some(mut env) = env(test).await else {
        return;
    };
    let image = many_layers(&env).await;
    let maps = vec![proto::IdMapping {
        host_id: 300_000,
        container_id: 0,
        length: 65536,
    }];
    let userns = proto::UserNamespace {
        mode: proto::NamespaceMode::Pod as i32,
        uids: maps.clone(),
        gids: maps,
    };
    let mut pod_cfg = pod_config(env.dir.path());
    pod_cfg.metadata.as_mut().unwrap().name = "userns".into();
    let opts = pod_cfg
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap();
    opts.namespace_options.as_mut().unwrap().userns_options = Some(userns.clone());
    let pod = run_pod(&mut env.rt, pod_cfg).await;
    let mut c = container(&env, "many", &["sleep", "1000"], &[]);
    c.image = Some(ImageSpec {
        image,
        ..Default::default()
    });
    c.linux = Some(proto::LinuxContainerConfig {
        security_context: Some(proto::LinuxContainerSecurityContext {
            run_as_user: Some(proto::Int64Value { value: 0 }),
            namespace_options: Some(proto::NamespaceOption {
                pid: proto::NamespaceMode::Container as i32,
                userns_options: Some(userns),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = env
        .rt
        .create_container(proto::CreateContainerRequest {
            pod_sandbox_id: pod,
            config: Some(c),
            sandbox_config: None,
        })
        .await
        .unwrap_or_else(|e| panic!("create: {}", e.message()))
        .into_inner()
        .container_id;
    start(&mut env.rt, &id)
        .await
        .unwrap_or_else(|e| panic!("start: {}", e.message()));
    let top = LAYERS - 1;
    let out = sh_in(
        &mut env.rt,
        &id,
        &format!("stat -c %u /bin/busybox /layers/{top}; cat /layers/top; touch /new && id -u"),
    )
    .await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["0", "0", &top.to_string(), "0"],
        "the idmapped layers' files are root's inside, in overlay order"
    );
}
