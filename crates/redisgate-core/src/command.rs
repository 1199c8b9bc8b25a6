//! A Redis command as the client sent it.

use std::fmt;

/// One Redis command: its name followed by its arguments, each as raw bytes.
///
/// Invariant: there is at least one element (the name). The upper-cased name is kept
/// beside the arguments because every policy and compatibility rule looks it up.
#[derive(Clone, PartialEq, Eq)]
pub struct Command {
    name: String,
    args: Vec<Vec<u8>>,
}

impl Command {
    /// Builds a command from its parts; `None` when there is no name at all.
    pub fn new(args: Vec<Vec<u8>>) -> Option<Self> {
        let first = args.first()?;
        let name = String::from_utf8_lossy(first).to_ascii_uppercase();
        Some(Self { name, args })
    }

    /// Convenience for tests and internal rewrites.
    pub fn from_strs<S: AsRef<[u8]>>(parts: &[S]) -> Option<Self> {
        Self::new(parts.iter().map(|p| p.as_ref().to_vec()).collect())
    }

    /// The command name, upper-cased (`"SET"`), as policy tables spell it.
    pub fn name(&self) -> &str {
        &self.name
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
        write!(f, "{}(+{} args)", self.name, self.args.len() - 1)
    }
}
