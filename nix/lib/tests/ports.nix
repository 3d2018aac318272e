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
    name = "the default reserved ports";
    actual = (lib.evalOptions "berth.ports" lib.options.ports {}).reserved;
    expected = [22 80 443];
  }
]
