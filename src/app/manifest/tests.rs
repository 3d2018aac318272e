//! The manifest's tests: loading, defaults, checks and overrides.

use super::*;

fn write(dir: &Path, service: &str, json: serde_json::Value) {
    std::fs::write(dir.join(format!("{service}.json")), json.to_string()).unwrap();
}

impl Manifest {
    /// Writes `json` as `notes`' manifest in `dir` and loads it.
    fn load_json(dir: &Path, json: serde_json::Value) -> Manifest {
        write(dir, "notes", json);
        Manifest::load(dir, "notes", &Overrides::default()).unwrap()
    }
}

fn minimal(service: &str) -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "service": service,
        "dir": format!("/var/lib/{service}"),
        "unit": service,
        "repository": "https://example.com/notes.git",
        "health": { "url": "http://127.0.0.1:3000/health" },
        "data": { "sqlite": ["data/app.db", "/var/lib/notes/data/jobs.db"] },
    })
}

#[test]
fn reads_a_manifest_with_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "notes", minimal("notes"));
    let m = Manifest::load(tmp.path(), "notes", &Overrides::default()).unwrap();
    assert_eq!(m.unit, "notes.service");
    assert_eq!(m.branch, "main");
    assert!(m.paths.is_empty());
    assert_eq!(m.quiet_paths, crate::app::changes::default_quiet());
    assert_eq!((m.health.status, m.health.timeout), (200, 60));
    assert_eq!(
        m.data.sqlite,
        [
            PathBuf::from("/var/lib/notes/data/app.db"),
            PathBuf::from("/var/lib/notes/data/jobs.db")
        ]
    );
    assert_eq!(m.keep_releases, 5);
    assert_eq!(m.layout().current(), Path::new("/var/lib/notes/current"));
    assert_eq!(m.stage, None);
    assert!(!m.allow_skip_snapshot);
}

#[test]
fn reads_the_stage_and_refuses_a_bad_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut json = minimal("notes");
    json["stage"] = "staging".into();
    write(tmp.path(), "notes", json.clone());
    let m = Manifest::load(tmp.path(), "notes", &Overrides::default()).unwrap();
    assert_eq!(m.stage, Some(Stage::new("staging").unwrap()));
    json["stage"] = "Staging".into();
    write(tmp.path(), "notes", json);
    let err = Manifest::load(tmp.path(), "notes", &Overrides::default()).unwrap_err();
    let chain = format!("{:#}", anyhow::Error::new(err));
    assert!(chain.contains("`Staging` is not a valid stage"), "{chain}");
}

#[test]
fn flags_override_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "notes", minimal("notes"));
    let o = Overrides {
        health_url: Some("http://127.0.0.1:9/ok".into()),
        dbs: vec!["data/other.db".into()],
        migrate: Some("./migrate".into()),
        ..Overrides::default()
    };
    let m = Manifest::load(tmp.path(), "notes", &o).unwrap();
    assert_eq!(m.health.url, "http://127.0.0.1:9/ok");
    assert_eq!(
        m.data.sqlite,
        [PathBuf::from("/var/lib/notes/data/other.db")]
    );
    assert_eq!(m.commands.migrate.as_deref(), Some("./migrate"));
    assert_eq!(
        o.to_args(),
        [
            "--health-url",
            "http://127.0.0.1:9/ok",
            "--migrate",
            "./migrate",
            "--db",
            "data/other.db"
        ]
    );
}

#[test]
fn an_unknown_service_says_how_to_declare_it() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Manifest::load(tmp.path(), "ghost", &Overrides::default()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("unknown service `ghost`: there is no "),
        "{err}"
    );
    assert!(err.hint().unwrap().contains("berth.services.ghost"));
    // Flags can stand in for the manifest.
    let o = Overrides {
        repo: Some("/srv/ghost.git".into()),
        health_url: Some("http://127.0.0.1:1/".into()),
        ..Overrides::default()
    };
    let m = Manifest::load(tmp.path(), "ghost", &o).unwrap();
    assert_eq!(m.dir, Path::new("/var/lib/ghost"));
}

