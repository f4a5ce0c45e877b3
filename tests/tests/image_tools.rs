//! Images built by other tools (issue 16): Debian's `umoci` builds OCI
//! layouts around the static busybox (`init`, `new`, `unpack`, `repack`,
//! `insert`, `insert --opaque`, `insert --whiteout`), `skopeo copy` pushes
//! them to a loopback registry, and berth pulls each one, runs a container
//! that checks its files, and removes it. Their layers are exactly what
//! those tools write — among them `umoci insert`'s, whose tar stream ends
//! right after the last entry's data, without end-of-archive blocks (Go's
//! archive/tar reader, containerd and skopeo accept it; berth once refused
//! it). Without umoci or skopeo the test says `skipped: ...`.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use berth_cri::proto::image_service_client::ImageServiceClient;
use berth_cri::proto::{self, ImageSpec};
use common::*;
use serde_json::Value;

/// What the container of each image checks; it prints `ok` and exits 0
/// only when every check holds (each failed check has its own exit code;
/// every check is `[ ... ] || exit N`, so a missing `[` fails too).
const CHECK_INSERTED: &str = r#"
[ "$(cat /payload.txt)" = "inserted by umoci" ] || exit 11
[ "$(cat /etc/motd)" = old ] || exit 12
[ -e /doomed ] || exit 13
echo ok"#;

const CHECK_REPACKED: &str = r#"
[ ! -e /doomed ] || exit 21
[ "$(cat /etc/motd)" = new ] || exit 22
[ "$(cat /etc/added)" = added ] || exit 23
[ ! -e /payload.txt ] || exit 24
echo ok"#;

const CHECK_MULTI: &str = r#"
[ "$(cat /payload.txt)" = "repacked over an insert" ] || exit 31
[ "$(cat /opt/tree/a/b/c.txt)" = deep ] || exit 32
[ ! -e /opt/tree/a/gone.txt ] || exit 33
[ ! -e /doomed ] || exit 34
[ ! -e /data/old ] || exit 35
[ "$(cat /data/new)" = fresh ] || exit 36
[ "$(cat /etc/motd)" = old ] || exit 37
echo ok"#;

/// Whether `tool --version` runs.
fn installed(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `tool args`, which must succeed.
fn run(tool: &str, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test paths")
}

fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// A small rootfs around the host's static busybox: `sh` and `cat` hard
/// links to /bin/busybox (umoci writes them as tar hard links), `[` and
/// `echo` symlinks, /etc/passwd and /etc/group with root, empty /proc, /sys,
/// /dev and /tmp. Not every applet: umoci hashes each regular file for its
/// mtree, and 400 hard links to a 2 MB busybox cost seconds per unpack and
/// repack.
fn busybox_rootfs(rootfs: &Path) {
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(berth_e2e::busybox().unwrap(), bin.join("busybox")).unwrap();
    for applet in ["sh", "cat"] {
        std::fs::hard_link(bin.join("busybox"), bin.join(applet)).unwrap();
    }
    for applet in ["[", "echo"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    for d in ["proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    write(
        &rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n",
    );
    write(&rootfs.join("etc/group"), "root:x:0:\n");
}

/// An OCI image layout that umoci writes into.
struct Layout {
    dir: PathBuf,
    work: PathBuf,
}

impl Layout {
    fn image(&self, tag: &str) -> String {
        format!("{}:{tag}", s(&self.dir))
    }

    fn blob(&self, digest: &str) -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        std::fs::read(self.dir.join("blobs/sha256").join(hex)).unwrap()
    }

    /// The manifest `tag` names in index.json.
    fn manifest(&self, tag: &str) -> Value {
        let index: Value =
            serde_json::from_slice(&std::fs::read(self.dir.join("index.json")).unwrap()).unwrap();
        let digest = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .and_then(|m| m["digest"].as_str())
            .unwrap_or_else(|| panic!("no tag {tag} in {index}"))
            .to_string();
        serde_json::from_slice(&self.blob(&digest)).unwrap()
    }

    /// The uncompressed tar stream of `tag`'s top layer (umoci writes gzip).
    fn top_layer_tar(&self, tag: &str) -> Vec<u8> {
        let m = self.manifest(tag);
        let top = m["layers"].as_array().unwrap().last().unwrap();
        assert!(
            top["mediaType"].as_str().unwrap().ends_with("tar+gzip"),
            "{top}"
        );
        let gz = self.blob(top["digest"].as_str().unwrap());
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut tar)
            .unwrap();
        tar
    }

    /// `umoci unpack` of `tag` into a fresh bundle, `change` applied to its
    /// rootfs, `umoci repack` as `new_tag`: one layer with what changed.
    fn repack(&self, tag: &str, new_tag: &str, change: impl FnOnce(&Path)) {
        let bundle = self.work.join(format!("bundle-{new_tag}"));
        run(
            "umoci",
            &["unpack", "--image", &self.image(tag), s(&bundle)],
        );
        change(&bundle.join("rootfs"));
        run(
            "umoci",
            &["repack", "--image", &self.image(new_tag), s(&bundle)],
        );
        std::fs::remove_dir_all(&bundle).unwrap();
    }

    /// `umoci insert` of the host path `src` at `target` into `tag`, saved
    /// as `new_tag` (`extra`: `--opaque`).
    fn insert(&self, tag: &str, new_tag: &str, extra: &[&str], src: &Path, target: &str) {
        let image = self.image(tag);
        let mut args = vec!["insert", "--image", &image, "--tag", new_tag];
        args.extend(extra);
        args.extend([s(src), target]);
        run("umoci", &args);
    }
}

