//! `--config seqd.toml`: every flag has a key, spelled as the flag without its dashes
//! (`max-connections = 500`, `in-memory = true`, `etcd = ["http://h1:2379"]`). The command
//! line overrides the file, and so do the environment variables some flags read (`SEQD_PORT`,
//! ...); a key that is no flag is an error naming it.
//!
//! The file becomes flags placed before the command line's, minus those the command line or
//! the environment sets, so one parser checks both and its errors name the flag.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, bail};
use clap::{CommandFactory, FromArgMatches, parser::ValueSource};

use super::Config;

/// The flag naming the file (not a key of it).
const CONFIG_FLAG: &str = "config";

/// Parses the command line `args` (program name first), with the file `--config` names.
pub fn load(args: Vec<OsString>) -> Result<Config, clap::Error> {
    let command = Config::command();
    let matches = command.clone().try_get_matches_from(&args)?;
    let Some(path) = matches.get_one::<std::path::PathBuf>(CONFIG_FLAG) else {
        return Config::from_arg_matches(&matches);
    };
    let from_file = match file_flags(path, &command, &matches) {
        Ok(flags) => flags,
        Err(e) => {
            return Err(command
                .clone()
                .error(clap::error::ErrorKind::InvalidValue, format!("{e:#}")));
        }
    };
    let mut all = Vec::with_capacity(args.len() + from_file.len());
    let mut args = args.into_iter();
    all.extend(args.next());
    all.extend(from_file.into_iter().map(OsString::from));
    all.extend(args);
    let matches = command.try_get_matches_from(all)?;
    Config::from_arg_matches(&matches)
}

/// The file's settings as flags, leaving out those `given` (command line, environment) sets.
fn file_flags(
    path: &Path,
    command: &clap::Command,
    given: &clap::ArgMatches,
) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--config: cannot read {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("--config: {} is not valid TOML", path.display()))?;
    let unknown: Vec<&str> = table
        .keys()
        .map(String::as_str)
        .filter(|key| key_arg(command, key).is_none())
        .collect();
    if !unknown.is_empty() {
        bail!(
            "--config {}: unknown key{} {} (keys are the flags without their dashes, e.g. \
             max-connections = 500; see seqd --help)",
            path.display(),
            if unknown.len() == 1 { "" } else { "s" },
            unknown.join(", ")
        );
    }
    let mut flags = Vec::new();
    for (key, value) in &table {
        let Some(arg) = key_arg(command, key) else {
            continue;
        };
        let id = arg.get_id().as_str();
        if matches!(
            given.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let is_switch = matches!(
            arg.get_action(),
            clap::ArgAction::SetTrue | clap::ArgAction::SetFalse
        );
        let value = match value {
            toml::Value::Boolean(on) if is_switch => {
                if *on {
                    flags.push(format!("--{key}"));
                }
                continue;
            }
            // `protected-mode = false` as well as Redis's "no".
            toml::Value::Boolean(on) => if *on { "yes" } else { "no" }.to_owned(),
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Array(items) => {
                let items: Option<Vec<String>> = items
                    .iter()
                    .map(|item| match item {
                        toml::Value::String(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect();
                match items {
                    Some(items) => items.join(","),
                    None => bail!("--config: {key}: expected a list of strings"),
                }
            }
            _ => bail!("--config: {key}: expected a string, number, boolean or list"),
        };
        if is_switch {
            bail!("--config: {key} is a switch: write {key} = true or false");
        }
        flags.push(format!("--{key}={value}"));
    }
    Ok(flags)
}

/// The flag `key` names (its long name), unless it is `config` itself or help/version.
fn key_arg<'c>(command: &'c clap::Command, key: &str) -> Option<&'c clap::Arg> {
    command.get_arguments().find(|arg| {
        arg.get_long() == Some(key)
            && !matches!(arg.get_id().as_str(), CONFIG_FLAG | "help" | "version")
    })
}
