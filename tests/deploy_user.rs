//! System deploys as a user other than root, end to end, on a systemd lab
//! host with a multi-user Nix (Debian's nix-daemon, the store root's),
//! real sudo with the module's rule (nix/lib's, rendered as nixpkgs renders
//! `security.sudo.extraRules`), real sshd and two users whose key is the
//! deployer's: `deploy` (the rule, NOPASSWD) and `pw` (the same commands,
//! with its password). The host trusts a key of the test's, in its agent.json
//! and its Nix. Covered: an unsigned closure refused by the daemon in berth's
//! words; a signed deploy, its no-op, status and history; a failed health
//! check and a cut link rolled back; signatures reaching the host for
//! paths it already had unsigned; the password fed through a terminal, a
//! wrong one and none at all; the narrow rule refusing everything else;
//! and a canary password and webhook URL found nowhere afterwards. Needs
//! root and the lab's packages (scripts/install-deps).

mod common;

use std::path::PathBuf;
use std::process::Command;

use berth::host::Host;
use berth::lab::{HostKind, Lab, LabGuard};
use berth::process::Cmd;
use common::deploy_user;
use common::fleet::Fleet;
use common::{Answer, Run, Server};

const BIN: &str = env!("CARGO_BIN_EXE_berth");

fn deploy_cmd(lab: &Lab, args: &[&str]) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = common::berth();
    // No controlling terminal, as in CI, also when the tests run at one.
    // SAFETY: setsid is async-signal-safe and touches nothing of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.arg("deploy")
        .args(args)
        .args(["--agent", BIN])
        .env("BERTH_SSH_CONFIG", lab.ssh_config());
    cmd
}

fn deploy(lab: &Lab, args: &[&str]) -> Run {
    Run::of(&mut deploy_cmd(lab, args))
}

/// `berth ARGS` run on a pseudo-terminal that types `password` at the
/// sudo prompt: what the terminal showed, and the exit code.
fn at_terminal(cmd: &Command, password: &str) -> (i32, String) {
    const SCRIPT: &str = r#"
import os, pty, sys
password = sys.argv[1].encode() + b"\n"
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
seen, typed = b"", False
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    seen += chunk
    if not typed and b"sudo password for" in seen:
        os.write(fd, password)
        typed = True
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let mut py = Command::new("python3");
    py.args(["-c", SCRIPT, password]).arg(cmd.get_program());
    py.args(cmd.get_args());
    py.env_clear();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            py.env(key, value);
        }
    }
    py.env("PATH", std::env::var_os("PATH").unwrap_or_default());
    let out = py.output().expect("python3");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The system profile's generation link, none before the first deploy.
async fn generation(lab: &Lab) -> Option<String> {
    let ssh = lab.connect("h1").await.unwrap();
    let out = ssh
        .output(&Cmd::new("readlink").arg("/nix/var/nix/profiles/system"))
        .await
        .unwrap();
    ssh.close().await.unwrap();
    out.status
        .success()
        .then(|| out.stdout_str().trim().to_owned())
}

fn version_served(lab: &Lab) -> String {
    let addr = lab.host("h1").unwrap().net.addr;
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://{addr}:8080/version"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn said(run: &Run, text: &str) {
    assert!(run.stderr.contains(text), "no {text:?} in:\n{}", run.stderr);
}

