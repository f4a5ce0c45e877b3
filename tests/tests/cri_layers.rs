//! Images of many layers, end to end: past about 40 layers the absolute
//! `lowerdir=` paths of the image store outgrow the one page `mount(2)`
//! takes. Docker builds images of up to 127 layers and containerd runs
//! them; a 128-layer image from the registry runs as a container's rootfs
//! and mounts as an image volume, both read from the container.
//! (Checkpoint and restore of one: `cri_checkpoint.rs`.)

mod common;

use berth_cri::proto::{self, ImageSpec};
use common::*;

/// Layers of the test image: Docker's limit plus one.
const LAYERS: usize = 128;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_of_128_layers_runs_and_mounts_as_a_volume() {
    let Some(mut env) = env("an_image_of_128_layers_runs_and_mounts_as_a_volume").await else {
        return;
    };
    let addr = env._reg.addr();
    berth_e2e::images::many_layers_image(&addr, "test/many", "v1", LAYERS)
        .await
        .unwrap();
    let image = format!("{addr}/test/many:v1");
    pull(env.daemon.channel().await, &image).await;

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
