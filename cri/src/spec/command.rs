//! What the init runs: argv, environment and working directory.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use berth_core::process::env as envs;

use super::{clean_absolute, invalid, SpecError};
use crate::image::rootfs::ImageConfig;
use crate::proto;

/// containerd's `oci.DefaultPathEnv`, the first entry of every container's
/// environment (the image's own `PATH` replaces it).
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Kubernetes' merge of `command`/`args` with the image's Entrypoint/Cmd
/// (<https://kubernetes.io/docs/tasks/inject-data-application/define-command-argument-container/#notes>):
///
/// | command | args | argv                           |
/// |---------|------|--------------------------------|
/// | set     | any  | command + args                 |
/// | empty   | set  | image Entrypoint + args        |
/// | empty   | empty| image Entrypoint + image Cmd   |
///
/// An Entrypoint of `[""]` (Docker's `ENTRYPOINT [""]` reset) counts as
/// none, as in containerd's `WithProcessArgs`.
pub(super) fn argv(
    req: &proto::ContainerConfig,
    image: &ImageConfig,
) -> Result<Vec<String>, SpecError> {
    let (command, args): (&[String], &[String]) = if !req.command.is_empty() {
        (&req.command, &req.args)
    } else {
        let entrypoint: &[String] = if image.entrypoint.len() == 1 && image.entrypoint[0].is_empty()
        {
            &[]
        } else {
            &image.entrypoint
        };
        let args = if req.args.is_empty() {
            &image.cmd
        } else {
            &req.args
        };
        (entrypoint, args)
    };
    let argv: Vec<String> = command.iter().chain(args).cloned().collect();
    if argv.is_empty() {
        return Err(invalid(
            "config.command",
            "no command: the request has neither command nor args and the image neither Entrypoint nor Cmd",
        ));
    }
    if argv[0].is_empty() {
        return Err(invalid("config.command", "the program name is empty"));
    }
    for (field, list) in [("config.command", &req.command), ("config.args", &req.args)] {
        if let Some(i) = list.iter().position(|a| a.contains('\0')) {
            return Err(invalid(
                format!("{field}[{i}]"),
                "must not contain a NUL byte",
            ));
        }
    }
    Ok(argv)
}

/// Sets `KEY=value` in `env`: replaces an earlier entry of the same key in
/// place, else appends. An entry without `=` (allowed in image configs)
/// removes the key, as containerd's `oci.WithEnv` does.
fn set_env(env: &mut Vec<OsString>, entry: OsString) {
    let key = envs::name(&entry);
    let pos = env.iter().position(|e| envs::name(e) == key);
    match (entry.as_bytes().contains(&b'='), pos) {
        (true, Some(i)) => env[i] = entry,
        (true, None) => env.push(entry),
        (false, Some(i)) => {
            env.remove(i);
        }
        (false, None) => {}
    }
}

/// The environment, in containerd's order: its default `PATH`, then
/// `HOSTNAME=<pod hostname>`, then the image's `Env`, then the request's
/// `envs`; a later entry replaces an earlier one of the same key where it
/// stands, new keys are appended. A request value is bytes (cri-api 1.37)
/// and reaches the process byte-exact, UTF-8 or not.
pub(super) fn env(
    req: &proto::ContainerConfig,
    image: &ImageConfig,
    hostname: &str,
) -> Result<Vec<OsString>, SpecError> {
    let mut env = vec![OsString::from(DEFAULT_PATH)];
    set_env(&mut env, format!("HOSTNAME={hostname}").into());
    for (i, e) in image.env.iter().enumerate() {
        if e.contains('\0') || e.starts_with('=') {
            return Err(invalid(
                format!("image.config.Env[{i}]"),
                "must be KEY=value with a non-empty key and no NUL byte",
            ));
        }
        set_env(&mut env, e.into());
    }
    for (i, kv) in req.envs.iter().enumerate() {
        if kv.key.is_empty() || kv.key.contains(['=', '\0']) {
            return Err(invalid(
                format!("config.envs[{i}].key"),
                format!("{:?} must be non-empty, without '=' or NUL", kv.key),
            ));
        }
        if kv.value.contains(&0) {
            return Err(invalid(
                format!("config.envs[{i}].value"),
                "must not contain a NUL byte",
            ));
        }
        let mut entry = format!("{}=", kv.key).into_bytes();
        entry.extend_from_slice(&kv.value);
        set_env(&mut env, OsString::from_vec(entry));
    }
    Ok(env)
}

