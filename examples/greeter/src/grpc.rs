//! The greeter's gRPC layer: decode, call the domain, encode, and the one mapping from
//! [`GreeterError`] to `Status`. Authorization is the platform's access policy (every
//! method needs a valid token).

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use trellis_platform::status::{internal, invalid_argument};
use trellis_proto::greeter_v1 as pb;

use crate::domain::{GreeterError, Greeting, GreetingRepository, Greetings};

/// Greetings read per query while streaming.
const STREAM_BATCH: u64 = 100;

/// Handlers of `trellis.greeter.v1.GreeterService`.
#[derive(Debug)]
pub struct Handlers<R> {
    greetings: Arc<Greetings<R>>,
}

impl<R> Clone for Handlers<R> {
    fn clone(&self) -> Self {
        Self {
            greetings: Arc::clone(&self.greetings),
        }
    }
}

impl<R: GreetingRepository> Handlers<R> {
    /// Handlers over the domain.
    pub fn new(greetings: Greetings<R>) -> Self {
        Self {
            greetings: Arc::new(greetings),
        }
    }
}

type GreetingStream =
    Pin<Box<dyn Stream<Item = Result<pb::StreamGreetingsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<R: GreetingRepository> pb::greeter_service_server::GreeterService for Handlers<R> {
    async fn say_hello(
        &self,
        request: Request<pb::SayHelloRequest>,
    ) -> Result<Response<pb::SayHelloResponse>, Status> {
        let greeting = self.greetings.say_hello(&request.get_ref().name).await?;
        Ok(Response::new(pb::SayHelloResponse {
            greeting: Some(to_proto(&greeting)),
        }))
    }

    type StreamGreetingsStream = GreetingStream;

    async fn stream_greetings(
        &self,
        request: Request<pb::StreamGreetingsRequest>,
    ) -> Result<Response<Self::StreamGreetingsStream>, Status> {
        let name = request.into_inner().name;
        // The first batch is read before answering, so a bad filter is the call's status.
        let first = self
            .greetings
            .batch_after(&name, None, STREAM_BATCH)
            .await?;
        let greetings = Arc::clone(&self.greetings);
        let stream = stream_from(greetings, name, first);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Every greeting from `first` on, in batches, as stream items.
fn stream_from<R: GreetingRepository>(
    greetings: Arc<Greetings<R>>,
    name: String,
    first: Vec<Greeting>,
) -> impl Stream<Item = Result<pb::StreamGreetingsResponse, Status>> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut batch = first;
        loop {
            let full = batch.len() as u64 == STREAM_BATCH;
            let last = batch.last().map(|g| g.id);
            for greeting in &batch {
                let item = pb::StreamGreetingsResponse {
                    greeting: Some(to_proto(greeting)),
                };
                if tx.send(Ok(item)).await.is_err() {
                    return; // The client went away.
                }
            }
            if !full {
                return;
            }
            batch = match greetings.batch_after(&name, last, STREAM_BATCH).await {
                Ok(batch) => batch,
                Err(err) => {
                    drop(tx.send(Err(Status::from(err))).await);
                    return;
                }
            };
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

impl From<GreeterError> for Status {
    fn from(err: GreeterError) -> Self {
        match err {
            GreeterError::Invalid(violations) => invalid_argument(&violations),
            GreeterError::Storage(err) => internal(err.as_ref()),
        }
    }
}

/// The wire form of a greeting.
pub fn to_proto(greeting: &Greeting) -> pb::Greeting {
    pb::Greeting {
        id: greeting.id.to_string(),
        name: greeting.name.clone(),
        message: greeting.message.clone(),
        create_time: Some(SystemTime::from(greeting.create_time).into()),
    }
}
