# The berth binary: the deployer and, on hosts, the agent (`berth agent …`).
# In nixpkgs' form (callPackage, nixpkgs arguments only): the flake's
# packages, its overlay and a NixOS module can all build it the same way.
{
  lib,
  stdenv,
  rustPlatform,
  installShellFiles,
  makeBinaryWrapper,
  gitMinimal,
  openssh,
}: let
  cargoToml = lib.importTOML ../Cargo.toml;

  # What the binary runs that a host or a deployer may lack: ssh (the openssh
  # crate drives the `ssh` client, deploys reach hosts through it) and git (the
  # agent fetches app revisions). Appended to PATH, so the user's own ssh and
  # its configuration win. Not nix: wherever berth runs, nix is there already
  # (it is what ran berth, or the host is NixOS), and the host's own nix must
  # be the one that talks to its daemon; wrapping it would also add nix's
  # closure to the agent copied to every host.
  runtimePath = lib.makeBinPath [
    gitMinimal
    openssh
  ];
in
  rustPlatform.buildRustPackage {
    pname = cargoToml.package.name;
    inherit (cargoToml.package) version;

    # Only what the crate reads at build and unit-test time, so editing the
    # integration tests, the modules or the docs does not rebuild berth.
    src = lib.fileset.toSource {
      root = ../.;
      fileset = lib.fileset.unions [
        ../Cargo.toml
        ../Cargo.lock
        ../src
        # `include_str!` in a unit test (src/cli.rs): the CLI reference names
        # every command.
        ../docs/cli.md
      ];
    };

    cargoLock.lockFile = ../Cargo.lock;

    nativeBuildInputs = [
      installShellFiles
      makeBinaryWrapper
    ];

    # The unit tests only: the integration tests in tests/ need root, sshd
    # and lab hosts. Those skipped here evaluate and build with a real Nix
    # and store, which the build sandbox has not. berth's own CI
    # (scripts/test) runs all of them. Some unit tests make git repositories.
    cargoTestFlags = ["--lib"];
    checkFlags = [
      "--skip=flake::tests::nix_"
      "--skip=nix::diff::tests::real_nix_"
    ];
    nativeCheckInputs = [gitMinimal];

    postInstall =
      lib.optionalString (stdenv.buildPlatform.canExecute stdenv.hostPlatform) ''
        installShellCompletion --cmd berth \
          --bash <($out/bin/berth completions bash) \
          --fish <($out/bin/berth completions fish) \
          --zsh <($out/bin/berth completions zsh)
        $out/bin/berth man > berth.1
        installManPage berth.1
      ''
      + ''
        wrapProgram $out/bin/berth --suffix PATH : ${runtimePath}
      '';

    meta = {
      inherit (cargoToml.package) description;
      homepage = cargoToml.package.repository;
      license = lib.licenses.mit;
      mainProgram = "berth";
      platforms = lib.platforms.linux;
    };
  }
