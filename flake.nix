{
  description = "berth: deploy NixOS hosts and the apps on them, with magic rollback";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = {
    self,
    nixpkgs,
  }: let
    inherit (nixpkgs) lib;

    systems = [
      "x86_64-linux"
      "aarch64-linux"
    ];

    # `f { pkgs, berth, nixFmt }` for every system, as `{ <system> = …; }`.
    forAllSystems = f:
      lib.genAttrs systems (system:
        f {
          pkgs = nixpkgs.legacyPackages.${system};
          inherit (self.packages.${system}) berth;
          nixFmt = self.packages.${system}.nix-fmt;
        });

    # The Rust sources as `cargo clippy` and `cargo fmt` see them: the
    # package's own sources plus the integration tests.
    rustSources = lib.fileset.toSource {
      root = ./.;
      fileset = lib.fileset.unions [
        ./Cargo.toml
        ./Cargo.lock
        ./docs/cli.md
        ./src
        ./tests
      ];
    };

    # Every Nix file of the repository, for the format check.
    nixFiles = lib.fileset.fileFilter (file: file.hasExt "nix") ./.;
    nixSources = lib.fileset.toSource {
      root = ./.;
      fileset = nixFiles;
    };

    # What scripts/nix-check reads.
    nixCheckSources = lib.fileset.toSource {
      root = ./.;
      fileset = lib.fileset.unions [
        nixFiles
        ./docs/modules.md
        ./scripts/nix-check
      ];
    };

    # Problems that would stop berth from deploying the nodes of a flake,
    # found without building anything: node names berth refuses, nodes that
    # are not NixOS configurations, tags `--on @tag` cannot select, a
    # targetHost ssh would misread, health checks berth rejects. A node
    # without berth's modules is fine: berth then deploys it as root@<node>.
    # Builtins only, so it needs no nixpkgs.
    #
    #   berth.lib.checkNodes self.nixosConfigurations
    #   => [ "node web 1: berth refuses the name: …" ]    ([ ] when all is well)
    checkNodes = nodes: let
      valid = rule: text: builtins.match rule text != null;
      problemsOf = name: node: let
        config = node.config or {};
        deployment = config.berth.deployment or {};
        targetHost = deployment.targetHost or null;
        health = deployment.healthChecks or {};
        when = cond: what:
          if cond
          then ["node ${name}: ${what}"]
          else [];
      in
        when (!valid "[A-Za-z0-9_][A-Za-z0-9_.-]*" name)
        "berth refuses the name: use letters, digits, `_`, `-` and `.`, and start with a letter, a digit or `_`"
        ++ when (!(config ? system.build.toplevel))
        "it is not a NixOS configuration (it has no config.system.build.toplevel): make it with nixpkgs.lib.nixosSystem"
        ++ builtins.concatMap (tag:
          when (!valid "[A-Za-z0-9_.-]+" tag)
          "`--on @tag` cannot select the tag \"${tag}\": use letters, digits, `_`, `-` and `.`")
        (deployment.tags or [])
        ++ when (targetHost != null && !valid "[^-].*" targetHost)
        "berth.deployment.targetHost is empty or starts with `-`: set a host name or address, or leave it null to use the node's name"
        ++ when (builtins.any (check: (check.url or "") == "") (health.http or []))
        "an entry of berth.deployment.healthChecks.http has no url"
        ++ when (builtins.any (check: (check.command or []) == []) (health.commands or []))
        "an entry of berth.deployment.healthChecks.commands has no command: give the program and its arguments as a list";
    in
      builtins.concatLists (builtins.attrValues (builtins.mapAttrs problemsOf nodes));
  in {
    packages = forAllSystems ({pkgs, ...}: let
      berth = pkgs.callPackage ./nix/package.nix {};
    in {
      inherit berth;
      default = berth;
      # The Nix formatter berth's sources are kept in: alejandra's library
      # behind `--check` (scripts/nix-fmt), the one CI here can build.
      nix-fmt = pkgs.rustPlatform.buildRustPackage {
        pname = "berth-nix-fmt";
        version = "0.1.0";
        src = ./scripts/nix-fmt;
        cargoLock.lockFile = ./scripts/nix-fmt/Cargo.lock;
        meta.mainProgram = "berth-nix-fmt";
      };
    });

    # `nix run .#deploy -- deploy .#web1` in a flake that has berth as an input
    # and passes this app through (see templates/default).
    apps = forAllSystems ({berth, ...}: let
      deploy = {
        type = "app";
        program = lib.getExe berth;
        meta.description = "Deploy NixOS hosts and their apps with berth";
      };
    in {
      inherit deploy;
      default = deploy;
    });

    overlays.default = final: _prev: {
      berth = final.callPackage ./nix/package.nix {};
    };

    # Paths, not imported functions, so the module system names the file in
    # errors and imports each only once when several are listed.
    # The modules that run berth on the host default its package to this
    # flake's, so the agent is the very binary `nix run .#deploy` runs.
    nixosModules = let
      packageDefault = {
        pkgs,
        lib,
        ...
      }: {
        key = "berth#agent-package";
        berth.agent.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.berth;
      };
    in {
      default = {imports = [./modules/default.nix packageDefault];};
      services = {imports = [./modules/services.nix packageDefault];};
      agent = {imports = [./modules/agent.nix packageDefault];};
      deployment = ./modules/deployment.nix;
      machine = ./modules/machine.nix;
    };

    # The pure helpers of nix/lib (manifest, ports, Caddy, sudo rules, unit
    # hardening), and `checkNodes` for users' flakes.
    lib = import ./nix/lib {} // {inherit checkNodes;};

    checks = forAllSystems ({
      pkgs,
      berth,
      nixFmt,
    }:
      {
        # Builds berth and runs its unit tests.
        package = berth;

        clippy = pkgs.stdenv.mkDerivation {
          name = "berth-clippy";
          src = rustSources;
          inherit (berth) cargoDeps;
          nativeBuildInputs = [
            pkgs.rustPlatform.cargoSetupHook
            pkgs.cargo
            pkgs.rustc
            pkgs.clippy
          ];
          buildPhase = ''
            runHook preBuild
            cargo clippy --offline --locked --all-targets -- -D warnings
            runHook postBuild
          '';
          installPhase = "touch $out";
        };

        fmt =
          pkgs.runCommand "berth-fmt" {
            nativeBuildInputs = [
              nixFmt
              pkgs.cargo
              pkgs.rustfmt
            ];
          } ''
            (cd ${rustSources} && cargo fmt --check)
            berth-nix-fmt --check ${nixSources}
            touch $out
          '';

        # scripts/nix-check, as berth's CI runs it: every .nix file parses
        # and is clean under deadnix and alejandra, nix/lib's tests
        # pass, a default service's unit scores 2.0 or lower under
        # `systemd-analyze security`, docs/modules.md is up to date.
        nix-check =
          pkgs.runCommand "berth-nix-check" {
            nativeBuildInputs = [
              nixFmt
              pkgs.deadnix
              pkgs.gitMinimal
              pkgs.jq
              pkgs.nix
              pkgs.systemd
            ];
          } ''
            # nix-instantiate with a throwaway store of its own.
            export HOME=$TMPDIR NIX_STATE_DIR=$TMPDIR/state NIX_STORE_DIR=$TMPDIR/store
            export NIX_LOG_DIR=$TMPDIR/log NIX_CONF_DIR=$TMPDIR/etc
            nix-store --init
            cp -r ${nixCheckSources} repo
            chmod -R u+w repo
            cd repo
            # The script lists the .nix files with `git ls-files`.
            git init --quiet
            bash scripts/nix-check
            touch $out
          '';
      }
      # VM tests: a deployer and a target. They need KVM. Each test file is
      # a runNixOSTest module that receives `berth` (`berth.package`,
      # `berth.nixosModules`) as an argument, in the test and in its nodes.
      // lib.optionalAttrs pkgs.stdenv.hostPlatform.isLinux (let
        vmTest = test: let
          args.berth = {
            package = berth;
            inherit (self) nixosModules;
          };
        in
          pkgs.testers.runNixOSTest {
            imports = [test];
            _module.args = args;
            node.specialArgs = args;
          };
      in {
        system-deploy = vmTest ./nix/tests/system-deploy.nix;
        deploy-user = vmTest ./nix/tests/deploy-user.nix;
        app-deploy = vmTest ./nix/tests/app-deploy.nix;
      }));

    devShells = forAllSystems ({
      pkgs,
      nixFmt,
      ...
    }: {
      default = pkgs.mkShell {
        packages = [
          nixFmt
          pkgs.cargo
          pkgs.clippy
          pkgs.deadnix
          pkgs.git
          pkgs.openssh
          pkgs.rust-analyzer
          pkgs.rustc
          pkgs.rustfmt
          pkgs.sqlite
        ];
        # For rust-analyzer.
        env.RUST_SRC_PATH = "${pkgs.rustPlatform.rustLibSrc}";
      };
    });

    # `nix fmt`. Since Nix 2.25 it passes no path when given none: format
    # the working tree then.
    formatter = forAllSystems ({
      pkgs,
      nixFmt,
      ...
    }:
      pkgs.writeShellApplication {
        name = "berth-fmt";
        runtimeInputs = [nixFmt];
        text = ''exec berth-nix-fmt "''${@:-.}"'';
      });

    templates.default = {
      path = ./templates/default;
      description = "A fleet of NixOS hosts deployed with berth, with one app";
      welcomeText = ''
        # A fleet deployed with berth

        Edit `flake.nix` (hosts, the `notes` app), then:

            nix run .#deploy -- deploy .#web1

        See README.md for the app's deploys.
      '';
    };
  };
}
