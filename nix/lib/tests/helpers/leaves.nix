# Every option of a schema tree as { path; node; }, submodules expanded as
# docs.nix expands them (`<name>` for attrsOf, `*` for listOf): the tests'
# own walk, independent of docs.nix's.
let
  below = path: type:
    if type.name == "submodule"
    then leaves path type.options
    else if type.name == "attrsOf"
    then below "${path}.<name>" type.elem
    else if type.name == "listOf"
    then below "${path}.*" type.elem
    else if type.name == "nullOr"
    then below path type.elem
    else [];

  leaves = path: tree:
    builtins.concatMap (key: let
      node = tree.${key};
      at = "${path}.${key}";
    in
      if (node._type or null) == "option"
      then
        [
          {
            path = at;
            inherit node;
          }
        ]
        ++ below at node.type
      else leaves at node) (builtins.attrNames tree);
in
  leaves
