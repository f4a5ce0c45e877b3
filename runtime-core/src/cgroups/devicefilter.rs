//! Device rules on cgroup v2: a `BPF_PROG_TYPE_CGROUP_DEVICE` program,
//! generated from the rules and attached to the container's cgroup (v2 has
//! no `devices.allow`; the kernel asks the program on every open or mknod
//! of a device node by a task of the cgroup).
//!
//! The program reads the request — `access_type` (access << 16 | type),
//! `major`, `minor` — and tries the rules last to first: the first that
//! matches decides (allow: 1, deny: 0), which is the v1 controller's "last
//! match wins"; nothing matching denies. Like runc's and crun's, it is a
//! handful of instructions written out here rather than compiled C: no
//! toolchain, no BTF, no helper calls.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::{DeviceRule, DeviceType};

// Instruction classes and ops (linux/bpf_common.h, linux/bpf.h).
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const ALU32_RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const ALU64_MOV_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const ALU64_MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const JMP_JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JMP_JNE_X: u8 = 0x5d; // BPF_JMP | BPF_JNE | BPF_X
const JMP_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

// bpf_cgroup_dev_ctx and its constants (linux/bpf.h).
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a bpf_attr for `cmd`; the pointers in it outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Ids of the device programs attached to the cgroup `cg` itself.
fn attached(cg: &std::fs::File) -> std::io::Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(cg.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&BPF_CGROUP_DEVICE.to_ne_bytes());
    attr[16..24].copy_from_slice(&(ids.as_mut_ptr() as u64).to_ne_bytes());
    attr[24..28].copy_from_slice(&(ids.len() as u32).to_ne_bytes());
    bpf(BPF_PROG_QUERY, &mut attr)?;
    let n = u32::from_ne_bytes(attr[24..28].try_into().unwrap()) as usize;
    Ok(ids[..n.min(ids.len())].to_vec())
}

/// One `struct bpf_insn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

/// The program for `rules` (see the module docs).
pub fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    // r2 = type, r3 = access, r4 = major, r5 = minor (r1: the context).
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for rule in rules.iter().rev() {
        let mut checks: Vec<Insn> = Vec::new();
        // Each check jumps to the end of this rule's block when it fails;
        // offsets are fixed up once the block's length is known.
        match rule.kind {
            DeviceType::All => {}
            DeviceType::Char => checks.push(insn(JMP_JNE_K, 2, 0, 0, DEV_CHAR)),
            DeviceType::Block => checks.push(insn(JMP_JNE_K, 2, 0, 0, DEV_BLOCK)),
        }
        let mask = rule.access.chars().fold(0, |m, c| {
            m | match c {
                'm' => ACC_MKNOD,
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                _ => 0,
            }
        });
        if mask != ACC_MKNOD | ACC_READ | ACC_WRITE {
            // The requested access must be within the rule's:
            // (access & mask) == access.
            checks.push(insn(ALU64_MOV_X, 1, 3, 0, 0));
            checks.push(insn(ALU32_AND_K, 1, 0, 0, mask));
            checks.push(insn(JMP_JNE_X, 1, 3, 0, 0));
        }
        if let Some(major) = rule.major {
            checks.push(insn(JMP_JNE_K, 4, 0, 0, major as i32));
        }
        if let Some(minor) = rule.minor {
            checks.push(insn(JMP_JNE_K, 5, 0, 0, minor as i32));
        }
        let verdict = [
            insn(ALU64_MOV_K, 0, 0, 0, i32::from(rule.allow)),
            insn(JMP_EXIT, 0, 0, 0, 0),
        ];
        if checks.is_empty() {
            // A rule matching every request decides them all: what would
            // follow is unreachable, and the verifier refuses a program
            // with unreachable instructions (a privileged container's
            // allow-all rule did exactly that).
            p.extend(verdict);
            return p;
        }
        let len = checks.len() + verdict.len();
        for (i, c) in checks.iter_mut().enumerate() {
            if c.code == JMP_JNE_K || c.code == JMP_JNE_X {
                // From the next instruction to just past the verdict.
                c.off = (len - i - 1) as i16;
            }
        }
        p.extend(checks);
        p.extend(verdict);
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    p
}