/// Builds the three images in `layout` (see the CHECK_* scripts for what
/// each holds): `inserted` (busybox base + an `umoci insert` top layer),
/// `repacked` (base + a repack layer deleting /doomed, changing /etc/motd,
/// adding /etc/added) and `multi` (six layers: base, the insert, a
/// directory insert, an opaque insert, a whiteout insert, a repack).
fn build_images(layout: &Layout) {
    let l = layout;
    let w = &l.work;
    run("umoci", &["init", "--layout", s(&l.dir)]);
    run("umoci", &["new", "--image", &l.image("base")]);
    l.repack("base", "base", |rootfs| {
        busybox_rootfs(rootfs);
        write(&rootfs.join("etc/motd"), "old\n");
        write(&rootfs.join("doomed"), "doomed\n");
        write(&rootfs.join("data/old"), "old\n");
    });

    write(&w.join("payload.txt"), "inserted by umoci\n");
    l.insert(
        "base",
        "inserted",
        &[],
        &w.join("payload.txt"),
        "/payload.txt",
    );

    l.repack("base", "repacked", |rootfs| {
        std::fs::remove_file(rootfs.join("doomed")).unwrap();
        write(&rootfs.join("etc/motd"), "new\n");
        write(&rootfs.join("etc/added"), "added\n");
    });

    write(&w.join("tree/a/b/c.txt"), "deep\n");
    write(&w.join("tree/a/gone.txt"), "gone\n");
    l.insert("inserted", "multi", &[], &w.join("tree"), "/opt/tree");
    write(&w.join("data/new"), "fresh\n");
    l.insert("multi", "multi", &["--opaque"], &w.join("data"), "/data");
    let image = l.image("multi");
    run(
        "umoci",
        &["insert", "--image", &image, "--whiteout", "/doomed"],
    );
    l.repack("multi", "multi", |rootfs| {
        std::fs::remove_file(rootfs.join("opt/tree/a/gone.txt")).unwrap();
        write(&rootfs.join("payload.txt"), "repacked over an insert\n");
    });
}

/// `skopeo copy` of `tag` to `dest` (plain HTTP); the manifest digest pushed.
fn skopeo_push(layout: &Layout, tag: &str, dest: &str) -> String {
    let digest_file = layout.work.join(format!("{tag}.digest"));
    run(
        "skopeo",
        &[
            // The node's /etc/containers/policy.json must not matter.
            "--insecure-policy",
            "copy",
            "-q",
            "--dest-tls-verify=false",
            "--digestfile",
            s(&digest_file),
            &format!("oci:{}", layout.image(tag)),
            &format!("docker://{dest}"),
        ],
    );
    std::fs::read_to_string(&digest_file)
        .unwrap()
        .trim()
        .to_string()
}

