//! End to end, on a real lab: one plain host (h1: sshd in a network
//! namespace, its own /nix) and one systemd host (h2: a booted container).
//! Needs root, iproute2, openssh, nix and systemd-container
//! (scripts/install-deps installs them); run by `cargo test`.

use std::path::{Path, PathBuf};

use berth::host::{ConnectError, Destination, Host, LocalHost, SshHost, SshSettings};
use berth::lab::{HostKind, LabGuard};
use berth::nix::{self, StorePath};
use berth::process::{self, Cmd, ExitStatus, JobLog, Via};

/// Words that break naive quoting, sent as separate arguments.
const HOSTILE: &[&str] = &[
    "",
    " ",
    "a b",
    "'",
    "\"",
    "it's",
    "$(touch /tmp/berth-e2e-pwned)",
    "`touch /tmp/berth-e2e-pwned`",
    "$HOME",
    "a\nb",
    "\t",
    "-rf",
    "--",
    "-n",
    "*",
    "~",
    "\\",
    "!",
    ";",
    "&& touch /tmp/berth-e2e-pwned",
    "| cat",
    "#",
    "ünï ✓",
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn lab_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("/srv/berth-test-{}-{name}", std::process::id()))
}

/// Builds a store path locally with no nixpkgs: `builtins.derivation` and /bin/sh.
async fn build_path(name: &str, content: &str) -> StorePath {
    let expr = format!(
        r#"builtins.derivation {{ name = "{name}"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" "echo {content} > $out" ]; }}"#
    );
    let out = process::output(
        &Cmd::new("nix").args(["build", "--impure", "--no-link", "--json", "--expr", &expr]),
        Via::Local,
        &JobLog::new(),
    )
    .await
    .unwrap()
    .check()
    .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    StorePath::new(json[0]["outputs"]["out"].as_str().unwrap()).unwrap()
}

fn local_store() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/nix/store")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn accepted_logins(sshd_log: &Path) -> usize {
    std::fs::read_to_string(sshd_log)
        .unwrap()
        .matches("Accepted publickey")
        .count()
}

async fn status(host: &dyn Host, cmd: Cmd) -> ExitStatus {
    host.output(&cmd).await.unwrap().status
}

async fn stdout(host: &dyn Host, cmd: Cmd) -> String {
    host.run(&cmd).await.unwrap().stdout_str()
}

#[test]
fn lab_of_one_plain_and_one_systemd_host() {
    runtime().block_on(async {
        let dir = lab_dir("hosts");
        let lab = LabGuard::up(&dir, &[HostKind::Plain, HostKind::Systemd])
            .await
            .expect("lab up");
        let h1 = lab.connect("h1").await.unwrap();
        let h2 = lab.connect("h2").await.unwrap();

        commands_return_output_and_status(&h1).await;
        commands_return_output_and_status(&h2).await;
        commands_return_output_and_status(&LocalHost::new()).await;
        hostile_words_arrive_byte_for_byte(&h1).await;
        hostile_words_arrive_byte_for_byte(&h2).await;

        assert_eq!(
            h2.read_file(Path::new("/etc/hostname")).await.unwrap(),
            b"h2\n"
        );

        copy_reaches_only_its_host(&h1, &h2, &lab.host("h1").unwrap().log_file()).await;
        profile_generations(&h1).await;
        transient_unit_lifecycle(&h2).await;
        host_keys_are_checked(&lab).await;

        // Tear down and check that nothing of the lab is left.
        let netns: Vec<String> = lab.hosts().iter().map(|h| h.net.netns.clone()).collect();
        let pids: Vec<u32> = lab.hosts().iter().filter_map(|h| h.pid).collect();
        h1.close().await.unwrap();
        h2.close().await.unwrap();
        lab.down().await.expect("lab down");
        nothing_left(&dir, &netns, &pids).await;
    });
}

