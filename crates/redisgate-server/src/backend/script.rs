//! Scripts (EVAL, EVALSHA, FCALL and their `_RO` forms) run arbitrary code inside Redis, so
//! the gateway bounds them in time and, on local instances, in rights.
//!
//! # Time
//! A script that has not answered within `backend.script_timeout` is killed with SCRIPT KILL
//! (FUNCTION KILL for functions) sent over a short-lived connection of its own: the
//! connection that carried the script is stuck behind it. Redis then answers the script with
//! its own error (`ERR … Script killed by user with SCRIPT KILL …`, a 400) and every
//! connection serves again. A script that has already written cannot be killed (UNKILLABLE:
//! killing it would leave half its writes applied); its client gets a 504 at once, and the
//! server keeps answering BUSY until the script ends. That is left as it is, for local and
//! external instances alike: SHUTDOWN NOSAVE would end it, but would also drop every write
//! since the last AOF fsync; only the instance that ran the script is affected, and Redis
//! serves each instance in its own process.
//!
//! # Rights
//! Inside a script, `redis.call` is checked by Redis' ACL against the connection's user, not
//! by the gateway. On local instances RedisGate therefore creates one ACL user per key scope
//! ([`ScopeUsers`]), allowed exactly the commands the scope may run, and sends scripts of a
//! key over a connection authenticated as its scope's user. The users are (re)written with
//! ACL SETUSER through the default user each time such a connection opens, from the server's
//! own `COMMAND` list: a conf file could not know the commands of the server it configures,
//! and a restarted server (or RedisGate) gets them back with fresh passwords. Passwords are
//! random, live only in this process, and are never logged or shown. External instances run
//! scripts with the rights of their URL's user: the owner's own server, the owner's rules.

use redis::{Client, Value};
use redisgate_core::command::Command;
use redisgate_core::policy::{self, Access};
use redisgate_provision::local::generate_password;
use tokio::sync::{Mutex, watch};

use super::mux::Mux;

/// Which kill command ends the scripts of a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kinds {
    pub eval: bool,
    pub function: bool,
}

impl Kinds {
    /// The scripts among `cmds`; `None` when there are none.
    pub fn of<'a>(cmds: impl IntoIterator<Item = &'a Command>) -> Option<Kinds> {
        let mut k = Kinds::default();
        for c in cmds {
            match c.name() {
                "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" => k.eval = true,
                "FCALL" | "FCALL_RO" => k.function = true,
                _ => {}
            }
        }
        (k.eval || k.function).then_some(k)
    }

    /// The kill commands to try, in order: when a request holds both kinds, the one that is
    /// not running answers NOTBUSY and the other is tried.
    fn kills(self) -> impl Iterator<Item = &'static str> {
        [self.eval.then_some("SCRIPT"), self.function.then_some("FUNCTION")].into_iter().flatten()
    }
}