/// Runs `check` in a container of `image`; it must print `ok` and exit 0.
/// The container is removed afterwards.
async fn run_check(env: &mut Env, name: &str, image: &str, check: &str) {
    let mut cfg = container(env, name, &["sh", "-c", check], &[]);
    cfg.image = Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    });
    let id = create(env, cfg).await.unwrap();
    start(&mut env.rt, &id).await.unwrap();
    let st = wait_exited(&mut env.rt, &id).await;
    let log = log_records(&st.log_path);
    assert_eq!(st.exit_code, 0, "{name} ({image}): {log:?}");
    assert_eq!(log.last().map(|r| r.2.as_str()), Some("ok"), "{log:?}");
    env.rt
        .remove_container(proto::RemoveContainerRequest { container_id: id })
        .await
        .unwrap();
}

async fn remove_image(env: &Env, image: &str) {
    ImageServiceClient::new(env.daemon.channel().await)
        .remove_image(proto::RemoveImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
}

/// Whether any unpacked layer of the daemon holds `path`.
fn some_layer_has(env: &Env, path: &str) -> bool {
    std::fs::read_dir(env.dir.path().join("root/layers"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|l| l.path().join("fs").join(path).exists())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn umoci_and_skopeo_images_pull_run_and_remove() {
    let test = "umoci_and_skopeo_images_pull_run_and_remove";
    for tool in ["umoci", "skopeo"] {
        if !installed(tool) {
            println!("skipped: {test}: {tool} not installed (scripts/install-test-deps.sh)");
            return;
        }
    }
    if berth_e2e::busybox().is_none() {
        println!("skipped: {test}: needs a static busybox (Debian's busybox-static)");
        return;
    }
    let Some(mut env) = env(test).await else {
        return;
    };
    let layout = Layout {
        dir: env.dir.path().join("oci"),
        work: env.dir.path().join("umoci-work"),
    };
    build_images(&layout);

    // The premise: umoci insert's layer has no end-of-archive blocks, while
    // umoci repack's carries its whiteout as a `.wh.` entry.
    let tar = layout.top_layer_tar("inserted");
    assert!(!tar.ends_with(&[0; 1024]), "{} bytes", tar.len());
    let tar = layout.top_layer_tar("repacked");
    let names: Vec<String> = tar::Archive::new(&tar[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n == ".wh.doomed"), "{names:?}");
    assert!(names.iter().any(|n| n == "etc/motd"), "{names:?}");
    let layers = |tag: &str| layout.manifest(tag)["layers"].as_array().unwrap().len();
    assert_eq!(
        (layers("inserted"), layers("repacked"), layers("multi")),
        (2, 2, 6)
    );

    let addr = env._reg.addr();
    let cases = [
        ("inserted", CHECK_INSERTED),
        ("repacked", CHECK_REPACKED),
        ("multi", CHECK_MULTI),
    ];
    let mut refs = Vec::new();
    for (tag, check) in cases {
        let repo = format!("{addr}/tools/{tag}");
        let image = format!("{repo}:v1");
        let digest = skopeo_push(&layout, tag, &image);
        pull(env.daemon.channel().await, &image).await;
        let st = image_status(&env, &image).await.expect("pulled");
        assert_eq!(st.repo_digests, [format!("{repo}@{digest}")], "{tag}");
        let config = layout.manifest(tag)["config"]["digest"].clone();
        assert_eq!(st.id, config.as_str().unwrap(), "{tag}: the config digest");
        run_check(&mut env, tag, &image, check).await;
        refs.push((image, st.id));
    }

    // Removing `inserted` leaves the layers `multi` shares with it.
    remove_image(&env, &refs[0].0).await;
    assert!(image_status(&env, &refs[0].0).await.is_none());
    run_check(&mut env, "multi-again", &refs[2].0, CHECK_MULTI).await;

    for (image, _) in &refs[1..] {
        remove_image(&env, image).await;
        assert!(image_status(&env, image).await.is_none(), "{image}");
    }
    let left = ImageServiceClient::new(env.daemon.channel().await)
        .list_images(proto::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    for (image, id) in &refs {
        assert!(!left.iter().any(|i| &i.id == id), "{image} still listed");
    }
    assert_eq!(left.len(), 1, "only the env's own image is left: {left:?}");
    // And their unpacked layers went with them.
    for path in ["payload.txt", "opt/tree", "etc/added", "data/new"] {
        assert!(!some_layer_has(&env, path), "a layer with {path} is left");
    }
}
