//! Running parsed commands on a backend: one command, a `/pipeline`, or a `/multi-exec`.
//! Every command first goes through the Upstash compatibility rules ([`compat::plan`]):
//! some are answered without Redis, and those answers are put back in their place. A request
//! holding a script goes to the backend's script path (time bound, scope's ACL user).

use redis::Value;
use redisgate_core::command::Command;
use redisgate_core::compat::{self, Plan};
use tracing::{Instrument as _, Span};

use redisgate_core::policy::Access;

use crate::backend::script::Kinds;
use crate::backend::{Backend, BackendError, packed};
use crate::ops::metrics::command_label;

/// The client span of one call to Redis: the operation is a command name from the closed set
/// of [`command_label`], `PIPELINE` or `MULTI`; never a key or a value. `operation` runs only
/// when the span is enabled.
fn redis_span(operation: impl Fn() -> &'static str, batch_size: Option<usize>) -> Span {
    tracing::debug_span!(
        "redis",
        otel.name = operation(),
        otel.kind = "client",
        db.system = "redis",
        db.system.name = "redis",
        db.operation.name = operation(),
        // As i64: the OpenTelemetry layer would turn an unsigned value into text.
        db.operation.batch.size = batch_size.and_then(|n| i64::try_from(n).ok()),
        otel.status_code = tracing::field::Empty,
    )
}

/// Marks the span failed when Redis could not be asked or answered with an error.
fn record_outcome<T>(span: &Span, result: &Result<T, BackendError>, failed: impl FnOnce(&T) -> bool) {
    if !span.is_disabled() && result.as_ref().map_or(true, failed) {
        span.record("otel.status_code", "ERROR");
    }
}

/// Runs one command.
pub async fn single(backend: &Backend, cmd: Command, access: Access) -> Result<Value, BackendError> {
    let span = redis_span(|| command_label(&cmd), None);
    // Whether the client sent a script, decided before the compatibility rules: the scripts
    // they write themselves (ZRANGE … LIMIT) are RedisGate's own and run on the shared
    // connection, whatever the key's scope, as in a batch.
    let scripts = Kinds::of([&cmd]);
    let run = async {
        match (compat::plan(cmd), scripts) {
            (Plan::Reply(v), _) => Ok(v),
            // Boxed: the script path's future (time bound, SCRIPT KILL, scope user) is several
            // KB, and inline it would be moved with every plain command's future.
            (Plan::Forward(cmd), Some(kinds)) => {
                Box::pin(backend.run_script(&packed(cmd.parts()), access, kinds)).await
            }
            (Plan::Forward(cmd), None) => backend.run_args(cmd.parts()).await,
        }
    };
    let result = run.instrument(span.clone()).await;
    record_outcome(&span, &result, |v| matches!(v, Value::ServerError(_)));
    result
}

/// Plans a batch: the commands to send, and for each position either the index of its reply
/// among those sent or a ready answer.
fn plan_batch(cmds: Vec<Command>) -> (redis::Pipeline, Vec<Result<usize, Value>>, usize) {
    let mut pipe = redis::Pipeline::with_capacity(cmds.len() + 2);
    let mut slots = Vec::with_capacity(cmds.len());
    let mut sent = 0;
    for cmd in cmds {
        match compat::plan(cmd) {
            Plan::Reply(v) => slots.push(Err(v)),
            Plan::Forward(cmd) => {
                pipe.add_command(packed(cmd.parts()));
                slots.push(Ok(sent));
                sent += 1;
            }
        }
    }
    (pipe, slots, sent)
}

fn splice(slots: Vec<Result<usize, Value>>, mut replies: Vec<Value>) -> Vec<Value> {
    // Every command went to Redis (the usual batch): the replies are in place already.
    if replies.len() == slots.len() {
        return replies;
    }
    slots
        .into_iter()
        .map(|slot| match slot {
            Ok(i) => std::mem::take(&mut replies[i]),
            Err(v) => v,
        })
        .collect()
}

/// Sends a planned batch, over the script path when it holds scripts.
async fn send_batch(
    backend: &Backend,
    pipe: &redis::Pipeline,
    count: usize,
    access: Access,
    scripts: Option<Kinds>,
) -> Result<Vec<Value>, BackendError> {
    match scripts {
        // Boxed as in `single`.
        Some(kinds) => Box::pin(backend.run_script_batch(pipe, count, access, kinds)).await,
        None => backend.run_batch(pipe, count).await,
    }
}

/// Runs a `/pipeline`: in order, not atomically; one failing command does not stop the others.
pub async fn pipeline(
    backend: &Backend,
    cmds: Vec<Command>,
    access: Access,
) -> Result<Vec<Value>, BackendError> {
    let span = redis_span(|| "PIPELINE", Some(cmds.len()));
    let run = async {
        let scripts = Kinds::of(&cmds); // the client's, as in `single`
        let (pipe, slots, sent) = plan_batch(cmds);
        let replies =
            if sent == 0 { Vec::new() } else { send_batch(backend, &pipe, sent, access, scripts).await? };
        Ok(splice(slots, replies))
    };
    let result = run.instrument(span.clone()).await;
    record_outcome(&span, &result, |_| false);
    result
}

/// The outcome of a `/multi-exec`.
pub enum TxOutcome {
    /// EXEC ran: one reply per command (run-time errors included, as in Redis).
    Committed(Vec<Value>),
    /// The whole transaction was discarded; the text says why (PROTOCOL.md §6).
    Discarded(String),
}

/// Runs a `/multi-exec` as MULTI, the commands, EXEC in one contiguous write (see
/// [`Backend::run_batch`] for why that is atomic on the shared connection).
pub async fn transaction(
    backend: &Backend,
    cmds: Vec<Command>,
    access: Access,
) -> Result<TxOutcome, BackendError> {
    let span = redis_span(|| "MULTI", Some(cmds.len()));
    let result = run_transaction(backend, cmds, access).instrument(span.clone()).await;
    record_outcome(&span, &result, |out| matches!(out, TxOutcome::Discarded(_)));
    result
}

async fn run_transaction(
    backend: &Backend,
    cmds: Vec<Command>,
    access: Access,
) -> Result<TxOutcome, BackendError> {
    let scripts = Kinds::of(&cmds);
    let (inner, slots, sent) = plan_batch(cmds);
    if sent == 0 {
        return Ok(TxOutcome::Committed(splice(slots, Vec::new())));
    }
    let mut pipe = redis::Pipeline::with_capacity(sent + 2);
    pipe.add_command(redis::cmd("MULTI"));
    for c in inner.cmd_iter() {
        pipe.add_command(c.clone());
    }
    pipe.add_command(redis::cmd("EXEC"));
    let mut replies = send_batch(backend, &pipe, sent + 2, access, scripts).await?;
    let exec = replies.pop().expect("run_batch returns exactly count replies");
    // The first error while queueing (wrong arity, unknown command …) is what the user needs
    // to see; EXEC's own EXECABORT text only says "previous errors".
    let queue_error = replies[1..].iter().enumerate().find_map(|(i, v)| match v {
        Value::ServerError(e) => Some((i, redisgate_core::codec::error_text(e))),
        _ => None,
    });
    match exec {
        Value::Array(values) if values.len() == sent => Ok(TxOutcome::Committed(splice(slots, values))),
        Value::ServerError(e) => {
            let text = redisgate_core::codec::error_text(&e);
            Ok(TxOutcome::Discarded(match queue_error {
                Some((i, cause)) => format!("{text} (command {i}: {cause})"),
                None => text,
            }))
        }
        other => Err(BackendError::Protocol(format!("EXEC answered {other:?}"))),
    }
}
