//! Ack, Nack and Extend: settle leases by their fencing tokens through the log. They share one
//! answer, a result per token in order, so a stale token fails alone and the rest still settle.

use chorus_machine::{Actor, Command, MachineError};
use chorus_protocol::pb;

use super::{Route, Serve, Served, write};
use crate::server::respond::{internal, refused};
use crate::server::state::Server;

impl Serve for pb::AckRequest {
    const ROUTE: Route = Route::Leader;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::SettleOk> {
        let tokens = self.tokens.clone();
        release(server, actor, tokens, Command::Ack { topic: self.topic, group: self.group, tokens: self.tokens }).await
    }
}

impl Serve for pb::NackRequest {
    const ROUTE: Route = Route::Leader;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::SettleOk> {
        let tokens = self.tokens.clone();
        let command =
            Command::Nack { topic: self.topic, group: self.group, tokens: self.tokens, delay_ms: self.delay_ms };
        release(server, actor, tokens, command).await
    }
}

impl Serve for pb::ExtendRequest {
    const ROUTE: Route = Route::Leader;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::SettleOk> {
        let tokens = self.tokens.clone();
        let command =
            Command::Extend { topic: self.topic, group: self.group, tokens: self.tokens, lease_ms: self.lease_ms };
        let results = write(server, actor, command).await?.extended().map_err(internal)?;
        Ok(settled(&tokens, results.into_iter().map(|result| result.map(Some))))
    }
}

/// Proposes an ack or a nack of `tokens` and answers a result per token.
async fn release(server: &Server, actor: &Actor, tokens: Vec<u64>, command: Command) -> Served<pb::SettleOk> {
    let results = write(server, actor, command).await?.settled().map_err(internal)?;
    Ok(settled(&tokens, results.into_iter().map(|result| result.map(|()| None))))
}

/// Pairs each token with its result: a new deadline for an extend, nothing for an ack or nack.
fn settled(tokens: &[u64], results: impl Iterator<Item = Result<Option<u64>, MachineError>>) -> pb::SettleOk {
    let results = tokens
        .iter()
        .zip(results)
        .map(|(&token, result)| match result {
            Ok(deadline_ms) => pb::SettleResult { token, error: None, deadline_ms },
            Err(refusal) => pb::SettleResult { token, error: Some(refused(&refusal)), deadline_ms: None },
        })
        .collect();
    pb::SettleOk { results }
}
