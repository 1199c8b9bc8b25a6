//! A Redis command as the client sent it.

use std::fmt;

use crate::catalog;

/// One Redis command: its name followed by its arguments, each as raw bytes.
///
/// Invariant: there is at least one element (the name). The command's catalog entry is
/// looked up once, here, because every policy, compatibility and metrics rule asks for it:
/// a known command's upper-case name is the catalog's own (no allocation), only an unknown
/// one keeps an upper-cased copy.
#[derive(Clone, PartialEq, Eq)]
pub struct Command {
    name: Name,
    args: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Eq)]
enum Name {
    /// The position in [`catalog::COMMANDS`].
    Known(u16),
    Unknown(Box<str>),
}

impl Command {
    /// Builds a command from its parts; `None` when there is no name at all.
    pub fn new(args: Vec<Vec<u8>>) -> Option<Self> {
        let first = args.first()?;
        // Command names are short: upper-case them on the stack to look them up.
        let mut buf = [0u8; 32];
        let known = match buf.get_mut(..first.len()) {
            Some(upper) => {
                upper.copy_from_slice(first);
                upper.make_ascii_uppercase();
                std::str::from_utf8(upper).ok().and_then(catalog::index)
            }
            None => None,
        };
        let name = match known.and_then(|i| u16::try_from(i).ok()) {
            Some(i) => Name::Known(i),
            None => Name::Unknown(String::from_utf8_lossy(first).to_ascii_uppercase().into()),
        };
        Some(Self { name, args })
    }

    /// [`Command::new`], reusing the looked-up name of `like` when the name is the same bytes:
    /// a batch mostly repeats a command (a hundred GETs), and the lookup was most of what
    /// building one cost.
    pub fn new_like(args: Vec<Vec<u8>>, like: Option<&Command>) -> Option<Self> {
        match like {
            Some(prev) if args.first()? == &prev.args[0] => Some(Self { name: prev.name.clone(), args }),
            _ => Self::new(args),
        }
    }

    /// Convenience for tests and internal rewrites.
    pub fn from_strs<S: AsRef<[u8]>>(parts: &[S]) -> Option<Self> {
        Self::new(parts.iter().map(|p| p.as_ref().to_vec()).collect())
    }

    /// The command name, upper-cased (`"SET"`), as policy tables spell it.
    pub fn name(&self) -> &str {
        match &self.name {
            Name::Known(i) => catalog::COMMANDS[usize::from(*i)].name,
            Name::Unknown(name) => name,
        }
    }

    /// The command's entry in the catalog (not its subcommand's); `None` for a command the
    /// catalog does not know.
    pub fn spec(&self) -> Option<&'static catalog::Spec> {
        self.catalog_index().map(|i| &catalog::COMMANDS[i])
    }

    /// The position of [`Command::spec`] in [`catalog::COMMANDS`]: a dense index for
    /// per-command slots.
    pub fn catalog_index(&self) -> Option<usize> {
        match self.name {
            Name::Known(i) => Some(usize::from(i)),
            Name::Unknown(_) => None,
        }
    }

    /// All parts, the name (as sent) included.
    pub fn parts(&self) -> &[Vec<u8>] {
        &self.args
    }

    /// The arguments after the name.
    pub fn args(&self) -> &[Vec<u8>] {
        &self.args[1..]
    }

    /// True when argument `i` (after the name) equals `word`, ignoring ASCII case.
    pub fn arg_is(&self, i: usize, word: &str) -> bool {
        self.args().get(i).is_some_and(|a| a.eq_ignore_ascii_case(word.as_bytes()))
    }

    /// True when any argument equals `word`, ignoring ASCII case.
    pub fn has_flag(&self, word: &str) -> bool {
        self.args().iter().any(|a| a.eq_ignore_ascii_case(word.as_bytes()))
    }
}

/// Commands are shown by name and argument count only: values may be secrets.
impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(+{} args)", self.name(), self.args.len() - 1)
    }
}
