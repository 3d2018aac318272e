# System deploys on real NixOS, for users' CI (`nix flake check`, needs
# KVM): a deployer and a target VM; the target's agent switches it to new
# generations the way `berth deploy` has it do, with magic rollback.
#
# `berth deploy` itself does not run here: it evaluates and builds the
# fleet's flake, and a VM has no network, so it would need nixpkgs and every
# build input of the target's system in its store (nixpkgs' own
# nixos-rebuild tests pay gigabytes for that). The deployer plays berth's
# part from the agent's call on, as berth does it: `berth agent activate`
# over SSH as root, the health check, then `berth agent confirm` over a new
# connection. The new generations are specialisations of the target, built
# with the test and already in its store (berth's `nix copy` is covered by
# tests/deploy.rs, against real stores). At the end the deployer's own
# berth reads what the host recorded, through a flake with no inputs.
#
# Proves, on a real NixOS: a good generation is switched to and kept once
# confirmed; a generation that stops sshd cannot be confirmed and the
# watchdog puts the recorded one back; a deployment still pending at a
# reboot is rolled back by the module's boot check.
#
# A runNixOSTest module; `berth` = { package; nixosModules; } (flake.nix).
{
  berth,
  hostPkgs,
  ...
}: let
  sshKeys = import (hostPkgs.path + "/nixos/tests/ssh-keys.nix") hostPkgs;

  # What `berth history` needs of a node: its deployment settings and that
  # it has a system (the `?` berth asks does not build it).
  fleet = hostPkgs.writeText "flake.nix" ''
    {
      outputs = _: {
        nixosConfigurations.target.config = {
          berth.deployment.targetHost = "target";
          system.build.toplevel = throw "berth history does not build systems";
        };
      };
    }
  '';
