//! The fd-shuffle race of runc#4294 / golang/go#61751: the sealed init
//! binary's fd lands on a low number that is also a target slot of the
//! child's fd layout (here fd 0, stdin's slot), and many containers start
//! concurrently with stdio pipes and extra fds. Every start must succeed.
//!
//! This file is its own test binary (its own process) because it closes the
//! process's stdin.

mod common;

use std::io::{Read, Write};

use berth_core::{Container, ExitStatus, Process, Stdio};
use common::*;

#[test]
fn exe_fd_on_a_target_slot_survives_concurrent_starts() {
    let Some(()) = privileged("exe_fd_on_a_target_slot_survives_concurrent_starts") else {
        return;
    };
    let rootfs = rootfs();
    let state = state_root();
    // Free fd 0 so the sealed copy of the init binary, made on first use,
    // lands on a low number that is also a target slot.
    nix::unistd::close(0).unwrap();
    {
        let mut c = Container::create(state.path(), &unique_id("first"), base_config(rootfs))
            .unwrap()
            .with_init_binary(init_binary());
        let h = c.run(Process::new(["true"])).unwrap();
        assert!(h.wait().unwrap().success());
        c.destroy().unwrap();
    }
    let exe_fd = sealed_init_fd().expect("the sealed init binary is open");
    // Targets of a process with one extra fd: stdio 0-2, the bootstrap socket
    // 3, the extra fd 4.
    assert!(
        exe_fd <= 4,
        "the sealed init binary sits on a target slot: fd {exe_fd}"
    );

    const THREADS: usize = 10;
    const ROUNDS: usize = 10;
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let state = state.path();
            let failures = &failures;
            s.spawn(move || {
                for r in 0..ROUNDS {
                    let res = (|| -> Result<(), String> {
                        let mut c = Container::create(
                            state,
                            &unique_id(&format!("race{t}")),
                            base_config(rootfs),
                        )
                        .map_err(|e| chain(&e))?
                        .with_init_binary(init_binary());
                        // stdin a pipe, stdout a pipe, and an extra fd (3 inside).
                        let (in_r, in_w) = pipe();
                        let (out_r, out_w) = pipe();
                        let (x_r, x_w) = pipe();
                        let mut p =
                            Process::new(["sh", "-c", "read line; echo \"$line $(cat <&3)\""]);
                        p.stdin = Stdio::Fd(in_r);
                        p.stdout = Stdio::Fd(out_w);
                        p.extra_fds.push(x_r);
                        let h = c
                            .run(p)
                            .map_err(|e| format!("start {t}/{r}: {}", chain(&e)))?;
                        let mut w = std::fs::File::from(in_w);
                        writeln!(w, "hello{t}").map_err(|e| e.to_string())?;
                        drop(w);
                        let mut x = std::fs::File::from(x_w);
                        write!(x, "extra{r}").map_err(|e| e.to_string())?;
                        drop(x);
                        let mut out = String::new();
                        std::fs::File::from(out_r)
                            .read_to_string(&mut out)
                            .map_err(|e| e.to_string())?;
                        let st = h.wait().map_err(|e| e.to_string())?;
                        c.destroy().map_err(|e| chain(&e))?;
                        if st != ExitStatus::Exited(0) || out != format!("hello{t} extra{r}\n") {
                            return Err(format!("{t}/{r}: {st:?} {out:?}"));
                        }
                        Ok(())
                    })();
                    if let Err(e) = res {
                        failures.lock().unwrap().push(e);
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} starts failed: {failures:?}",
        failures.len(),
        THREADS * ROUNDS
    );
    assert_eq!(sealed_init_fd(), Some(exe_fd), "still the same fd");
}

fn sealed_init_fd() -> Option<i32> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|t| t.to_string_lossy().contains("memfd:berth-init"))
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .min()
}