async fn commands_return_output_and_status(host: &dyn Host) {
    let script = Cmd::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]);
    let out = host.output(&script).await.unwrap();
    assert_eq!(out.status, ExitStatus::Code(3));
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
    let err = host.run(&script).await.unwrap_err();
    assert_eq!(err.status(), Some(ExitStatus::Code(3)));
    assert!(err.to_string().contains("exited with status 3"), "{err}");
    assert!(err.to_string().contains("\n    err"), "{err}");

    let with_env = Cmd::new("sh")
        .args(["-c", r#"printf '%s|%s' "$GREETING" "$(pwd)""#])
        .env("GREETING", "hello $(world)")
        .cwd("/usr");
    assert_eq!(stdout(host, with_env).await, "hello $(world)|/usr");
    let with_stdin = Cmd::new("cat").stdin("piped\0bytes");
    assert_eq!(host.run(&with_stdin).await.unwrap().stdout, b"piped\0bytes");
}

async fn hostile_words_arrive_byte_for_byte(host: &dyn Host) {
    let out = host
        .run(&Cmd::new("printf").arg("%s\\0").args(HOSTILE))
        .await
        .unwrap();
    let got: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
    let mut want: Vec<&[u8]> = HOSTILE.iter().map(|w| w.as_bytes()).collect();
    want.push(b"");
    assert_eq!(got, want, "on {}", host.name());
    // A word that begins with a dash is an argument, not an option, only
    // when the program is told so: here `--` reaches printf as data.
    assert_eq!(
        stdout(host, Cmd::new("printf").args(["%s", "--"])).await,
        "--"
    );
    assert_eq!(
        status(host, Cmd::new("test").args(["-e", "/tmp/berth-e2e-pwned"])).await,
        ExitStatus::Code(1),
        "a hostile word ran a command on {}",
        host.name()
    );
}

async fn copy_reaches_only_its_host(h1: &SshHost, h2: &SshHost, h1_sshd_log: &Path) {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let path = build_path("berth-e2e-copy", &nonce.to_string()).await;
    let store_before = local_store();
    let logins_before = accepted_logins(h1_sshd_log);

    h1.copy_closure(std::slice::from_ref(&path)).await.unwrap();

    assert_eq!(status(h1, nix::is_valid(&path)).await, ExitStatus::Code(0));
    assert_eq!(
        h1.read_file(path.as_ref()).await.unwrap(),
        format!("{nonce}\n").into_bytes()
    );
    assert_ne!(status(h2, nix::is_valid(&path)).await, ExitStatus::Code(0));
    assert_eq!(
        status(h2, Cmd::new("test").args(["-e", path.as_str()])).await,
        ExitStatus::Code(1)
    );
    assert_eq!(
        local_store(),
        store_before,
        "the copy changed the local store"
    );
    assert_eq!(
        accepted_logins(h1_sshd_log),
        logins_before,
        "nix copy opened a new SSH connection instead of riding the master"
    );
}

async fn profile_generations(h1: &SshHost) {
    let first = build_path("berth-e2e-gen", "one").await;
    let second = build_path("berth-e2e-gen", "two").await;
    h1.copy_closure(&[first.clone(), second.clone()])
        .await
        .unwrap();
    let current = || Cmd::new("readlink").arg(nix::SYSTEM_PROFILE);

    h1.run(&nix::set_profile(nix::SYSTEM_PROFILE, &first))
        .await
        .unwrap();
    assert_eq!(stdout(h1, current()).await.trim(), "system-1-link");
    h1.run(&nix::set_profile(nix::SYSTEM_PROFILE, &second))
        .await
        .unwrap();
    assert_eq!(stdout(h1, current()).await.trim(), "system-2-link");
    let target = stdout(h1, Cmd::new("readlink").arg("-f").arg(nix::SYSTEM_PROFILE)).await;
    assert_eq!(target.trim(), second.as_str());
    let generations = stdout(
        h1,
        Cmd::new("nix-env").args(["-p", nix::SYSTEM_PROFILE, "--list-generations"]),
    )
    .await;
    assert_eq!(generations.lines().count(), 2, "{generations}");
}

async fn transient_unit_lifecycle(h2: &SshHost) {
    let unit = "berth-e2e-sleeper.service";
    let main_pid = || Cmd::new("systemctl").args(["show", "--value", "-p", "MainPID", unit]);
    let is_active = || Cmd::new("systemctl").args(["is-active", unit]);

    h2.run(&Cmd::new("systemd-run").args(["--unit", unit, "--property=Type=exec", "sleep", "600"]))
        .await
        .unwrap();
    assert_eq!(stdout(h2, is_active()).await.trim(), "active");
    let first_pid = stdout(h2, main_pid()).await;

    h2.run(&Cmd::new("systemctl").args(["restart", unit]))
        .await
        .unwrap();
    assert_eq!(stdout(h2, is_active()).await.trim(), "active");
    let second_pid = stdout(h2, main_pid()).await;
    assert_ne!(first_pid.trim(), "0");
    assert_ne!(first_pid, second_pid, "restart kept the same process");

    h2.run(&Cmd::new("systemctl").args(["stop", unit]))
        .await
        .unwrap();
    let after = h2.output(&is_active()).await.unwrap();
    assert_ne!(after.status, ExitStatus::Code(0));
    assert_eq!(after.stdout_str().trim(), "inactive");
}

/// A host whose key is not the recorded one is refused; a host never seen
/// is refused too unless asked to accept new keys.
async fn host_keys_are_checked(lab: &berth::lab::Lab) {
    let scratch = lab.dir().join("key-test");
    std::fs::create_dir_all(&scratch).unwrap();
    let known_hosts = lab.dir().join("known_hosts");
    let config_with = |known: &Path| {
        let text = std::fs::read_to_string(lab.ssh_config())
            .unwrap()
            .replace(known_hosts.to_str().unwrap(), known.to_str().unwrap());
        let config = scratch.join(format!(
            "ssh_config-{}",
            known.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(&config, text).unwrap();
        SshSettings {
            config_file: Some(config),
            ..SshSettings::default()
        }
    };
    let h1 = Destination::parse("h1").unwrap();

    // h1's alias recorded with h2's key.
    let real = std::fs::read_to_string(&known_hosts).unwrap();
    let h2_key = real.lines().find(|l| l.starts_with("h2,")).unwrap();
    let (_, key) = h2_key.split_once(' ').unwrap();
    let wrong = scratch.join("wrong");
    let h1_addr = lab.host("h1").unwrap().net.addr;
    std::fs::write(&wrong, format!("h1,{h1_addr} {key}\n")).unwrap();
    let err = SshHost::connect(&h1, &config_with(&wrong))
        .await
        .err()
        .expect("connected to a host with the wrong key");
    assert!(
        err.hint().unwrap().contains("known_hosts"),
        "{:?}",
        err.hint()
    );
    let _: &ConnectError = &err;

    // Never seen: refused by default, accepted and recorded when asked.
    let empty = scratch.join("empty");
    std::fs::write(&empty, "").unwrap();
    assert!(SshHost::connect(&h1, &config_with(&empty)).await.is_err());
    let accept = SshSettings {
        accept_new_host_keys: true,
        ..config_with(&empty)
    };
    let host = SshHost::connect(&h1, &accept)
        .await
        .expect("accept-new connects");
    host.close().await.unwrap();
    assert!(std::fs::read_to_string(&empty)
        .unwrap()
        .contains("ssh-ed25519"));
}

async fn nothing_left(dir: &Path, netns: &[String], pids: &[u32]) {
    let list = process::output(
        &Cmd::new("ip").args(["netns", "list"]),
        Via::Local,
        &JobLog::new(),
    )
    .await
    .unwrap()
    .stdout_str();
    for ns in netns {
        assert!(
            !list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns)),
            "{ns} left in {list}"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(dir.to_str().unwrap()),
        "a mount of the lab is left:\n{mounts}"
    );
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "lab process {pid} is left"
        );
    }
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let needle = dir.as_os_str().as_encoded_bytes();
            assert!(
                !cmdline.windows(needle.len()).any(|w| w == needle),
                "process {:?} of the lab is left: {}",
                entry.file_name(),
                String::from_utf8_lossy(&cmdline)
            );
        }
    }
    assert!(!dir.exists(), "{} is left", dir.display());
}
