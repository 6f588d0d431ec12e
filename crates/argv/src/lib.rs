//! Kiln's one command-line tokenizer, shared by every binary (jailer, vmm, kiln, kiln-bench).
//!
//! A binary describes its flags in a [`Table`]; [`parse`] turns the arguments into [`Args`]
//! (raw strings per flag), and the binary keeps only its typed conversion. The rules, the
//! same for every binary:
//!
//! - flags are long (`--name`); a value comes as the next argument or after `=`
//!   (`--id vm1`, `--id=vm1`);
//! - a [`Kind::Single`] flag may appear once, a [`Kind::Multi`] flag any number of times, a
//!   [`Kind::Switch`] flag takes no value and may appear once;
//! - `--` ends the flags: what follows is kept untouched ([`Args::rest`]) where the table
//!   allows it ([`Table::rest`]), else it is an error;
//! - other arguments are positionals, accepted up to [`Table::positionals`];
//! - every failure is an [`ArgvError`] naming the flag or argument.
//!
//! No dependency but `thiserror`: this runs before anything else in a root process.
//!
//! [`stderr`]: the binaries' messages on stderr, which never panic (the other half of a
//! command line's interface).

pub mod stderr;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt::Display;
use std::str::FromStr;

/// How a flag takes values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No value; at most once.
    Switch,
    /// One value; at most once.
    Single,
    /// One value each time; repeatable.
    Multi,
}

/// One flag of a table, named without its leading `--`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag {
    pub name: &'static str,
    pub kind: Kind,
}

impl Flag {
    pub const fn switch(name: &'static str) -> Flag {
        Flag {
            name,
            kind: Kind::Switch,
        }
    }

    pub const fn single(name: &'static str) -> Flag {
        Flag {
            name,
            kind: Kind::Single,
        }
    }

    pub const fn multi(name: &'static str) -> Flag {
        Flag {
            name,
            kind: Kind::Multi,
        }
    }
}

/// What a command line may contain.
#[derive(Debug, Clone, Copy)]
pub struct Table<'a> {
    pub flags: &'a [Flag],
    /// How many positional arguments are accepted (0: none).
    pub positionals: usize,
    /// Whether `--` may end the flags, the rest being passed on untouched.
    pub rest: bool,
}

