# System deploys as a user other than root on real NixOS, for users' CI
# (`nix flake check`, needs KVM): a deployer and a target VM whose berth
# module lists `deploy` in berth.agent.deployUsers and trusts one signing
# key (berth.agent.trustedPublicKeys).
#
# As in system-deploy.nix, `berth deploy` itself does not run here (it
# would need nixpkgs and every build input of the target's system in the
# VM's store). The deployer plays berth's part from the agent's call on, as
# berth does it for a node whose targetUser is not root: over SSH as
# `deploy`, `sudo -n -- /run/current-system/sw/bin/berth agent <verb> …`,
# the health check, then the confirmation over a new connection. The new
# generations are specialisations of the target, built with the test and
# already in its store, unsigned; the test signs the ones it deploys on the
# target as root, as `berth deploy --sign-key` has the deployer do before
# it copies them (the copy and the signatures' way to the host are covered
# by tests/deploy_user.rs, against real stores). At the end the deployer's
# own berth reads what the host recorded, as `deploy` through sudo.
#
# Proves, on a real NixOS with the module's sudo rule: the deploy user
# logs in with the deployer's key and reads the journal; sudo lets it run
# berth's agent with the system verbs and nothing else, and the agent
# refuses another state directory; a generation no trusted key signed is
# refused before anything changes; a signed good generation is switched to
# and kept once confirmed; a signed generation that stops sshd cannot be
# confirmed and the watchdog, running as root, puts the recorded one back.
#
# A runNixOSTest module; `berth` = { package; nixosModules; } (flake.nix).
{
  berth,
  hostPkgs,
  ...
}: let
  sshKeys = import (hostPkgs.path + "/nixos/tests/ssh-keys.nix") hostPkgs;

  # A key pair for this test only, made once with `nix-store
  # --generate-binary-cache-key berth-test …`. Its secret is in this file
  # and in the Nix store, which is fine for VMs that live for one test:
  # trust this public key nowhere else. (The target must know the public
  # key when it is evaluated, and a key pair made by a derivation could
  # only be read back with import-from-derivation.)
  signingKey = {
    public = "berth-test:jtLYzZsKb8yERLtxOioT/Sucvn6JgWZiUcCAqAeACjE=";
    secret = hostPkgs.writeText "berth-test.sec" "berth-test:VIkvVz6ftu6zrhIPtBvr38mvlX7LiyXiYgzgK4Ef1h2O0tjNmwpvzIREu3E6KhP9K5y+fomBZmJRwICoB4AKMQ==";
  };

  # What `berth history` needs of a node: its deployment settings and that
  # it has a system (the `?` berth asks does not build it).
  fleet = hostPkgs.writeText "flake.nix" ''
    {
      outputs = _: {
        nixosConfigurations.target.config = {
          berth.deployment = {
            targetHost = "target";
            targetUser = "deploy";
          };
          system.build.toplevel = throw "berth history does not build systems";
        };
      };
    }
  '';
