//! `berth keys generate --name NAME [--dir DIR]`: a key pair to sign
//! systems with (`berth deploy --sign-key`), made by Nix.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::context::Context;
use crate::error::{Exit, UsageError};
use crate::nix::keys;
use crate::process::{self, JobLog, Via};

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Make a key pair to sign systems with: NAME.secret (mode 0600) and NAME.public; prints the
    /// public key for `berth.agent.trustedPublicKeys`
    Generate(GenerateArgs),
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// The key's name, carried by every signature (e.g. `deploy-1`, `ci.example.org-1`)
    #[arg(long)]
    pub name: String,
    /// Where to write NAME.secret and NAME.public
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
}

pub async fn run(ctx: &Context, cmd: KeysCommand) -> anyhow::Result<Exit> {
    match cmd {
        KeysCommand::Generate(args) => generate(ctx, args).await,
    }
}

/// The files a key pair named `name` is written to in `dir`.
pub fn key_files(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.secret")),
        dir.join(format!("{name}.public")),
    )
}

async fn generate(ctx: &Context, args: GenerateArgs) -> anyhow::Result<Exit> {
    keys::check_name(&args.name).map_err(|err| UsageError::new(format!("--name: {err}")))?;
    if !args.dir.is_dir() {
        return Err(
            UsageError::new(format!("{} is not a directory", args.dir.display()))
                .hint("make it first, or pass another --dir")
                .into(),
        );
    }
    let (secret, public) = key_files(&args.dir, &args.name);
    for file in [&secret, &public] {
        if std::fs::symlink_metadata(file).is_ok() {
            return Err(UsageError::new(format!("{} already exists", file.display()))
                .hint("berth never overwrites a key: remove it first, or choose another --name or --dir")
                .into());
        }
    }
    // Made in a directory only we can read, so the secret key is never
    // readable by others, whatever the umask, then moved into place.
    let scratch = tempfile::Builder::new()
        .prefix(".berth-key-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("could not make a directory in {}", args.dir.display()))?;
    let (new_secret, new_public) = key_files(scratch.path(), &args.name);
    process::output(
        &crate::nix::generate_key(&args.name, &new_secret, &new_public),
        Via::Local,
        &JobLog::new(),
    )
    .await?
    .check()?;
    let set_mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("could not set the mode of {}", path.display()))
    };
    set_mode(&new_secret, 0o600)?;
    set_mode(&new_public, 0o644)?;
    let public_key = std::fs::read_to_string(&new_public)
        .with_context(|| format!("could not read {}", new_public.display()))?;
    let public_key = keys::PublicKey::parse(public_key.trim())?;
    for (from, to) in [(&new_secret, &secret), (&new_public, &public)] {
        std::fs::rename(from, to)
            .with_context(|| format!("could not move the new key to {}", to.display()))?;
    }
    let printer = ctx.printer;
    printer.line(format!(
        "wrote {} (secret, mode 0600) and {}",
        secret.display(),
        public.display()
    ));
    printer.line(format!(
        "sign with `berth deploy --sign-key {}`; hosts trust it with berth.agent.trustedPublicKeys = [ \"{public_key}\" ];",
        secret.display()
    ));
    printer.event(
        "key",
        &serde_json::json!({
            "name": args.name,
            "public_key": public_key.as_str(),
            "secret_file": secret,
            "public_file": public,
        }),
    );
    if !printer.json() {
        println!("{public_key}");
    }
    Ok(Exit::SUCCESS)
}