/// What a kill achieved.
pub enum Killed {
    /// Killed, or already over: the script's own reply is on its way.
    Done,
    /// The script has written and runs on; or the kill could not be delivered.
    No(&'static str),
}

/// Sends SCRIPT KILL / FUNCTION KILL over `conn`, a connection of its own.
pub async fn kill(conn: &Mux, kinds: Kinds) -> Killed {
    for kill in kinds.kills() {
        match conn.send(redis::cmd(kill).arg("KILL")).await {
            Ok(Value::ServerError(e)) if e.code() == "NOTBUSY" => continue,
            Ok(Value::ServerError(e)) if e.code() == "UNKILLABLE" => {
                return Killed::No("it has already written, so killing it would leave half its writes");
            }
            Ok(Value::ServerError(_)) => return Killed::No("the server refused the kill"),
            Ok(_) => return Killed::Done,
            Err(_) => return Killed::No("the kill could not be delivered"),
        }
    }
    Killed::Done
}

/// One command of the server's `COMMAND` reply: its name and its subcommands' (lower case,
/// without the `name|` prefix).
#[derive(Debug, PartialEq)]
struct ServerCommand {
    name: String,
    subs: Vec<String>,
}

/// Reads Redis 7's `COMMAND` reply: one array per command, the name first and the
/// subcommands (each described the same way, named `parent|sub`) at index 9.
fn server_commands(reply: Value) -> Option<Vec<ServerCommand>> {
    let Value::Array(entries) = reply else { return None };
    let name_of = |entry: &Value| match entry {
        Value::Array(fields) => match fields.first() {
            Some(Value::BulkString(b)) => String::from_utf8(b.clone()).ok(),
            Some(Value::SimpleString(s)) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    };
    entries
        .iter()
        .map(|entry| {
            let name = name_of(entry)?;
            let subs = match entry {
                Value::Array(fields) => match fields.get(9) {
                    Some(Value::Array(subs)) => subs
                        .iter()
                        .filter_map(|s| name_of(s)?.split_once('|').map(|(_, sub)| sub.to_owned()))
                        .collect(),
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            };
            Some(ServerCommand { name, subs })
        })
        .collect()
}

/// The `ACL SETUSER` arguments of a scope's user: every key and channel (isolation is per
/// server), no command but the allowed ones among `commands` (the server's own): `+name` when
/// the whole command is allowed, `+name|sub` for each allowed subcommand otherwise.
fn setuser_args<'a>(
    user: &'a str,
    password: &str,
    access: Access,
    commands: &'a [ServerCommand],
) -> Vec<std::borrow::Cow<'a, str>> {
    use std::borrow::Cow::{Borrowed, Owned};
    let mut args = vec![Borrowed("SETUSER"), Borrowed(user), Borrowed("reset"), Borrowed("on")];
    args.push(Owned(format!(">{password}")));
    // MULTI and EXEC frame the gateway's own /multi-exec batches (clients cannot send them,
    // and scripts cannot call them); without them a batch would run unframed, not atomically.
    args.extend(["~*", "&*", "-@all", "+multi", "+exec"].map(Borrowed));
    for c in commands {
        // The server spells names in lower case, the catalog in upper case.
        let name = c.name.to_ascii_uppercase();
        let allowed: Vec<&String> =
            c.subs.iter().filter(|sub| user_may_run(&name, Some(sub), access)).collect();
        if c.subs.is_empty() && user_may_run(&name, None, access)
            || !c.subs.is_empty() && allowed.len() == c.subs.len()
        {
            args.push(Owned(format!("+{}", c.name)));
        } else {
            args.extend(allowed.into_iter().map(|sub| Owned(format!("+{}|{sub}", c.name))));
        }
    }
    args
}

/// What a scope's user may run: what its key's scripts may call
/// ([`policy::allowed_in_script`]), and the script commands the key may send, since this
/// user's connection is the one that sends them (Redis refuses a script inside a script
/// whatever the ACL says).
fn user_may_run(name: &str, sub: Option<&str>, access: Access) -> bool {
    policy::allowed_in_script(name, sub, access)
        || access != Access::ReadOnly
            && matches!(policy::class_of(name, sub.map(str::as_bytes)), policy::Class::Script)
}

/// One scope's ACL user on a local instance, and its connection once opened.
struct ScopeUser {
    name: &'static str,
    access: Access,
    password: String,
    /// The connection, with the backend state it was opened in: when the shared connection
    /// has reconnected since, the server may have restarted (without our users) and this
    /// connection is stale.
    conn: Mutex<Option<OpenConnection>>,
}

struct OpenConnection {
    conn: Mux,
    opened_in: watch::Receiver<super::State>,
    _active: super::ActiveConnection,
}

/// The per-scope ACL users of a local instance: one for each scope that may send scripts
/// (read-only keys send none).
pub struct ScopeUsers {
    users: [ScopeUser; 2],
}

impl ScopeUsers {
    pub fn new() -> std::io::Result<ScopeUsers> {
        let user = |name, access| -> std::io::Result<ScopeUser> {
            Ok(ScopeUser { name, access, password: generate_password()?, conn: Mutex::new(None) })
        };
        Ok(ScopeUsers { users: [user("rg-admin", Access::Admin)?, user("rg-readwrite", Access::ReadWrite)?] })
    }

    fn user(&self, access: Access) -> Option<&ScopeUser> {
        self.users.iter().find(|u| u.access == access)
    }

    /// The connection of `access`'s user: the open one, or a new one after (re)writing the
    /// user through `shared` (the default user's connection). `open` connects a client.
    pub(super) async fn connection<F>(
        &self,
        access: Access,
        base: &Client,
        shared: &Mux,
        state: watch::Receiver<super::State>,
        open: impl FnOnce(Client) -> F,
    ) -> Result<Mux, ScopeError>
    where
        F: Future<Output = Result<Mux, super::BackendError>>,
    {
        // The policy refuses scripts of read-only keys before they get here.
        let user = self.user(access).ok_or(ScopeError::Setup("read-only keys run no scripts"))?;
        let mut slot = user.conn.lock().await;
        if let Some(open) = &*slot
            && !open.opened_in.has_changed().unwrap_or(true)
        {
            return Ok(open.conn.clone());
        }
        *slot = None;
        let commands = match shared.send(&redis::cmd("COMMAND")).await {
            Ok(reply) => server_commands(reply).ok_or(ScopeError::Setup("unexpected COMMAND reply"))?,
            Err(_) => return Err(ScopeError::Setup("COMMAND failed")),
        };
        let mut setuser = redis::cmd("ACL");
        for a in setuser_args(user.name, &user.password, access, &commands) {
            setuser.arg(a.as_ref());
        }
        match shared.send(&setuser).await {
            Ok(Value::Okay) => {}
            _ => return Err(ScopeError::Setup("ACL SETUSER failed")),
        }
        let info = base.get_connection_info().clone();
        let redis_settings =
            info.redis_settings().clone().set_username(user.name).set_password(&user.password);
        let client = Client::open(info.set_redis_settings(redis_settings))
            .map_err(|_| ScopeError::Setup("unusable connection info"))?;
        let conn = open(client).await.map_err(ScopeError::Backend)?;
        tracing::debug!(scope.user = user.name, "script connection opened");
        let _active = super::ActiveConnection::open();
        *slot = Some(OpenConnection { conn: conn.clone(), opened_in: state, _active });
        Ok(conn)
    }