in {
  name = "berth-deploy-user";

  nodes = {
    deployer = {
      environment.systemPackages = [berth.package];
      nix.settings = {
        # As on any machine that runs `nix run .#deploy`.
        experimental-features = ["nix-command" "flakes"];
        # The fleet flake has no inputs: nothing to look up in a registry,
        # and no network to do it with.
        flake-registry = "";
      };
    };

    target = {
      lib,
      pkgs,
      ...
    }: {
      imports = [berth.nixosModules.default];
      berth.agent = {
        package = berth.package;
        # The module's sudo rule for `deploy`, and the journal's group.
        deployUsers = ["deploy"];
        # Only systems this key signed are activated; the host's Nix
        # requires signatures (require-sigs) and trusts the key too.
        trustedPublicKeys = [signingKey.public];
      };

      services.openssh.enable = true;
      # Not in wheel: sudo lets it do only what the module's rule says.
      users.users.deploy = {
        isNormalUser = true;
        openssh.authorizedKeys.keys = [sshKeys.snakeOilPublicKey];
      };
      environment.systemPackages = [pkgs.jq];

      # NixOS tests leave switch-to-configuration out unless asked. No boot
      # loader: `switch` then only warns that it cannot install one.
      system.switch.enable = true;
      boot.loader.grub.enable = false;

      # The generations the test deploys, each the target plus one change.
      specialisation = {
        # Never signed: the agent must refuse it.
        unsigned.configuration.environment.etc."berth-test-unsigned".text = "never signed";
        # A unit only this generation has: the deployer's health check.
        good.configuration.systemd.services.berth-test-marker = {
          wantedBy = ["multi-user.target"];
          serviceConfig = {
            Type = "oneshot";
            RemainAfterExit = true;
            ExecStart = "${pkgs.coreutils}/bin/true";
          };
        };
        # Activates fine, then no one can log in to confirm it.
        broken.configuration.services.openssh.enable = lib.mkForce false;
      };
    };
  };

  testScript = {nodes, ...}: let
    toplevel = config: config.system.build.toplevel;
    inherit (nodes.target) specialisation;
  in ''
    import json
    import shlex

    ORIGINAL = "${toplevel nodes.target}"
    UNSIGNED = "${toplevel specialisation.unsigned.configuration}"
    GOOD = "${toplevel specialisation.good.configuration}"
    BROKEN = "${toplevel specialisation.broken.configuration}"
    PROFILE = "/nix/var/nix/profiles/system"
    # The berth the module's sudo rule names, and the deployer calls.
    BERTH = "/run/current-system/sw/bin/berth"
    NIX = "nix --extra-experimental-features nix-command"
    # Every use a new connection, as berth's confirmation: a host whose
    # sshd is gone cannot be confirmed through an old one.
    SSH = "ssh -o BatchMode=yes -o ConnectTimeout=5 -o ControlMaster=no -o StrictHostKeyChecking=accept-new"


    def events(output: str, name: str) -> list:
        """The NDJSON events called NAME in what berth printed."""
        lines = [line for line in output.splitlines() if line.startswith("{")]
        return [event for event in map(json.loads, lines) if event.get("event") == name]


    def outcome(output: str) -> str:
        return events(output, "result")[0]["outcome"]


    def as_deploy(*argv: str, stderr: bool = False) -> tuple[int, str]:
        """ARGV run as `deploy` on the target from the deployer, each word
        quoted for the remote shell (berth quotes remote argv the same
        way); with STDERR, what it said there too (sudo's and the agent's
        refusals)."""
        redirect = " 2>&1" if stderr else ""
        return deployer.execute(f"{SSH} deploy@target {shlex.quote(shlex.join(argv))}{redirect}")


    def agent(*argv: str, stderr: bool = False) -> tuple[int, str]:
        """`berth agent ARGV` as root through sudo, as berth runs it for a
        targetUser that is not root: the system's berth by the path the
        module's rule names, never asking for a password."""
        return as_deploy("sudo", "-n", "--", BERTH, "agent", *argv, stderr=stderr)


    def activate(deployment: str, path: str, confirm_timeout: int) -> tuple[int, str]:
        """What `berth deploy` asks of the host's agent once the closure is
        there: check the signatures, record the deployment, arm the
        watchdog, set the profile, switch. A good switch is left pending
        until confirmed."""
        return agent(
            "activate", "--id", deployment, "--node", "target",
            "--path", path, "--confirm-timeout", str(confirm_timeout),
            "--actor", "deploy@deployer",
        )


    def recorded(deployment: str) -> dict:
        """The deployment as the target's agent recorded it."""
        return events(target.succeed(f"berth agent show --id {deployment}"), "deployment")[0]


    def wait_for_status(deployment: str, status: str) -> dict:
        target.wait_until_succeeds(
            f"berth agent show --id {deployment} | jq -e --arg s {status} '.status == $s'",
            timeout=120,
        )
        return recorded(deployment)


    def running() -> str:
        return target.succeed("readlink -f /run/current-system").strip()


    def profile() -> str:
        """What the system profile (the boot default) points at."""
        return target.succeed(f"readlink -f {PROFILE}").strip()


    def generation_link(deployment: dict) -> str:
        """The profile's link to the generation DEPLOYMENT made."""
        number = deployment["to_generation"]
        assert isinstance(number, int), deployment
        return f"{PROFILE}-{number}-link"


    start_all()
    target.wait_for_unit("sshd.service")
    deployer.wait_for_unit("multi-user.target")

    with subtest("the deployer reaches deploy@target with its key; deploy reads the journal"):
        deployer.succeed(
            "install -d -m 0700 /root/.ssh",
            "install -m 0600 ${sshKeys.snakeOilPrivateKey} /root/.ssh/id_ecdsa",
        )
        deployer.wait_until_succeeds(f"{SSH} deploy@target true", timeout=60)
        code, out = as_deploy("id", "-nG")
        assert code == 0 and "systemd-journal" in out.split(), out

    with subtest("the running system is the profile's generation: the first rollback point"):
        # Booted without a boot loader, nothing may have made the profile.
        target.succeed(f"test -e {PROFILE} || nix-env -p {PROFILE} --set $(readlink -f /run/current-system)")
        assert running() == ORIGINAL and profile() == ORIGINAL

    with subtest("the narrow rule: berth's agent with the system verbs, nothing else"):
        # Not in the rule at all: sudo refuses them without running them
        # (and would ask for a password, which -n never gives).
        for argv in [
            ["sudo", "-n", "bash", "-c", "id"],
            ["sudo", "-n", "nix-env", "--version"],
            ["sudo", "-n", "systemctl", "stop", "sshd"],
            # The agent's app verbs run commands from a manifest.
            ["sudo", "-n", BERTH, "agent", "app-status", "--service", "x"],
        ]:
            code, out = as_deploy(*argv, stderr=True)
            assert code != 0, f"{argv} ran: {out}"
            assert "sudo: a password is required" in out, f"{argv}: {out}"
        target.succeed("systemctl is-active --quiet sshd.service")
        # In the rule, but the agent refuses under sudo any state directory
        # but the default (one deploy could write, and the agent trust).
        code, out = agent("status", "--node", "target", "--state-dir", "/tmp/x", stderr=True)
        assert code == 2 and "does not take --state-dir" in out, out
        code, out = agent("status", "--node", "target")
        assert code == 0 and len(events(out, "status")) == 1, out

    with subtest("a generation no trusted key signed is refused, the host unchanged"):
        code, out = activate("unsigned-1", UNSIGNED, 10)
        assert code != 0 and outcome(out) == "failed", out
        assert "not signed" in events(out, "result")[0]["message"], out
        refused = recorded("unsigned-1")
        assert (refused["status"], refused["failure_phase"]) == ("failed", "verify"), refused
        # Nothing was switched, and no generation made.
        assert refused["to_generation"] is None, refused
        assert running() == ORIGINAL and profile() == ORIGINAL
        target.fail("test -e /etc/berth-test-unsigned")

    with subtest("the deployer's key signs the generations it deploys"):
        # As root on the target: what `berth deploy --sign-key` does on the
        # deployer, whose signatures reach the host with the paths.
        target.succeed(
            "install -m 0600 ${signingKey.secret} /root/berth-test.sec",
            f"{NIX} store sign --key-file /root/berth-test.sec --recursive {GOOD} {BROKEN}",
            "rm /root/berth-test.sec",
        )
        for path in [GOOD, BROKEN]:
            assert "berth-test:" in target.succeed(f"{NIX} path-info --sigs {path}")

    with subtest("a signed good generation as deploy: switched to, healthy, confirmed, kept"):
        code, out = activate("good-1", GOOD, 30)
        assert code == 0 and outcome(out) == "pending", out
        assert running() == GOOD and profile() == GOOD
        # The health check berth.deployment.healthChecks.units makes, as
        # the login user.
        code, out = as_deploy("systemctl", "is-active", "berth-test-marker.service")
        assert code == 0, out
        code, out = agent("confirm", "--id", "good-1")
        assert code == 0 and outcome(out) == "confirmed", out
        # The watchdog sees the confirmation and ends without a rollback.
        target.wait_until_fails("systemctl is-active --quiet berth-watchdog-good-1.service", timeout=30)
        assert recorded("good-1")["status"] == "confirmed"
        assert running() == GOOD and profile() == GOOD

    with subtest("magic rollback as deploy: a signed generation that stops sshd is rolled back"):
        code, out = activate("broken-1", BROKEN, 10)
        # The agent's session has a scope of its own and outlives sshd, so
        # it normally reports; had the switch cut it, the host would act
        # the same, and the checks below would still hold.
        if code == 0:
            assert outcome(out) == "pending", out
        target.wait_until_fails("systemctl is-active --quiet sshd.service", timeout=30)
        code, out = agent("confirm", "--id", "broken-1")
        assert code != 0, f"confirmed although sshd was stopped: {out}"
        # No confirmation within 10 s: the watchdog, root's own unit, goes
        # back to the recorded generation, deletes the failed one, and
        # sshd is back.
        rolled_back = wait_for_status("broken-1", "rolled_back")
        assert rolled_back["failure_phase"] == "confirm", rolled_back
        assert running() == GOOD and profile() == GOOD
        target.fail(f"test -e {generation_link(rolled_back)}")
        deployer.wait_until_succeeds(f"{SSH} deploy@target true", timeout=60)

    with subtest("the deployer's berth reads the host's record as deploy, through sudo"):
        deployer.succeed("mkdir -p /root/fleet", "cp ${fleet} /root/fleet/flake.nix")
        code, out = deployer.execute("berth --json history path:/root/fleet#target")
        assert code == 0, out
        history = [(d["id"], d["status"]) for d in events(out, "deployment")]
        assert history == [
            ("broken-1", "rolled_back"),
            ("good-1", "confirmed"),
            ("unsigned-1", "failed"),
        ], history
  '';
}
