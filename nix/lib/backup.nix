# A service's backup: berth-backup-<name>.service (the snapshot a deploy
# takes, then, with backup.restic, `restic backup` of it and of data.files),
# the timer that starts it, and the files its restic command reads. Pure:
# the caller passes the programs and how to write a file (modules/services.nix
# pkgs.writeText; tests/common/backup.rs a path on a lab host, where
# tests/restic.rs runs the unit as rendered with Debian's systemd and restic).
let
  inherit (builtins) concatMap concatStringsSep filter map match replaceStrings substring stringLength;
  service = import ./service.nix;
  util = import ./util.nix;

  unitName = name: "berth-backup-${name}";

  hasData = cfg: cfg.data.sqlite != [] || cfg.data.postgres != [] || cfg.data.files != [];
  has = cfg: cfg.backup.enable && hasData cfg;

  # Each line ended by a newline (nixpkgs' concatLines).
  lines = items: concatStringsSep "" (map (line: line + "\n") items);

  # One word of ExecStart=: bare when neither systemd nor a shell would
  # read anything into it (nixpkgs' escapeShellArg's plain words, less `%`,
  # which systemd expands), else quoted for systemd.
  word = s:
    if match "[[:alnum:],._+:@/-]+" s != null
    then s
    else util.systemdQuote s;
  command = words: concatStringsSep " " (map word words);

  # What restic reads: the snapshots, and data.files where the agent finds
  # them (a path outside the service's directory is an assertion already).
  dataFiles = name: cfg: filter (path: path != null) (map (service.dataPath name) cfg.data.files);
  paths = name: cfg: ["${service.dir name}/snapshots"] ++ dataFiles name cfg;

  # data.exclude as restic patterns that reach data.files only: restic
  # matches a relative glob against any part of any path it reads, so
  # `*.tmp` alone would also leave files out of the snapshots' copies (and
  # `*.db` the SQLite copies), and a snapshot restored from restic would
  # then be incomplete. A relative glob becomes `<path>/**/<glob>` for each
  # path of data.files (`**` is any number of directories, none included;
  # the path's own glob characters escaped; restic also expands `$VAR` in
  # an exclude file, which no path of a service should hold); one starting
  # with `/` is the user's, as is.
  literalGlob = replaceStrings ["\\" "*" "?" "["] ["\\\\" "\\*" "\\?" "\\["];
  excludes = name: cfg:
    concatMap (glob:
      if util.hasPrefix "/" glob
      then [glob]
      else map (path: "${literalGlob path}/**/${glob}") (dataFiles name cfg))
    cfg.data.exclude;

  # files name cfg -> { <file name> = <text>; }: what `unit` asks
  # writeText for. Lists in files, so no path or glob goes through
  # systemd's quoting.
  files = name: cfg:
    {"${unitName name}-paths" = lines (paths name cfg);}
    // (
      if excludes name cfg != []
      then {"${unitName name}-exclude" = lines (excludes name cfg);}
      else {}
    );

  # The directory of a repository on this host's filesystem, or null (sftp:,
  # s3:, rest:, rclone: …): restic writes its locks and packs there, so the
  # sandbox must let it (ProtectSystem=strict).
  localRepository = repository:
    if util.hasPrefix "/" repository
    then repository
    else if util.hasPrefix "local:" repository
    then substring 6 (stringLength repository) repository
    else null;

  # unit name cfg { berth; restic; writeText; stateDir; } -> the attrs of
  # systemd.services.berth-backup-<name>, without `path` (the module adds
  # PostgreSQL's tools) and without ordering on PostgreSQL (the module adds
  # it). berth and restic: the programs' paths; writeText name text -> the
  # path of a file holding text; stateDir: berth.agent.stateDir.
  #
  # The agent's snapshot (SQLite copied with the online backup API, files
  # copied, PostgreSQL dumped), pruned like a deploy's, as the service's user,
  # which owns it; then restic backs up the snapshots, never the live
  # databases.
  unit = name: cfg: {
    berth,
    restic,
    writeText,
    stateDir,
  }: let
    # The settings; `restic` is the program.
    repo = cfg.backup.restic;
    withRestic = repo != null;
    file = fileName: writeText fileName (files name cfg).${fileName};
    resticArgs =
      ["backup" "--tag" "berth-${name}" "--files-from-verbatim" (file "${unitName name}-paths")]
      ++ (
        if excludes name cfg != []
        then ["--exclude-file" (file "${unitName name}-exclude")]
        else []
      );
    local =
      if withRestic
      then localRepository repo.repository
      else null;
    network =
      if withRestic
      then ["network-online.target"]
      else [];
  in {
    description = "berth: snapshot of the data of ${name}${
      if withRestic
      then ", sent to restic"
      else ""
    }";
    wants = network;
    after = network;
    environment =
      {BERTH_STATE_DIR = stateDir;}
      // (
        if withRestic
        then {
          RESTIC_REPOSITORY = repo.repository;
          # The password file may be root's only: systemd hands it over.
          RESTIC_PASSWORD_FILE = "%d/restic-password";
          RESTIC_CACHE_DIR = "%C/${unitName name}";
        }
        else {}
      );
    serviceConfig =
      {
        Type = "oneshot";
        User = cfg.user;
        Group = cfg.group;
        ExecStart =
          [(command ([berth] ++ service.snapshotArgs name))]
          ++ (
            if withRestic
            then [(command ([restic] ++ resticArgs))]
            else []
          );
        NoNewPrivileges = true;
        PrivateTmp = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        # `-`: a repository that is not there is restic's error to report
        # ("repository does not exist"), not the sandbox's.
        ReadWritePaths =
          [(service.dir name)]
          ++ (
            if local != null
            then ["-${local}"]
            else []
          );
      }
      // (
        if withRestic
        then
          {
            LoadCredential = ["restic-password:${repo.passwordFile}"];
            CacheDirectory = unitName name;
          }
          // (
            if repo.environmentFile != null
            then {EnvironmentFile = repo.environmentFile;}
            else {}
          )
        else {}
      );
  };

  # timer name cfg -> systemd.timers.berth-backup-<name>.
  timer = _name: cfg: {
    wantedBy = ["timers.target"];
    timerConfig = {
      OnCalendar = cfg.backup.schedule;
      # A run missed while the host was down happens at the next boot.
      Persistent = true;
      RandomizedDelaySec = "10min";
    };
  };
in {
  inherit unitName has files unit timer;
}
