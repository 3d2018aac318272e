//! PostgreSQL beside the test app on its lab host (tests/postgres.rs,
//! tests/faults_postgres.rs): Debian's `postgresql` (as scripts/install-deps
//! installs it) started in the container as the real service, the role
//! `notes` owning the database `notes` as `services.postgresql` with
//! `ensureUsers`/`ensureDBOwnership` makes it, peer authentication over the
//! local socket; the app writing a row every 5 ms into it (APP_PG) and the
//! manifest declaring it (`data.postgres`).

use super::app::{manifest, World, SERVICE};

pub const PG_DB: &str = "notes";

/// Starts PostgreSQL on the lab host and declares its database as the
/// service's data.
pub async fn set_up(w: &World) {
    w.sh(&format!(
        r#"set -e
version=$(ls /etc/postgresql | sort -V | tail -n 1)
systemctl start "postgresql@$version-main.service"
until runuser -u postgres -- pg_isready -q; do sleep 0.2; done
runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 \
  -c "CREATE ROLE {SERVICE} LOGIN" -c "CREATE ROLE reporting" \
  -c "CREATE DATABASE {PG_DB} OWNER {SERVICE}"
mkdir -p /etc/systemd/system/{SERVICE}.service.d
printf '[Service]\nEnvironment=APP_PG={PG_DB}\n' > /etc/systemd/system/{SERVICE}.service.d/postgres.conf
systemctl daemon-reload
"#
    ))
    .await;
    let mut m = manifest();
    m["data"]["postgres"] = serde_json::json!([PG_DB]);
    m["environment"]["APP_PG"] = PG_DB.into();
    w.write(
        &format!("/etc/berth/services/{SERVICE}.json"),
        &serde_json::to_string_pretty(&m).unwrap(),
    )
    .await;
}

/// `sql` run as the superuser in `db`, unaligned, errors in the answer.
pub async fn psql(w: &World, db: &str, sql: &str) -> String {
    w.sh(&format!(
        "cd / && runuser -u postgres -- psql -X -A -t -d {db} -c \"{sql}\" 2>&1 || true"
    ))
    .await
    .trim()
    .to_owned()
}

/// What the test compares of database `db`: its schema as pg_dump prints
/// it (owners, grants, the extension, the view; without pg_dump's random
/// `\restrict` key), every row of `items`, the sequences' values, and the
/// rows of `pg_rows` up to id `upto` (the app keeps adding more).
pub async fn state(w: &World, db: &str, upto: u64) -> String {
    w.sh(&format!(
        r#"cd /
runuser -u postgres -- pg_dump -s {db} 2>&1 | grep -v '^\\\(un\)\?restrict'
runuser -u postgres -- psql -X -A -t -d {db} 2>&1 <<'SQL'
SELECT 'items', count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t.id), '')) FROM items t;
SELECT 'items_id_seq', last_value, is_called FROM items_id_seq;
SELECT 'pg_rows', count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t.id), ''))
  FROM pg_rows t WHERE id <= {upto};
SQL
"#
    ))
    .await
}

/// The newest id in `pg_rows` of `db`.
pub async fn max_row(w: &World, db: &str) -> u64 {
    psql(w, db, "SELECT coalesce(max(id), 0) FROM pg_rows")
        .await
        .parse()
        .unwrap_or(0)
}

/// The database a snapshot's dump holds, made again as `notes_snap` by the
/// superuser (owners and grants as dumped), for [`state`].
pub async fn load_snapshot(w: &World, dump: &str) -> &'static str {
    w.sh(&format!(
        "set -e\n\
         runuser -u postgres -- dropdb --if-exists notes_snap\n\
         runuser -u postgres -- createdb -O {SERVICE} notes_snap\n\
         pg_restore -f - {dump} | runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d notes_snap >/dev/null\n"
    ))
    .await;
    "notes_snap"
}

/// Whether the live database equals the snapshot in `dump` (see
/// [`state`]); `Err` shows the difference.
pub async fn equals_snapshot(w: &World, dump: &str) -> Result<(), String> {
    let listed = w
        .sh(&format!(
            "pg_restore -l {dump} >/dev/null 2>&1 && echo ok || true"
        ))
        .await;
    if listed.trim() != "ok" {
        return Err(format!("no whole dump at {dump}"));
    }
    let snap = load_snapshot(w, dump).await;
    let upto = max_row(w, snap).await;
    let want = state(w, snap, upto).await;
    let got = state(w, PG_DB, upto).await;
    if want == got {
        return Ok(());
    }
    let diff: Vec<String> = got
        .lines()
        .zip(want.lines())
        .filter(|(a, b)| a != b)
        .take(4)
        .map(|(a, b)| format!("live `{a}` vs snapshot `{b}`"))
        .collect();
    Err(format!(
        "the database differs from its snapshot: {}",
        diff.join("; ")
    ))
}
