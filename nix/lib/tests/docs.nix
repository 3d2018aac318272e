lib: let
  md = lib.optionsMarkdown;
  leaves = import ./helpers/leaves.nix "berth" lib.options;
  escape = builtins.replaceStrings ["\\" "." "*" "+" "?" "(" ")" "[" "]" "{" "}" "^" "$" "|"] ["\\\\" "\\." "\\*" "\\+" "\\?" "\\(" "\\)" "\\[" "\\]" "\\{" "\\}" "\\^" "\\$" "\\|"];
  count = pattern: builtins.length (builtins.filter builtins.isList (builtins.split pattern md));
  documented = path: count (escape "\n### `${path}`\n") == 1;
in [
  {
    name = "every option has a section with its type, default and example";
    actual = {
      sections = count "\n### `berth\\.";
      types = count "\n- Type: ";
      defaults = count "\n- Default: ";
      examples = count "\n- Example: ";
    };
    expected = let
      n = builtins.length leaves;
    in {
      sections = n;
      types = n;
      defaults = n;
      examples = n;
    };
  }
  {
    name = "every option is documented once, by its full path";
    actual = builtins.filter (path: !documented path) (map (leaf: leaf.path) leaves);
    expected = [];
  }
  {
    name = "options of submodules are listed under <name> and *";
    actual = map documented [
      "berth.services.<name>.port"
      "berth.services.<name>.caddy.rateLimit.trustedProxies"
      "berth.services.<name>.backup.restic.passwordFile"
      "berth.deployment.healthChecks.http.*.expectStatus"
      "berth.ports.reserved"
      "berth.machine.type"
    ];
    expected = [true true true true true true];
  }
  {
    name = "a section shows the type, default and example";
    actual = builtins.length (builtins.split (escape ''
        ### `berth.services.<name>.port`

        The loopback port the app listens on, passed to it as `PORT` (with
        `instances`, the first instance's port). Caddy proxies to it and the
        deploy's health check asks it. `null` for a service that serves no
        HTTP (then set `health.url`, or deploy with `--health-url`).

        - Type: null or 16 bit unsigned integer; between 0 and 65535 (both inclusive)
        - Default: `null`
        - Example: `3000`
      '')
      md);
    expected = 3;
  }
]