in {
  name = "berth-system-deploy";

  nodes = {
    deployer = {
      environment.systemPackages = [berth.package];
      nix.settings = {
        # As on any machine that runs `nix run .#deploy`. (berth passes
        # --extra-experimental-features to `nix eval`, not to `nix copy`.)
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
      berth.agent.package = berth.package;

      services.openssh.enable = true;
      users.users.root.openssh.authorizedKeys.keys = [sshKeys.snakeOilPublicKey];
      environment.systemPackages = [pkgs.jq];

      # NixOS tests leave switch-to-configuration out unless asked. No boot
      # loader: `switch` then only warns that it cannot install one.
      system.switch.enable = true;
      boot.loader.grub.enable = false;

      # The generations the test deploys, each the target plus one change.
      specialisation = {
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
    GOOD = "${toplevel specialisation.good.configuration}"
    BROKEN = "${toplevel specialisation.broken.configuration}"
    PROFILE = "/nix/var/nix/profiles/system"
    # Every use a new connection, as berth's confirmation: a host whose
    # sshd is gone cannot be confirmed through an old one.
    SSH = "ssh -o BatchMode=yes -o ConnectTimeout=5 -o ControlMaster=no -o StrictHostKeyChecking=accept-new"


    def events(output: str, name: str) -> list:
        """The NDJSON events called NAME in what berth printed."""
        lines = [line for line in output.splitlines() if line.startswith("{")]
        return [event for event in map(json.loads, lines) if event.get("event") == name]


    def outcome(output: str) -> str:
        return events(output, "result")[0]["outcome"]


    def over_ssh(*argv: str) -> tuple[int, str]:
        """ARGV run as root on the target from the deployer, each word
        quoted for the remote shell (berth quotes remote argv the same way)."""
        return deployer.execute(f"{SSH} root@target {shlex.quote(shlex.join(argv))}")


    def activate(deployment: str, path: str, confirm_timeout: int) -> tuple[int, str]:
        """What `berth deploy` asks of the host's agent once the closure is
        there: record the deployment, arm the watchdog, set the profile,
        switch. A good switch is left pending until confirmed."""
        return over_ssh(
            "berth", "agent", "activate", "--id", deployment, "--node", "target",
            "--path", path, "--confirm-timeout", str(confirm_timeout),
            "--actor", "test@deployer",
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

    with subtest("the deployer reaches the target's root with its key"):
        deployer.succeed(
            "install -d -m 0700 /root/.ssh",
            "install -m 0600 ${sshKeys.snakeOilPrivateKey} /root/.ssh/id_ecdsa",
        )
        deployer.wait_until_succeeds(f"{SSH} root@target true", timeout=60)

    with subtest("the running system is the profile's generation: the first rollback point"):
        # Booted without a boot loader, nothing may have made the profile.
        target.succeed(f"test -e {PROFILE} || nix-env -p {PROFILE} --set $(readlink -f /run/current-system)")
        assert running() == ORIGINAL and profile() == ORIGINAL

    with subtest("a good generation: switched to, healthy, confirmed, kept"):
        code, out = activate("good-1", GOOD, 10)
        assert code == 0 and outcome(out) == "pending", out
        assert running() == GOOD and profile() == GOOD
        # The health check berth.deployment.healthChecks.units makes.
        code, out = over_ssh("systemctl", "is-active", "berth-test-marker.service")
        assert code == 0, out
        code, out = over_ssh("berth", "agent", "confirm", "--id", "good-1")
        assert code == 0 and outcome(out) == "confirmed", out
        # The watchdog sees the confirmation and ends without a rollback.
        target.wait_until_fails("systemctl is-active --quiet berth-watchdog-good-1.service", timeout=30)
        assert recorded("good-1")["status"] == "confirmed"
        assert running() == GOOD and profile() == GOOD

    with subtest("magic rollback: a generation that stops sshd is rolled back by the watchdog"):
        code, out = activate("broken-1", BROKEN, 10)
        # The agent's session has a scope of its own and outlives sshd, so
        # it normally reports; had the switch cut it, the host would act
        # the same, and the checks below would still hold.
        if code == 0:
            assert outcome(out) == "pending", out
        target.wait_until_fails("systemctl is-active --quiet sshd.service", timeout=30)
        code, out = over_ssh("berth", "agent", "confirm", "--id", "broken-1")
        assert code != 0, f"confirmed although sshd was stopped: {out}"
        # No confirmation within 10 s: back to the recorded generation, the
        # failed one deleted, sshd back.
        rolled_back = wait_for_status("broken-1", "rolled_back")
        assert rolled_back["failure_phase"] == "confirm", rolled_back
        assert running() == GOOD and profile() == GOOD
        target.fail(f"test -e {generation_link(rolled_back)}")
        deployer.wait_until_succeeds(f"{SSH} root@target true", timeout=60)

    with subtest("boot check: a deployment still pending at a reboot is rolled back"):
        code, out = activate("boot-1", ORIGINAL, 600)
        assert code == 0 and outcome(out) == "pending", out
        pending = recorded("boot-1")
        assert running() == ORIGINAL and profile() == ORIGINAL
        target.shutdown()
        target.start()
        target.wait_for_unit("berth-boot-check.service")
        rolled_back = recorded("boot-1")
        assert (rolled_back["status"], rolled_back["failure_phase"]) == ("rolled_back", "boot"), rolled_back
        # The VM boots the test's configuration whatever the profile says;
        # the boot check switched it to the recorded generation.
        assert profile() == GOOD and running() == GOOD
        target.fail(f"test -e {generation_link(pending)}")

    with subtest("the deployer's berth reads the host's record"):
        deployer.succeed("mkdir -p /root/fleet", "cp ${fleet} /root/fleet/flake.nix")
        code, out = deployer.execute("berth --json history path:/root/fleet#target")
        assert code == 0, out
        history = [(d["id"], d["status"]) for d in events(out, "deployment")]
        assert history == [
            ("boot-1", "rolled_back"),
            ("broken-1", "rolled_back"),
            ("good-1", "confirmed"),
        ], history
  '';
}
