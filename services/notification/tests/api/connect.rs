//! NotificationService.Connect: the bidirectional stream on which the client acknowledges
//! each notification; unacknowledged ones are pushed again on the next Connect.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use trellis_proto::notification_v1 as pb;

use crate::helpers::{TestApp, new_user_id, spawn_app, with_token};

/// One open Connect stream: acknowledgements go out on `acks`, notifications come in.
struct Connection {
    acks: mpsc::Sender<pb::ConnectRequest>,
    pushed: tonic::Streaming<pb::ConnectResponse>,
}

impl Connection {
    async fn open(app: &mut TestApp, user_id: &str) -> Self {
        let (acks, outgoing) = mpsc::channel(16);
        let token = app.user_token(user_id);
        let pushed = app
            .notifications
            .connect(with_token(ReceiverStream::new(outgoing), &token))
            .await
            .expect("the stream opens")
            .into_inner();
        Self { acks, pushed }
    }

    async fn next(&mut self) -> pb::Notification {
        self.pushed
            .message()
            .await
            .expect("the stream is healthy")
            .expect("the stream is still open")
            .notification
            .expect("each message carries a notification")
    }

    async fn ack(&self, id: &str) {
        self.acks
            .send(pb::ConnectRequest {
                ack_id: id.to_owned(),
            })
            .await
            .expect("the request stream is open");
    }

    /// Closes the client's side and reads the server's to its end: once it has ended,
    /// every acknowledgement sent before has been handled.
    async fn close(self) {
        let Self { acks, mut pushed } = self;
        drop(acks);
        let end = pushed.message().await.expect("the stream ends cleanly");
        assert_eq!(end, None, "nothing more is pushed after the client closes");
    }
}

#[tokio::test]
async fn connect_pushes_unacknowledged_notifications_then_new_ones() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let first = app.send(&ada, "First").await;
    let second = app.send(&ada, "Second").await;

    let mut connection = Connection::open(&mut app, &ada).await;
    assert_eq!(connection.next().await, first);
    assert_eq!(connection.next().await, second);
    let live = app.send(&ada, "Live").await;
    assert_eq!(connection.next().await, live);
    connection.close().await;
}

#[tokio::test]
async fn acknowledged_notifications_are_not_pushed_on_the_next_connect() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let n1 = app.send(&ada, "One").await;
    let n2 = app.send(&ada, "Two").await;
    let n3 = app.send(&ada, "Three").await;

    let mut connection = Connection::open(&mut app, &ada).await;
    assert_eq!(connection.next().await, n1);
    assert_eq!(connection.next().await, n2);
    assert_eq!(connection.next().await, n3);
    let n4 = app.send(&ada, "Four, live").await;
    assert_eq!(connection.next().await, n4);
    connection.ack(&n1.id).await;
    connection.ack(&n3.id).await;
    connection.close().await;

    // Only the unacknowledged ones, oldest first; then live ones again.
    let mut again = Connection::open(&mut app, &ada).await;
    assert_eq!(again.next().await, n2, "n1 was acknowledged");
    assert_eq!(again.next().await, n4, "n3 was acknowledged");
    let n5 = app.send(&ada, "Five").await;
    assert_eq!(again.next().await, n5, "nothing else was replayed");
    again.ack(&n2.id).await;
    again.ack(&n4.id).await;
    again.ack(&n5.id).await;
    again.close().await;

    // Everything acknowledged: the next Connect starts with the next new one.
    let mut third = Connection::open(&mut app, &ada).await;
    let n6 = app.send(&ada, "Six").await;
    assert_eq!(third.next().await, n6);
    third.close().await;

    // Acknowledging is not reading: all six are still unread.
    assert_eq!(app.list_all(&ada, true).await.len(), 6);
}

#[tokio::test]
async fn acks_of_malformed_or_other_users_ids_change_nothing() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let grace = new_user_id();
    let adas = app.send(&ada, "For Ada").await;
    let graces = app.send(&grace, "For Grace").await;

    let mut connection = Connection::open(&mut app, &ada).await;
    assert_eq!(connection.next().await, adas);
    connection.ack("not-a-uuid").await;
    connection.ack(&graces.id).await;
    // The stream survives a malformed ack and keeps pushing.
    let live = app.send(&ada, "Live").await;
    assert_eq!(connection.next().await, live);
    connection.close().await;

    let mut graces_connection = Connection::open(&mut app, &grace).await;
    assert_eq!(
        graces_connection.next().await,
        graces,
        "Ada cannot acknowledge Grace's notification"
    );
    graces_connection.close().await;
}
