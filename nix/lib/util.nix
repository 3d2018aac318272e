# Small helpers the other files share. Builtins only.
let
  inherit (builtins) attrNames concatStringsSep elemAt genList isAttrs isBool isFloat isFunction isInt isList isPath isString length replaceStrings stringLength substring toJSON;

  # "a", "a and b", "a, b and c"
  joinAnd = items: let
    n = length items;
  in
    if n == 0
    then ""
    else if n == 1
    then elemAt items 0
    else concatStringsSep ", " (genList (elemAt items) (n - 1)) + " and " + elemAt items (n - 1);

  hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;

  # Elements of a list without repeats, in first-seen order.
  unique = builtins.foldl' (acc: x:
    if builtins.elem x acc
    then acc
    else acc ++ [x]) [];

  # A value as Nix source, for the docs: deterministic, attribute names
  # sorted, strings escaped so the text parses back to the same value.
  toNix = value:
    if value == null
    then "null"
    else if isBool value
    then
      (
        if value
        then "true"
        else "false"
      )
    else if isInt value || isFloat value
    then toString value
    else if isString value
    then "\"" + replaceStrings ["\\" "\"" "\n" "\r" "\t" "\${"] ["\\\\" "\\\"" "\\n" "\\r" "\\t" "\\\${"] value + "\""
    else if isPath value
    then toString value
    else if isList value
    then
      (
        if value == []
        then "[ ]"
        else "[ " + concatStringsSep " " (map toNix value) + " ]"
      )
    else if isFunction value
    then "<function>"
    else if isAttrs value
    then
      (
        if value == {}
        then "{ }"
        else "{ " + concatStringsSep " " (map (name: "${attrName name} = ${toNix value.${name}};") (attrNames value)) + " }"
      )
    else throw "toNix: cannot render this value";

  attrName = name:
    if builtins.match "[A-Za-z_][A-Za-z0-9_'-]*" name != null
    then name
    else toJSON name;

  # One argument of a systemd command line (ExecStart=), double-quoted:
  # systemd un-escapes \\ \" \n inside quotes, expands $VAR and %-specifiers
  # unless doubled. The result reaches the program as `s`, unchanged.
  systemdQuote = s: "\"" + replaceStrings ["\\" "\"" "\n" "$" "%"] ["\\\\" "\\\"" "\\n" "$$" "%%"] s + "\"";
in {
  inherit joinAnd hasPrefix unique toNix systemdQuote;
}
