//! The built binary, as users run it: help, usage errors, the lab's errors
//! and its whole lifecycle. The lifecycle needs root and the lab's packages
//! (scripts/install-deps).

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{berth, run};

#[test]
fn help_lists_the_commands() {
    let (code, out, err) = run(berth().arg("--help"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Usage: berth [OPTIONS] <COMMAND>"), "{out}");
    for word in [
        "lab",
        "logs",
        "exec",
        "completions",
        "man",
        "--json",
        "--color",
        "--ssh-config",
        "--verbose",
    ] {
        assert!(out.contains(word), "help lacks {word}:\n{out}");
    }
    let (code, out, _) = run(berth().args(["lab", "--help"]));
    assert_eq!(code, 0);
    for word in ["up", "status", "ssh", "down"] {
        assert!(out.contains(word), "lab help lacks {word}:\n{out}");
    }
}

/// A command's help starts with its own options; the global ones come after,
/// under their own heading, in every command (`app deploy` as well).
#[test]
fn help_puts_global_options_after_the_commands_own() {
    let globals = [
        "--verbose",
        "--json",
        "--color",
        "--ssh-config",
        "--accept-new-host-keys",
        "--agent",
    ];
    for (command, own) in [
        (&["deploy", "--help"][..], "--confirm-timeout"),
        (&["app", "deploy", "--help"][..], "--skip-untouched"),
        (&["app", "status", "--help"][..], "--follow"),
        (&["logs", "--help"][..], "--since"),
        (&["exec", "--help"][..], "--parallel"),
        (&["app", "scale", "--help"][..], "--lock-wait"),
    ] {
        let (code, out, err) = run(berth().args(command));
        assert_eq!(code, 0, "{err}");
        let heading = out
            .find("\nGlobal options:\n")
            .unwrap_or_else(|| panic!("{command:?}: no global heading:\n{out}"));
        let (before, after) = out.split_at(heading);
        assert!(
            before.contains(own),
            "{command:?}: {own} not before the globals:\n{out}"
        );
        for flag in globals {
            assert!(
                !before.contains(flag),
                "{command:?}: {flag} among the command's own options:\n{out}"
            );
            assert!(
                after.contains(flag),
                "{command:?}: {flag} not under the global heading:\n{out}"
            );
        }
    }
}

#[test]
fn version() {
    let (code, out, _) = run(berth().arg("--version"));
    assert_eq!(
        (code, out.trim()),
        (0, concat!("berth ", env!("CARGO_PKG_VERSION")))
    );
}

#[test]
fn usage_errors_exit_2_on_stderr() {
    let (code, out, err) = run(berth().args(["lab", "up", "--hosts", "many"]));
    assert_eq!(code, 2);
    assert_eq!(out, "");
    assert!(
        err.starts_with("error: invalid value 'many' for '--hosts <N>'"),
        "{err}"
    );
    let (code, _, err) = run(berth().arg("deploi"));
    assert_eq!(code, 2);
    assert!(err.contains("unrecognized subcommand 'deploi'"), "{err}");
    // exec's command comes after `--`, and there must be one.
    for args in [&["exec", "."][..], &["exec", ".", "uptime"]] {
        let (code, out, err) = run(berth().args(args));
        assert_eq!((code, out.as_str()), (2, ""), "{args:?}: {err}");
    }
    let (code, _, err) = run(berth().args(["exec", "-p", "0", ".", "--", "uptime"]));
    assert_eq!(code, 2, "{err}");
    // `--unit` is for a node's host, `--user` for a service's.
    let (code, _, err) = run(berth().args(["logs", "notes", "--host", "h1", "--unit", "x"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--unit"), "{err}");
    let (code, _, err) = run(berth().args(["logs", ".#web1", "--user", "root"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--host"), "{err}");
}

#[test]
fn missing_ssh_config_is_a_usage_error() {
    let (code, _, err) = run(berth()
        .args(["status", "/nonexistent/flake"])
        .env("BERTH_SSH_CONFIG", "/nonexistent/ssh_config"));
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "error: the ssh_config /nonexistent/ssh_config does not exist\n\
         hint: check --ssh-config or BERTH_SSH_CONFIG\n"
    );
}

#[test]
fn completions_and_man_page() {
    let (code, out, _) = run(berth().args(["completions", "bash"]));
    assert_eq!(code, 0);
    assert!(out.contains("_berth()"), "{out}");
    let (code, out, _) = run(berth().arg("man"));
    assert_eq!(code, 0);
    assert!(out.contains(".TH berth 1"), "{out}");
    assert!(out.contains("berth\\-lab(1)"), "{out}");
}

#[test]
fn lab_up_as_non_root_is_refused_and_touches_nothing() {
    let dir = Path::new("/tmp/berth-test-nonroot-lab");
    let bin = tempfile::tempdir().unwrap();
    let (code, out, err) = run(common::berth_for_anyone(bin.path())
        .args(["lab", "up", "--lab-dir"])
        .arg(dir)
        .uid(65534)
        .gid(65534));
    assert_eq!(code, 2, "{err}");
    assert_eq!(out, "");
    assert!(err.contains("error: the lab needs root"), "{err}");
    assert!(
        err.contains("hint: run it as root, e.g. `sudo berth lab up`"),
        "{err}"
    );
    assert!(!dir.exists());
}

#[test]
fn lab_without_its_programs_names_the_packages() {
    let (code, _, err) = run(berth()
        .args([
            "lab",
            "up",
            "--systemd",
            "--lab-dir",
            "/tmp/berth-test-nopath-lab",
        ])
        .env("PATH", "/nonexistent"));
    assert_eq!(code, 2, "{err}");
    // ip, sshd and systemd-nspawn live in /usr/sbin or /usr/bin: the
    // programs from /usr/bin are the ones missing with PATH gone.
    assert!(
        err.contains("error: the lab needs ssh, ssh-keygen, nix"),
        "{err}"
    );
    assert!(
        err.contains("apt-get install -y openssh-client nix-bin"),
        "{err}"
    );
    assert!(!Path::new("/tmp/berth-test-nopath-lab").exists());
}

/// Removes a lab the binary made, if the test stops before `lab down`.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.0.join("lab.json").exists() {
            let _ = berth()
                .args(["lab", "down", "--lab-dir"])
                .arg(&self.0)
                .output();
        }
    }
}

#[test]
fn lab_lifecycle_through_the_cli() {
    let dir = PathBuf::from(format!("/srv/berth-test-{}-cli", std::process::id()));
    let _cleanup = Cleanup(dir.clone());
    let lab = |args: &[&str]| {
        let mut cmd = berth();
        cmd.arg("lab").args(args).env("BERTH_LAB_DIR", &dir);
        run(&mut cmd)
    };

    let (code, _, err) = lab(&["up", "--hosts", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("ssh -F {}/ssh_config h1", dir.display())),
        "{err}"
    );

    let (code, _, err) = lab(&["up", "--hosts", "1"]);
    assert_eq!(code, 2);
    assert!(err.contains("error: a lab is already up in"), "{err}");
    assert!(err.contains("hint: run `berth lab down` first"), "{err}");

    let (code, out, _) = run(berth()
        .args(["--json", "lab", "status"])
        .env("BERTH_LAB_DIR", &dir));
    assert_eq!(code, 0);
    let event: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(event["event"], "lab_host");
    assert_eq!(event["host"], "h1");
    assert_eq!(event["running"], true);
    assert!(event["address"].as_str().unwrap().starts_with("10.231."));

    let (code, out, _) = lab(&["ssh", "h1", "--", "printf", "[%s]", "a b", "", "$(id)"]);
    assert_eq!((code, out.as_str()), (0, "[a b][][$(id)]"));
    let (code, _, _) = lab(&["ssh", "h1", "--", "sh", "-c", "exit 7"]);
    assert_eq!(code, 7);
    // The lab's ssh_config works with plain ssh too.
    let ssh = Command::new("ssh")
        .arg("-F")
        .arg(dir.join("ssh_config"))
        .args(["h1", "echo", "plain-ssh"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ssh.stdout), "plain-ssh\n");

    let (code, _, err) = lab(&["ssh", "h9", "--", "true"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("the lab has no host `h9` (it has h1)"),
        "{err}"
    );

    let (code, _, err) = lab(&["down"]);
    assert_eq!(code, 0, "{err}");
    assert!(!dir.exists());
    let (code, _, err) = lab(&["status"]);
    assert_eq!(code, 2);
    assert!(err.contains("error: no lab is up in"), "{err}");
    assert!(err.contains("hint: start one with `berth lab up`"), "{err}");
}

/// An ssh_config whose every connection leaves a mark in `marks`, so a
/// test can tell that berth never tried to connect.
fn marking_ssh_config(dir: &Path) -> (PathBuf, PathBuf) {
    let marks = dir.join("connections");
    let config = dir.join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host *\n  BatchMode yes\n  ProxyCommand /bin/sh -c 'echo connect >> {}; exit 1'\n",
            marks.display()
        ),
    )
    .unwrap();
    (config, marks)
}

/// Hostile names (a shell, a path, an option) in every argument that
/// reaches a host are usage errors, exit 2, that name the input and the
/// rule, before berth connects anywhere or runs a shell.
#[test]
fn hostile_names_are_refused_before_any_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, marks) = marking_ssh_config(tmp.path());
    let pwned = tmp.path().join("pwned");
    let touch = format!("$(touch {})", pwned.display());
    let rev = "0123456789abcdef0123456789abcdef01234567";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["app", "deploy", &touch, "--host", "h1", "--rev", rev],
            "is not a valid service name: it starts with '$'",
        ),
        (
            vec!["app", "deploy", "a`id`", "--host", "h1", "--rev", rev],
            "is not a valid service name: it holds '`'",
        ),
        (
            vec!["app", "deploy", "..", "--host", "h1", "--rev", rev],
            "is not a valid service name: it starts with '.'",
        ),
        (
            vec!["app", "deploy", "a\nb", "--host", "h1", "--rev", rev],
            "`a\\nb` is not a valid service name: it holds '\\n'",
        ),
        (
            vec!["app", "rollback", "../etc", "--host", "h1"],
            "is not a valid service name",
        ),
        (
            vec!["app", "status", "Notes", "--host", "h1"],
            "is not a valid service name",
        ),
        (
            vec!["app", "changed", "notes", "x;y", "--host", "h1"],
            "`x;y` is not a valid service name",
        ),
        (
            vec!["snapshot", "list", "a b", "--host", "h1"],
            "is not a valid service name",
        ),
        (
            vec!["lock", "acquire", &touch, "--host", "h1"],
            "is not a valid service name",
        ),
        (
            vec!["app", "deploy", "notes", "--host", "h1", "--rev", &touch],
            "is not a revision: give a commit's hex name",
        ),
        (
            vec![
                "app",
                "changed",
                "notes",
                "--host",
                "h1",
                "--from=--output=/x",
            ],
            "`--output=/x` is not a revision",
        ),
        (
            vec!["app", "unblock", "notes", "--host", "h1", "--rev", &touch],
            "is not a revision: give a commit's hex name",
        ),
        (
            vec!["app", "unblock", "notes", "--host", "h1", "--rev", "abc"],
            "`abc` is not a revision: give a commit's hex name, 7 to 64 characters",
        ),
        (
            vec!["agent", "app-unblock", "--service", "notes", "--rev=--x"],
            "`--x` is not a revision",
        ),
        (
            vec![
                "app",
                "deploy",
                "notes",
                "--host",
                "h1",
                "--rev",
                rev,
                "--allow-skip-snapshot-in-ci",
            ],
            "--skip-snapshot",
        ),
        (
            vec!["app", "deploy", "notes", "--host", "h1", "--ref=-x"],
            "`-x` is not a branch or tag name: it starts with `-`",
        ),
        (
            vec!["app", "deploy", "notes", "--host", "h1", "--tag", "v1..v2"],
            "`v1..v2` is not a branch or tag name: it holds `..`",
        ),
        (
            vec!["app", "deploy", "notes", "--host", "h1;id", "--rev", rev],
            "`notes@h1;id` is not an SSH destination",
        ),
        (
            vec![
                "app", "deploy", "notes", "--host", "h1", "--user", &touch, "--rev", rev,
            ],
            "is not an SSH destination",
        ),
        (
            vec!["app", "status", "notes", "--host=-oProxyCommand=sh"],
            "is not an SSH destination",
        ),
        (
            vec!["snapshot", "restore", "notes", "../../etc", "--host", "h1"],
            "`../../etc` is not a deployment id",
        ),
        // The agent reads its arguments the same way, on the host.
        (
            vec![
                "agent",
                "app-deploy",
                "--service",
                "../x",
                "--id",
                "d1",
                "--rev",
                rev,
            ],
            "`../x` is not a valid service name",
        ),
        (
            vec![
                "agent",
                "restore",
                "--service",
                "notes",
                "--snapshot",
                "../x",
                "--id",
                "d1",
            ],
            "`../x` is not a deployment id",
        ),
        (
            vec![
                "agent",
                "app-deploy",
                "--service",
                "notes",
                "--id",
                "a/b",
                "--rev",
                rev,
            ],
            "`a/b` is not a deployment id",
        ),
        (
            vec!["agent", "status", "--node", "../x"],
            "`../x` is not a valid node name",
        ),
        (
            vec!["deploy", ".#$(id)"],
            "`$(id)` is not a valid node name: it holds '$'",
        ),
        (
            vec!["deploy", "--on", "web;id", "."],
            "`web;id` is not a valid node selector",
        ),
        (
            vec!["status", "--", "-oProxyCommand=x#web1"],
            "which nix would read as an option",
        ),
        (
            vec!["logs", &touch, "--host", "h1"],
            "is not a valid service name: it starts with '$'",
        ),
        (
            vec!["logs", "notes", "--host", "h1;id", "-f"],
            "`notes@h1;id` is not an SSH destination",
        ),
        (
            vec!["logs", ".#$(id)", "--unit", "x"],
            "`$(id)` is not a valid node name",
        ),
        (
            vec!["exec", "--on", "web;id", ".", "--", "true"],
            "`web;id` is not a valid node selector",
        ),
        (
            vec!["exec", ".#a b", "--", "true"],
            "is not a valid node name",
        ),
    ];
    for (args, says) in cases {
        let (code, out, err) = run(berth()
            .args(&args)
            .env("BERTH_SSH_CONFIG", &config)
            .current_dir(tmp.path()));
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(out, "", "{args:?}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!marks.exists(), "{args:?} tried to connect");
    }
    assert!(!pwned.exists(), "a shell ran a hostile name");
    // The marks do tell: a valid service name does reach for the host.
    let (code, _, err) = run(berth()
        .args(["app", "status", "notes", "--host", "h1"])
        .env("BERTH_SSH_CONFIG", &config));
    assert_ne!(code, 0, "{err}");
    assert!(marks.exists(), "{err}");
}

