# The options of berth's NixOS modules, as plain data: the single source of
# truth that modules/ turns into `lib.mkOption`s (`mkOptions` in eval.nix),
# that docs/modules.md is generated from (docs.nix), and that the pure
# functions' tests fill defaults from (`evalOptions`).
#
# A leaf is `option { type; default; example; description; }`, optionally
# with `defaultText` (Markdown the docs show instead of `default`, for defaults
# that are functions or that the module computes). `example` may be
# `literal "nix source"`. A leaf without `default` must be set. Any other
# attribute set is a group of options. Types are in types.nix.
let
  t = import ./types.nix;
  caddy = import ./caddy.nix;
  util = import ./util.nix;
  option = attrs: attrs // {_type = "option";};
  # An example or default written as Nix source, shown as is.
  literal = text: {
    _type = "literalExpression";
    inherit text;
  };

  mkEnable = default: description:
    option {
      type = t.bool;
      inherit default description;
      example = !default;
    };

  # berth.services.<name>: one app deployed from git by `berth app deploy`.
  # Defaults that are functions take the service's name.
  service = {
    enable = mkEnable false ''
      Whether to run this service: its user and group, directories, systemd
      unit, first release, sudo rule, Caddy virtual host, app manifest,
      backups and PostgreSQL databases.
    '';

    description = option {
      type = t.str;
      default = name: "berth service ${name}";
      defaultText = "`\"berth service <name>\"`";
      example = "Notes, the team's wiki";
      description = "The systemd unit's description.";
    };

    user = option {
      type = t.str;
      default = name: name;
      defaultText = "the service's name, `<name>`";
      example = "notes";
      description = ''
        The system user the service runs as and deploys as: `berth app
        deploy` connects over SSH as this user (the service's name unless
        the deploy says `user@host`; keys in `deployKeys`), and its sudo
        rule lets it restart, stop, start and query this service's unit
        only. One user per service: two services on one user fail the
        evaluation, naming both.
      '';
    };

    deployKeys = option {
      type = t.listOf t.str;
      default = [];
      example = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... notes-ci"];
      description = ''
        Public keys that may SSH in as the service's user to deploy it
        (`berth app deploy`), e.g. the key of the app's CI; set as
        `users.users.<user>.openssh.authorizedKeys.keys`. A key here gets a
        shell as that user: the service's files and data, and its sudo rule
        (restart, stop, start and status of this service's unit).
      '';
    };

    group = option {
      type = t.str;
      default = name: name;
      defaultText = "the service's name, `<name>`";
      example = "notes";
      description = "The service's group.";
    };

    port = option {
      type = t.nullOr t.port;
      default = null;
      example = 3000;
      description = ''
        The loopback port the app listens on, passed to it as `PORT` (with
        `instances`, the first instance's port). Caddy proxies to it and the
        deploy's health check asks it. `null` for a service that serves no
        HTTP (then set `health.url`, or deploy with `--health-url`).
      '';
    };

    instances = option {
      type = t.between 1 32;
      default = 1;
      example = 3;
      description = ''
        How many copies of the app run, as the instances `<name>@1` …
        `<name>@N` of the template unit `<name>@.service` (with 1, and
        `maxInstances` unset, the plain unit `<name>.service`). Instance
        `i` gets `BERTH_INSTANCE=i` and, with `port`, its own port
        `PORT = port + i - 1`; Caddy balances over their ports, and an app
        deploy stops, starts and health-checks every one. `berth app scale`
        changes the running count on the host until the next app deploy,
        which brings back this number.
      '';
    };

    maxInstances = option {
      type = t.nullOr (t.between 1 32);
      default = null;
      defaultText = "`instances`";
      example = 8;
      description = ''
        The most instances `berth app scale` may run. Their ports (`port`
        … `port + maxInstances - 1`) are reserved for this service by the
        port-conflict check, and its sudo rule covers instances 1 to
        `maxInstances` only. Above 1, the service runs as the template
        unit `<name>@.service` even with `instances = 1`.
      '';
    };

    socketActivation = mkEnable false ''
      Whether systemd, not the app, holds the listening socket
      (`<name>.socket` on `127.0.0.1:<port>`), so an app deploy drops no
      request: while the deploy has the service stopped (stop, migrate,
      start), connections wait in the socket's queue and the new release
      answers them. A connection then does not start the app early: the
      unit's start waits until berth lets it (`ExecStartPre`), so the
      migration still runs with no writer on the data. The app must serve
      on the socket systemd passes as file descriptor 3 (`LISTEN_FDS=1`),
      be the unit's main process (`start` is one command, or ends in
      `exec`) and finish the requests it has accepted when it gets SIGTERM.
      Needs `port` and one instance.
    '';

    domain = option {
      type = t.nullOr t.str;
      default = null;
      example = "notes.example.com";
      description = "The name Caddy serves the app at (with `caddy.enable`). `null`: no virtual host.";
    };

    serverAliases = option {
      type = t.listOf t.str;
      default = [];
      example = ["www.notes.example.com"];
      description = "Other names of the same virtual host.";
    };

    repository = option {
      type = t.nullOr t.str;
      default = null;
      example = "https://github.com/acme/notes.git";
      description = ''
        Where the code is fetched from (any URL git fetches, as the
        service's user). Needed for the first release and for deploys
        without `--repo`.
      '';
    };

    branch = option {
      type = t.str;
      default = "main";
      example = "production";
      description = "Deployed revisions must be reachable from this branch (unless the deploy is forced); the first release is its head.";
    };

    paths = option {
      type = t.listOf t.str;
      default = [];
      example = ["apps/notes" "lib/" "bun.lock"];
      description = ''
        The repository's files that make up this service, as gitignore-like
        patterns (a name without `/` matches at any depth, a directory
        stands for its contents, `!` takes back, the last match decides).
        A commit that changes none of them does not touch the service:
        `berth app changed` says so, and `berth app deploy
        --skip-untouched` (the reusable workflow's default) deploys nothing.
        Empty: every file.
      '';
    };

    quietPaths = option {
      type = t.listOf t.str;
      default = ["*.md" "docs/" "test/" "tests/"];
      example = ["*.md" "docs/" "e2e/"];
      description = ''
        Of `paths`, the files whose changes alone are not worth a
        notification (docs, tests): such a deploy still happens, but its
        notification is SUPPRESS, as long as it succeeds. Same patterns as
        `paths`.
      '';
    };

    runtime = option {
      type = t.enum ["bun" "node" "python" "custom"];
      default = "bun";
      example = "node";
      description = ''
        What runs the app. It puts the runtime on the unit's `PATH`, picks
        the default `start` (bun: `bun run start`, node: `npm start`;
        python and custom need `start`), sets `NODE_ENV=production` for bun
        and node, and decides `MemoryDenyWriteExecute`: on only for python
        and custom, because the JIT compilers of bun and node need
        writable executable memory.
      '';
    };

    start = option {
      type = t.nullOr t.str;
      default = null;
      defaultText = "`null`: bun runs `bun run start`, node `npm start`";
      example = "python -m notes --port $PORT";
      description = ''
        The command that runs the app, a `/bin/sh -c` line run as the
        service's user in `/var/lib/<name>/current`. `$PORT` and the other
        variables are the shell's. Required for python and custom.
      '';
    };

    environment = option {
      type = t.attrsOf t.str;
      default = {};
      example = {
        LOG_LEVEL = "info";
        DATABASE_PATH = "/var/lib/notes/data/notes.db";
      };
      description = ''
        Environment of the app, and of its install, build and migrate
        commands (the manifest carries it). Not for secrets: the values are
        in the Nix store; see `secrets`.
      '';
    };

    secrets = option {
      type = t.attrsOf t.absolutePath;
      default = {};
      example = {SESSION_SECRET = "/run/agenix/notes-session";};
      description = ''
        Secret files by name (agenix- and sops-nix-compatible), never
        copied into the Nix store. systemd reads each file as root when the
        unit starts (`LoadCredential=`), so it may be readable by root only,
        and hands it to the app at `$CREDENTIALS_DIRECTORY/<NAME>`;
        `<NAME>_FILE` holds that path. Names are environment variable
        names. The deploy's install, build and migrate commands do not see
        them.
      '';
    };

    environmentFiles = option {
      type = t.listOf t.absolutePath;
      default = [];
      example = ["/run/agenix/notes-env"];
      description = ''
        Files of `NAME=value` lines (a dotenv, e.g. an agenix secret) that
        systemd reads as root when the unit starts (`EnvironmentFile=`);
        never copied into the Nix store.
      '';
    };

    data = {
      sqlite = option {
        type = t.listOf t.str;
        default = [];
        example = ["data/notes.db"];
        description = ''
          SQLite databases, relative to `/var/lib/<name>` or absolute inside
          it: snapshot before each deploy with the online backup API, and
          backed up.
        '';
      };
      postgres = option {
        type = t.listOf t.str;
        default = [];
        example = ["notes"];
        description = ''
          PostgreSQL databases, by name, on this host's server. Before each
          deploy, while the app still runs, the agent dumps each one into
          the snapshot (`pg_dump`, directory format); a failed deploy,
          `berth app rollback --restore-data` and `berth snapshot restore`
          put it back in one transaction, dropping what the service's user
          owns in it and replaying the dump. The backup timer dumps them
          too, so they are backed up with the other data (to restic as
          dumps, not as PostgreSQL's data directory).

          The agent connects as the service's user, by peer authentication
          over the local socket (`/run/postgresql`), with the `pg_dump`,
          `pg_restore` and `psql` on its `PATH`, which must be the
          server's version or newer: the first release and the backup get
          `services.postgresql.package`, and a deploy over SSH the
          system's. The module turns on `services.postgresql`
          (`mkDefault`), creates the databases and a role for the user,
          gives the user the database named after it, and starts the app
          after PostgreSQL.

          Each database must be owned by the service's user; the objects
          the app's migrations create are then the user's too. NixOS
          cannot give away a database not named after the user (a warning
          names it): give it once by hand, as `postgres`, e.g. `ALTER
          DATABASE wiki OWNER TO notes`.
        '';
      };
      files = option {
        type = t.listOf t.str;
        default = [];
        example = ["data/uploads"];
        description = "Files and directories to snapshot and back up, as `sqlite`.";
      };
      exclude = option {
        type = t.listOf t.str;
        default = [];
        example = ["*.log" "cache"];
        description = "Globs restic leaves out of `data.files` (`backup.restic`); the snapshots of deploys and of the timer do not use them.";
      };
    };

    health = {
      path = option {
        type = t.str;
        default = "/health";
        example = "/api/health";
        description = "The path the deploy's health check asks on `http://127.0.0.1:<port>`.";
      };
      url = option {
        type = t.nullOr t.str;
        default = null;
        example = "http://127.0.0.1:9090/ready";
        description = ''
          The health check URL, over loopback on the host; overrides `port`
          and `health.path`. With more than one instance, each is checked on
          its own: `{port}` in the URL stands for the instance's port and
          `{instance}` for its number, and one of them must be there.
        '';
      };
      status = option {
        type = t.between 100 599;
        default = 200;
        example = 204;
        description = "The HTTP status a healthy app answers.";
      };
      timeout = option {
        type = t.unsigned;
        default = 60;
        example = 120;
        description = "Seconds the app has to become healthy after it starts.";
      };
      settle = option {
        type = t.unsigned;
        default = 3;
        example = 10;
        description = "Seconds it must stay healthy (no restart, still answering) after it first answers.";
      };
      expectRevision = option {
        type = t.bool;
        default = false;
        example = true;
        description = "Whether the health answer must contain the deployed revision (its first 12 characters).";
      };
    };

    commands = {
      install = option {
        type = t.nullOr t.str;
        default = null;
        example = "bun install --frozen-lockfile";
        description = "Installs dependencies in a new release, with a frozen lockfile (`sh -c`, as the service's user).";
      };
      build = option {
        type = t.nullOr t.str;
        default = null;
        example = "bun run build";
        description = "Builds a new release while the old one keeps serving.";
      };
      migrate = option {
        type = t.nullOr t.str;
        default = null;
        example = "bun run migrate";
        description = "Migrates the data, with the service stopped, after the snapshot.";
      };
    };

    keepReleases = option {
      type = t.unsigned;
      default = 5;
      example = 10;
      description = "Releases kept, besides the current and the previous one.";
    };

    keepSnapshots = option {
      type = t.unsigned;
      default = 5;
      example = 20;
      description = "Data snapshots kept.";
    };

    allowSkipSnapshot = mkEnable false ''
      Whether `berth app deploy --skip-snapshot` may run in CI (where `CI`
      is set) without `--allow-skip-snapshot-in-ci`. A deploy that skips
      its snapshot leaves `data` unprotected: if it fails, the previous
      release comes back but the data stays as the failed deploy left it.
      Outside CI, `--skip-snapshot` needs no permission; it always warns
      and is recorded in the deploy's history.
    '';

    stage = option {
      type = t.nullOr t.str;
      default = null;
      example = "production";
      description = ''
        The stage this host's copy of the service belongs to (lowercase
        letters, digits, `-` and `_`), in its manifest. `berth app deploy
        --stage S` (or `BERTH_STAGE=S`) refuses, before anything changes, a
        service that declares another stage or none; without `--stage`
        nothing is checked.
      '';
    };

    firstRelease = mkEnable true ''
      Whether a fresh host releases the head of `branch` by itself, so it
      serves without an app deploy. A unit `berth-first-release-<name>`
      runs `berth agent app-deploy --ref <branch>` (the whole deploy:
      clone `repository`, install, build, start, health check) as the
      service's user, at boot and at every switch for as long as
      `/var/lib/<name>/current` does not exist. The switch does not wait
      for it and it never fails the switch: its outcome is recorded with
      the service (`berth app status`). A failed fetch or build (no network
      yet, say) is tried again, up to 5 attempts a minute apart; a release
      that fails its health check is rolled back and its revision blocked,
      as in any deploy. Until then the app's unit is skipped
      (`ConditionPathExists=/var/lib/<name>/current`); the release starts
      it. Needs `repository`, and `port` or `health.url` for the health
      check; without them a warning says there is no first release.
    '';

    caddy = {
      enable = mkEnable true ''
        Whether Caddy serves `domain` (and `serverAliases`) as a reverse
        proxy to `port`. Nothing happens without a domain.
      '';
      extraConfig = option {
        type = t.lines;
        default = "";
        example = ''
          encode zstd gzip
        '';
        description = "Caddyfile directives added to the virtual host, before the proxy.";
      };
      hsts = mkEnable true ''
        Whether to send the HSTS header,
        `Strict-Transport-Security: max-age=31536000; includeSubDomains`.
      '';
      rateLimit = {
        enable = mkEnable false ''
          Whether to limit requests per client IP, with the `rate_limit`
          directive of github.com/mholt/caddy-ratelimit: Caddy must be built
          with that plugin, which berth does (see `berth.caddy`).
        '';
        events = option {
          type = t.unsigned;
          default = 60;
          example = 600;
          description = "Requests one client IP may make per `window`.";
        };
        window = option {
          type = t.str;
          default = "1m";
          example = "10s";
          description = "The sliding window, a Caddy duration.";
        };
        trustedProxies = option {
          type = t.listOf t.str;
          default = [];
          example = ["173.245.48.0/20" "private_ranges"];
          description = ''
            Ranges of proxies in front of Caddy (e.g. a CDN) whose
            `X-Forwarded-For` Caddy believes, so the limit keys on the real
            client. It is a server-wide Caddy option: the ranges of all
            services are merged into `services.caddy.globalConfig`.
          '';
        };
      };
      tls = {
        dnsProvider = option {
          type = t.nullOr t.str;
          default = null;
          example = "cloudflare";
          description = ''
            Get the certificate with the ACME DNS challenge through this
            github.com/caddy-dns provider, e.g. for a host that is not
            reachable from the internet. Caddy must be built with the
            provider's plugin, which berth does (see `berth.caddy`). `null`:
            the HTTP and TLS-ALPN challenges.
          '';
        };
        dnsTokenFile = option {
          type = t.nullOr t.absolutePath;
          default = null;
          example = "/run/agenix/cloudflare-token";
          description = ''
            The file holding the DNS provider's API token, for providers that
            take the token as their one argument (cloudflare, digitalocean,
            hetzner, duckdns, …). Caddy's unit loads it as a systemd
            credential, so it may be readable by root only; it is never
            copied into the Nix store.
          '';
        };
      };
    };

    hardening = {
      enable = mkEnable true ''
        Whether to sandbox the unit: code and system read-only, `data/`
        writable, no privileges, capabilities, devices, kernel access or
        other users' files, a system call allow list, private `/tmp`.
        `systemd-analyze security` scores a default unit 1.1, "OK" (0 is
        the safest, 10 the most exposed), for every runtime: offline, and
        running on a host with systemd 252 (a python app and a node app
        started by `npm start`, each serving and writing `data/`; berth's
        tests). What it still counts: the network (`PrivateNetwork=`,
        `IPAddressDeny=`: the app serves on a port), local and Internet
        sockets, the host's root directory, the clock device (`char-rtc`),
        and, for bun and node, writable executable memory (their JIT
        compilers need it).
      '';
      extraServiceConfig = option {
        type = t.attrsOf t.anything;
        default = {};
        example = {
          MemoryDenyWriteExecute = false;
          RestrictAddressFamilies = ["AF_UNIX" "AF_INET" "AF_INET6" "AF_NETLINK"];
          ReadWritePaths = ["/var/lib/notes/data" "/srv/notes-media"];
        };
        description = ''
          The escape hatch: systemd `[Service]` settings merged last over
          everything berth sets (hardening included, enabled or not), each
          key replacing berth's value whole.
        '';
      };
    };

    backup = {
      enable = mkEnable true ''
        Whether a timer snapshots the declared `data` (`berth agent snapshot
        create`, the deploy's own snapshot). Nothing happens without data.
      '';
      schedule = option {
        type = t.str;
        default = "daily";
        example = "*-*-* 03:00:00";
        description = "When, as systemd `OnCalendar=`.";
      };
      restic = option {
        type = t.nullOr (t.submodule {
          repository = option {
            type = t.str;
            example = "sftp:backup@nas:/srv/restic/notes";
            description = "The restic repository the snapshot is sent to (`RESTIC_REPOSITORY`). It must exist: create it once with `restic init`.";
          };
          passwordFile = option {
            type = t.absolutePath;
            example = "/run/agenix/restic-password";
            description = "The file holding the repository's password.";
          };
          environmentFile = option {
            type = t.nullOr t.absolutePath;
            default = null;
            example = "/run/agenix/restic-s3";
            description = "A dotenv with the repository's credentials (e.g. `AWS_ACCESS_KEY_ID`).";
          };
        });
        default = null;
        example = {
          repository = "sftp:backup@nas:/srv/restic/notes";
          passwordFile = "/run/agenix/restic-password";
        };
        description = ''
          Also send each snapshot and `data.files` to restic (`restic backup`,
          as the service's user, without `data.exclude`), after the timer's
          snapshot; `null`: keep snapshots on the host only. The repository
          must already be initialised: run `restic init` once, with the same
          repository, password and credentials; the backup does not create
          it.
        '';
      };
    };
  };

  httpCheck = {
    url = option {
      type = t.str;
      example = "https://notes.example.com/health";
      description = "The URL, requested from the deployer.";
    };
    expectStatus = option {
      type = t.between 100 599;
      default = 200;
      example = 204;
      description = "The status it must answer.";
    };
    timeout = option {
      type = t.unsigned;
      default = 5;
      example = 10;
      description = "Seconds per attempt.";
    };
    retries = option {
      type = t.unsigned;
      default = 3;
      example = 10;
      description = "Attempts after the first.";
    };
  };

  commandCheck = {
    command = option {
      type = t.listOf t.str;
      example = ["systemctl" "is-active" "postgresql"];
      description = "Program and arguments (argv, never a shell line), run on the target; must exit 0.";
    };
    timeout = option {
      type = t.unsigned;
      default = 30;
      example = 60;
      description = "Seconds.";
    };
  };
in {
  services = option {
    type = t.attrsOf (t.submodule service);
    default = {};
    example = {
      notes = {
        enable = true;
        port = 3000;
        domain = "notes.example.com";
        repository = "https://github.com/acme/notes.git";
        data.sqlite = ["data/notes.db"];
      };
    };
    description = "Apps deployed from git with `berth app deploy`, one per name.";
  };

  # berth.caddy: how Caddy gets the plugins the services need.
  caddy = {
    buildPlugins = option {
      type = t.bool;
      default = true;
      example = false;
      description = ''
        Whether berth builds Caddy (`services.caddy.package`) with the
        plugins its services need, with `pkgs.caddy.withPlugins`:
        `github.com/mholt/caddy-ratelimit` for `caddy.rateLimit`,
        `github.com/caddy-dns/<provider>` for `caddy.tls.dnsProvider`. Off:
        set `services.caddy.package` yourself to a Caddy that has them.
      '';
    };
    pluginVersions = option {
      type = t.attrsOf t.str;
      default = {};
      defaultText = "`${util.toNix caddy.pluginVersions}`";
      example = {"github.com/caddy-dns/cloudflare" = "v0.2.1";};
      description = ''
        The version Caddy is built with of each plugin, by Go module: a tag
        or a Go pseudo-version (`pkgs.caddy.withPlugins` needs one). What
        you set is added to berth's versions, and replaces berth's for the
        same module.
      '';
    };
    pluginsHash = option {
      type = t.nullOr t.str;
      default = null;
      example = "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
      description = ''
        The hash of Caddy's sources with the plugins (the `hash` of
        `pkgs.caddy.withPlugins`), which Nix cannot know before it has them:
        set it to `""`, build, and copy the hash the error prints after
        `got:`. Again whenever the plugins, their versions or Caddy change.
      '';
    };
  };

  ports.reserved = option {
    type = t.listOf t.port;
    default = [22 80 443];
    example = [22 80 443 5432];
    description = "Ports no service may use (SSH, Caddy, other daemons); a service on one fails the evaluation, naming it.";
  };

  # What `berth deploy` reads from each node (src/flake/settings.rs):
  # `nix eval --json config.berth.deployment` must print this shape.
  deployment = {
    targetHost = option {
      type = t.nullOr t.str;
      default = null;
      defaultText = "`berth.machine.tailscaleHost` when that is set (on the tailnet), else `null`";
      example = "web1.tail1234.ts.net";
      description = "The host to SSH to: a DNS name, a Tailscale MagicDNS name or an address. `null`: the node's name (its `nixosConfigurations` attribute), not `networking.hostName`.";
    };
    targetUser = option {
      type = t.str;
      default = "root";
      example = "deploy";
      description = ''
        The user to SSH as. When it is not root, berth runs the host's agent
        as root through `privilegeEscalationCommand`, so the host must let
        it: list the user in `berth.agent.deployUsers`.
      '';
    };
    privilegeEscalationCommand = option {
      type = t.listOf t.str;
      default = ["sudo"];
      example = ["doas"];
      description = ''
        How berth becomes root on the host when `targetUser` is not root:
        the program, and its arguments, that the agent's command line
        (`/run/current-system/sw/bin/berth agent <verb> …`) is run through,
        e.g. `[ "doas" ]` or `[ "run0" ]`. Only when the program is sudo
        does berth add `-n` (or `-k -S -p ""` when it gives a password) and
        `--`; any other program gets the agent's command line appended as
        is, and must not ask for a password. A password is only ever given
        to sudo.
      '';
    };
    askSudoPassword = option {
      type = t.bool;
      default = false;
      example = true;
      description = ''
        Whether `berth` reads the sudo password once from the terminal for
        this node and gives it to sudo on the host, as `--ask-sudo-password`
        does; for a `targetUser` whose sudo asks for one (a user of
        `berth.agent.deployUsers` needs none). Without a terminal, that is
        an error before anything changes.
      '';
    };
    tags = option {
      type = t.listOf t.str;
      default = [];
      example = ["web" "eu"];
      description = "Names `berth deploy --on @tag` selects the node by.";
    };
    buildOnTarget = option {
      type = t.bool;
      default = false;
      example = true;
      description = "Whether to copy the derivation and build on the target instead of on the deployer.";
    };
    sshOptions = option {
      type = t.listOf t.str;
      default = [];
      example = ["-p" "2222"];
      description = "Extra `ssh` arguments for this node.";
    };
    confirmTimeout = option {
      type = t.unsigned;
      default = 30;
      example = 90;
      description = "Seconds the deployer has to confirm a new generation before the host rolls back to the previous one.";
    };
    activationTimeout = option {
      type = t.unsigned;
      default = 600;
      example = 1800;
      description = "Seconds `switch-to-configuration` may run on the host. Past it the agent stops it (its whole process group) and rolls back to the recorded generation, so a switch that hangs does not hold the host. `berth deploy --activation-timeout` overrides it.";
    };
    magicRollback = option {
      type = t.bool;
      default = true;
      example = false;
      description = "Whether an unconfirmed generation is rolled back (by the watchdog, and at boot).";
    };
    stage = option {
      type = t.nullOr t.str;
      default = null;
      example = "production";
      description = "The stage the node belongs to (lowercase letters, digits, `-` and `_`). `berth deploy --stage S` (or `BERTH_STAGE=S`) refuses the deploy, before anything is built, when a selected node declares another stage or none; without `--stage` nothing is checked.";
    };
    notify = option {
      type = t.listOf t.str;
      default = [];
      example = ["https://discord.com/api/webhooks/ID/TOKEN"];
      description = "Webhooks told of each deploy of this node (Discord, Slack, or generic JSON), besides `--notify`. A failed notification never fails the deploy. The URLs are secrets: they land in the Nix store, so prefer `--notify` from CI secrets where that matters.";
    };
    healthChecks = {
      http = option {
        type = t.listOf (t.submodule httpCheck);
        default = [];
        example = [{url = "https://notes.example.com/health";}];
        description = "HTTP requests the deployer makes after switching, before confirming.";
      };
      commands = option {
        type = t.listOf (t.submodule commandCheck);
        default = [];
        example = [{command = ["systemctl" "is-active" "postgresql"];}];
        description = "Commands run on the target after switching, before confirming.";
      };
      units = option {
        type = t.listOf t.str;
        default = [];
        example = ["caddy.service" "postgresql.service"];
        description = "systemd units that must be active on the target after switching.";
      };
    };
    tailscale = {
      enable = mkEnable false ''
        Whether the node is reached over Tailscale: berth resolves it with
        `tailscale status`.
      '';
      checkOnline = mkEnable true ''
        Whether to refuse early, with a clear message, when the peer is
        offline in `tailscale status`.
      '';
    };
  };

  agent = {
    enable = mkEnable true ''
      Whether to install berth's agent on the host: the `berth` command,
      its state directory, and the boot check.
    '';
    package = option {
      type = t.package;
      defaultText = "`packages.<system>.berth` of the berth flake whose `nixosModules` you import; else berth built from the module's own sources with the host's nixpkgs";
      example = literal "inputs.berth.packages.\${pkgs.stdenv.hostPlatform.system}.default";
      description = ''
        The berth package installed on the host and run as its agent
        (`berth agent …`). The default, from the flake, makes agent and
        deployer the same berth when both come from one flake.lock.
      '';
    };
    stateDir = option {
      type = t.absolutePath;
      default = "/var/lib/berth";
      example = "/srv/berth";
      description = "Where the agent keeps the host's state: its SQLite database (system deployments, the host's lock) and `host-lock.json`, the host's lock for the services' users to read.";
    };
    trustedPublicKeys = option {
      type = t.listOf t.str;
      default = [];
      example = ["deploy-1:ZSvO9i95di17tEs/uxtAnSSd1Wrt9eV0WhPkMChYypc="];
      description = ''
        Public keys (`NAME:BASE64`, as `berth keys generate` prints them)
        one of which must have signed a system before the agent activates
        it. Non-empty turns the requirement on: `berth agent activate`
        checks, before it records a generation or switches, that the
        system itself carries a valid signature of one of these keys
        (`berth deploy --sign-key`), and that every path of its closure is
        intact and signed by one of these keys or a key in
        `nix.settings.trusted-public-keys`, or was built on the host. A
        system that fails is refused, naming the keys and the paths; the
        host is left as it was. The keys are also added to
        `nix.settings.trusted-public-keys`, with `require-sigs`. The host
        decides: no deploy flag turns the check off. A host that builds
        its own systems (`converge`) needs `converge.signKeyFile`.
      '';
    };
    deployUsers = option {
      type = t.listOf t.str;
      default = [];
      example = ["deploy"];
      description = ''
        Users `berth deploy` may SSH in as instead of root
        (`berth.deployment.targetUser`). Each gets a sudo rule that lets it
        run, as root and without a password, only `berth agent` with the
        verbs system deploys need: `activate`, `confirm`, `rollback`,
        `status`, `show`, `history`, `record`, `lock`, `dry-activate` and
        `fetch`. So it can
        activate, confirm and roll back systems, read the host's status and
        history, take the host's lock, dry-activate, and take signed paths
        from peer hosts during a fan-out deploy (only paths signed by a key
        in `trustedPublicKeys` or the host's Nix trusts); it cannot run a
        shell, `nix-env`, `systemctl` or any other program as root, nor the
        agent's app verbs, nor the agent with another state directory,
        profile or manifest directory (the agent refuses them under sudo).

        With `trustedPublicKeys` set, it can only activate or dry-activate
        systems signed by one of those keys. Without it, `activate` runs the
        `switch-to-configuration` of any store path as root: a deploy user
        is then as good as root (the evaluation warns).

        The paths it copies into the Nix store must be signed by a key in
        `trustedPublicKeys` (deploy with `--sign-key`): the Nix daemon
        refuses unsigned paths from users not in
        `nix.settings.trusted-users` (and a user there is as good as root).
        Each user is added to the `systemd-journal` group, so `berth logs`
        reads the journal without root. The users themselves, with the
        deployers' SSH keys, are declared in `users.users`; `stateDir` must
        be the default, the one the agent uses under sudo.
      '';
    };
    bootCheck = mkEnable true ''
      Whether a unit at boot rolls back a system deployment that was never
      confirmed.
    '';
    converge = {
      enable = mkEnable false ''
        Whether a timer deploys the host from `flake` by itself (GitOps
        converge): `berth converge` skips while paused (`berth converge
        --pause`, which expires) and skips revisions that failed here
        before; a deploy that fails its checks is rolled back and blocked.
      '';
      flake = option {
        type = t.nullOr t.str;
        default = null;
        example = "github:acme/fleet";
        description = "The flake the host converges to.";
      };
      node = option {
        type = t.nullOr t.str;
        default = null;
        defaultText = "`networking.hostName`";
        example = "web1";
        description = "The flake's `nixosConfigurations` attribute of this host.";
      };
      interval = option {
        type = t.str;
        default = "15min";
        example = "1h";
        description = "How long after the last run the next one starts, a systemd time span.";
      };
      requireCi = option {
        type = t.nullOr t.str;
        default = null;
        example = "acme/fleet";
        description = ''
          The GitHub repository (`OWNER/NAME`) whose checks of the flake's
          revision must pass before the host deploys it (`berth converge
          --require-ci`): a failed check skips the revision, checks still
          running are waited for up to `ciTimeout` and then left to the
          next run. Needs a flake with a git revision.
        '';
      };
      ciTimeout = option {
        type = t.unsigned;
        default = 60;
        example = 300;
        description = "Seconds a run waits for the checks of `requireCi` to finish.";
      };
      signKeyFile = option {
        type = t.nullOr t.absolutePath;
        default = null;
        example = "/run/secrets/berth-converge.secret";
        description = ''
          A secret key (`berth keys generate`) that `berth converge` signs
          the system it built with before activating it (`--sign-key`).
          Needed when `trustedPublicKeys` is set, which must then hold its
          public key: a system built on the host is not signed otherwise.
          Read by the unit at run time, never copied to the Nix store.
        '';
      };
      githubTokenFile = option {
        type = t.nullOr t.str;
        default = null;
        example = "/run/secrets/github-token";
        description = ''
          A file holding the GitHub token `requireCi` asks the API with
          (needed for a private repository, and against the low anonymous
          rate limit). Passed to the unit as a systemd credential, never
          copied to the Nix store.
        '';
      };
    };
  };

  machine = {
    tailscaleHost = option {
      type = t.nullOr t.str;
      default = null;
      defaultText = "`networking.hostName` when `services.tailscale.enable`, else `null`";
      example = "web1";
      description = "The host's Tailscale (MagicDNS) name; `berth.deployment.targetHost` defaults to it.";
    };
    type = option {
      type = t.enum ["server" "desktop" "vm" "container"];
      default = "server";
      example = "vm";
      description = "What kind of machine this is.";
    };
  };
}
