# Evaluating the schema of options.nix without nixpkgs: defaults filled in
# and types checked (`evalOptions`), for the tests and the hardening score;
# and turning it into `lib.mkOption`s with nixpkgs' lib (`mkOptions`), for
# modules/.
let
  inherit (builtins) attrNames elem elemAt filter genList hasAttr isAttrs isBool isFunction isInt isList isString length mapAttrs toJSON typeOf;
  util = import ./util.nix;

  isOption = v: isAttrs v && (v._type or null) == "option";

  defaultOf = name: leaf:
    if isFunction leaf.default
    then leaf.default name
    else leaf.default;

  describe = value:
    if isString value
    then "the string ${toJSON value}"
    else if isAttrs value || isList value || isFunction value
    then "a ${typeOf value}"
    else "${typeOf value} ${util.toNix value}";

  # `value` checked against `type`, with the defaults of submodules filled
  # in. `name` is the attribute name a named submodule is evaluated under.
  evalValue = path: name: type: value: let
    fail = throw "${path}: expected ${type.description}, got ${describe value}";
    ok = test:
      if test
      then value
      else fail;
    intIn = lo: hi: ok (isInt value && value >= lo && value <= hi);
    byName = {
      str = ok (isString value);
      lines = ok (isString value);
      bool = ok (isBool value);
      unsigned = ok (isInt value && value >= 0);
      port = intIn 0 65535;
      between = intIn type.lo type.hi;
      absolutePath = ok (isString value && util.hasPrefix "/" value);
      anything = value;
      package = ok (isAttrs value || isString value);
      enum = ok (elem value type.values);
      nullOr =
        if value == null
        then null
        else evalValue path name type.elem value;
      listOf =
        if isList value
        then genList (i: evalValue "${path}.${toString i}" name type.elem (elemAt value i)) (length value)
        else fail;
      attrsOf =
        if isAttrs value
        then mapAttrs (n: evalValue "${path}.${n}" n type.elem) value
        else fail;
      submodule =
        if isAttrs value
        then evalTree path name type.options value
        else fail;
    };
  in
    byName.${type.name};

  # A tree of options (a group or a submodule's options) and the value given
  # for it: every option's value, defaults included.
  evalTree = path: name: tree: value: let
    unknown = filter (key: !hasAttr key tree) (attrNames value);
    one = key: let
      node = tree.${key};
      at = "${path}.${key}";
    in
      if !isOption node
      then evalTree at name node (value.${key} or {})
      else if hasAttr key value
      then evalValue at name node.type value.${key}
      else if hasAttr "default" node
      then evalValue at name node.type (defaultOf name node)
      else throw "${at} is used but not defined";
  in
    if !isAttrs value
    then throw "${path}: expected a set of options, got ${describe value}"
    else if unknown != []
    then throw "${path}.${elemAt unknown 0}: no such option"
    else mapAttrs (key: _: one key) tree;

  # The nixpkgs type of a type of types.nix.
  toType = lib: type: let
    inherit (lib) types;
    byName = {
      inherit (types) str lines bool port anything package;
      inherit (types.ints) unsigned;
      between = types.ints.between type.lo type.hi;
      # Described as in docs/modules.md.
      absolutePath = types.strMatching "/.*" // {inherit (type) description;};
      enum = types.enum type.values;
      nullOr = types.nullOr (toType lib type.elem);
      listOf = types.listOf (toType lib type.elem);
      attrsOf = types.attrsOf (toType lib type.elem);
      submodule = types.submodule ({name, ...}: {options = mkOptionsNamed lib name type.options;});
    };
  in
    byName.${type.name};

  mkOptionNamed = lib: name: node:
    lib.mkOption ({
        type = toType lib node.type;
        inherit (node) description example;
      }
      // (
        if hasAttr "default" node
        then {default = defaultOf name node;}
        else {}
      )
      // (
        if hasAttr "defaultText" node
        then {
          defaultText = {
            _type = "literalMD";
            text = node.defaultText;
          };
        }
        else {}
      ));

  mkOptionsNamed = lib: name:
    mapAttrs (_: node:
      if isOption node
      then mkOptionNamed lib name node
      else mkOptionsNamed lib name node);
in {
  inherit isOption evalTree;

  # evalOptions path tree value: `value` (a partial set of option values)
  # checked against `tree` with every default filled in, as the module
  # system would give it. Throws, naming the option, on a wrong type, an
  # unknown option or a missing value.
  evalOptions = path: evalTree path null;

  # The values of `berth.services.<name>` given `partial`.
  service = schema: name: evalTree "berth.services.${name}" name schema.services.type.elem.options;

  # mkOptions lib tree: `lib.mkOption`s for a group of options, e.g.
  # `options.berth.deployment = mkOptions lib schema.deployment`.
  mkOptions = lib: mkOptionsNamed lib null;

  # mkOption lib leaf: the `lib.mkOption` of one option, e.g.
  # `options.berth.services = mkOption lib schema.services`.
  mkOption = lib: mkOptionNamed lib null;
}
