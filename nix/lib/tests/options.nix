# The schema evaluates like the module system, and berth.deployment prints
# what src/flake/settings.rs reads.
lib: let
  deployment = lib.evalOptions "berth.deployment" lib.options.deployment;
in [
  {
    name = "berth.deployment's defaults are DeploymentSettings::default()";
    actual = deployment {};
    expected = {
      targetHost = null;
      targetUser = "root";
      privilegeEscalationCommand = ["sudo"];
      askSudoPassword = false;
      tags = [];
      buildOnTarget = false;
      sshOptions = [];
      confirmTimeout = 30;
      activationTimeout = 600;
      magicRollback = true;
      notify = [];
      stage = null;
      healthChecks = {
        http = [];
        commands = [];
        units = [];
      };
      tailscale = {
        enable = false;
        checkOnline = true;
      };
    };
  }
  {
    name = "health checks get the defaults of HttpCheck and CommandCheck";
    actual =
      (deployment {
        healthChecks = {
          http = [
            {url = "http://web1/health";}
            {
              url = "https://web1/";
              expectStatus = 204;
              timeout = 2;
              retries = 0;
            }
          ];
          commands = [{command = ["systemctl" "is-active" "nginx"];}];
        };
      })
      .healthChecks;
    expected = {
      http = [
        {
          url = "http://web1/health";
          expectStatus = 200;
          timeout = 5;
          retries = 3;
        }
        {
          url = "https://web1/";
          expectStatus = 204;
          timeout = 2;
          retries = 0;
        }
      ];
      commands = [
        {
          command = ["systemctl" "is-active" "nginx"];
          timeout = 30;
        }
      ];
      units = [];
    };
  }
  {
    name = "a service's user, group and description default to its name";
    actual = let
      cfg = lib.serviceDefaults "notes" {};
    in {inherit (cfg) user group description enable runtime branch keepReleases firstRelease;};
    expected = {
      user = "notes";
      group = "notes";
      description = "berth service notes";
      enable = false;
      runtime = "bun";
      branch = "main";
      keepReleases = 5;
      firstRelease = true;
    };
  }
  {
    name = "the agent, machine and converge defaults";
    actual = {
      agent = removeAttrs (lib.evalOptions "berth.agent" lib.options.agent {package = "/nix/store/berth";}) ["package"];
      machine = lib.evalOptions "berth.machine" lib.options.machine {};
    };
    expected = {
      agent = {
        enable = true;
        stateDir = "/var/lib/berth";
        trustedPublicKeys = [];
        deployUsers = [];
        bootCheck = true;
        converge = {
          enable = false;
          flake = null;
          node = null;
          interval = "15min";
          requireCi = null;
          ciTimeout = 60;
          signKeyFile = null;
          githubTokenFile = null;
        };
      };
      machine = {
        tailscaleHost = null;
        type = "server";
      };
    };
  }
  {
    name = "berth.caddy builds plugins by default; berth's own versions are the module's, not the schema's";
    actual = {
      caddy = lib.evalOptions "berth.caddy" lib.options.caddy {};
      berthVersions = lib.caddyPluginVersions;
      inherit (lib.serviceDefaults "notes" {}) deployKeys;
    };
    expected = {
      caddy = {
        buildPlugins = true;
        pluginVersions = {};
        pluginsHash = null;
      };
      berthVersions = {"github.com/mholt/caddy-ratelimit" = "v0.1.0";};
      deployKeys = [];
    };
  }
  {
    name = "a wrong type fails";
    throws = deployment {confirmTimeout = "soon";};
  }
  {
    name = "a port out of range fails";
    throws = lib.serviceDefaults "notes" {port = 70000;};
  }
  {
    name = "an unknown option fails";
    throws = lib.serviceDefaults "notes" {prot = 3000;};
  }
  {
    name = "a secret given as a relative path fails";
    throws = lib.serviceDefaults "notes" {secrets.TOKEN = "run/token";};
  }
  {
    name = "a secret given as a Nix path fails: it would be copied into the store";
    throws = lib.serviceDefaults "notes" {secrets.TOKEN = ./secret;};
  }
  {
    name = "every example is a valid value of its option";
    actual = map (leaf: leaf.path) (builtins.filter (leaf: let
      inherit (leaf.node) example;
      checked = lib.evalOptions leaf.path {option = leaf.node;} {option = example;};
    in
      (example._type or null) != "literalExpression" && !(builtins.tryEval (builtins.deepSeq checked checked)).success)
    (import ./helpers/leaves.nix "berth" lib.options));
    expected = [];
  }
  {
    name = "an HTTP check without a URL fails";
    throws = deployment {healthChecks.http = [{expectStatus = 200;}];};
  }
  {
    name = "a runtime outside the enum fails";
    throws = lib.serviceDefaults "notes" {runtime = "deno";};
  }
  {
    name = "every option has a type, an example and a description";
    actual =
      map (leaf: leaf.path) (builtins.filter (leaf: !(leaf.node ? type && leaf.node ? example && leaf.node ? description)) (import ./helpers/leaves.nix "berth" lib.options));
    expected = [];
  }
]
