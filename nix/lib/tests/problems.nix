lib: let
  problems = name: partial: lib.problems name (lib.serviceDefaults name partial);
in [
  {
    name = "a default service has no problem";
    actual = problems "notes" {port = 3000;};
    expected = [];
  }
  {
    name = "python and custom need a start command";
    actual = [(problems "worker" {runtime = "python";}) (problems "worker" {runtime = "custom";})];
    expected = [
      ["berth.services.worker.start is not set: runtime \"python\" has no default start command; set berth.services.worker.start"]
      ["berth.services.worker.start is not set: runtime \"custom\" has no default start command; set berth.services.worker.start"]
    ];
  }
  {
    name = "a domain needs a port";
    actual = problems "notes" {domain = "notes.example.com";};
    expected = ["berth.services.notes.domain is set but berth.services.notes.port is not: Caddy needs a port to proxy to; set berth.services.notes.port, or berth.services.notes.caddy.enable = false"];
  }
  {
    name = "socketActivation needs a port and one instance";
    actual = [
      (problems "notes" {socketActivation = true;})
      (problems "notes" {
        socketActivation = true;
        port = 3000;
        maxInstances = 2;
      })
      (problems "notes" {
        socketActivation = true;
        port = 3000;
      })
    ];
    expected = [
      ["berth.services.notes.socketActivation is set but berth.services.notes.port is not: the socket listens on the app's port; set berth.services.notes.port"]
      ["berth.services.notes.socketActivation is for one instance, but berth.services.notes may run 2; set instances and maxInstances to 1, or turn socketActivation off"]
      []
    ];
  }
  {
    name = "data outside the service's directory";
    actual = problems "notes" {
      data = {
        sqlite = ["data/app.db" "../other/app.db" "/etc/shadow" "/var/lib/notes" "/var/lib/notesX/app.db" "/var/lib/notes/data/jobs.db"];
        files = ["data/../../x"];
      };
    };
    expected = [
      "berth.services.notes.data.sqlite lists ../other/app.db, which is outside /var/lib/notes; give a path relative to /var/lib/notes or inside it"
      "berth.services.notes.data.sqlite lists /etc/shadow, which is outside /var/lib/notes; give a path relative to /var/lib/notes or inside it"
      "berth.services.notes.data.sqlite lists /var/lib/notes, which is outside /var/lib/notes; give a path relative to /var/lib/notes or inside it"
      "berth.services.notes.data.sqlite lists /var/lib/notesX/app.db, which is outside /var/lib/notes; give a path relative to /var/lib/notes or inside it"
      "berth.services.notes.data.files lists data/../../x, which is outside /var/lib/notes; give a path relative to /var/lib/notes or inside it"
    ];
  }
  {
    name = "data paths resolve as the agent resolves them";
    actual = map (lib.dataPath "notes") ["data/app.db" "/var/lib/notes/data/jobs.db" "../x"];
    expected = ["/var/lib/notes/data/app.db" "/var/lib/notes/data/jobs.db" null];
  }
  {
    name = "bad service and secret names, a token without a provider";
    actual = problems "Notes" {
      secrets."API-KEY" = "/run/agenix/key";
      caddy.tls.dnsTokenFile = "/run/agenix/token";
    };
    expected = [
      "berth.services.Notes: a service name is lowercase letters, digits, `-` and `_`, starting with a letter or digit, at most 64 characters"
      "berth.services.Notes.caddy.tls.dnsTokenFile is set but berth.services.Notes.caddy.tls.dnsProvider is not; name the DNS provider (e.g. \"cloudflare\")"
      "berth.services.Notes.secrets.API-KEY: a secret's name is an environment variable name (letters, digits and `_`, not starting with a digit)"
    ];
  }
  {
    name = "a PostgreSQL database not named after the service's user is warned of, one warning each";
    actual = [
      (lib.warnings "notes" (lib.serviceDefaults "notes" {
        port = 3000;
        data.postgres = ["notes"];
      }))
      (lib.warnings "notes" (lib.serviceDefaults "notes" {
        port = 3000;
        user = "notes-app";
        data.postgres = ["notes" "notes-app" "audit"];
      }))
    ];
    expected = [
      []
      [
        "berth.services.notes.data.postgres lists notes, which NixOS cannot give to the service's user notes-app (only a database named notes-app); give it once by hand: sudo -u postgres psql -c 'ALTER DATABASE \"notes\" OWNER TO \"notes-app\"'"
        "berth.services.notes.data.postgres lists audit, which NixOS cannot give to the service's user notes-app (only a database named notes-app); give it once by hand: sudo -u postgres psql -c 'ALTER DATABASE \"audit\" OWNER TO \"notes-app\"'"
      ]
    ];
  }
]
