//! RuntimeClass handlers end to end: a node configured with an `embedded`
//! handler (`hardened`), pods asking for it, for an unknown one, and the
//! default one beside it.

mod common;

use berth_cri::proto;
use common::*;
use tonic::Code;

const CONFIG: &str = r#"
[runtime.handlers.hardened]
kind = "embedded"
require_user_namespace = true
deny_host_namespaces = true
deny_privileged = true
readonly_rootfs = true
default_seccomp = true
"#;

async fn run_pod_with(
    env: &mut Env,
    config: proto::PodSandboxConfig,
    handler: &str,
) -> Result<String, tonic::Status> {
    env.rt
        .run_pod_sandbox(proto::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: handler.into(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

/// The container `c` in `pod`, started; its id.
async fn create_in(
    env: &mut Env,
    pod: &str,
    pod_config: proto::PodSandboxConfig,
    c: proto::ContainerConfig,
) -> Result<String, tonic::Status> {
    let id = env
        .rt
        .create_container(proto::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(c),
            sandbox_config: Some(pod_config),
        })
        .await?
        .into_inner()
        .container_id;
    start(&mut env.rt, &id).await?;
    Ok(id)
}

const PROBE: &str =
    "touch /written 2>/dev/null && echo rw || echo ro; grep '^Seccomp:' /proc/self/status";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_handler_enforces_its_policy_next_to_the_default_one() {
    let test = "an_embedded_handler_enforces_its_policy_next_to_the_default_one";
    let Some(mut env) = env_with_config(test, CONFIG).await else {
        return;
    };
    // Status lists both handlers.
    let names: Vec<String> = runtime_status(&mut env.rt)
        .await
        .runtime_handlers
        .into_iter()
        .map(|h| h.name)
        .collect();
    assert_eq!(names, ["", "hardened"]);

    // An unknown handler is refused with the known ones.
    let cfg = userns_pod(&env, "kata-pod");
    let err = run_pod_with(&mut env, cfg, "kata").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("runtime_handler") && err.message().contains("hardened"),
        "{}",
        err.message()
    );
    // The hardened handler refuses a pod in the node's user namespace.
    let cfg = pod_config(env.dir.path());
    let err = run_pod_with(&mut env, cfg, "hardened").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("userns_options"),
        "{}",
        err.message()
    );

    // In its own user namespace it runs: read-only rootfs, RuntimeDefault
    // seccomp (the request asked for neither).
    let cfg = userns_pod(&env, "hardened-pod");
    let pod = run_pod_with(&mut env, cfg.clone(), "hardened")
        .await
        .unwrap();
    let mut c = container(&env, "probe", &["sleep", "300"], &[]);
    c.linux = Some(proto::LinuxContainerConfig {
        security_context: Some(proto::LinuxContainerSecurityContext {
            run_as_user: Some(proto::Int64Value { value: 0 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = create_in(&mut env, &pod, cfg.clone(), c.clone())
        .await
        .unwrap();
    assert_eq!(sh_in(&mut env.rt, &id, PROBE).await, "ro\nSeccomp:\t2\n");
    // A privileged container is refused, naming the field.
    let mut p = c.clone();
    p.metadata.as_mut().unwrap().name = "privileged".into();
    p.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .privileged = true;
    let err = create_in(&mut env, &pod, cfg, p).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("security_context.privileged"),
        "{}",
        err.message()
    );

    // The default handler's pod beside it is untouched.
    let mut c = container(&env, "default-probe", &["sleep", "300"], &[]);
    c.linux = Some(proto::LinuxContainerConfig {
        security_context: Some(proto::LinuxContainerSecurityContext {
            run_as_user: Some(proto::Int64Value { value: 0 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = create(&mut env, c).await.unwrap();
    start(&mut env.rt, &id).await.unwrap();
    assert_eq!(sh_in(&mut env.rt, &id, PROBE).await, "rw\nSeccomp:\t0\n");
}