#[test]
fn refuses_paths_outside_the_service_and_bad_names() {
    let tmp = tempfile::tempdir().unwrap();
    for (db, ok) in [
        ("data/app.db", true),
        ("../other/app.db", false),
        ("/etc/shadow", false),
        ("/var/lib/notes", false),
        ("/var/lib/notesX/app.db", false),
    ] {
        let mut json = minimal("notes");
        json["data"]["sqlite"] = serde_json::json!([db]);
        write(tmp.path(), "notes", json);
        let result = Manifest::load(tmp.path(), "notes", &Overrides::default());
        assert_eq!(result.is_ok(), ok, "{db}: {result:?}");
        if let Err(err) = result {
            assert!(
                err.to_string().contains("outside the service's directory"),
                "{err}"
            );
        }
    }
    assert!(Manifest::load(tmp.path(), "../etc", &Overrides::default()).is_err());
    let mut json = minimal("notes");
    json["unit"] = "a b".into();
    write(tmp.path(), "notes", json);
    assert!(Manifest::load(tmp.path(), "notes", &Overrides::default()).is_err());
    let mut json = minimal("notes");
    json["quietPaths"] = serde_json::json!(["docs/", "tests/[unit"]);
    write(tmp.path(), "notes", json);
    let err = Manifest::load(tmp.path(), "notes", &Overrides::default()).unwrap_err();
    assert!(err.to_string().contains("`tests/[unit`"), "{err}");
}

