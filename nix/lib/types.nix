# The option types of nix/lib/options.nix, as data: `name` selects the
# nixpkgs type (see `mkOptions` in eval.nix), `description` is what the docs
# print (nixpkgs' wording), the other fields are the type's arguments.
let
  inherit (builtins) concatStringsSep toJSON;
  simple = name: description: {inherit name description;};
  # nixpkgs puts a submodule in parentheses inside another type.
  inner = elem:
    if elem.name == "submodule"
    then "(${elem.description})"
    else elem.description;
in {
  str = simple "str" "string";
  lines = simple "lines" "strings concatenated with \"\\n\"";
  bool = simple "bool" "boolean";
  unsigned = simple "unsigned" "unsigned integer, meaning >=0";
  port = simple "port" "16 bit unsigned integer; between 0 and 65535 (both inclusive)";
  # A string, so a secret given as `./file` cannot be copied into the store.
  absolutePath = simple "absolutePath" "absolute path, as a string (never copied into the Nix store)";
  anything = simple "anything" "anything";
  package = simple "package" "package";

  between = lo: hi: {
    name = "between";
    inherit lo hi;
    description = "integer between ${toString lo} and ${toString hi} (both inclusive)";
  };
  enum = values: {
    name = "enum";
    inherit values;
    description = "one of ${concatStringsSep ", " (map toJSON values)}";
  };
  nullOr = elem: {
    name = "nullOr";
    inherit elem;
    description = "null or ${inner elem}";
  };
  listOf = elem: {
    name = "listOf";
    inherit elem;
    description = "list of ${inner elem}";
  };
  attrsOf = elem: {
    name = "attrsOf";
    inherit elem;
    description = "attribute set of ${inner elem}";
  };
  # `options` is a tree like the schema's. In a named submodule (the values
  # of an `attrsOf`), a default may be a function of the attribute's name.
  submodule = options: {
    name = "submodule";
    inherit options;
    description = "submodule";
  };
}