/// A manifest that tries to leave the service's directory, or to pass for
/// another service, is refused by the agent before it touches anything.
#[test]
fn the_agent_refuses_a_manifest_that_escapes_its_service() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let cases = [
        (
            "data",
            serde_json::json!({ "sqlite": ["../../../etc/shadow"] }),
            "the data path ../../../etc/shadow is outside the service's directory /var/lib/notes",
        ),
        (
            "data",
            serde_json::json!({ "files": ["/etc"] }),
            "the data path /etc is outside the service's directory",
        ),
        (
            "dir",
            "/var/lib/../../etc".into(),
            "must be an absolute path below /, without `..`",
        ),
        ("service", "../x".into(), "is the manifest of `../x`"),
        (
            "unit",
            "-x".into(),
            "`-x.service` is not a systemd unit name",
        ),
        (
            "instances",
            0.into(),
            "service `notes`: its instances is 0: a service runs 1 to 32 instances",
        ),
        (
            "instances",
            2.into(),
            "it runs up to 2 instances, but its unit `notes.service` is not a template unit \
             (`notes@.service`)",
        ),
        ("maxInstances", 33.into(), "its maxInstances is 33"),
    ];
    for (field, value, says) in cases {
        let mut json = serde_json::json!({
            "version": 1,
            "service": "notes",
            "dir": "/var/lib/notes",
            "unit": "notes",
            "repository": "/srv/notes.git",
            "health": { "url": "http://127.0.0.1:3000/health" },
        });
        json[field] = value;
        std::fs::write(tmp.path().join("notes.json"), json.to_string()).unwrap();
        let (code, out, err) = run(berth()
            .args(["agent", "--manifest-dir"])
            .arg(tmp.path())
            .args(["app-status", "--service", "notes"])
            .env("BERTH_STATE_DIR", &state));
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(says), "{err}\n{out}");
    }
}
