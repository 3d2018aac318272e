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
    let (code, out, err) = run(berth()
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
