# web1: a small web host running one app, `notes`.
{
  nixpkgs.hostPlatform = "x86_64-linux";
  networking.hostName = "web1";

  # Replace with the host's hardware-configuration.nix (`nixos-generate-config`).
  boot.loader.grub.device = "/dev/sda";
  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };

  # berth deploys the system as root@<targetHost> over SSH.
  services.openssh.enable = true;
  users.users.root.openssh.authorizedKeys.keys = [
    "ssh-ed25519 AAAA... you@laptop"
  ];

  # How berth reaches this host (`berth deploy --on @web` selects it by tag).
  berth.deployment = {
    targetHost = "web1";
    tags = ["web"];
  };

  # An app whose code lives in git: a hardened unit, a Caddy virtual host with
  # TLS, snapshots of its SQLite database, and `berth app deploy notes`.
  berth.services.notes = {
    enable = true;
    port = 3000;
    domain = "notes.example.com";
    repository = "https://github.com/you/notes.git";
    runtime = "bun";
    data.sqlite = ["data/notes.db"];
    # `berth app deploy notes` connects as the service's user, `notes`:
    # your key, and your app's CI's.
    deployKeys = [
      "ssh-ed25519 AAAA... you@laptop"
    ];
  };

  # The NixOS release this host was first installed with; do not change it
  # on upgrades.
  system.stateVersion = "25.11";
}
