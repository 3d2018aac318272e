# berth.agent: berth on the host (`berth agent …` is what deploys run
# there), its state directory, and the boot check that rolls back a system
# generation that was never confirmed, and the converge timer (pull mode).
{
  config,
  lib,
  pkgs,
  ...
}: let
  berth = import ../nix/lib {};
  cfg = config.berth.agent;
  defaultStateDir = berth.options.agent.stateDir.default;
in {
  options.berth.agent = berth.mkOptions lib berth.options.agent;

  config = lib.mkMerge [
    {
      # Built from the sources this module comes with, so agent and deployer
      # are the same berth when both come from one flake.lock (and the same
      # store path when the host's nixpkgs follows berth's). Below mkDefault,
      # so a flake that sets `lib.mkDefault self.packages.…` wins quietly.
      berth.agent.package = lib.mkOptionDefault (pkgs.callPackage ../nix/package.nix {});
      berth.agent.converge.node = lib.mkDefault config.networking.hostName;
    }

    (lib.mkIf cfg.enable {
      environment = {
        # On every PATH, the service users' SSH sessions included: the
        # deployer runs `berth agent …` there.
        systemPackages = [cfg.package];
        sessionVariables = lib.mkIf (cfg.stateDir != defaultStateDir) {
          BERTH_STATE_DIR = cfg.stateDir;
        };
        # What the agent reads before it activates a system, also with no
        # keys: a file that is there but broken refuses every activation,
        # while no file at all means a host without this module.
        etc."berth/agent.json".text = builtins.toJSON {
          inherit (cfg) trustedPublicKeys;
          nixTrustedPublicKeys = config.nix.settings.trusted-public-keys or [];
        };
      };

      # Readable by all: app deploys, run as a service's user, read the
      # host's lock there.
      systemd.tmpfiles.rules = ["d ${cfg.stateDir} 0755 root root -"];
    })

    (lib.mkIf (cfg.enable && cfg.trustedPublicKeys != []) {
      assertions =
        map (key: {
          assertion = builtins.match "[A-Za-z0-9._-]+:[A-Za-z0-9+/]{43}=" key != null;
          message = "berth.agent.trustedPublicKeys: \"${key}\" is not a Nix public key; expected NAME:BASE64, the line `berth keys generate` prints";
        })
        cfg.trustedPublicKeys
        ++ [
          {
            assertion = cfg.converge.enable -> cfg.converge.signKeyFile != null;
            message = "berth.agent.converge needs berth.agent.converge.signKeyFile when berth.agent.trustedPublicKeys is set: the system it builds here must be signed by one of those keys (make one with `berth keys generate`)";
          }
        ];
      # The host's Nix accepts the deployers' signatures too.
      nix.settings = {
        trusted-public-keys = cfg.trustedPublicKeys;
        require-sigs = true;
      };
    })

    (lib.mkIf (cfg.enable && cfg.deployUsers != []) {
      assertions = [
        {
          assertion = cfg.stateDir == defaultStateDir;
          message = "berth.agent.deployUsers needs berth.agent.stateDir to be the default, ${defaultStateDir}: sudo resets the environment, so the agent a deploy user runs through sudo uses the default state directory; remove berth.agent.stateDir (now ${cfg.stateDir}) or berth.agent.deployUsers";
        }
      ];
      warnings = lib.optional (cfg.trustedPublicKeys == []) "berth.agent.deployUsers (${lib.concatStringsSep ", " cfg.deployUsers}) without berth.agent.trustedPublicKeys: a deploy user can activate any store path as root, so it is as good as root; set berth.agent.trustedPublicKeys and deploy with --sign-key";
      # Only `berth agent <verb> …` as root, nothing else (nix/lib/sudo.nix);
      # the deployer calls the agent by this path, and sudo matches it by the
      # file it resolves to.
      security.sudo.extraRules = berth.deploySudoRules cfg.deployUsers "/run/current-system/sw/bin/berth";
      # `berth logs` reads the journal as the deploy user.
      users.users = lib.genAttrs cfg.deployUsers (_: {extraGroups = ["systemd-journal"];});
    })

    (lib.mkIf (cfg.enable && cfg.converge.enable) {
      assertions = [
        {
          assertion = cfg.converge.flake != null;
          message = "berth.agent.converge.enable needs berth.agent.converge.flake: the flake this host deploys itself from, e.g. \"github:acme/fleet\"";
        }
      ];
      # `berth converge`: fetch the flake, and deploy this host's node with
      # the same activation, health checks and rollback as a push deploy.
      systemd.services.berth-converge = {
        description = "berth: deploy this host from its flake";
        after = ["network-online.target"];
        wants = ["network-online.target"];
        # It runs the switch itself: a switch must not restart it mid-way.
        restartIfChanged = false;
        path = [config.nix.package pkgs.git pkgs.openssh];
        environment.BERTH_STATE_DIR = cfg.stateDir;
        serviceConfig = {
          Type = "oneshot";
          LoadCredential =
            lib.optional (cfg.converge.githubTokenFile != null) "github-token:${cfg.converge.githubTokenFile}"
            ++ lib.optional (cfg.converge.signKeyFile != null) "sign-key:${cfg.converge.signKeyFile}";
        };
        script = ''
          ${lib.optionalString (cfg.converge.githubTokenFile != null) ''
            GITHUB_TOKEN="$(<"$CREDENTIALS_DIRECTORY/github-token")"
            export GITHUB_TOKEN
          ''}
          ${lib.optionalString (cfg.converge.signKeyFile != null) ''
            BERTH_SIGN_KEY="$CREDENTIALS_DIRECTORY/sign-key"
            export BERTH_SIGN_KEY
          ''}
          exec ${lib.escapeShellArgs ([
              (lib.getExe' cfg.package "berth")
              "converge"
              "--state-dir"
              cfg.stateDir
              "--flake"
              (toString cfg.converge.flake)
              "--node"
              cfg.converge.node
            ]
            ++ lib.optionals (cfg.converge.requireCi != null) [
              "--require-ci"
              cfg.converge.requireCi
              "--ci-timeout"
              (toString cfg.converge.ciTimeout)
            ])}
        '';
      };
      systemd.timers.berth-converge = {
        description = "berth: deploy this host from its flake, now and then";
        wantedBy = ["timers.target"];
        timerConfig = {
          OnBootSec = "5min";
          OnUnitInactiveSec = cfg.converge.interval;
          RandomizedDelaySec = "1min";
        };
      };
    })

    (lib.mkIf (cfg.enable && cfg.bootCheck) {
      systemd.services.berth-boot-check = {
        description = "berth: roll back a system deployment that was never confirmed";
        wantedBy = ["multi-user.target"];
        # Without default dependencies multi-user.target does not wait for
        # it: its rollback runs switch-to-configuration, which starts the
        # active targets again, and a target waiting for this unit would
        # wait for ever.
        unitConfig.DefaultDependencies = false;
        # switch-to-configuration talks to systemd over the system bus.
        after = ["local-fs.target" "sysinit.target" "dbus.socket"];
        wants = ["dbus.socket"];
        conflicts = ["shutdown.target"];
        before = ["shutdown.target"];
        # A switch must neither restart it nor, for a new unit, run it: a
        # deployment activating right then would look unconfirmed and be
        # rolled back. RemainAfterExit keeps it active after boot, so a
        # switch starting multi-user.target leaves it alone, and the
        # condition skips it when it starts while the system is not booting
        # (the first switch to a configuration that has it).
        restartIfChanged = false;
        # nix-env switches the system profile back.
        path = [config.nix.package];
        environment.BERTH_STATE_DIR = cfg.stateDir;
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          ExecCondition = pkgs.writeShellScript "berth-booting" ''
            case "$(systemctl is-system-running)" in
              initializing | starting) exit 0 ;;
              *) exit 1 ;;
            esac
          '';
          ExecStart = "${lib.getExe' cfg.package "berth"} agent boot-check";
        };
      };
    })
  ];
}
