# The tests of nix/lib: every other file here is `lib: [ case … ]`, a case
# being { name; actual; expected; } (equal as JSON values) or { name;
# throws; } (evaluating `throws` must throw). scripts/nix-check runs
#   nix-instantiate --eval --strict --json nix/lib/tests
# and fails unless `failures` is empty.
let
  inherit (builtins) attrNames concatMap deepSeq filter length match readDir tryEval;
  lib = import ../. {};

  files = filter (file: file != "default.nix" && match ".*\\.nix" file != null) (attrNames (readDir ./.));

  cases = concatMap (file:
    map (case: case // {name = "${file}: ${case.name}";}) (import (./. + "/${file}") lib))
  files;

  failed = case:
    if case ? throws
    then (tryEval (deepSeq case.throws case.throws)).success
    else case.actual != case.expected;

  report = case:
    if case ? throws
    then {
      inherit (case) name;
      actual = "no error";
      expected = "an error";
    }
    else {inherit (case) name actual expected;};
in {
  total = length cases;
  failures = map report (filter failed cases);
}