#[test]
fn deploys_as_a_user_other_than_root() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = PathBuf::from(format!("/srv/berth-test-{}-deploy-as", std::process::id()));
        let lab = LabGuard::up(&dir, &[HostKind::Systemd]).await.expect("lab up");
        let (_keys, key_a, _) = common::lab_deploy_user(&lab, BIN).await;
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let password = format!("canary-pw-{nonce}");
        let hook_canary = format!("canary-hook-{nonce}");

        // The host (common::lab_deploy_user): Nix's daemon trusting the
        // key, `deploy` with the module's rule, agent.json requiring the
        // key; and `pw`, whose rule is the same but wants its password.
        let root = lab.connect("h1").await.unwrap();
        deploy_user::add_user(&lab, &root, "pw", Some(&password)).await;
        let with_password =
            common::sudoers::deploy_rule(&["pw"], BIN).replace("NOPASSWD: ", "");
        deploy_user::install_sudoers(&root, "berth-pw", &with_password)
            .await
            .unwrap();

        let hooks = Server::start(|_, _| -> Answer { (200, String::new(), "{}".into()) });
        let hook = format!("{}/{hook_canary}", hooks.url());
        let v = |n: u32| format!("{n}.{nonce}");
        let addr = lab.host("h1").unwrap().net.addr.to_string();
        let mut fleet = Fleet::new("deploy-as");
        fleet.set(
            "web1",
            serde_json::json!({ "host": "h1", "address": addr, "version": v(1),
                                "confirmTimeout": 5, "retries": 1, "targetUser": "deploy" }),
        );
        let node = fleet.node("web1");
        let mut outputs = Vec::new();

        // 1. Unsigned: the host's Nix refuses the copy; berth says why and
        // how to fix it, and nothing changed.
        let run = deploy(&lab, &[&node, "--notify", &hook]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        said(&run, "the host's Nix refused the system: it takes paths from deploy only when a key it trusts signed them");
        said(&run, "deploy with --sign-key FILE");
        said(&run, "nix.settings.trusted-users");
        assert_eq!(generation(&lab).await, None);
        outputs.push(run.stdout + &run.stderr);

        // 2. Signed with A: deployed through sudo, by the host's watchdog's
        // rules; then a no-op.
        let run = deploy(&lab, &[&node, "--sign-key", &key_a, "--notify", &hook, "--json"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        said(&run, "web1 (h1): deployed (generation 1)");
        assert!(version_served(&lab).contains(&v(1)));
        outputs.push(run.stdout.clone() + &run.stderr);
        let run = deploy(&lab, &[&node, "--sign-key", &key_a]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        said(&run, "already running this system");

        // status and history go through the same rule.
        for (args, shown) in [(&["status", &node][..], v(1)), (&["history", &node], "confirmed".into())] {
            let run = Run::of(
                common::berth()
                    .args(args)
                    .args(["--agent", BIN])
                    .env("BERTH_SSH_CONFIG", lab.ssh_config()),
            );
            assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
            assert!(run.stderr.contains(&shown) || run.stdout.contains(&shown), "{args:?}: {}{}", run.stdout, run.stderr);
        }

        // 3. A failed health check: rolled back.
        fleet.update("web1", serde_json::json!({ "version": v(2), "behaviour": "unhealthy" }));
        let run = deploy(&lab, &[&node, "--sign-key", &key_a]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        said(&run, "web1 (h1): rolled back");
        assert_eq!(generation(&lab).await.as_deref(), Some("system-1-link"));

        // 4. The activation takes the link down: the host rolls itself back,
        // its watchdog running as root whoever connected.
        fleet.update("web1", serde_json::json!({ "version": v(3), "behaviour": "link-down" }));
        let run = deploy(&lab, &[&node, "--sign-key", &key_a]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        said(&run, "web1 (h1): rolled back");
        assert_eq!(generation(&lab).await.as_deref(), Some("system-1-link"));
        assert!(version_served(&lab).contains(&v(1)));

        // 5. Signatures reach the host for a path it already has unsigned.
        // Root (trusted by Nix) lands v4 unsigned; the agent refuses it.
        fleet.update("web1", serde_json::json!({ "version": v(4), "behaviour": "healthy", "targetUser": "root" }));
        let run = deploy(&lab, &[&node]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        said(&run, "it is not signed by a key this host trusts (test-deploy)");
        // The same system as the deploy user, signed: the copy skips the
        // path, the signatures still arrive, and it is deployed.
        fleet.update("web1", serde_json::json!({ "targetUser": "deploy" }));
        let run = deploy(&lab, &[&node, "--sign-key", &key_a]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        said(&run, "web1 (h1): deployed (generation 2)");
        // And as root: v5 refused unsigned, then signed, deployed.
        fleet.update("web1", serde_json::json!({ "version": v(5), "targetUser": "root" }));
        let run = deploy(&lab, &[&node]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        let run = deploy(&lab, &[&node, "--sign-key", &key_a]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        said(&run, "web1 (h1): deployed (generation 3)");

        // 6. A sudo that wants a password.
        fleet.update("web1", serde_json::json!({ "version": v(6), "targetUser": "pw" }));
        // None given, no terminal: refused before anything changed.
        let run = deploy(&lab, &[&node, "--sign-key", &key_a]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        said(&run, "sudo on pw@h1 wants a password for pw");
        said(&run, "--ask-sudo-password");
        // Asked for with no terminal: a usage error before anything.
        let run = deploy(&lab, &[&node, "--sign-key", &key_a, "--ask-sudo-password"]);
        assert_eq!(run.code, 2, "{}", run.stderr);
        said(&run, "there is no terminal to read it from");
        assert_eq!(generation(&lab).await.as_deref(), Some("system-3-link"));
        // A wrong one, typed at a terminal: refused, nothing changed.
        let wrong = deploy_cmd(&lab, &[&node, "--sign-key", &key_a, "--ask-sudo-password"]);
        let (code, shown) = at_terminal(&wrong, "not-the-password");
        assert_eq!(code, 1, "{shown}");
        assert!(shown.contains("sudo on pw@h1 refused the password given for pw"), "{shown}");
        assert_eq!(generation(&lab).await.as_deref(), Some("system-3-link"));
        // The right one: deployed.
        let mut right = deploy_cmd(&lab, &[&node, "--sign-key", &key_a, "--ask-sudo-password", "--notify", &hook]);
        right.arg("--json");
        let (code, shown) = at_terminal(&right, &password);
        assert_eq!(code, 0, "{shown}");
        assert!(shown.contains("web1 (h1): deployed (generation 4)"), "{shown}");
        assert!(!shown.contains(&password), "the terminal echoed the password");
        outputs.push(shown);

        // 7. plan, rollback and exec as the deploy user. A plan copies the
        // system: unsigned, the host's Nix refuses it, in berth's words.
        let as_deploy = |args: &[&str]| {
            Run::of(
                common::berth()
                    .args(["--agent", BIN])
                    .args(args)
                    .env("BERTH_SSH_CONFIG", lab.ssh_config()),
            )
        };
        fleet.update("web1", serde_json::json!({ "version": v(7), "targetUser": "deploy" }));
        let run = as_deploy(&["plan", &node]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        said(&run, "it takes paths from deploy only when a key it trusts signed them");
        let run = as_deploy(&["--json", "plan", &node, "--sign-key", &key_a]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let plan = &run.events("plan")[0];
        assert_eq!(plan["units"]["restart"][0], "example-web.service", "{plan}");
        assert!(plan["dry_activate_refused"].is_null(), "{plan}");
        assert_eq!(generation(&lab).await.as_deref(), Some("system-4-link"), "plan changed the host");
        // Back to the generation before, through sudo.
        let run = as_deploy(&["rollback", &node]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(version_served(&lab).contains(&v(5)), "{}", run.stderr);
        // The journal, read as deploy (in systemd-journal), not as root.
        let run = as_deploy(&["logs", &node, "--unit", "ssh.service", "-n", "5"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        // exec runs as the login user, or as root with --root (which the
        // narrow rule refuses: deploy may run only the agent).
        let run = as_deploy(&["exec", &node, "--", "id", "-un"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(run.stdout.contains("deploy"), "{}", run.stdout);
        let run = as_deploy(&["exec", &node, "--root", "--", "id", "-un"]);
        assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
        assert!(run.stderr.contains("sudo on deploy@h1 wants a password"), "{}", run.stderr);

        // 7. The narrow rule: nothing but berth's agent's system verbs.
        for line in [
            "sudo -n bash -c id".to_owned(),
            "sudo -n nix-env --version".into(),
            "sudo -n systemctl stop ssh.service".into(),
            "sudo -n /bin/sh".into(),
            // The agent's app verbs are not in the rule at all.
            format!("sudo -n {BIN} agent app-status --service notes"),
        ] {
            let ran = deploy_user::ssh_as(&lab, "deploy", "h1", &line, None);
            assert_ne!(ran.code, 0, "{line} ran: {}", ran.stdout);
            assert!(ran.stderr.contains("sudo: a password is required"), "{line}: {}", ran.stderr);
        }
        for (args, refusal) in [
            ("agent status --node web1 --state-dir /tmp/mine", "does not take --state-dir /tmp/mine"),
            ("agent rollback --node web1 --new-id 20260101T000000Z-abcd --profile /home/deploy/p", "does not take --profile"),
            ("agent lock acquire --service notes", "does not lock a service"),
        ] {
            let ran = deploy_user::ssh_as(&lab, "deploy", "h1", &format!("sudo -n {BIN} {args}"), None);
            assert_eq!(ran.code, 2, "{args}: {} {}", ran.stdout, ran.stderr);
            assert!(ran.stderr.contains(refusal), "{args}: {}", ran.stderr);
        }
        let ran = deploy_user::ssh_as(&lab, "deploy", "h1", &format!("sudo -n {BIN} agent status --node web1"), None);
        assert_eq!(ran.code, 0, "{}", ran.stderr);

        // 8. The canary: the password and the webhook URL are nowhere.
        assert!(hooks.targets().iter().any(|t| t.contains(&hook_canary)), "the webhook was not called");
        for text in &outputs {
            assert!(!text.contains(&password), "the password in berth's output");
            assert!(!text.contains(&hook_canary), "the webhook URL in berth's output:\n{text}");
        }
        let search = format!(
            "for c in '{password}' '{hook_canary}'; do \
               grep -rlaF \"$c\" /nix/store /nix/var /var/lib/berth /var/log /etc/berth /etc/sudoers.d /home/deploy /home/pw /root/.bash_history 2>/dev/null; \
               journalctl -o cat --no-pager | grep -aF \"$c\"; \
             done; true"
        );
        let found = deploy_user::root_sh(&root, &search, &[], "").await;
        assert_eq!(found.trim(), "", "the canary on the host");
        let here = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "for c in '{password}' '{hook_canary}'; do grep -rlaF \"$c\" /nix/store /nix/var/nix/db 2>/dev/null; done; true"
            ))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&here.stdout).trim(), "", "the canary in the deployer's store");

        root.close().await.unwrap();
        lab.down().await.expect("lab down");
    });
}
