//! Renamed environment variables. Every Spoor binary spells a setting's
//! variable the same way (`SPOOR_CLICKHOUSE_DB`, never a second spelling);
//! a variable that had another name keeps working under it, with a warning
//! naming the new one:
//! - only the old name set: its value is used, and a warning says to
//!   rename it;
//! - both set: the new name wins, and a warning says the old one is
//!   ignored.
//!
//! This runs while the command line is parsed, before logging is set up,
//! so the warnings go to stderr directly. The process environment is only
//! read, never changed: the flag whose `env` is the new name is pointed at
//! the old name for this parse.

use std::ffi::{OsStr, OsString};

/// An environment variable that was renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renamed {
    pub old: &'static str,
    pub new: &'static str,
}

/// Which name a renamed variable is read under, and what to warn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub renamed: Renamed,
    /// Read the old name instead of the new one.
    pub use_old: bool,
    pub warning: String,
}

/// The choices for `renamed` given an environment (`get` looks a name
/// up); a variable whose old name is unset needs none.
pub fn choose(renamed: &[Renamed], get: impl Fn(&str) -> Option<OsString>) -> Vec<Choice> {
    renamed
        .iter()
        .filter(|r| get(r.old).is_some())
        .map(|&r| {
            let use_old = get(r.new).is_none();
            let warning = if use_old {
                format!(
                    "warning: the environment variable {} is deprecated; rename it to {}",
                    r.old, r.new
                )
            } else {
                format!(
                    "warning: both {} and {} are set; using {} ({} is its deprecated name)",
                    r.old, r.new, r.new, r.old
                )
            };
            Choice {
                renamed: r,
                use_old,
                warning,
            }
        })
        .collect()
}

/// `command` with every flag (subcommands included) whose `env` is a
/// chosen variable's new name reading its old name instead.
pub fn apply(mut command: clap::Command, choices: &[Choice]) -> clap::Command {
    for choice in choices.iter().filter(|c| c.use_old) {
        command = repoint(command, choice.renamed);
    }
    command
}

fn repoint(command: clap::Command, r: Renamed) -> clap::Command {
    let ids: Vec<clap::Id> = command
        .get_arguments()
        .filter(|a| a.get_env() == Some(OsStr::new(r.new)))
        .map(|a| a.get_id().clone())
        .collect();
    let mut command = ids
        .into_iter()
        .fold(command, |c, id| c.mut_arg(id, |a| a.env(r.old)));
    let subcommands: Vec<String> = command
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in subcommands {
        command = command.mut_subcommand(name, |s| repoint(s, r));
    }
    command
}

/// Parses the command line into `P`, reading `renamed` variables under
/// their old names where only those are set, and printing the warnings:
/// what a binary's `main` calls instead of `P::parse()`.
pub fn parse<P: clap::Parser>(renamed: &[Renamed]) -> P {
    match try_parse_from(renamed, std::env::args_os()) {
        Ok(parsed) => parsed,
        Err(e) => e.exit(),
    }
}

/// [`parse`] of `args` (the first is the binary's name), with the process
/// environment.
pub fn try_parse_from<P, I, T>(renamed: &[Renamed], args: I) -> Result<P, clap::Error>
where
    P: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let choices = choose(renamed, |name| std::env::var_os(name));
    for choice in &choices {
        eprintln!("{}", choice.warning);
    }
    let mut command = apply(P::command(), &choices);
    let matches = command.try_get_matches_from_mut(args)?;
    P::from_arg_matches(&matches).map_err(|e| e.format(&mut command))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    const DB: Renamed = Renamed {
        old: "SPOOR_TEST_OLD_DB",
        new: "SPOOR_TEST_DB",
    };

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn the_old_name_is_read_only_when_the_new_one_is_unset() {
        assert!(choose(&[DB], env(&[])).is_empty());
        assert!(choose(&[DB], env(&[("SPOOR_TEST_DB", "a")])).is_empty());
        let old = choose(&[DB], env(&[("SPOOR_TEST_OLD_DB", "b")]));
        assert_eq!(old.len(), 1);
        assert!(old[0].use_old);
        assert!(old[0].warning.contains("rename it to SPOOR_TEST_DB"));
        let both = choose(
            &[DB],
            env(&[("SPOOR_TEST_OLD_DB", "b"), ("SPOOR_TEST_DB", "a")]),
        );
        assert!(!both[0].use_old);
        assert!(both[0].warning.contains("using SPOOR_TEST_DB"));
    }

    #[derive(clap::Parser, Debug)]
    struct Flags {
        #[arg(long, env = "SPOOR_TEST_DB", default_value = "spoor")]
        db: String,
    }

    #[derive(clap::Parser, Debug)]
    enum Commands {
        Run(Flags),
    }

    #[test]
    fn a_repointed_flag_reads_the_old_name_in_subcommands_too() {
        let choices = choose(&[DB], env(&[("SPOOR_TEST_OLD_DB", "b")]));
        let command = apply(Flags::command(), &choices);
        let env_of = |c: &clap::Command| {
            c.get_arguments()
                .find(|a| a.get_id() == "db")
                .and_then(|a| a.get_env().map(OsStr::to_os_string))
        };
        assert_eq!(env_of(&command), Some("SPOOR_TEST_OLD_DB".into()));
        let nested = apply(Commands::command(), &choices);
        let run = nested.find_subcommand("run").unwrap();
        assert_eq!(env_of(run), Some("SPOOR_TEST_OLD_DB".into()));
        // Without a choice nothing changes.
        assert_eq!(
            env_of(&apply(Flags::command(), &[])),
            Some("SPOOR_TEST_DB".into())
        );
    }
}
