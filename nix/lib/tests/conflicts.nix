lib: let
  svc = name: partial: lib.serviceDefaults name ({enable = true;} // partial);
in [
  {
    name = "two services on one port are named, both";
    actual = lib.portConflicts {
      a = svc "a" {port = 3000;};
      b = svc "b" {port = 3000;};
      c = svc "c" {port = 3001;};
    } [22];
    expected = ["berth.services.a and berth.services.b both use port 3000; give each service its own port"];
  }
  {
    name = "three on one port, and a reserved port";
    actual = lib.portConflicts {
      web = svc "web" {port = 8080;};
      api = svc "api" {port = 8080;};
      admin = svc "admin" {port = 8080;};
      ssh = svc "ssh" {port = 22;};
    } [22 80 443];
    expected = [
      "berth.services.admin, berth.services.api and berth.services.web all use port 8080; give each service its own port"
      "berth.services.ssh uses port 22, which berth.ports.reserved lists; choose another port"
    ];
  }
  {
    name = "ports are compared as numbers and reported in order";
    actual = lib.portConflicts {
      a = svc "a" {port = 900;};
      b = svc "b" {port = 900;};
      c = svc "c" {port = 10000;};
      d = svc "d" {port = 10000;};
    } [];
    expected = [
      "berth.services.a and berth.services.b both use port 900; give each service its own port"
      "berth.services.c and berth.services.d both use port 10000; give each service its own port"
    ];
  }
  {
    name = "disabled services and services without a port take no port";
    actual = lib.portConflicts {
      a = svc "a" {port = 3000;};
      b = lib.serviceDefaults "b" {port = 3000;};
      c = svc "c" {};
      d = svc "d" {};
      e = svc "e" {port = 443;};
    } [22];
    expected = [];
  }
  {
    name = "two services on one user are named, with the option to change";
    actual = lib.conflicts {
      notes = svc "notes" {};
      wiki = svc "wiki" {user = "notes";};
      api = svc "api" {};
    } [];
    expected = ["berth.services.notes and berth.services.wiki both run as user notes: each service's user owns its directory and may control its unit only; give each its own berth.services.<name>.user"];
  }
  {
    name = "a disabled service takes no user";
    actual = lib.conflicts {
      notes = svc "notes" {};
      old = lib.serviceDefaults "old" {user = "notes";};
    } [];
    expected = [];
  }
  {
    name = "two services on one domain, and a domain another lists as an alias, in name order";
    actual = lib.conflicts {
      a = svc "a" {
        port = 3000;
        domain = "x.example.com";
      };
      b = svc "b" {
        port = 3001;
        domain = "x.example.com";
      };
      c = svc "c" {
        port = 3002;
        domain = "c.example.com";
        serverAliases = ["www.example.com" "c.example.com"];
      };
      d = svc "d" {
        port = 3003;
        domain = "www.example.com";
      };
    } [];
    expected = [
      "berth.services.c and berth.services.d both serve www.example.com: Caddy serves a name from one virtual host only; give each service its own domain and serverAliases"
      "berth.services.a and berth.services.b both serve x.example.com: Caddy serves a name from one virtual host only; give each service its own domain and serverAliases"
    ];
  }
  {
    name = "only names Caddy serves count: caddy.enable off, no port, disabled";
    actual = lib.conflicts {
      a = svc "a" {
        port = 3000;
        domain = "x.example.com";
      };
      b = svc "b" {
        port = 3001;
        domain = "x.example.com";
        caddy.enable = false;
      };
      c = svc "c" {domain = "x.example.com";};
      d = lib.serviceDefaults "d" {
        port = 3003;
        domain = "x.example.com";
      };
    } [];
    expected = [];
  }
  {
    name = "every kind at once: ports, reserved ports, users, then names";
    actual = lib.conflicts {
      a = svc "a" {
        port = 3000;
        domain = "x.example.com";
      };
      b = svc "b" {
        port = 3000;
        user = "a";
        domain = "x.example.com";
      };
      c = svc "c" {port = 22;};
    } [22];
    expected = [
      "berth.services.a and berth.services.b both use port 3000; give each service its own port"
      "berth.services.c uses port 22, which berth.ports.reserved lists; choose another port"
      "berth.services.a and berth.services.b both run as user a: each service's user owns its directory and may control its unit only; give each its own berth.services.<name>.user"
      "berth.services.a and berth.services.b both serve x.example.com: Caddy serves a name from one virtual host only; give each service its own domain and serverAliases"
    ];
  }
  {
    name = "the default reserved ports";
    actual = (lib.evalOptions "berth.ports" lib.options.ports {}).reserved;
    expected = [22 80 443];
  }
]
