lib: let
  # caddyfile is test support, exported from caddy.nix only.
  inherit (import ../caddy.nix) caddyfile;
  notes = lib.serviceDefaults "notes" {
    enable = true;
    port = 3000;
    domain = "notes.example.com";
  };
  shop = lib.serviceDefaults "shop" {
    enable = true;
    port = 3001;
    domain = "shop.example.com";
    serverAliases = ["www.shop.example.com"];
    caddy = {
      hsts = false;
      extraConfig = "encode zstd gzip";
      rateLimit = {
        enable = true;
        events = 100;
        window = "10s";
        trustedProxies = ["173.245.48.0/20" "private_ranges"];
      };
      tls = {
        dnsProvider = "cloudflare";
        dnsTokenFile = "/run/agenix/cloudflare-token";
      };
    };
  };
  wiki = lib.serviceDefaults "wiki" {
    enable = true;
    port = 3002;
    domain = "wiki.example.com";
    caddy = {
      rateLimit = {
        enable = true;
        trustedProxies = ["private_ranges" "10.1.0.0/16"];
      };
      tls.dnsProvider = "route53";
    };
  };
  worker = lib.serviceDefaults "worker" {
    enable = true;
    runtime = "python";
    start = "python -m worker";
  };
in [
  {
    name = "a default virtual host: HSTS and a proxy that holds requests during a restart";
    actual = lib.caddyVirtualHost "notes" notes;
    expected = {
      hostName = "notes.example.com";
      serverAliases = [];
      extraConfig = ''
        header Strict-Transport-Security "max-age=31536000; includeSubDomains"
        route {
        	reverse_proxy 127.0.0.1:3000 {
        		lb_try_duration 30s
        		lb_try_interval 250ms
        	}
        }
      '';
    };
  }
  {
    name = "DNS challenge with a token file, rate limit by client IP, extra config, no HSTS";
    actual = lib.caddyVirtualHost "shop" shop;
    expected = {
      hostName = "shop.example.com";
      serverAliases = ["www.shop.example.com"];
      extraConfig = ''
        tls {
        	dns cloudflare {file./run/credentials/caddy.service/berth-shop-dns-token}
        }
        encode zstd gzip
        route {
        	rate_limit {
        		zone berth_shop {
        			key {client_ip}
        			events 100
        			window 10s
        		}
        	}
        	reverse_proxy 127.0.0.1:3001 {
        		lb_try_duration 30s
        		lb_try_interval 250ms
        	}
        }
      '';
    };
  }
  {
    name = "a DNS provider without a token file reads its own settings";
    actual = builtins.head (builtins.split "\n}" (lib.caddyVirtualHost "wiki" wiki).extraConfig);
    expected = "tls {\n\tdns route53";
  }
  {
    name = "no virtual host without a domain, with caddy.enable off, or disabled";
    actual = [
      (lib.caddyVirtualHost "worker" worker)
      (lib.caddyVirtualHost "notes" (notes // {caddy = notes.caddy // {enable = false;};}))
      (lib.caddyVirtualHost "notes" (notes // {enable = false;}))
    ];
    expected = [null null null];
  }
  {
    name = "trusted proxies of all served services, once each, server-wide";
    actual = lib.caddyGlobalConfig {inherit notes shop wiki worker;};
    expected = ''
      servers {
      	trusted_proxies static 173.245.48.0/20 private_ranges 10.1.0.0/16
      }
    '';
  }
  {
    name = "no global config when no service needs one";
    actual = lib.caddyGlobalConfig {inherit notes worker;};
    expected = "";
  }
  {
    name = "Caddy's unit loads the DNS token files as credentials";
    actual = lib.caddyCredentials {inherit notes shop wiki worker;};
    expected = ["berth-shop-dns-token:/run/agenix/cloudflare-token"];
  }
  {
    name = "the Caddyfile nixpkgs' module assembles: its global options, berth's, the user's; the hosts by name, each with its access log";
    actual = caddyfile {
      services = {
        inherit worker;
        zeta = lib.serviceDefaults "zeta" {
          enable = true;
          port = 3003;
          domain = "zeta.example.com";
          serverAliases = ["www.zeta.example.com"];
          caddy = {
            hsts = false;
            rateLimit.trustedProxies = ["private_ranges"];
          };
        };
        alpha = lib.serviceDefaults "alpha" {
          enable = true;
          port = 3004;
          domain = "alpha.example.com";
        };
      };
      extraGlobalConfig = "local_certs";
      logDir = "/tmp/logs";
    };
    expected = builtins.concatStringsSep "\n" [
      "{"
      "  "
      ""
      ""
      ""
      "log {"
      "  level ERROR"
      ""
      "}"
      ""
      "servers {"
      "\ttrusted_proxies static private_ranges"
      "}"
      ""
      "local_certs"
      "}"
      ""
      "alpha.example.com  {"
      "  "
      "  "
      "  log {"
      "  output file /tmp/logs/access-alpha.example.com.log"
      ""
      "}"
      ""
      ""
      "  header Strict-Transport-Security \"max-age=31536000; includeSubDomains\""
      "route {"
      "\treverse_proxy 127.0.0.1:3004 {"
      "\t\tlb_try_duration 30s"
      "\t\tlb_try_interval 250ms"
      "\t}"
      "}"
      ""
      "}"
      ""
      "zeta.example.com www.zeta.example.com {"
      "  "
      "  "
      "  log {"
      "  output file /tmp/logs/access-zeta.example.com.log"
      ""
      "}"
      ""
      ""
      "  route {"
      "\treverse_proxy 127.0.0.1:3003 {"
      "\t\tlb_try_duration 30s"
      "\t\tlb_try_interval 250ms"
      "\t}"
      "}"
      ""
      "}"
      ""
      ""
    ];
  }
  {
    name = "a Caddyfile without berth's global options or the user's, and with no host";
    actual = caddyfile {services = {inherit worker;};};
    expected = "{\n  \n\n\n\nlog {\n  level ERROR\n\n}\n\n}\n\n\n";
  }
  {
    name = "the plugins Caddy must be built with";
    actual = [
      (lib.caddyPlugins {inherit notes shop wiki worker;})
      (lib.caddyPlugins {inherit notes worker;})
    ];
    expected = [
      ["github.com/caddy-dns/cloudflare" "github.com/caddy-dns/route53" "github.com/mholt/caddy-ratelimit"]
      []
    ];
  }
]
