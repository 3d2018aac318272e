# docs/modules.md, generated from options.nix: every option with its type,
# default, example and description. Deterministic: groups in a fixed order,
# then `enable`, then the rest alphabetically.
let
  inherit (builtins) attrNames concatLists concatStringsSep filter hasAttr isAttrs;
  util = import ./util.nix;
  eval = import ./eval.nix;

  ordered = tree: let
    names = attrNames tree;
  in
    (filter (n: n == "enable") names) ++ (filter (n: n != "enable") names);

  # Options below `path` as a flat list of { path; option; }, submodules
  # expanded (`<name>` for attrsOf, `*` for listOf).
  collect = path: tree:
    concatLists (map (key: let
      node = tree.${key};
      at = "${path}.${key}";
    in
      if eval.isOption node
      then
        [
          {
            path = at;
            option = node;
          }
        ]
        ++ below at node.type
      else collect at node) (ordered tree));

  below = path: type:
    if type.name == "submodule"
    then collect path type.options
    else if type.name == "attrsOf"
    then below "${path}.<name>" type.elem
    else if type.name == "listOf"
    then below "${path}.*" type.elem
    else if type.name == "nullOr"
    then below path type.elem
    else [];

  code = text:
    if builtins.match ".*`.*" text == null
    then "`${text}`"
    else "`` ${text} ``";

  shown = value:
    if isAttrs value && (value._type or null) == "literalExpression"
    then code value.text
    else code (util.toNix value);

  trim = text: let
    m = builtins.match "[[:space:]]*(.*[^[:space:]])[[:space:]]*" text;
  in
    if m == null
    then ""
    else builtins.head m;

  entry = {
    path,
    option,
  }:
    concatStringsSep "\n" ([
        "### `${path}`"
        ""
        (trim option.description)
        ""
        "- Type: ${option.type.description}"
      ]
      ++ (
        if hasAttr "defaultText" option
        then ["- Default: ${option.defaultText}"]
        else if hasAttr "default" option
        then ["- Default: ${shown option.default}"]
        else ["- Default: none, must be set"]
      )
      ++ ["- Example: ${shown option.example}" ""]);

  sections = [
    {
      key = "services";
      title = "Services";
      intro = "`berth.services.<name>`: an app deployed from git by `berth app deploy`, from a few lines (modules/services.nix).";
    }
    {
      key = "ports";
      title = "Ports";
      intro = "Ports the services must leave alone.";
    }
    {
      key = "caddy";
      title = "Caddy";
      intro = "`berth.caddy`: how Caddy gets the plugins the services need (`caddy.rateLimit`, `caddy.tls.dnsProvider`), in modules/services.nix.";
    }
    {
      key = "deployment";
      title = "Deployment";
      intro = "`berth.deployment`: how `berth deploy` reaches and deploys this node; it reads them with `nix eval --json`.";
    }
    {
      key = "agent";
      title = "Agent";
      intro = "`berth.agent`: berth on the host.";
    }
    {
      key = "machine";
      title = "Machine";
      intro = "`berth.machine`: facts about the host.";
    }
  ];
in
  schema: let
    section = s: let
      node = schema.${s.key};
      entries =
        if eval.isOption node
        then
          [
            {
              path = "berth.${s.key}";
              option = node;
            }
          ]
          ++ below "berth.${s.key}" node.type
        else collect "berth.${s.key}" node;
    in
      concatStringsSep "\n" (["## ${s.title}" "" s.intro ""] ++ map entry entries);
    missing = filter (key: !builtins.any (s: s.key == key) sections) (attrNames schema);
  in
    if missing != []
    then throw "docs.nix: no section for berth.${builtins.head missing}"
    else
      concatStringsSep "\n" ([
          "# NixOS module options"
          ""
          "<!-- Generated from nix/lib/options.nix by `scripts/nix-check --write-docs`; do not edit. -->"
          ""
          "Import `berth.nixosModules.default` (or one module of `berth.nixosModules`) and set these under `berth`."
          "Types are nixpkgs' (`lib.types`); secrets and other files are given as absolute paths in strings, so they never enter the Nix store."
          ""
        ]
        ++ map section sections)
