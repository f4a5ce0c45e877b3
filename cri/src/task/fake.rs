//! An in-memory [`Tasks`] for unit tests of the daemon's handlers: no
//! monitor, no root. Each container is a [`FakeTask`] whose calls are
//! recorded and whose state moves as a real one's would.

use std::collections::HashMap;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_core::cgroups::{Resources, Stats};
use berth_core::container::checkpoint::CheckpointOptions;
use berth_core::process::ProcessSpec;

use super::{
    ExecExit, ExecProcess, ExecStdio, ExitRecord, FailureKind, Task, TaskError, TaskFailure,
    TaskState, Tasks,
};

/// Fake tasks by container directory.
#[derive(Debug, Default, Clone)]
pub struct FakeTasks {
    tasks: Arc<Mutex<HashMap<PathBuf, Arc<FakeTask>>>>,
}

impl FakeTasks {
    /// The fake task of `dir`, made on first use.
    pub fn get(&self, dir: &Path) -> Arc<FakeTask> {
        let mut map = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(dir.to_path_buf())
            .or_insert_with(|| {
                Arc::new(FakeTask {
                    dir: dir.to_path_buf(),
                    inner: Mutex::default(),
                })
            })
            .clone()
    }
}

impl Tasks for FakeTasks {
    fn open(&self, dir: &Path) -> Arc<dyn Task> {
        self.get(dir)
    }
}

/// What a fake container does and has seen. Its exits are written to
/// `<dir>/exit.json` first, as the monitor writes them.
#[derive(Debug)]
pub struct FakeTask {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    calls: Vec<String>,
    started_at: Option<i64>,
    exited: Option<ExitRecord>,
    gone: bool,
    /// Exit code the init exits with when signalled (`None`: ignores
    /// signals other than SIGKILL).
    exits_on_signal: Option<i32>,
    fail_update: Option<TaskFailure>,
}

impl FakeTask {
    /// The calls made so far, by name.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// The init exits when signalled (as one that handles SIGTERM does).
    pub fn exit_on_signal(&self) {
        self.lock().exits_on_signal = Some(0);
    }

    /// The monitor is gone without an exit record (killed).
    pub fn vanish(&self) {
        self.lock().gone = true;
    }

    /// The next updates fail with `failure`.
    pub fn fail_update(&self, failure: TaskFailure) {
        self.lock().fail_update = Some(failure);
    }

    fn exit(&self, inner: &mut Inner, record: ExitRecord) {
        if let Ok(json) = serde_json::to_vec(&record) {
            let _ = std::fs::create_dir_all(&self.dir);
            let _ = std::fs::write(self.dir.join("exit.json"), json);
        }
        inner.exited = Some(record);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enter(&self, call: &str) -> Result<std::sync::MutexGuard<'_, Inner>, TaskError> {
        let mut inner = self.lock();
        inner.calls.push(call.to_string());
        if inner.gone || inner.exited.is_some() {
            return Err(TaskError::Gone);
        }
        Ok(inner)
    }
}

fn exit_record(code: i32, signal: Option<i32>, started_at: i64) -> ExitRecord {
    ExitRecord {
        version: super::proto::RECORD_VERSION,
        exit_code: code,
        signal,
        started_at,
        finished_at: crate::util::now_nanos(),
        oom_killed: false,
        reason: if code == 0 { "Completed" } else { "Error" }.into(),
        message: String::new(),
    }
}

impl Task for FakeTask {
    fn start(&self) -> Result<i64, TaskError> {
        let mut inner = self.enter("start")?;
        Ok(*inner.started_at.get_or_insert_with(crate::util::now_nanos))
    }

    fn signal(&self, signal: i32) -> Result<(), TaskError> {
        let mut inner = self.enter(&format!("signal {signal}"))?;
        let started = inner.started_at.unwrap_or(0);
        if signal == nix::libc::SIGKILL {
            self.exit(&mut inner, exit_record(128 + signal, Some(signal), started));
        } else if let Some(code) = inner.exits_on_signal {
            self.exit(&mut inner, exit_record(code, None, started));
        }
        Ok(())
    }

