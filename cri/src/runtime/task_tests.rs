//! Handlers driven through the fake [`Task`](crate::task::Task): what the
//! daemon asks of a container's owner and what it records, without root or
//! a monitor.

use std::sync::Arc;

use super::container::{
    ContainerRecord, ContainerState, Containers, LiveContainer, RECORD_VERSION,
};
use super::{container_start, container_stop, container_update};
use crate::store::ObjectId;
use crate::task::fake::FakeTasks;
use crate::task::{FailureKind, TaskFailure};

struct Env {
    _dir: tempfile::TempDir,
    containers: Containers,
    fake: FakeTasks,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTasks::default();
    let containers = Containers::open(
        &dir.path().join("root"),
        &dir.path().join("state"),
        Arc::new(fake.clone()),
    )
    .unwrap();
    Env {
        _dir: dir,
        containers,
        fake,
    }
}

fn record(env: &Env, state: ContainerState) -> LiveContainer {
    let id = ObjectId::random().unwrap();
    let rec = ContainerRecord {
        version: RECORD_VERSION,
        dir: env.containers.state_dir.join(id.as_str()),
        id,
        sandbox_id: ObjectId::random().unwrap(),
        name: "app_pod_0".into(),
        state,
        created_at: 1,
        started_at: None,
        finished_at: None,
        exit_code: 0,
        reason: String::new(),
        message: String::new(),
        image: "busybox".into(),
        image_ref: "sha256:00".into(),
        repo_digest: String::new(),
        log_path: String::new(),
        monitor_pid: 0,
        init_pid: 0,
        stop_signal: 15,
        config: Vec::new(),
    };
    env.containers.registry.insert(rec.clone()).unwrap();
    LiveContainer::new(rec)
}

#[test]
fn start_asks_the_owner_and_records_its_start_time() {
    let env = env();
    let mut rec = record(&env, ContainerState::Created);
    let task = env.fake.get(&rec.dir);
    container_start::start(&env.containers, &mut rec).unwrap();
    assert_eq!(rec.state, ContainerState::Running);
    assert!(rec.started_at.is_some_and(|t| t > 0));
    assert_eq!(task.calls().last().map(String::as_str), Some("start"));

    // Started already: refused before the owner is asked.
    let before = task.calls().len();
    let err = container_start::start(&env.containers, &mut rec).unwrap_err();
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::FailedPrecondition
    );
    assert_eq!(task.calls().len(), before, "the owner is not asked");
}

#[tokio::test]
async fn stop_signals_then_records_the_exit_the_owner_reports() {
    let env = env();
    let mut rec = record(&env, ContainerState::Running);
    let task = env.fake.get(&rec.dir);
    task.start().unwrap();
    task.exit_on_signal();
    container_stop::stop(&env.containers, &mut rec, 10)
        .await
        .unwrap();
    assert_eq!(rec.state, ContainerState::Exited);
    assert_eq!((rec.exit_code, rec.reason.as_str()), (0, "Completed"));
    let calls = task.calls();
    assert!(calls.contains(&"signal 15".to_string()), "{calls:?}");
    assert!(
        !calls.contains(&"signal 9".to_string()),
        "no SIGKILL needed: {calls:?}"
    );

    // Stopping again: nothing asked, still success.
    let n = task.calls().len();
    container_stop::stop(&env.containers, &mut rec, 10)
        .await
        .unwrap();
    assert_eq!(task.calls().len(), n);
}

#[tokio::test]
async fn stop_with_no_grace_kills_at_once() {
    let env = env();
    let mut rec = record(&env, ContainerState::Running);
    let task = env.fake.get(&rec.dir);
    task.start().unwrap();
    container_stop::stop(&env.containers, &mut rec, 0)
        .await
        .unwrap();
    assert_eq!((rec.state, rec.exit_code), (ContainerState::Exited, 137));
    assert!(!task.calls().contains(&"signal 15".to_string()));
}

#[tokio::test]
async fn a_vanished_owner_leaves_an_exited_container_and_nothing_running() {
    let env = env();
    let mut rec = record(&env, ContainerState::Running);
    let task = env.fake.get(&rec.dir);
    task.vanish();
    container_stop::stop(&env.containers, &mut rec, 10)
        .await
        .unwrap();
    assert_eq!((rec.state, rec.exit_code), (ContainerState::Exited, 255));
    assert_eq!(rec.reason, "Error");
    assert!(rec.message.contains("monitor died"), "{}", rec.message);
    // The stop found the owner gone (its signal answered Gone), then what
    // the container left was killed.
    assert_eq!(
        task.calls(),
        ["signal 15", "abandon"],
        "what it left is killed"
    );
}

#[test]
fn a_value_the_kernel_refuses_is_invalid_argument_naming_the_file() {
    let env = env();
    let mut rec = record(&env, ContainerState::Running);
    let task = env.fake.get(&rec.dir);
    task.start().unwrap();
    task.fail_update(TaskFailure::new(
        FailureKind::Refused {
            path: "/sys/fs/cgroup/cpu/x/cpu.cfs_quota_us".into(),
            value: "-5".into(),
        },
        "update: refused",
    ));
    let err = container_update::update(
        &env.containers,
        &mut rec,
        &Default::default(),
        Default::default(),
    )
    .unwrap_err();
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("linux: "),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("cpu.cfs_quota_us"),
        "{}",
        status.message()
    );

    // Accepted: applied by the owner and recorded.
    container_update::update(
        &env.containers,
        &mut rec,
        &Default::default(),
        Default::default(),
    )
    .unwrap();
    assert_eq!(task.calls().iter().filter(|c| *c == "update").count(), 2);
}

use crate::task::Task as _;