/// Loads the program for `rules` and attaches it to the cgroup v2
/// directory `dir` (alongside any a parent has: `BPF_F_ALLOW_MULTI`, as
/// runc and systemd attach theirs, so every program must allow).
pub fn attach(dir: &Path, rules: &[DeviceRule]) -> std::io::Result<()> {
    let insns = program(rules);
    let license = c"Apache-2.0";
    // Without a verifier log first (a log that overflows its buffer fails
    // the load with ENOSPC); on failure again, with one, to say why.
    let load = |log: &mut [u8]| {
        // union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns,
        // license, log_level, log_size, log_buf (the rest zero).
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&BPF_PROG_TYPE_CGROUP_DEVICE.to_ne_bytes());
        attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        if !log.is_empty() {
            attr[24..28].copy_from_slice(&1u32.to_ne_bytes());
            attr[28..32].copy_from_slice(&(log.len() as u32).to_ne_bytes());
            attr[32..40].copy_from_slice(&(log.as_mut_ptr() as u64).to_ne_bytes());
        }
        // SAFETY: `attr` is a valid bpf_attr for BPF_PROG_LOAD whose
        // pointers (instructions, license, log buffer with its length)
        // outlive the call.
        unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                attr.as_mut_ptr(),
                attr.len() as u32,
            )
        }
    };
    let mut fd = load(&mut []);
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        let mut log = vec![0u8; 1 << 16];
        fd = load(&mut log);
        if fd < 0 {
            let msg = String::from_utf8_lossy(&log);
            let msg = msg.trim_end_matches('\0');
            let skip = msg.chars().count().saturating_sub(512);
            let tail: String = msg.chars().skip(skip).collect();
            return Err(std::io::Error::new(
                err.kind(),
                format!("load the device program: {err}: {tail}"),
            ));
        }
    }
    // SAFETY: the syscall returned a new program fd that we own.
    let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let cg = std::fs::File::open(dir)?;
    // Programs a previous apply attached: replaced, not kept (with
    // BPF_F_ALLOW_MULTI every attached program must allow, so a kept old
    // list would still deny what the new one allows).
    let old = attached(&cg).unwrap_or_default();
    // BPF_PROG_ATTACH: target_fd, attach_bpf_fd, attach_type, attach_flags.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(cg.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&BPF_CGROUP_DEVICE.to_ne_bytes());
    attr[12..16].copy_from_slice(&BPF_F_ALLOW_MULTI.to_ne_bytes());
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(|err| {
        std::io::Error::new(
            err.kind(),
            format!("attach the device program to {}: {err}", dir.display()),
        )
    })?;
    // The new program is in force; only now do the old ones go.
    for id in old {
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&id.to_ne_bytes());
        let Ok(fd) = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr) else {
            continue; // already gone
        };
        // SAFETY: a new fd that we own.
        let old_prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&(cg.as_raw_fd() as u32).to_ne_bytes());
        attr[4..8].copy_from_slice(&(old_prog.as_raw_fd() as u32).to_ne_bytes());
        attr[8..12].copy_from_slice(&BPF_CGROUP_DEVICE.to_ne_bytes());
        bpf(BPF_PROG_DETACH, &mut attr).map_err(|err| {
            std::io::Error::new(
                err.kind(),
                format!(
                    "detach the old device program from {}: {err}",
                    dir.display()
                ),
            )
        })?;
    }
    // The attachment keeps the program; our fd can go.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program on one request, as the kernel would (a tiny
    /// interpreter for the instructions `program` emits).
    fn run(p: &[Insn], kind: i32, access: i32, major: u32, minor: u32) -> u64 {
        let ctx = [((access << 16) | kind) as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0x0f) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => r[dst] = u64::from(ctx[(i.off / 4) as usize]),
                ALU32_AND_K => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
                ALU32_RSH_K => r[dst] = ((r[dst] as u32) >> i.imm) as u64,
                ALU64_MOV_X => r[dst] = r[src],
                ALU64_MOV_K => r[dst] = i.imm as i64 as u64,
                JMP_JNE_K => {
                    if r[dst] != i.imm as u32 as u64 {
                        pc += i.off as usize;
                    }
                }
                JMP_JNE_X => {
                    if r[dst] != r[src] {
                        pc += i.off as usize;
                    }
                }
                JMP_EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn the_default_list_allows_the_container_nodes_and_mknod_only() {
        let p = program(&crate::cgroups::default_device_rules());
        let (c, b) = (DEV_CHAR, DEV_BLOCK);
        assert_eq!(run(&p, c, ACC_READ | ACC_WRITE, 1, 3), 1, "/dev/null rw");
        assert_eq!(run(&p, c, ACC_READ, 136, 7), 1, "a pts");
        assert_eq!(run(&p, c, ACC_WRITE, 1, 11), 0, "/dev/kmsg");
        assert_eq!(run(&p, c, ACC_MKNOD, 1, 11), 1, "mknod is allowed");
        assert_eq!(run(&p, b, ACC_READ, 8, 0), 0, "a host disk");
        assert_eq!(run(&p, b, ACC_MKNOD, 8, 0), 1);
        assert_eq!(
            run(&p, c, ACC_READ | ACC_MKNOD, 1, 11),
            0,
            "read+mknod needs read"
        );
    }

    /// Whether every instruction can be reached (the kernel's verifier
    /// refuses a program with one that cannot).
    fn all_reachable(p: &[Insn]) -> bool {
        let mut seen = vec![false; p.len()];
        let mut todo = vec![0usize];
        while let Some(pc) = todo.pop() {
            if pc >= p.len() || std::mem::replace(&mut seen[pc], true) {
                continue;
            }
            match p[pc].code {
                JMP_EXIT => {}
                JMP_JNE_K | JMP_JNE_X => {
                    todo.push(pc + 1);
                    todo.push(pc + 1 + p[pc].off as usize);
                }
                _ => todo.push(pc + 1),
            }
        }
        seen.iter().all(|s| *s)
    }

    #[test]
    fn every_instruction_is_reachable_even_after_a_catch_all_rule() {
        let privileged = [DeviceRule::allow_all()];
        let p = program(&privileged);
        assert!(all_reachable(&p), "{p:?}");
        assert_eq!(run(&p, DEV_BLOCK, ACC_READ | ACC_WRITE, 8, 0), 1);
        let mut rules = crate::cgroups::default_device_rules();
        assert!(all_reachable(&program(&rules)));
        rules.push(DeviceRule::allow_all());
        rules.push(DeviceRule::allow_char(Some(1), Some(3), "rw"));
        let p = program(&rules);
        assert!(all_reachable(&p), "{p:?}");
        assert_eq!(run(&p, DEV_BLOCK, ACC_READ, 8, 0), 1);
        assert!(all_reachable(&program(&[])));
    }

    #[test]
    fn last_match_wins_and_access_is_a_subset() {
        let rules = vec![
            DeviceRule::allow_all(),
            DeviceRule {
                allow: false,
                kind: DeviceType::Char,
                major: Some(1),
                minor: None,
                access: "w".into(),
            },
            DeviceRule::allow_char(Some(1), Some(3), "rw"),
        ];
        let p = program(&rules);
        assert_eq!(run(&p, DEV_CHAR, ACC_WRITE, 1, 3), 1, "the later allow");
        assert_eq!(run(&p, DEV_CHAR, ACC_WRITE, 1, 5), 0, "the deny");
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 5), 1, "read is not denied");
        assert_eq!(run(&p, DEV_BLOCK, ACC_READ, 8, 0), 1, "allow all");
        assert_eq!(
            run(&program(&[]), DEV_CHAR, ACC_READ, 1, 3),
            0,
            "no rule: deny"
        );
    }
}