    fn wait(&self, _timeout: Duration) -> Result<Option<ExitRecord>, TaskError> {
        let mut inner = self.lock();
        inner.calls.push("wait".into());
        match (&inner.exited, inner.gone) {
            (Some(r), _) => Ok(Some(r.clone())),
            (None, true) => Err(TaskError::Gone),
            (None, false) => Ok(None),
        }
    }

    fn exec(
        &self,
        spec: &ProcessSpec,
        _stdio: ExecStdio,
    ) -> Result<Box<dyn ExecProcess>, TaskError> {
        let inner = self.enter(&format!("exec {}", spec.args.join(" ")))?;
        if inner.started_at.is_none() {
            return Err(TaskFailure::new(FailureKind::InvalidState, "not started").into());
        }
        let null = std::fs::File::open("/dev/null")
            .map_err(|e| TaskError::Protocol(format!("fake exec: /dev/null: {e}")))?;
        Ok(Box::new(FakeExec(null.into())))
    }

    fn attach(&self, stdio: ExecStdio) -> Result<Box<dyn super::Attached>, TaskError> {
        let inner = self.enter("attach")?;
        if inner.exited.is_some() {
            return Err(TaskFailure::new(FailureKind::InvalidState, "exited").into());
        }
        // Output ends at once (the fake container says nothing).
        drop(stdio);
        Ok(Box::new(FakeAttached))
    }

    fn update(&self, _resources: &Resources) -> Result<(), TaskError> {
        let mut inner = self.enter("update")?;
        match inner.fail_update.take() {
            Some(f) => Err(f.into()),
            None => Ok(()),
        }
    }

    fn stats(&self) -> Result<Stats, TaskError> {
        drop(self.enter("stats")?);
        Ok(Stats::default())
    }

    fn pause(&self) -> Result<(), TaskError> {
        self.enter("pause").map(drop)
    }

    fn resume(&self) -> Result<(), TaskError> {
        self.enter("resume").map(drop)
    }

    fn checkpoint(&self, _options: &CheckpointOptions) -> Result<(), TaskError> {
        self.enter("checkpoint").map(drop)
    }

    fn reopen_log(&self) -> Result<(), TaskError> {
        self.enter("reopen_log").map(drop)
    }

    fn state(&self) -> Result<TaskState, TaskError> {
        let inner = self.enter("state")?;
        Ok(TaskState {
            init_pid: 1,
            started: inner.started_at.is_some(),
            started_at: inner.started_at,
            paused: false,
        })
    }

    fn shutdown(&self) -> Result<(), TaskError> {
        let mut inner = self.enter("shutdown")?;
        let started = inner.started_at.unwrap_or(0);
        self.exit(&mut inner, exit_record(137, Some(9), started));
        Ok(())
    }

    fn is_running(&self) -> bool {
        let inner = self.lock();
        !inner.gone && inner.exited.is_none()
    }

    fn abandon(&self) {
        self.lock().calls.push("abandon".into());
    }

    fn watch_exit(&self) -> Result<berth_core::ipc::Channel, TaskError> {
        // Readable at once (the other end is closed): the watcher looks.
        let (ours, _theirs) = berth_core::ipc::Channel::pair()?;
        Ok(ours)
    }
}

/// An exec that exits 0 at once (its "pidfd" is `/dev/null`: always
/// readable).
#[derive(Debug)]
struct FakeExec(OwnedFd);

#[derive(Debug)]
struct FakeAttached;

impl super::Attached for FakeAttached {
    fn resize(&self, _size: berth_core::process::ConsoleSize) -> Result<(), TaskError> {
        Ok(())
    }
}

impl ExecProcess for FakeExec {
    fn pid(&self) -> i32 {
        2
    }
    fn exit_fd(&self) -> BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.0)
    }
    fn take_console(&mut self) -> Option<OwnedFd> {
        None
    }
    fn signal(&self, _signal: i32) -> Result<(), TaskError> {
        Ok(())
    }
    fn wait(&self, _timeout: Option<Duration>) -> Result<Option<ExecExit>, TaskError> {
        Ok(Some(ExecExit {
            exit_code: 0,
            signal: None,
        }))
    }
}
