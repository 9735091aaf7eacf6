//! A daemon's settings from three places, with one precedence rule for every setting of every
//! daemon: **a flag beats its environment variable, which beats the settings file
//! (`--config FILE`, TOML), which beats the built-in default.** Each resolved value remembers
//! where it came from ([`Source`]); the daemon prints every setting with its source at start,
//! so what a running daemon uses is never a guess.
//!
//! The flags and their variables are the daemon's clap definition; the file's keys are the
//! flags' names with `_` for `-` (`--heartbeat-timeout-ms` is `heartbeat_timeout_ms`). A key
//! the daemon does not know is an error, as in a job spec: a typo is not silently ignored.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};
use serde::de::DeserializeOwned;

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `--name value` on the command line.
    Flag(String),
    /// The setting's environment variable.
    Env(String),
    /// The settings file.
    File(PathBuf),
    /// Nothing was given: the daemon's default.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "flag --{flag}"),
            Source::Env(var) => write!(f, "environment {var}"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Default => f.write_str("default"),
        }
    }
}

/// A resolved setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    pub source: Source,
}

/// A value a setting can hold: read from a flag (clap parses it), from the file (serde), and
/// shown in the start-up report.
pub trait Value: Clone + Send + Sync + DeserializeOwned + 'static {
    fn show(&self) -> String;
}

