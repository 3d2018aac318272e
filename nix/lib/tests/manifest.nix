# The manifest must be exactly what src/app/manifest/mod.rs reads.
lib: let
  # The service of the Rust tests' `minimal("notes")`.
  notes = lib.serviceDefaults "notes" {
    enable = true;
    port = 3000;
    repository = "https://example.com/notes.git";
    data.sqlite = ["data/app.db" "/var/lib/notes/data/jobs.db"];
  };
in [
  {
    name = "the notes service of the Rust tests, every field as serde prints it";
    actual = lib.manifest "notes" notes;
    expected = {
      version = 1;
      service = "notes";
      dir = "/var/lib/notes";
      unit = "notes.service";
      instances = 1;
      maxInstances = 1;
      port = 3000;
      repository = "https://example.com/notes.git";
      branch = "main";
      paths = [];
      quietPaths = ["*.md" "docs/" "test/" "tests/"];
      health = {
        url = "http://127.0.0.1:3000/health";
        status = 200;
        timeout = 60;
        settle = 3;
        expectRevision = false;
      };
      commands = {
        install = null;
        build = null;
        migrate = null;
      };
      data = {
        sqlite = ["data/app.db" "/var/lib/notes/data/jobs.db"];
        postgres = [];
        files = [];
        exclude = [];
      };
      keepReleases = 5;
      keepSnapshots = 5;
      environment = {};
      stage = null;
      allowSkipSnapshot = false;
      socketActivation = false;
    };
  }
  {
    name = "every option reaches its field";
    actual = lib.manifest "wiki" (lib.serviceDefaults "wiki" {
      port = 8080;
      repository = "git@github.com:acme/wiki.git";
      branch = "production";
      paths = ["apps/wiki" "!apps/wiki/e2e"];
      quietPaths = ["*.md"];
      environment.LOG_LEVEL = "debug";
      health = {
        path = "/up";
        status = 204;
        timeout = 120;
        settle = 10;
        expectRevision = true;
      };
      commands = {
        install = "bun install --frozen-lockfile";
        build = "bun run build";
        migrate = "bun run migrate";
      };
      data = {
        postgres = ["wiki"];
        files = ["data/uploads"];
        exclude = ["*.log"];
      };
      keepReleases = 3;
      keepSnapshots = 10;
      stage = "production";
      allowSkipSnapshot = true;
      socketActivation = true;
    });
    expected = {
      version = 1;
      service = "wiki";
      dir = "/var/lib/wiki";
      unit = "wiki.service";
      instances = 1;
      maxInstances = 1;
      port = 8080;
      repository = "git@github.com:acme/wiki.git";
      branch = "production";
      paths = ["apps/wiki" "!apps/wiki/e2e"];
      quietPaths = ["*.md"];
      health = {
        url = "http://127.0.0.1:8080/up";
        status = 204;
        timeout = 120;
        settle = 10;
        expectRevision = true;
      };
      commands = {
        install = "bun install --frozen-lockfile";
        build = "bun run build";
        migrate = "bun run migrate";
      };
      data = {
        sqlite = [];
        postgres = ["wiki"];
        files = ["data/uploads"];
        exclude = ["*.log"];
      };
      keepReleases = 3;
      keepSnapshots = 10;
      environment.LOG_LEVEL = "debug";
      stage = "production";
      allowSkipSnapshot = true;
      socketActivation = true;
    };
  }
  {
    name = "health.url overrides port and path";
    actual =
      (lib.manifest "notes" (lib.serviceDefaults "notes" {
        port = 3000;
        health.url = "http://127.0.0.1:9090/ready";
      }))
      .health
      .url;
    expected = "http://127.0.0.1:9090/ready";
  }
  {
    name = "a service without port and URL has an empty URL (the deploy needs --health-url) and a warning";
    actual = let
      worker = lib.serviceDefaults "worker" {
        runtime = "python";
        start = "python -m worker";
      };
    in {
      inherit ((lib.manifest "worker" worker).health) url;
      warnings = lib.warnings "worker" worker;
    };
    expected = {
      url = "";
      warnings = ["berth.services.worker has no port and no health.url: `berth app deploy worker` needs --health-url"];
    };
  }
  {
    name = "the manifest is valid JSON of the same value";
    actual = builtins.fromJSON (builtins.toJSON (lib.manifest "notes" notes)) == lib.manifest "notes" notes;
    expected = true;
  }
]
