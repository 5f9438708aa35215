//! ListTopics: topics in name order after `after` that the actor may see, from this broker's
//! applied state. A page may hold fewer than `limit` when some are not shown, so a client pages
//! on until a page is empty.

use chorus_machine::{Actor, query};
use chorus_protocol::pb;

use super::{Route, Serve, Served, page_size};
use crate::server::access;
use crate::server::respond::{describe, unreadable};
use crate::server::state::Server;

impl Serve for pb::ListTopics {
    const ROUTE: Route = Route::Here;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::TopicList> {
        let store = server.broker.read()?;
        let permissions = access::permissions(&store, actor)?;
        let topics = query::topics(&store, &self.after, page_size(self.limit)).map_err(unreadable)?;
        let topics = topics
            .iter()
            .filter(|topic| access::lists_topic(permissions.as_deref(), &topic.name))
            .map(|topic| describe(&store, topic))
            .collect::<Result<_, _>>()?;
        Ok(pb::TopicList { topics })
    }
}
