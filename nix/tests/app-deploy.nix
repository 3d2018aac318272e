# App deploys on real NixOS, for users' CI (`nix flake check`, needs KVM):
# a target VM runs `berth.services.notes` from berth's module (the test app
# of tests/app: Python, SQLite in WAL mode written every 10 ms, its code in
# a git repository on the host), and a deployer VM runs `berth app deploy`
# against it over SSH as the service's own user, as an app's CI does.
#
# Proves, with the unit, user, sudo rule, manifest, first release and
# backup unit the module generates: a fresh host serves the head of the
# branch by itself; a good revision is deployed and migrated; one whose
# health check fails is rolled back, its database put back exactly as the
# snapshot, and then refused unless forced; the service's user may control
# its own unit and no other; the backup unit snapshots the database.
#
# A runNixOSTest module; `berth` = { package; nixosModules; } (flake.nix).
{
  berth,
  hostPkgs,
  ...
}: let
  sshKeys = import (hostPkgs.path + "/nixos/tests/ssh-keys.nix") hostPkgs;
  # The app berth's end-to-end tests deploy; behaviour.json, committed by
  # the test, makes a revision misbehave (see app.py).
  app = ../../tests/app;
  port = 8090;
in {
  name = "berth-app-deploy";

  nodes = {
    deployer = {
      environment.systemPackages = [berth.package];
    };

    target = {pkgs, ...}: {
      imports = [berth.nixosModules.default];
      berth.agent.package = berth.package;

      berth.services.notes = {
        enable = true;
        inherit port;
        repository = "file:///srv/notes.git";
        runtime = "python";
        # One command: with socket activation the app must be the unit's
        # main process (LISTEN_PID).
        start = "exec python3 app.py";
        # systemd holds the port: a deploy drops no request.
        socketActivation = true;
        environment = {
          APP_DB = "/var/lib/notes/data/app.db";
          APP_PORT = toString port;
          # For install.sh and migrate.sh, which default to /usr/bin/python3.
          APP_PYTHON = "${pkgs.python3}/bin/python3";
        };
        data.sqlite = ["data/app.db"];
        # The app reports the revision it runs; a failing one is given 20 s.
        health = {
          timeout = 20;
          settle = 2;
          expectRevision = true;
        };
        commands = {
          install = "bash install.sh";
          migrate = "bash migrate.sh";
        };
        # The deployer's: it logs in as notes@target.
        deployKeys = [sshKeys.snakeOilPublicKey];
      };

      services.openssh.enable = true;

      # The repository is root's; the service's user fetches from it.
      programs.git = {
        enable = true;
        config = {
          init.defaultBranch = "main";
          safe.directory = "*";
          user = {
            name = "berth test";
            email = "test@example.invalid";
          };
        };
      };

      environment.systemPackages = [pkgs.curl pkgs.sqlite];

      # The app's repository, as a CI would have pushed it before the host
      # first boots: the module's first release deploys the head of main.
      systemd.services.berth-test-repo = {
        description = "the notes app's git repository";
        wantedBy = ["multi-user.target"];
        before = ["berth-first-release-notes.service"];
        requiredBy = ["berth-first-release-notes.service"];
        path = [pkgs.git];
        environment.HOME = "/root";
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
        };
        script = ''
          if [ -e /srv/notes.git ]; then exit 0; fi
          install -d /srv/notes-work
          cd /srv/notes-work
          install -m 0644 ${app}/app.py ${app}/install.sh ${app}/migrate.sh ${app}/requirements.lock .
          git init -q
          git add -A
          git commit -q -m "the test app"
          git init -q --bare /srv/notes.git
          git remote add origin /srv/notes.git
          git push -q origin main
        '';
      };
    };
  };

  testScript = ''
    import json
    import shlex

    DIR = "/var/lib/notes"
    DB = f"{DIR}/data/app.db"
    HEALTH = "http://127.0.0.1:${toString port}/health"


    def berth(*args: str) -> tuple[int, list, str]:
        """`berth --json ARGS` on the deployer: its exit code, the events
        it printed on stdout, and what it said on stderr."""
        code, out = deployer.execute(f"berth --json {shlex.join(args)} 2>/tmp/berth.stderr")
        stderr = deployer.succeed("cat /tmp/berth.stderr")
        print(stderr)
        events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return code, events, stderr


    def deploy(rev: str, *flags: str) -> tuple[int, list, str]:
        """`berth app deploy notes`: the deployer logs in as notes@target,
        and the agent there runs the whole transaction."""
        return berth("app", "deploy", "notes", "--host", "target", "--rev", rev, *flags)


    def result(events: list) -> dict:
        return [event for event in events if event["event"] == "result"][-1]


    def commit(behaviour: dict) -> str:
        """Commits the app with BEHAVIOUR on main, pushes it to the
        repository the service deploys from, and returns the commit."""
        text = json.dumps(behaviour)
        target.succeed(
            f"cd /srv/notes-work && echo {shlex.quote(text)} > behaviour.json"
            f" && git add -A && git commit -q -m {shlex.quote('behaviour ' + text)}"
            " && git push -q origin main"
        )
        return target.succeed("git -C /srv/notes-work rev-parse HEAD").strip()


    def serving() -> str:
        """The revision the app says it runs, asked over loopback."""
        return json.loads(target.succeed(f"curl -sf {HEALTH}"))["revision"]


    def sql(db: str, query: str) -> str:
        """QUERY on DB as the service's user: as root, SQLite could leave
        -wal and -shm files the app cannot open."""
        return target.succeed(f"runuser -u notes -- sqlite3 {db} {shlex.quote(query)}").strip()


    def newest_snapshot() -> str:
        out = target.succeed("runuser -u notes -- berth agent snapshot list --service notes")
        snapshots = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return [s for s in snapshots if s["event"] == "snapshot"][0]["id"]


    start_all()
    deployer.wait_for_unit("multi-user.target")
    target.wait_for_unit("berth-test-repo.service")

    with subtest("a fresh host serves the head of main by itself: the first release"):
        first = target.succeed("git -C /srv/notes.git rev-parse main").strip()
        target.wait_until_succeeds(f"curl -sf {HEALTH} | grep -q {first}", timeout=300)
        # Once it has recorded the deploy, the service's lock is free.
        target.wait_until_fails("systemctl is-active --quiet berth-first-release-notes.service", timeout=120)
        assert target.succeed(f"basename $(readlink {DIR}/current)").strip() == first

    with subtest("the deployer logs in as the service's user, with berth on its PATH"):
        deployer.succeed(
            "install -d -m 0700 /root/.ssh",
            "install -m 0600 ${sshKeys.snakeOilPrivateKey} /root/.ssh/id_ecdsa",
        )
        deployer.wait_until_succeeds(
            "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new notes@target berth --version",
            timeout=60,
        )

    with subtest("a good revision: built beside the running one, migrated, swapped, healthy"):
        good = commit({"v": 1, "user_version": 2})
        code, events, stderr = deploy(good)
        assert (code, result(events)["outcome"]) == (0, "confirmed"), stderr
        assert serving() == good
        assert sql(DB, "PRAGMA user_version") == "2", "its migration did not run"
        # The same again changes nothing.
        code, events, stderr = deploy(good)
        assert (code, result(events)["outcome"]) == (0, "unchanged"), stderr

    with subtest("socketActivation: systemd holds the port, and a deploy under load drops no request"):
        target.succeed("systemctl is-active notes.socket")
        target.succeed("journalctl -u notes.service -o cat | grep -q 'socket from systemd'")
        target.succeed(
            "systemd-run --unit=poller --property=Type=exec sh -c "
            + shlex.quote(
                f"while [ ! -e /tmp/stop-polling ]; do curl -s -o /dev/null -w '%{{http_code}}\\n'"
                f" --max-time 20 {HEALTH} >> /tmp/polled; sleep 0.01; done"
            )
        )
        target.wait_until_succeeds("test -s /tmp/polled", timeout=30)
        held = commit({"v": 2, "user_version": 2})
        code, events, stderr = deploy(held)
        assert (code, result(events)["outcome"]) == (0, "confirmed"), stderr
        target.succeed("touch /tmp/stop-polling")
        target.wait_until_fails("systemctl is-active --quiet poller.service", timeout=30)
        codes = target.succeed("cat /tmp/polled").split()
        failed = [c for c in codes if c != "200"]
        assert len(codes) > 50 and not failed, f"{len(failed)} of {len(codes)} requests failed: {failed[:5]}"
        assert serving() == held
        target.fail(f"test -e {DIR}/.berth/hold")

    with subtest("the service's user may restart its own unit, and no other"):
        target.succeed("runuser -u notes -- sudo -n systemctl restart notes.service")
        target.fail("runuser -u notes -- sudo -n systemctl restart sshd.service")
        target.wait_until_succeeds(f"curl -sf {HEALTH} | grep -q {good}", timeout=60)

    with subtest("a revision whose health check fails: rolled back, data restored, blocked"):
        bad = commit({"health": "fail"})
        code, events, stderr = deploy(bad)
        failed = result(events)
        assert (code, failed["outcome"]) == (1, "rolled_back"), stderr
        assert failed["deployment"]["failure_phase"] == "health", failed
        assert serving() == good
        # The database is the snapshot taken before the stop: the same rows
        # up to its last one, and none of the failed revision's ...
        deployment = failed["deployment"]["id"]
        snapshot = f"{DIR}/snapshots/{deployment}/data__app.db"
        last = sql(snapshot, "SELECT max(id) FROM rows")
        upto = f"SELECT count(*), sum(id) FROM rows WHERE id <= {last}"
        assert sql(DB, upto) == sql(snapshot, upto), "the database is not the snapshot"
        assert sql(DB, f"SELECT count(*) FROM rows WHERE revision = '{bad}'") == "0"
        # ... which are kept beside it, in the database it replaced.
        kept = sql(f"{DB}.failed-{deployment}", f"SELECT count(*) FROM rows WHERE revision = '{bad}'")
        assert int(kept) > 0, "the failed revision's database was not kept"
        # Refused from now on (exit 2), unless forced; a dry run only plans.
        code, events, stderr = deploy(bad)
        assert code == 2 and "is blocked" in stderr, stderr
        code, events, stderr = deploy(bad, "--force", "--dry-run")
        assert code == 0, stderr
        assert [event["to"] for event in events if event["event"] == "plan"] == [bad], events
        assert serving() == good

    with subtest("the backup unit snapshots the declared database"):
        before = newest_snapshot()
        target.succeed("systemctl start berth-backup-notes.service")
        after = newest_snapshot()
        assert after != before, "no new snapshot"
        target.succeed(f"test -s {DIR}/snapshots/{after}/data__app.db")
  '';
}