macro_rules! plain_values {
    ($($t:ty),*) => {$(
        impl Value for $t {
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
plain_values!(u16, u32, u64, usize, bool, String);

impl Value for PathBuf {
    fn show(&self) -> String {
        self.display().to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("settings file {}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    #[error("settings file {}: unknown setting {key:?} (known: {known})", path.display())]
    UnknownKey {
        path: PathBuf,
        key: String,
        known: String,
    },
    #[error("the daemon asked for a setting {0:?} that has no flag (a bug in the daemon)")]
    NoSuchFlag(String),
    #[error("the daemon never read its setting {0:?} (a bug in the daemon)")]
    Unread(String),
    #[error("{key} from {origin}: {msg}")]
    Value {
        key: String,
        origin: Source,
        msg: String,
    },
}

/// The three layers of one daemon's settings; [`Layers::get`] resolves one setting.
pub struct Layers {
    command: Command,
    config_id: String,
    matches: ArgMatches,
    file: Option<(PathBuf, toml::Table)>,
    asked: RefCell<BTreeSet<String>>,
    report: RefCell<Vec<String>>,
}

impl Layers {
    /// `command` is the daemon's clap definition and `matches` what was parsed with it;
    /// `config_id` names the argument that points at the settings file (if any).
    pub fn new(
        command: Command,
        matches: ArgMatches,
        config_id: &str,
    ) -> Result<Layers, SettingsError> {
        let file = match matches.get_one::<PathBuf>(config_id) {
            None => None,
            Some(path) => Some((path.clone(), read_file(path)?)),
        };
        Ok(Layers {
            command,
            config_id: config_id.to_string(),
            matches,
            file,
            asked: RefCell::default(),
            report: RefCell::default(),
        })
    }

    /// The setting with clap id `id` (also its file key), or `default` when none of the
    /// layers gives it.
    pub fn get<T: Value>(&self, id: &str, default: T) -> Result<Setting<T>, SettingsError> {
        let setting = match self.given(id)? {
            Some(s) => s,
            None => Setting {
                value: default,
                source: Source::Default,
            },
        };
        self.note(id, &setting.value.show(), &setting.source);
        Ok(setting)
    }

    /// A setting without a default: `None` when no layer gives it. `unset` says what that
    /// means in the report; `None` leaves the line to the daemon, which reports such a
    /// setting itself once it knows the value (a cluster setting stored with the state).
    pub fn optional<T: Value>(
        &self,
        id: &str,
        unset: Option<&str>,
    ) -> Result<Option<Setting<T>>, SettingsError> {
        let setting: Option<Setting<T>> = self.given(id)?;
        match (&setting, unset) {
            (Some(s), _) => self.note(id, &s.value.show(), &s.source),
            (None, Some(unset)) => self
                .report
                .borrow_mut()
                .push(format!("{id}: not given ({unset})")),
            (None, None) => {}
        }
        Ok(setting)
    }

    fn given<T: Value>(&self, id: &str) -> Result<Option<Setting<T>>, SettingsError> {
        self.asked.borrow_mut().insert(id.to_string());
        // A setting is a flag first: an id without one is a daemon's typo, which would
        // otherwise read as "not given" and accept the typo as a file key.
        let Some(arg) = self.command.get_arguments().find(|a| a.get_id() == id) else {
            return Err(SettingsError::NoSuchFlag(id.to_string()));
        };
        let arg = Some(arg);
        let cli_source = match self.matches.value_source(id) {
            Some(ValueSource::CommandLine) => Some(Source::Flag(
                arg.and_then(|a| a.get_long()).unwrap_or(id).to_string(),
            )),
            Some(ValueSource::EnvVariable) => Some(Source::Env(
                arg.and_then(|a| a.get_env())
                    .map_or(id.to_string(), |v| v.to_string_lossy().into_owned()),
            )),
            _ => None,
        };
        if let Some(source) = cli_source {
            let value = self
                .matches
                .try_get_one::<T>(id)
                .map_err(|e| SettingsError::Value {
                    key: id.to_string(),
                    origin: source.clone(),
                    msg: e.to_string(),
                })?
                .cloned();
            if let Some(value) = value {
                return Ok(Some(Setting { value, source }));
            }
        }
        let Some((path, table)) = &self.file else {
            return Ok(None);
        };
        let Some(raw) = table.get(id) else {
            return Ok(None);
        };
        let source = Source::File(path.clone());
        let value = T::deserialize(raw.clone()).map_err(|e| SettingsError::Value {
            key: id.to_string(),
            origin: source.clone(),
            msg: e.to_string().trim().to_string(),
        })?;
        Ok(Some(Setting { value, source }))
    }

    fn note(&self, id: &str, shown: &str, source: &Source) {
        self.report
            .borrow_mut()
            .push(format!("{id} = {shown} ({source})"));
    }

    /// Checks that the file held no key the daemon did not ask for, and returns one line per
    /// setting (`heartbeat_timeout_ms = 5000 (default)`) for the start-up report.
    pub fn finish(self) -> Result<Vec<String>, SettingsError> {
        let asked = self.asked.borrow();
        if let Some((path, table)) = &self.file
            && let Some(key) = table.keys().find(|k| !asked.contains(*k))
        {
            return Err(SettingsError::UnknownKey {
                path: path.clone(),
                key: key.clone(),
                known: asked.iter().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        // Every flag is a setting the daemon resolves; one it forgot would be ignored.
        let unread = self
            .command
            .get_arguments()
            .map(|a| a.get_id().as_str())
            .find(|id| {
                !["help", "version", self.config_id.as_str()].contains(id) && !asked.contains(*id)
            });
        if let Some(id) = unread {
            return Err(SettingsError::Unread(id.to_string()));
        }
        drop(asked);
        Ok(self.report.into_inner())
    }
}

fn read_file(path: &Path) -> Result<toml::Table, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|e| SettingsError::File {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    text.parse::<toml::Table>()
        .map_err(|e| SettingsError::File {
            path: path.to_path_buf(),
            msg: e.message().trim().to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn command() -> Command {
        Command::new("d")
            .arg(
                Arg::new("config")
                    .long("config")
                    .value_parser(clap::value_parser!(PathBuf)),
            )
            .arg(
                Arg::new("timeout_ms")
                    .long("timeout-ms")
                    .env("CONVOY_SETTINGS_TEST_TIMEOUT_MS")
                    .value_parser(clap::value_parser!(u64))
                    .action(ArgAction::Set),
            )
            .arg(
                Arg::new("name")
                    .long("name")
                    .value_parser(clap::value_parser!(String)),
            )
    }

    fn layers(args: &[&str]) -> Result<Layers, SettingsError> {
        let matches = command()
            .try_get_matches_from(std::iter::once("d").chain(args.iter().copied()))
            .expect("valid args");
        Layers::new(command(), matches, "config")
    }

    #[test]
    fn a_flag_beats_the_file_which_beats_the_default() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("d.toml");
        std::fs::write(&file, "timeout_ms = 700\nname = \"from-file\"\n").expect("write");
        let f = file.to_str().expect("utf-8");

        let l = layers(&["--config", f, "--timeout-ms", "9"]).expect("layers");
        let t = l.get("timeout_ms", 5u64).expect("timeout");
        assert_eq!((t.value, t.source), (9, Source::Flag("timeout-ms".into())));
        let n = l.get("name", "default".to_string()).expect("name");
        assert_eq!(
            (n.value.as_str(), n.source),
            ("from-file", Source::File(file.clone()))
        );
        let report = l.finish().expect("no unknown keys");
        assert_eq!(
            report,
            vec![
                "timeout_ms = 9 (flag --timeout-ms)".to_string(),
                format!("name = from-file (file {})", file.display()),
            ]
        );

        let l = layers(&[]).expect("layers");
        let t = l.get("timeout_ms", 5u64).expect("timeout");
        assert_eq!((t.value, t.source), (5, Source::Default));
    }

    #[test]
    fn an_unknown_key_or_a_wrong_type_in_the_file_is_one_line_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("d.toml");
        let f = file.to_str().expect("utf-8");

        std::fs::write(&file, "timout_ms = 1\n").expect("write");
        let l = layers(&["--config", f]).expect("layers");
        l.get("timeout_ms", 5u64).expect("default");
        let e = l.finish().expect_err("a typo");
        let msg = e.to_string();
        assert!(
            msg.contains("unknown setting \"timout_ms\"") && msg.contains(f),
            "{msg}"
        );
        assert_eq!(msg.lines().count(), 1);

        std::fs::write(&file, "timeout_ms = \"soon\"\n").expect("write");
        let l = layers(&["--config", f]).expect("layers");
        let msg = l.get("timeout_ms", 5u64).expect_err("a string").to_string();
        assert!(msg.starts_with("timeout_ms from file "), "{msg}");
        assert_eq!(msg.lines().count(), 1, "{msg}");

        std::fs::write(&file, "timeout_ms = [").expect("write");
        let msg = layers(&["--config", f])
            .err()
            .expect("bad TOML")
            .to_string();
        assert!(msg.starts_with(&format!("settings file {f}: ")), "{msg}");
    }
}