/// The request's `working_dir`, else the image's `WorkingDir`, else `/`.
/// It must be absolute (runc refuses a relative cwd too) and is refused
/// with `..` components, like every other path of the request.
pub(super) fn cwd(req: &proto::ContainerConfig, image: &ImageConfig) -> Result<PathBuf, SpecError> {
    if !req.working_dir.is_empty() {
        clean_absolute("config.working_dir", &req.working_dir)
    } else if !image.working_dir.is_empty() {
        clean_absolute("image.config.WorkingDir", &image.working_dir)
    } else {
        Ok(PathBuf::from("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::Fixture;
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn argv_of(f: &Fixture) -> Vec<String> {
        f.spec().process.args
    }

    #[test]
    fn no_command_no_args_runs_entrypoint_and_cmd() {
        let f = Fixture::new();
        assert_eq!(
            argv_of(&f),
            strings(&["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"])
        );
    }

    #[test]
    fn command_replaces_entrypoint_and_cmd() {
        let mut f = Fixture::new();
        f.req.command = strings(&["/bin/sh"]);
        assert_eq!(argv_of(&f), strings(&["/bin/sh"]));
    }

    #[test]
    fn command_and_args() {
        let mut f = Fixture::new();
        f.req.command = strings(&["/bin/sh"]);
        f.req.args = strings(&["-c", "true"]);
        assert_eq!(argv_of(&f), strings(&["/bin/sh", "-c", "true"]));
    }

    #[test]
    fn args_replace_cmd_after_entrypoint() {
        let mut f = Fixture::new();
        f.req.args = strings(&["-v"]);
        assert_eq!(argv_of(&f), strings(&["/docker-entrypoint.sh", "-v"]));
    }

    #[test]
    fn empty_result_is_invalid() {
        let mut f = Fixture::new();
        f.image.entrypoint.clear();
        f.image.cmd.clear();
        assert_eq!(f.err_field(), "config.command");
    }

    #[test]
    fn empty_string_entrypoint_is_no_entrypoint() {
        let mut f = Fixture::new();
        f.image.entrypoint = strings(&[""]);
        assert_eq!(argv_of(&f), strings(&["nginx", "-g", "daemon off;"]));
    }

    #[test]
    fn nul_in_args_names_the_field() {
        let mut f = Fixture::new();
        f.req.args = strings(&["ok", "bad\0"]);
        assert_eq!(f.err_field(), "config.args[1]");
    }

    fn env_of(f: &Fixture) -> Vec<String> {
        f.spec()
            .process
            .env
            .iter()
            .map(|e| e.to_str().expect("UTF-8 in these tests").to_string())
            .collect()
    }

    #[test]
    fn a_value_that_is_not_utf8_is_kept_byte_exact() {
        let mut f = Fixture::new();
        f.req.envs = vec![proto::KeyValue {
            key: "RAW".into(),
            value: b"\xff\x00".to_vec(),
        }];
        assert_eq!(f.err_field(), "config.envs[0].value");
        f.req.envs[0].value = b"caf\xe9 \xff".to_vec();
        let env = f.spec().process.env;
        assert_eq!(env.last().unwrap().as_bytes(), b"RAW=caf\xe9 \xff");
    }

    #[test]
    fn env_is_default_path_hostname_then_image() {
        let f = Fixture::new();
        assert_eq!(
            env_of(&f),
            strings(&[
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOSTNAME=web-0",
                "NGINX_VERSION=1.27",
            ])
        );
    }

    #[test]
    fn request_env_overrides_in_place_and_appends_new_keys() {
        let mut f = Fixture::new();
        f.req.envs = vec![
            proto::KeyValue {
                key: "NEW".into(),
                value: "1".into(),
            },
            proto::KeyValue {
                key: "NGINX_VERSION".into(),
                value: "2.0".into(),
            },
            proto::KeyValue {
                key: "NEW".into(),
                value: "2".into(),
            },
        ];
        assert_eq!(
            env_of(&f)[1..],
            strings(&["HOSTNAME=web-0", "NGINX_VERSION=2.0", "NEW=2"])[..]
        );
    }

    #[test]
    fn default_path_when_the_image_has_none() {
        let mut f = Fixture::new();
        f.image.env = strings(&["A=b"]);
        assert_eq!(env_of(&f)[0], DEFAULT_PATH);
    }

    #[test]
    fn env_key_with_equals_is_invalid() {
        let mut f = Fixture::new();
        f.req.envs = vec![proto::KeyValue {
            key: "A=B".into(),
            value: "c".into(),
        }];
        assert_eq!(f.err_field(), "config.envs[0].key");
    }

    #[test]
    fn working_dir_from_image() {
        let f = Fixture::new();
        assert_eq!(f.spec().process.cwd, PathBuf::from("/srv"));
    }

    #[test]
    fn working_dir_from_request() {
        let mut f = Fixture::new();
        f.req.working_dir = "/work/".into();
        assert_eq!(f.spec().process.cwd, PathBuf::from("/work"));
    }

    #[test]
    fn working_dir_defaults_to_root() {
        let mut f = Fixture::new();
        f.image.working_dir.clear();
        assert_eq!(f.spec().process.cwd, PathBuf::from("/"));
    }

    #[test]
    fn relative_working_dir_is_invalid() {
        let mut f = Fixture::new();
        f.req.working_dir = "work".into();
        assert_eq!(f.err_field(), "config.working_dir");
    }

    #[test]
    fn relative_image_working_dir_is_invalid() {
        let mut f = Fixture::new();
        f.image.working_dir = "srv".into();
        assert_eq!(f.err_field(), "image.config.WorkingDir");
    }
}
