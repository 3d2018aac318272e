# berth.services.<name>.instances: the template unit, its ports, the
# manifest, the sudo rule, Caddy's upstreams and the conflict checks.
lib: let
  svc = name: partial: lib.serviceDefaults name ({enable = true;} // partial);
  # As tests/common/app.rs sets up the Rust end-to-end tests' service.
  notes = svc "notes" {
    port = 8090;
    instances = 3;
    runtime = "python";
    start = "exec python3 app.py";
    hardening.enable = false;
  };
  one = svc "notes" {port = 8090;};
in [
  {
    name = "instances = 1 keeps the plain unit, its port and its health URL";
    actual = {
      inherit (lib.manifest "notes" one) unit instances maxInstances port;
      inherit (lib.manifest "notes" one) health;
      units = lib.instanceUnits "notes" one 1;
      inherit (lib.environment "notes" one) PORT;
      inherit (lib.unit "notes" one) wantedBy;
    };
    expected = {
      unit = "notes.service";
      instances = 1;
      maxInstances = 1;
      port = 8090;
      health = {
        url = "http://127.0.0.1:8090/health";
        status = 200;
        timeout = 60;
        settle = 3;
        expectRevision = false;
      };
      units = ["notes.service"];
      PORT = "8090";
      wantedBy = ["multi-user.target"];
    };
  }
  {
    name = "instances = 3: the template, the count, the base port and {port} in the health URL";
    actual = let
      m = lib.manifest "notes" notes;
    in {
      inherit (m) unit instances maxInstances port;
      inherit (m.health) url;
    };
    expected = {
      unit = "notes@.service";
      instances = 3;
      maxInstances = 3;
      port = 8090;
      url = "http://127.0.0.1:{port}/health";
    };
  }
  {
    name = "the template unit: the instance from %i, its port computed before the app starts";
    actual = lib.unitFile "notes" notes;
    expected = ''
      [Unit]
      After=network-online.target
      ConditionPathExists=/var/lib/notes/current
      Description=berth service notes
      Wants=network-online.target

      [Service]
      Environment="BERTH_INSTANCE=%i"
      ExecStart=/bin/sh -c "PORT=$$((8090 + BERTH_INSTANCE - 1)); export PORT; exec python3 app.py"
      Group=notes
      Restart=on-failure
      RestartSec=5s
      Type=exec
      User=notes
      WorkingDirectory=/var/lib/notes/current
    '';
  }
  {
    name = "the instances multi-user.target wants, and the ports";
    actual = {
      units = lib.instanceUnits "notes" notes 3;
      ports = lib.ports notes;
      scalable = lib.ports (svc "notes" {
        port = 3000;
        maxInstances = 4;
      });
      none = lib.ports (svc "w" {instances = 2;});
    };
    expected = {
      units = ["notes@1.service" "notes@2.service" "notes@3.service"];
      ports = [8090 8091 8092];
      scalable = [3000 3001 3002 3003];
      none = [];
    };
  }
  {
    name = "maxInstances above 1 makes the template even with one instance";
    actual = let
      cfg = svc "notes" {
        port = 3000;
        maxInstances = 2;
      };
    in {
      inherit (lib.manifest "notes" cfg) unit instances maxInstances;
      units = lib.instanceUnits "notes" cfg cfg.instances;
    };
    expected = {
      unit = "notes@.service";
      instances = 1;
      maxInstances = 2;
      units = ["notes@1.service"];
    };
  }
  {
    name = "the sudo rule names each instance up to maxInstances, nothing wider";
    actual =
      map (c: c.command)
      (builtins.head (lib.sudoRules "notes" (svc "notes" {
        instances = 2;
      }) "/bin/systemctl"))
      .commands;
    expected = [
      "/bin/systemctl restart notes@1.service"
      "/bin/systemctl stop notes@1.service"
      "/bin/systemctl start notes@1.service"
      "/bin/systemctl status notes@1.service"
      "/bin/systemctl restart notes@2.service"
      "/bin/systemctl stop notes@2.service"
      "/bin/systemctl start notes@2.service"
      "/bin/systemctl status notes@2.service"
    ];
  }
  {
    name = "Caddy balances over every instance's port";
    actual =
      (lib.caddyVirtualHost "notes" (svc "notes" {
        port = 3000;
        instances = 3;
        domain = "notes.example.com";
        caddy.hsts = false;
      }))
      .extraConfig;
    expected = ''
      route {
      	reverse_proxy 127.0.0.1:3000 127.0.0.1:3001 127.0.0.1:3002 {
      		lb_try_duration 30s
      		lb_try_interval 250ms
      		fail_duration 10s
      	}
      }
    '';
  }
  {
    name = "a port range that overlaps another service's port, or a reserved one, is named";
    actual = lib.portConflicts {
      workers = svc "workers" {
        port = 3000;
        instances = 3;
      };
      api = svc "api" {port = 3002;};
      web = svc "web" {port = 3003;};
      admin = svc "admin" {
        port = 7999;
        maxInstances = 3;
      };
    } [8001];
    expected = [
      "berth.services.api and berth.services.workers both use port 3002; give each service its own port"
      "berth.services.admin uses port 8001, which berth.ports.reserved lists; choose another port"
    ];
  }
  {
    name = "two ranges that overlap name every shared port";
    actual = lib.portConflicts {
      a = svc "a" {
        port = 3000;
        instances = 2;
      };
      b = svc "b" {
        port = 3001;
        instances = 2;
      };
    } [];
    expected = ["berth.services.a and berth.services.b both use port 3001; give each service its own port"];
  }
  {
    name = "problems: maxInstances below instances, ports past 65535, one health URL for all";
    actual = builtins.concatMap (cfg: lib.problems "w" cfg) [
      (svc "w" {
        port = 3000;
        instances = 3;
        maxInstances = 2;
      })
      (svc "w" {
        port = 65534;
        instances = 3;
      })
      (svc "w" {
        port = 3000;
        instances = 2;
        health.url = "http://127.0.0.1:3000/health";
      })
    ];
    expected = [
      "berth.services.w.maxInstances is 2, below instances (3); raise berth.services.w.maxInstances or lower berth.services.w.instances"
      "berth.services.w: its 3 instances would need ports 65534 to 65536, past 65535; choose a lower berth.services.w.port"
      "berth.services.w.health.url would check every instance at one address; put {port} (each instance's port) or {instance} (its number) in it"
    ];
  }
  {
    name = "a health URL with {port} or {instance} is fine";
    actual = builtins.concatMap (url:
      lib.problems "w" (svc "w" {
        port = 3000;
        instances = 2;
        health.url = url;
      })) ["http://127.0.0.1:{port}/up" "http://127.0.0.1:9000/up/{instance}"];
    expected = [];
  }
  {
    name = "instances outside 1 to 32 are refused by the option's type";
    throws = lib.manifest "w" (svc "w" {instances = 33;});
  }
  {
    name = "instances = 0 is refused too";
    throws = lib.manifest "w" (svc "w" {instances = 0;});
  }
]
