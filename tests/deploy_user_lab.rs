//! What a host with multi-user Nix and a non-root deploy user does, on one
//! systemd lab host made so by tests/common/deploy_user.rs: the facts the
//! deploy-user work builds on (Nix 2.8's daemon and Debian 12's sudo), so a
//! change in either shows here first. Needs root, like every lab test.

#[path = "common/deploy_user.rs"]
#[allow(dead_code)]
mod deploy_user;

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use berth::lab::{HostKind, LabGuard};
use deploy_user::*;

const HOST: &str = "h1";
const USER: &str = "deploy";
const PW_USER: &str = "pw";
const PW: &str = "pw-secret-1";
const NORULE: &str = "norule";
const NORULE_PW: &str = "norule-secret-1";

#[test]
fn a_deploy_user_reaches_nix_only_through_the_daemon_untrusted_and_sudo_answers_as_debian_12s() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = PathBuf::from(format!(
            "/srv/berth-test-{}-deploy-user",
            std::process::id()
        ));
        let booting = Instant::now();
        let lab = LabGuard::up(&dir, &[HostKind::Systemd])
            .await
            .expect("lab up");
        eprintln!("lab up took {:?}", booting.elapsed());
        let root = lab.connect(HOST).await.unwrap();
        let (secret, public) = signing_key(lab.dir(), "deployer-test-1");
        let secret = secret.to_str().unwrap().to_owned();

        let started = Instant::now();
        set_up(&lab, &root, USER, None, &[&public]).await;
        add_user(&lab, &root, PW_USER, Some(PW)).await;
        add_user(&lab, &root, NORULE, Some(NORULE_PW)).await;
        install_sudoers(
            &root,
            USER,
            &format!("{USER} ALL=(root) NOPASSWD: /bin/true, /usr/bin/env\n"),
        )
        .await
        .unwrap();
        install_sudoers(&root, PW_USER, &format!("{PW_USER} ALL=(root) /bin/true, /bin/cat\n"))
            .await
            .unwrap();
        eprintln!("deploy-user setup took {:?}", started.elapsed());

        // A rule visudo refuses is not installed.
        let refused = install_sudoers(&root, "broken", "deploy ALL=(root) NOPASSWD /bin/true\n")
            .await
            .unwrap_err();
        assert!(refused.contains("syntax error"), "{refused}");
        let listed = root_sh(&root, "ls /etc/sudoers.d", &[], "").await;
        assert!(!listed.contains("broken"), "{listed}");

        // Store paths of this run alone: a path signed here by an earlier run
        // stays signed in this machine's store.
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let tag = |what: &str| format!("du-{what}-{}-{nanos}", std::process::id());
        let path = |what: &str| build_path(&tag(what), what, None);
        let ok = |r: &Ran| assert_eq!(r.code, 0, "{}", r.stderr);
        let host_sigs = |p: String| {
            let root = &root;
            async move {
                root_sh(root, r#"nix path-info --sigs "$1" | cut -f2"#, &[&p], "")
                    .await
                    .trim()
                    .to_owned()
            }
        };
        let valid_on_host = |p: String| {
            let root = &root;
            async move {
                root_sh_output(root, r#"nix-store --check-validity "$1""#, &[&p], "")
                    .await
                    .status
                    .success()
            }
        };
        let to = |user: &str| format!("ssh-ng://{user}@{HOST}");

        // The user's view: Nix through the daemon, the store not writable,
        // the journal readable.
        let probe = path("probe");
        ok(&local_nix(&lab, &["copy", "--no-check-sigs", "--to", &to("root"), &probe]));
        let view = check_user_view(&lab, USER, HOST, Some(&probe)).unwrap();
        assert_eq!(view.user, USER);
        assert_eq!(view.nix_store_version, "nix-store (Nix) 2.8.0");
        assert_eq!(view.store_url, "daemon");
        assert!(!view.writes_store);
        assert!(view.probe_hash.as_deref().unwrap().starts_with("sha256:"), "{view:?}");
        assert!(view.reads_journal);
        let as_user = connect_as(&lab, USER, HOST).await;
        let who = root_sh(&as_user, "id -un; id -nG", &[], "").await;
        assert_eq!(who, format!("{USER}\n{USER} systemd-journal\n"));
        let _ = as_user.close().await;

        // 1. An untrusted user cannot add an unsigned path, --no-check-sigs
        // or not; a path signed by a trusted key goes in, signature and all.
        let unsigned = path("unsigned");
        let user_store = to(USER);
        for extra in [&[][..], &["--no-check-sigs"][..]] {
            let mut args = vec!["copy"];
            args.extend_from_slice(extra);
            args.extend(["--to", &user_store, &unsigned]);
            let copy = local_nix(&lab, &args);
            assert_eq!(copy.code, 1, "{args:?}");
            assert!(
                copy.stderr.contains(&format!(
                    "error: cannot add path '{unsigned}' because it lacks a valid signature"
                )),
                "{}",
                copy.stderr
            );
        }
        assert!(!valid_on_host(unsigned.clone()).await);
        let signed = path("signed");
        ok(&local_nix(&lab, &["store", "sign", "-k", &secret, &signed]));
        ok(&local_nix(&lab, &["copy", "--to", &to(USER), &signed]));
        assert!(host_sigs(signed.clone()).await.starts_with("deployer-test-1:"));

        // 2. Root (trusted, --no-check-sigs) lands a path unsigned; signed
        // here afterwards, copying again adds nothing: the path is valid.
        let late = path("late");
        let late_root_only = path("late-root");
        for p in [&late, &late_root_only] {
            ok(&local_nix(&lab, &["copy", "--no-check-sigs", "--to", &to("root"), p]));
            ok(&local_nix(&lab, &["store", "sign", "-k", &secret, p]));
            ok(&local_nix(&lab, &["copy", "--to", &to(USER), p]));
            assert_eq!(host_sigs(p.clone()).await, "");
        }
        // Copying the signatures over is refused to the deploy user, done
        // for root.
        let refused = local_nix(
            &lab,
            &["store", "copy-sigs", "--store", &to(USER), "-s", "local", &late],
        );
        assert_eq!(refused.code, 1);
        assert_eq!(refused.stderr, "error: you are not privileged to add signatures\n");
        let sign_there = local_nix(&lab, &["store", "sign", "--store", &to(USER), "-k", &secret, &late]);
        assert_eq!(sign_there.code, 1);
        assert!(
            sign_there.stderr.contains("error: you are not privileged to add signatures"),
            "{}",
            sign_there.stderr
        );
        assert_eq!(host_sigs(late.clone()).await, "");
        let copied = local_nix(
            &lab,
            &["store", "copy-sigs", "--store", &to("root"), "-s", "local", &late_root_only],
        );
        ok(&copied);
        assert!(copied.stderr.contains("imported 1 signatures"), "{}", copied.stderr);
        assert!(host_sigs(late_root_only.clone()).await.starts_with("deployer-test-1:"));

        // 3. On the host, as root: signatures from a file binary cache of
        // narinfos alone. NarHash as `sha256:<base32>` and as SRI both
        // match; a NarHash that does not match is skipped; the signatures
        // themselves are not checked (a bogus one is imported, and verify
        // then calls the path untrusted).
        let dep = path("cache-dep");
        let top = build_path(&tag("cache-top"), "top", Some(&dep));
        let refs = local_path_info(&top)["references"].clone();
        assert_eq!(refs, serde_json::json!([dep]));
        let bad_hash = path("cache-badhash");
        let bogus = path("cache-bogus");
        let all = [&dep, &top, &bad_hash, &bogus];
        let mut args = vec!["copy", "--no-check-sigs", "--to"];
        let root_store = to("root");
        args.push(&root_store);
        args.extend(all.iter().map(|p| p.as_str()));
        ok(&local_nix(&lab, &args));
        let mut sign = vec!["store", "sign", "-k", &secret];
        sign.extend(all.iter().map(|p| p.as_str()));
        ok(&local_nix(&lab, &sign));
        let cache = "/root/sig-cache";
        root_sh(&root, r#"rm -rf "$1" && mkdir -p "$1""#, &[cache], "").await;
        write_file(&root, &format!("{cache}/nix-cache-info"), "StoreDir: /nix/store\n", 0o644).await;
        for p in all {
            let info = local_path_info(p);
            let sri = info["narHash"].as_str().unwrap().to_owned();
            assert!(sri.starts_with("sha256-"), "Nix 2.8's path-info --json: {sri}");
            let nar_hash = if p == &dep {
                sri
            } else if p == &bad_hash {
                format!("sha256:{}", "0".repeat(52))
            } else {
                local_nar_hash_base32(p)
            };
            let refs: Vec<&str> = info["references"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap())
                .collect();
            let sig = info["signatures"][0].as_str().unwrap();
            let bogus_sig = format!("deployer-test-1:{}", "A".repeat(86) + "==");
            let sig = if p == &bogus { bogus_sig.as_str() } else { sig };
            let text = narinfo(p, &nar_hash, info["narSize"].as_u64().unwrap(), &refs, &[sig]);
            write_file(&root, &format!("{cache}/{}", narinfo_name(p)), &text, 0o644).await;
        }
        let copy_sigs = |paths: &[&String]| {
            let root = &root;
            let mut args = vec![format!("file://{cache}")];
            args.extend(paths.iter().map(|p| p.to_string()));
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                root_sh_output(root, r#"nix store copy-sigs -s "$@""#, &args, "").await
            }
        };
        let out = copy_sigs(&[&top, &dep]).await;
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stderr), "imported 2 signatures\n");
        for p in [&top, &dep] {
            assert!(host_sigs(p.clone()).await.starts_with("deployer-test-1:"), "{p}");
        }
        let verified = root_sh_output(
            &root,
            r#"nix store verify -r --sigs-needed 1 "$1""#,
            &[&top],
            "",
        )
        .await;
        assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
        let out = copy_sigs(&[&bad_hash]).await;
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stderr), "imported 0 signatures\n");
        assert_eq!(host_sigs(bad_hash.clone()).await, "");
        let out = copy_sigs(&[&bogus]).await;
        assert_eq!(String::from_utf8_lossy(&out.stderr), "imported 1 signatures\n");
        let verified = root_sh_output(
            &root,
            r#"nix store verify --sigs-needed 1 "$1""#,
            &[&bogus],
            "",
        )
        .await;
        assert_eq!(verified.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&verified.stderr)
                .contains(&format!("path '{bogus}' is untrusted")),
            "{}",
            String::from_utf8_lossy(&verified.stderr)
        );

        // 4. sudo's answers over SSH with no tty.
        let sudo = |user: &str, line: &str, stdin: Option<&[u8]>| ssh_as(&lab, user, HOST, line, stdin);
        let expect = |r: Ran, code: i32, stdout: &str, stderr: &str| {
            assert_eq!((r.code, r.stdout.as_str(), r.stderr.as_str()), (code, stdout, stderr));
        };
        let required = "sudo: a password is required\n";
        expect(sudo(PW_USER, "sudo -n -- /bin/true", None), 1, "", required);
        let with_pw = format!("{PW}\n");
        expect(
            sudo(PW_USER, "sudo -k -S -p '' -- /bin/true", Some(with_pw.as_bytes())),
            0,
            "",
            "",
        );
        expect(
            sudo(PW_USER, "sudo -k -S -p '' -- /bin/true", Some(b"wrong\n")),
            1,
            "",
            "Sorry, try again.\n\nsudo: no password was provided\nsudo: 1 incorrect password attempt\n",
        );
        expect(
            sudo(PW_USER, "sudo -k -S -p '' -- /bin/true", None),
            1,
            "",
            "\nsudo: no password was provided\nsudo: a password is required\n",
        );
        expect(sudo(USER, "sudo -n -- /bin/true", None), 0, "", "");
        expect(sudo(USER, "sudo -n -- /bin/bash", None), 1, "", required);
        expect(sudo(NORULE, "sudo -n -- /bin/true", None), 1, "", required);
        let norule_pw = format!("{NORULE_PW}\n");
        expect(
            sudo(NORULE, "sudo -k -S -p '' -- /bin/true", Some(norule_pw.as_bytes())),
            1,
            "",
            "norule is not in the sudoers file.\n",
        );
        expect(
            sudo(PW_USER, "sudo -k -S -p '' -- /bin/bash", Some(with_pw.as_bytes())),
            1,
            "",
            "Sorry, user pw is not allowed to execute '/bin/bash' as root on h1.\n",
        );
        // The command reads what follows the password line.
        let rest = format!("{PW}\nhello\nworld\n");
        expect(
            sudo(PW_USER, "sudo -k -S -p '' -- /bin/cat", Some(rest.as_bytes())),
            0,
            "hello\nworld\n",
            "",
        );
        // Which rules allow a command, without running it.
        expect(sudo(USER, "sudo -n -l -- /bin/true", None), 0, "/bin/true\n", "");
        expect(sudo(USER, "sudo -n -l -- /bin/bash", None), 1, "", "");

        // 5. The environment: SUDO_* set, the caller's variables gone, and
        // no way to keep them without SETENV.
        let env = sudo(USER, "BERTH_STATE_DIR=/tmp/x sudo -n -- /usr/bin/env", None);
        assert_eq!(env.code, 0, "{}", env.stderr);
        let uid = ssh_as(&lab, USER, HOST, "id -u", None).stdout.trim().to_owned();
        let vars: Vec<&str> = env.stdout.lines().collect();
        for want in [
            format!("SUDO_UID={uid}"),
            format!("SUDO_USER={USER}"),
            "USER=root".into(),
            "HOME=/root".into(),
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ] {
            assert!(vars.contains(&want.as_str()), "{want} not in {vars:?}");
        }
        assert!(!env.stdout.contains("BERTH_STATE_DIR"), "{}", env.stdout);
        expect(
            sudo(
                USER,
                "BERTH_STATE_DIR=/tmp/x sudo -n --preserve-env=BERTH_STATE_DIR -- /usr/bin/env",
                None,
            ),
            1,
            "",
            "sudo: sorry, you are not allowed to set the following environment variables: BERTH_STATE_DIR\n",
        );
        expect(
            sudo(USER, "sudo -n BERTH_STATE_DIR=/tmp/x -- /usr/bin/env", None),
            1,
            "",
            "sudo: sorry, you are not allowed to set the following environment variables: BERTH_STATE_DIR\n",
        );

        // The daemon comes back after a reboot.
        let _ = root.close().await;
        let mut lab = lab;
        let rebooting = Instant::now();
        lab.reboot(HOST).await.unwrap();
        eprintln!("reboot took {:?}", rebooting.elapsed());
        let view = check_user_view(&lab, USER, HOST, Some(&probe)).unwrap();
        assert_eq!(view.store_url, "daemon");

        lab.down().await.unwrap();
    });
}
