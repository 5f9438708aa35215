//! `chorus serve --config FILE`: a TOML file whose keys are `serve`'s flags without their dashes
//! (`client-addr`, or `client_addr`). A flag given on the command line overrides the file's key
//! of the same name. Values are strings, integers, booleans (`true` gives the flag, `false`
//! leaves it out) and, for the flags given several times (`member`), arrays of those. The file
//! becomes flags before clap parses anything, so a key means exactly what its flag means and is
//! checked the same way: an unknown key is an unknown flag.
//!
//! ```toml
//! id = 1
//! data-dir = "/var/lib/chorus"
//! client-addr = "10.0.0.1:7101"
//! client-bind = "0.0.0.0:7101"
//! member = ["1=10.0.0.1:9101,10.0.0.1:7101", "2=10.0.0.2:9101,10.0.0.2:7101"]
//! ```

use std::collections::BTreeSet;
use std::ffi::OsString;

use anyhow::{Context, bail};

/// `args` (the process's, program name first) with the flags of `serve --config FILE` read from
/// FILE and put before the command line's own; unchanged for any other command.
pub fn expand(args: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    if args.get(1).is_none_or(|command| command != "serve") {
        return Ok(args);
    }
    let Some(path) = config_path(&args[2..]) else { return Ok(args) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading the config file {path}"))?;
    let given: BTreeSet<String> = args[2..].iter().filter_map(flag_name).collect();
    let from_file = flags(&text, &given).with_context(|| format!("in the config file {path}"))?;
    let mut expanded = args[..2].to_vec();
    expanded.extend(from_file);
    expanded.extend(args[2..].iter().cloned());
    Ok(expanded)
}

/// The value of `--config FILE` or `--config=FILE`.
fn config_path(args: &[OsString]) -> Option<String> {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string_lossy().into_owned()).collect();
    args.iter().enumerate().find_map(|(i, arg)| match arg.strip_prefix("--config") {
        Some("") => args.get(i + 1).cloned(),
        Some(rest) => rest.strip_prefix('=').map(str::to_owned),
        None => None,
    })
}

/// The name of a long flag (`--client-addr` or `--client-addr=...` gives `client-addr`).
fn flag_name(arg: &OsString) -> Option<String> {
    let arg = arg.to_str()?.strip_prefix("--")?;
    Some(arg.split('=').next().unwrap_or(arg).to_owned())
}

/// The file's keys as flags, leaving out those in `given` and `config` itself.
fn flags(text: &str, given: &BTreeSet<String>) -> anyhow::Result<Vec<OsString>> {
    let table: toml::Table = toml::from_str(text)?;
    let mut flags = Vec::new();
    for (key, value) in table {
        let name = key.replace('_', "-");
        if name == "config" {
            bail!("`config` cannot name another file");
        }
        if given.contains(&name) {
            continue;
        }
        let values = match value {
            toml::Value::Array(values) => values,
            value => vec![value],
        };
        for value in values {
            match value {
                toml::Value::Boolean(true) => flags.push(format!("--{name}").into()),
                toml::Value::Boolean(false) => {}
                toml::Value::String(text) => flags.push(format!("--{name}={text}").into()),
                toml::Value::Integer(number) => flags.push(format!("--{name}={number}").into()),
                other => bail!(
                    "`{key}` is a {}: give a string, an integer, a boolean or an array of those",
                    other.type_str()
                ),
            }
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|arg| arg.into_string().unwrap()).collect()
    }

    #[test]
    fn keys_become_flags_and_the_command_line_wins() {
        let text = r#"
            id = 1
            data_dir = "/var/lib/chorus"
            client-addr = "10.0.0.1:7101"
            auth = true
            no-client-tls = false
            member = ["1=a:1,a:2", "2=b:1,b:2"]
        "#;
        let given: BTreeSet<String> = ["client-addr".to_owned()].into();
        let flags = strings(flags(text, &given).unwrap());
        assert_eq!(
            flags,
            ["--auth", "--data-dir=/var/lib/chorus", "--id=1", "--member=1=a:1,a:2", "--member=2=b:1,b:2"]
        );
    }

    #[test]
    fn the_readmes_config_file_is_what_serve_takes() {
        use clap::Parser;
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
        let block = readme.split_once("```toml\n").expect("a toml block").1.split_once("```").unwrap().0;
        let mut args = os(&["chorus", "serve"]);
        args.extend(flags(block, &BTreeSet::new()).unwrap());
        let parsed = crate::Cli::try_parse_from(&args);
        assert!(parsed.is_ok(), "{:?}", parsed.err().map(|e| e.to_string()));
        assert_eq!(args.iter().filter(|a| a.to_string_lossy().starts_with("--member=")).count(), 5);
    }

    #[test]
    fn what_is_no_flag_value_is_refused() {
        assert!(flags("limits = { a = 1 }", &BTreeSet::new()).is_err());
        assert!(flags("ratio = 0.5", &BTreeSet::new()).is_err());
        assert!(flags("config = \"other.toml\"", &BTreeSet::new()).is_err());
        assert!(flags("id = ", &BTreeSet::new()).is_err());
    }

    #[test]
    fn only_serve_with_a_config_is_expanded() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("chorus.toml");
        std::fs::write(&file, "id = 3\nclient-addr = \"x:1\"\n").unwrap();
        let file = file.display().to_string();
        let args = os(&["chorus", "serve", "--config", &file, "--client-addr=y:2"]);
        assert_eq!(
            strings(expand(args).unwrap()),
            ["chorus", "serve", "--id=3", "--config", file.as_str(), "--client-addr=y:2"]
        );
        let status = os(&["chorus", "status", "--config", &file]);
        assert_eq!(expand(status.clone()).unwrap(), status);
        let missing = os(&["chorus", "serve", "--config=/nonexistent/chorus.toml"]);
        assert!(expand(missing).unwrap_err().to_string().contains("/nonexistent/chorus.toml"));
    }
}