impl<'a> Table<'a> {
    /// Flags only: no positional, no `--`.
    pub const fn flags(flags: &'a [Flag]) -> Table<'a> {
        Table {
            flags,
            positionals: 0,
            rest: false,
        }
    }
}

/// Why a command line was refused. Flags are named with their `--`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgvError {
    #[error("unknown flag {0:?} (see --help)")]
    UnknownFlag(String),
    #[error("unexpected argument {0:?} (see --help)")]
    Positional(String),
    #[error("flag --{0} needs a value")]
    MissingValue(&'static str),
    #[error("flag --{flag} takes no value (given {value:?})")]
    UnexpectedValue { flag: &'static str, value: String },
    #[error("flag --{flag} given twice ({first:?}, then {second:?})")]
    Repeated {
        flag: &'static str,
        first: String,
        second: String,
    },
    #[error("flag --{0} given twice")]
    RepeatedSwitch(&'static str),
    #[error("argument {0:?} is not valid UTF-8")]
    NotUtf8(String),
    #[error("missing required flag --{0}")]
    MissingFlag(&'static str),
    #[error("flag --{flag}: invalid value {value:?}: {reason}")]
    BadValue {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("--{0} and --{1} cannot be used together")]
    Conflict(&'static str, &'static str),
}

impl ArgvError {
    /// A value the binary's conversion refused.
    pub fn bad_value(flag: &'static str, value: &str, reason: impl Display) -> ArgvError {
        ArgvError::BadValue {
            flag,
            value: value.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// A tokenized command line: raw values by flag, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Args {
    values: BTreeMap<&'static str, Vec<String>>,
    switches: BTreeSet<&'static str>,
    positionals: Vec<String>,
    rest: Vec<OsString>,
}

impl Args {
    /// The value of a single-valued flag, if given.
    pub fn single(&self, flag: &str) -> Option<&str> {
        self.values
            .get(flag)
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    /// The value of a flag that must be given.
    pub fn required(&self, flag: &'static str) -> Result<&str, ArgvError> {
        self.single(flag).ok_or(ArgvError::MissingFlag(flag))
    }

    /// Every value of a repeatable flag, in order (empty if never given).
    pub fn multi(&self, flag: &str) -> &[String] {
        self.values.get(flag).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Whether a switch (or any flag) was given.
    pub fn switch(&self, flag: &str) -> bool {
        self.switches.contains(flag) || self.values.contains_key(flag)
    }

    /// The positional arguments, in order.
    pub fn positionals(&self) -> &[String] {
        &self.positionals
    }

    /// What followed `--`.
    pub fn rest(&self) -> &[OsString] {
        &self.rest
    }

    /// Takes what followed `--`.
    pub fn take_rest(&mut self) -> Vec<OsString> {
        std::mem::take(&mut self.rest)
    }

    /// A single-valued flag converted with `FromStr`; the error names the flag and value.
    pub fn parsed<T>(&self, flag: &'static str) -> Result<Option<T>, ArgvError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.single(flag)
            .map(|v| v.parse().map_err(|e| ArgvError::bad_value(flag, v, e)))
            .transpose()
    }

    /// A single-valued flag converted by `convert`; its error text becomes the reason.
    pub fn converted<T, E: Display>(
        &self,
        flag: &'static str,
        convert: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<Option<T>, ArgvError> {
        self.single(flag)
            .map(|v| convert(v).map_err(|e| ArgvError::bad_value(flag, v, e)))
            .transpose()
    }

    /// Fails when both flags were given.
    pub fn exclusive(&self, a: &'static str, b: &'static str) -> Result<(), ArgvError> {
        if self.switch(a) && self.switch(b) {
            return Err(ArgvError::Conflict(a, b));
        }
        Ok(())
    }
}

fn utf8(arg: OsString) -> Result<String, ArgvError> {
    arg.into_string()
        .map_err(|a| ArgvError::NotUtf8(a.to_string_lossy().into_owned()))
}

/// Tokenizes `args` (without the program name) against `table`.
pub fn parse(
    table: &Table<'_>,
    args: impl IntoIterator<Item = OsString>,
) -> Result<Args, ArgvError> {
    let mut out = Args::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let text = utf8(arg)?;
        if text == "--" {
            if !table.rest {
                return Err(ArgvError::Positional(text));
            }
            out.rest.extend(args);
            break;
        }
        let Some(body) = text.strip_prefix("--") else {
            if out.positionals.len() >= table.positionals {
                return Err(ArgvError::Positional(text));
            }
            out.positionals.push(text);
            continue;
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (body, None),
        };
        let Some(flag) = table.flags.iter().find(|f| f.name == name) else {
            return Err(ArgvError::UnknownFlag(match inline {
                Some(_) => format!("--{name}"),
                None => text,
            }));
        };
        let name = flag.name;
        if flag.kind == Kind::Switch {
            if let Some(value) = inline {
                return Err(ArgvError::UnexpectedValue { flag: name, value });
            }
            if !out.switches.insert(name) {
                return Err(ArgvError::RepeatedSwitch(name));
            }
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => utf8(args.next().ok_or(ArgvError::MissingValue(name))?)?,
        };
        let values = out.values.entry(name).or_default();
        if flag.kind == Kind::Single {
            if let Some(first) = values.first() {
                return Err(ArgvError::Repeated {
                    flag: name,
                    first: first.clone(),
                    second: value,
                });
            }
        }
        values.push(value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAGS: &[Flag] = &[
        Flag::single("id"),
        Flag::multi("tap"),
        Flag::switch("daemonize"),
    ];

    fn os(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn run(table: &Table<'_>, list: &[&str]) -> Result<Args, ArgvError> {
        parse(table, os(list))
    }

    #[test]
    fn values_come_next_or_after_equals() {
        let t = Table::flags(FLAGS);
        let a = run(&t, &["--id", "a", "--tap=t0", "--tap", "t1", "--daemonize"]).unwrap();
        assert_eq!(a.single("id"), Some("a"));
        assert_eq!(a.multi("tap"), ["t0", "t1"]);
        assert!(a.switch("daemonize"));
        assert!(!a.switch("nothing"));
        assert_eq!(a.multi("nothing"), [] as [String; 0]);
        let a = run(&t, &["--id=x=y"]).unwrap();
        assert_eq!(a.single("id"), Some("x=y"), "only the first = splits");
        let a = run(&t, &["--id", "--daemonize"]).unwrap();
        assert_eq!(
            a.single("id"),
            Some("--daemonize"),
            "a value may look like a flag"
        );
    }

    #[test]
    fn every_error_names_what_was_wrong() {
        let t = Table::flags(FLAGS);
        let table: &[(&[&str], ArgvError)] = &[
            (&["--nope"], ArgvError::UnknownFlag("--nope".into())),
            (&["--nope=1"], ArgvError::UnknownFlag("--nope".into())),
            (&["-i"], ArgvError::Positional("-i".into())),
            (&["stray"], ArgvError::Positional("stray".into())),
            (&["--", "x"], ArgvError::Positional("--".into())),
            (&["--id"], ArgvError::MissingValue("id")),
            (
                &["--daemonize=yes"],
                ArgvError::UnexpectedValue {
                    flag: "daemonize",
                    value: "yes".into(),
                },
            ),
            (
                &["--id", "a", "--id=b"],
                ArgvError::Repeated {
                    flag: "id",
                    first: "a".into(),
                    second: "b".into(),
                },
            ),
        ];
        for (argv, want) in table {
            assert_eq!(run(&t, argv).unwrap_err(), *want, "{argv:?}");
        }
        let twice = run(&t, &["--daemonize", "--daemonize"]).unwrap_err();
        assert_eq!(twice, ArgvError::RepeatedSwitch("daemonize"));
        assert_eq!(twice.to_string(), "flag --daemonize given twice");
    }

    #[test]
    fn non_utf8_is_refused_with_its_text() {
        use std::os::unix::ffi::OsStringExt;
        let t = Table::flags(FLAGS);
        let bad = OsString::from_vec(vec![b'-', b'-', 0xff]);
        let e = parse(&t, vec![bad]).unwrap_err();
        assert!(matches!(e, ArgvError::NotUtf8(_)), "{e:?}");
        let e = parse(
            &t,
            vec![OsString::from("--id"), OsString::from_vec(vec![0xfe])],
        );
        assert!(matches!(e, Err(ArgvError::NotUtf8(_))), "{e:?}");
    }

    #[test]
    fn rest_and_positionals_only_where_the_table_allows() {
        let t = Table {
            flags: FLAGS,
            positionals: 1,
            rest: true,
        };
        let mut a = run(&t, &["name", "--id", "a", "--", "--id", "b", "c"]).unwrap();
        assert_eq!(a.positionals(), ["name"]);
        assert_eq!(a.single("id"), Some("a"));
        assert_eq!(a.rest(), os(&["--id", "b", "c"]).as_slice());
        assert_eq!(a.take_rest().len(), 3);
        assert!(a.rest().is_empty());
        assert_eq!(
            run(&t, &["one", "two"]).unwrap_err(),
            ArgvError::Positional("two".into())
        );
    }

    #[test]
    fn typed_conversions_name_the_flag() {
        let t = Table::flags(FLAGS);
        let a = run(&t, &["--id", "12"]).unwrap();
        assert_eq!(a.parsed::<u32>("id").unwrap(), Some(12));
        assert_eq!(a.parsed::<u32>("tap").unwrap(), None);
        let a = run(&t, &["--id", "x"]).unwrap();
        let e = a.parsed::<u32>("id").unwrap_err();
        assert!(matches!(e, ArgvError::BadValue { flag: "id", .. }), "{e:?}");
        assert!(
            e.to_string().starts_with("flag --id: invalid value \"x\""),
            "{e}"
        );
        let e = a
            .converted("id", |v| if v == "y" { Ok(1) } else { Err("not y") })
            .unwrap_err();
        assert_eq!(e.to_string(), "flag --id: invalid value \"x\": not y");
        assert_eq!(
            a.required("tap").unwrap_err(),
            ArgvError::MissingFlag("tap")
        );
        let a = run(&t, &["--id", "1", "--daemonize"]).unwrap();
        assert_eq!(
            a.exclusive("id", "daemonize").unwrap_err(),
            ArgvError::Conflict("id", "daemonize")
        );
        assert!(a.exclusive("id", "tap").is_ok());
    }
}