    /// Closes every scope's connection (the shared one went idle).
    pub(super) async fn forget_all(&self) {
        for user in &self.users {
            *user.conn.lock().await = None;
        }
    }

    /// Forgets `access`'s connection after it failed: the next script opens a new one.
    pub(super) async fn forget(&self, access: Access) {
        if let Some(user) = self.user(access) {
            *user.conn.lock().await = None;
        }
    }
}

/// Why a scope's connection could not be opened.
pub(super) enum ScopeError {
    Setup(&'static str),
    Backend(super::BackendError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(parts: &[&str]) -> Command {
        Command::from_strs(parts).unwrap()
    }

    #[test]
    fn scripts_and_their_kill_commands() {
        assert_eq!(Kinds::of(&[cmd(&["GET", "k"])]), None);
        let eval = Kinds::of(&[cmd(&["get", "k"]), cmd(&["evalsha_ro", "x", "0"])]).unwrap();
        assert_eq!(eval.kills().collect::<Vec<_>>(), ["SCRIPT"]);
        let both = Kinds::of(&[cmd(&["FCALL", "f", "0"]), cmd(&["EVAL", "x", "0"])]).unwrap();
        assert_eq!(both.kills().collect::<Vec<_>>(), ["SCRIPT", "FUNCTION"]);
    }

    fn server(names: &[(&str, &[&str])]) -> Vec<ServerCommand> {
        names
            .iter()
            .map(|(n, subs)| ServerCommand {
                name: (*n).to_owned(),
                subs: subs.iter().map(|s| (*s).to_owned()).collect(),
            })
            .collect()
    }

    #[test]
    fn scope_users_get_only_what_their_scope_may_run() {
        let commands = server(&[
            ("get", &[]),
            ("set", &[]),
            ("keys", &[]),
            ("flushall", &[]),
            ("migrate", &[]),
            ("config", &["get", "set"]),
            ("debug", &[]),
            ("eval_ro", &[]),
            ("acl", &["setuser"]),
            ("object", &["encoding", "freq"]),
            ("json.get", &[]),
        ]);
        let allowed = |access| -> Vec<String> {
            setuser_args("u", "pw", access, &commands)
                .iter()
                .skip(10)
                .filter_map(|a| a.strip_prefix('+').map(str::to_owned))
                .collect()
        };
        // Read-only keys run no scripts, so their user may run nothing.
        assert!(allowed(Access::ReadOnly).is_empty());
        assert_eq!(allowed(Access::ReadWrite), ["get", "set", "keys", "eval_ro", "object", "json.get"]);
        assert_eq!(
            allowed(Access::Admin),
            ["get", "set", "keys", "flushall", "eval_ro", "object", "json.get"]
        );
        let args = setuser_args("u", "pw", Access::Admin, &commands);
        assert_eq!(
            &args[..10],
            ["SETUSER", "u", "reset", "on", ">pw", "~*", "&*", "-@all", "+multi", "+exec"]
        );
    }

    #[test]
    fn the_command_reply_is_read_with_its_subcommands() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let entry = |name: &str, subs: Vec<Value>| {
            let mut fields = vec![bulk(name), Value::Int(-1), Value::Array(vec![])];
            fields.extend(std::iter::repeat_n(Value::Int(0), 6));
            fields.push(Value::Array(subs));
            Value::Array(fields)
        };
        let reply = Value::Array(vec![
            entry("get", vec![]),
            entry("config", vec![entry("config|get", vec![]), entry("config|set", vec![])]),
            // Redis 6 has no subcommand field.
            Value::Array(vec![bulk("ping"), Value::Int(-1)]),
        ]);
        assert_eq!(
            server_commands(reply).unwrap(),
            server(&[("get", &[]), ("config", &["get", "set"]), ("ping", &[])])
        );
        assert_eq!(server_commands(Value::Array(vec![Value::Int(1)])), None);
    }
}