/// Names that try to be a shell, a path or an option: each refused,
/// naming the text (control characters escaped) and the rule.
#[test]
fn hostile_service_names_are_refused_with_the_rule() {
    let long = "a".repeat(65);
    let cases = [
        ("", "it is empty"),
        ("'", "it starts with '\\''"),
        ("a'b", "it holds '\\''"),
        ("a\"b", "it holds '\"'"),
        ("$(touch /tmp/x)", "it starts with '$'"),
        ("a$(id)", "it holds '$'"),
        ("a`id`", "it holds '`'"),
        ("a\nb", "it holds '\\n'"),
        ("..", "it starts with '.'"),
        ("a/../b", "it holds '/'"),
        ("/etc", "it starts with '/'"),
        ("-oProxyCommand=x", "it starts with '-'"),
        ("Notes", "it starts with 'N'"),
        ("nоtes", "it holds 'о' (U+043E)"), // a Cyrillic о
        (long.as_str(), "it is 65 characters long"),
    ];
    for (text, why) in cases {
        let err = ServiceName::new(text).unwrap_err();
        assert_eq!(err.why, why, "{text:?}");
        let shown = crate::error::printable(text);
        assert_eq!(
            err.to_string(),
            format!("`{shown}` is not a valid service name: {why} ({SERVICE_NAME_RULE})")
        );
        let tmp = tempfile::tempdir().unwrap();
        let err = Manifest::load(tmp.path(), text, &Overrides::default()).unwrap_err();
        assert!(matches!(err, ManifestError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains(why), "{err}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }
    for good in ["notes", "0x", "a-b_c", &"a".repeat(64)] {
        assert_eq!(ServiceName::new(good).unwrap().as_str(), good);
    }
}

#[test]
fn refuses_a_bad_branch_or_environment() {
    let tmp = tempfile::tempdir().unwrap();
    for (field, value, says) in [
        (
            "branch",
            serde_json::json!("-x"),
            "its branch: `-x` is not a branch or tag name",
        ),
        (
            "environment",
            serde_json::json!({"A=B": "c"}),
            "the variable `A=B`",
        ),
        (
            "environment",
            serde_json::json!({"": "c"}),
            "the variable ``",
        ),
        (
            "environment",
            serde_json::json!({"1X": "c"}),
            "the variable `1X`",
        ),
        (
            "repository",
            serde_json::json!("--upload-pack=touch /tmp/x"),
            "its repository `--upload-pack=touch /tmp/x` is not a URL git can fetch",
        ),
        (
            "repository",
            serde_json::json!("a\nb"),
            "`a\\nb` is not a URL",
        ),
    ] {
        let mut json = minimal("notes");
        json[field] = value;
        write(tmp.path(), "notes", json);
        let err = Manifest::load(tmp.path(), "notes", &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains(says), "{err}");
    }
    let mut json = minimal("notes");
    json["environment"] = serde_json::json!({"NODE_ENV": "production", "_X1": ""});
    write(tmp.path(), "notes", json);
    Manifest::load(tmp.path(), "notes", &Overrides::default()).unwrap();
}

/// A path as a manifest might hold it: relative or absolute, with
/// `.`, `..`, doubled and trailing slashes.
fn data_path() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let part = prop_oneof![
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just(String::new()),
        Just("notes".to_owned()),
        Just("var".to_owned()),
        Just("lib".to_owned()),
        "[a-z.]{1,4}",
    ];
    (any::<bool>(), proptest::collection::vec(part, 0..6)).prop_map(|(absolute, parts)| {
        format!("{}{}", if absolute { "/" } else { "" }, parts.join("/"))
    })
}

proptest::proptest! {
    #![proptest_config(crate::testing::prop::config(256))]

    /// An accepted service name is one plain path component, a plain
    /// shell word and an SSH user, and reads back as itself.
    #[test]
    fn prop_service_names_are_safe_everywhere_they_go(text in crate::testing::prop::text()) {
        match ServiceName::new(text.as_str()) {
            Ok(name) => {
                let mut parts = Path::new(name.as_str()).components();
                proptest::prop_assert!(matches!(parts.next(), Some(Component::Normal(_))));
                proptest::prop_assert!(parts.next().is_none());
                proptest::prop_assert!(!name.starts_with(['-', '.']));
                proptest::prop_assert_eq!(crate::process::quote(name.as_ref()), std::ffi::OsStr::new(&text));
                let destination = format!("{name}@h1");
                proptest::prop_assert!(crate::host::Destination::parse(&destination).is_ok());
                proptest::prop_assert_eq!(name.to_string().parse::<ServiceName>().unwrap(), name);
            }
            Err(e) => {
                let message = e.to_string();
                let shown = crate::error::printable(&text);
                proptest::prop_assert!(message.contains(&shown), "{}", message);
                proptest::prop_assert!(message.contains(SERVICE_NAME_RULE));
                proptest::prop_assert!(!message.contains(|c: char| c.is_control()));
            }
        }
    }

    /// Whatever a manifest's data paths say, the ones accepted are
    /// inside the service's directory, and never the directory itself.
    #[test]
    fn prop_data_paths_stay_inside_the_service(paths in proptest::collection::vec(data_path(), 1..4)) {
        let mut json = minimal("notes");
        json["data"] = serde_json::json!({ "sqlite": paths.clone(), "files": paths });
        json["quietPaths"] = serde_json::json!([]);
        let mut m: Manifest = serde_json::from_value(json).unwrap();
        if m.validate().is_ok() {
            let dir = Path::new("/var/lib/notes");
            for path in m.data.sqlite.iter().chain(&m.data.files) {
                proptest::prop_assert!(path.starts_with(dir) && path != dir, "{:?}", path);
                proptest::prop_assert!(!has_dot_dot(path), "{:?}", path);
            }
        }
    }

    /// Any bytes as a manifest file: an error or a manifest, never a
    /// panic; and whatever service, unit or directory a parsable one
    /// names, an accepted one is safe to use.
    #[test]
    fn prop_any_manifest_file_is_read_or_refused(
        bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        unit in crate::testing::prop::text(),
        dir in prop_oneof_dirs(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("notes.json"), &bytes).unwrap();
        let _ = Manifest::load(tmp.path(), "notes", &Overrides::default());
        let mut json = minimal("notes");
        json["unit"] = unit.clone().into();
        json["dir"] = dir.into();
        json["data"] = serde_json::json!({});
        // No globs to compile: they have tests of their own.
        json["quietPaths"] = serde_json::json!([]);
        write(tmp.path(), "notes", json);
        if let Ok(m) = Manifest::load(tmp.path(), "notes", &Overrides::default()) {
            proptest::prop_assert!(m.dir.is_absolute() && !has_dot_dot(&m.dir) && m.dir != Path::new("/"));
            proptest::prop_assert!(!m.unit.starts_with('-'));
            proptest::prop_assert!(!m.unit.contains(|c: char| c == '/' || c.is_whitespace() || c.is_control()));
        }
    }
}

fn prop_oneof_dirs() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![data_path(), crate::testing::prop::text()]
}

#[test]
fn instances_name_their_units_and_health_urls() {
    let tmp = tempfile::tempdir().unwrap();
    let m = Manifest::load_json(tmp.path(), minimal("notes"));
    assert_eq!((m.instances, m.max_instances()), (1, 1));
    assert!(!m.is_template());
    assert_eq!(m.instance_units(1), ["notes.service"]);
    assert_eq!(m.health_url(1), "http://127.0.0.1:3000/health");

    let mut json = minimal("notes");
    json["unit"] = "notes@".into();
    json["instances"] = 3.into();
    json["maxInstances"] = 4.into();
    json["port"] = 8090.into();
    json["health"]["url"] = "http://127.0.0.1:{port}/health?i={instance}".into();
    let m = Manifest::load_json(tmp.path(), json);
    assert_eq!(m.unit, "notes@.service");
    assert!(m.is_template());
    assert_eq!(m.max_instances(), 4);
    assert_eq!(
        m.instance_units(3),
        ["notes@1.service", "notes@2.service", "notes@3.service"]
    );
    assert_eq!(m.health_url(1), "http://127.0.0.1:8090/health?i=1");
    assert_eq!(m.health_url(3), "http://127.0.0.1:8092/health?i=3");
}

#[test]
fn refuses_instances_it_cannot_run() {
    let tmp = tempfile::tempdir().unwrap();
    let template = |changes: serde_json::Value| {
        let mut json = minimal("notes");
        json["unit"] = "notes@.service".into();
        json["instances"] = 2.into();
        json["port"] = 3000.into();
        json["health"]["url"] = "http://127.0.0.1:{port}/health".into();
        for (k, v) in changes.as_object().unwrap() {
            json[k] = v.clone();
        }
        json
    };
    for (json, says) in [
        (
            template(serde_json::json!({ "instances": 0 })),
            "its instances is 0: a service runs 1 to 32 instances",
        ),
        (
            template(serde_json::json!({ "instances": 33 })),
            "its instances is 33",
        ),
        (
            template(serde_json::json!({ "maxInstances": 1 })),
            "its maxInstances (1) is below its instances (2)",
        ),
        (
            template(serde_json::json!({ "unit": "notes.service" })),
            "its unit `notes.service` is not a template unit (`notes@.service`)",
        ),
        (
            template(serde_json::json!({ "port": null })),
            "holds {port}, but it has no port",
        ),
        (
            template(serde_json::json!({ "port": 65535 })),
            "would need ports 65535 to 65536, past 65535",
        ),
        (
            template(serde_json::json!({ "health": { "url": "http://127.0.0.1:3000/health" } })),
            "would check all its instances at one address: put {port}",
        ),
        (
            template(serde_json::json!({ "socketActivation": true })),
            "socket activation is for one plain unit (`notes.service`)",
        ),
    ] {
        write(tmp.path(), "notes", json);
        let err = Manifest::load(tmp.path(), "notes", &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains(says), "{err}");
    }
    // One instance of a template is fine (scaled up later).
    write(
        tmp.path(),
        "notes",
        template(serde_json::json!({ "instances": 1 })),
    );
    Manifest::load(tmp.path(), "notes", &Overrides::default()).unwrap();
}

#[test]
fn a_count_of_instances_is_a_whole_number_from_1_to_32() {
    assert_eq!(parse_instances("1"), Ok(1));
    assert_eq!(parse_instances("32"), Ok(32));
    for (text, says) in [
        ("0", "0 is out of range"),
        ("33", "33 is out of range"),
        ("-1", "`-1` is not a number"),
        ("three", "`three` is not a number"),
        ("", "`` is not a number"),
        ("2\n", "`2\\n` is not a number"),
    ] {
        let err = parse_instances(text).unwrap_err();
        assert!(err.starts_with(says), "{text:?}: {err}");
        assert!(err.ends_with("a count of instances is a whole number from 1 to 32"));
    }
}

#[test]
fn refuses_a_newer_manifest_and_another_services() {
    let tmp = tempfile::tempdir().unwrap();
    let mut json = minimal("notes");
    json["version"] = 2.into();
    write(tmp.path(), "notes", json);
    let err = Manifest::load(tmp.path(), "notes", &Overrides::default()).unwrap_err();
    assert!(
        matches!(err, ManifestError::Version { found: 2, .. }),
        "{err}"
    );
    write(tmp.path(), "wiki", minimal("notes"));
    assert!(Manifest::load(tmp.path(), "wiki", &Overrides::default()).is_err());
}
