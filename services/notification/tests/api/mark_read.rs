//! NotificationService.MarkRead.

use tonic::Code;
use trellis_proto::notification_v1 as pb;

use crate::helpers::{ids, new_user_id, spawn_app, violated_fields, with_token};

#[tokio::test]
async fn mark_read_counts_only_the_callers_unread_notifications() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let grace = new_user_id();
    let first = app.send(&ada, "First").await;
    let second = app.send(&ada, "Second").await;
    let third = app.send(&ada, "Third").await;
    let graces = app.send(&grace, "For Grace").await;
    let token = app.user_token(&ada);
    let mut mark = async |ids: Vec<String>| {
        app.notifications
            .mark_read(with_token(pb::MarkReadRequest { ids }, &token))
            .await
            .expect("MarkRead")
            .into_inner()
            .updated_count
    };

    // Two of Ada's, one of Grace's (ignored), an unknown id (ignored), a repeat.
    let unknown = uuid::Uuid::now_v7().to_string();
    let updated = mark(vec![
        first.id.clone(),
        second.id.clone(),
        graces.id.clone(),
        unknown,
        first.id.clone(),
    ])
    .await;
    assert_eq!(updated, 2);
    // Already read: nothing changes.
    assert_eq!(mark(vec![first.id.clone(), second.id.clone()]).await, 0);
    assert_eq!(mark(vec![]).await, 0);
    assert_eq!(mark(vec![second.id.clone(), third.id.clone()]).await, 1);

    let listed = app.list_all(&ada, false).await;
    assert!(listed.iter().all(|n| n.read_time.is_some()), "{listed:?}");
    let grace_listed = app.list_all(&grace, false).await;
    assert_eq!(grace_listed, [graces], "Grace's stays unread");
}

#[tokio::test]
async fn marked_notifications_drop_out_of_unread_only() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let older = app.send(&ada, "Older").await;
    let newer = app.send(&ada, "Newer").await;
    assert_eq!(
        ids(&app.list_all(&ada, true).await),
        [newer.id.clone(), older.id.clone()]
    );
    let token = app.user_token(&ada);
    app.notifications
        .mark_read(with_token(
            pb::MarkReadRequest {
                ids: vec![newer.id.clone()],
            },
            &token,
        ))
        .await
        .expect("MarkRead");
    assert_eq!(ids(&app.list_all(&ada, true).await), [older.id.as_str()]);
    let all = app.list_all(&ada, false).await;
    assert_eq!(ids(&all), [newer.id, older.id]);
    let read_time = all[0].read_time.expect("the marked one has a read time");
    let create_time = all[0].create_time.expect("a create time");
    assert!((read_time.seconds, read_time.nanos) >= (create_time.seconds, create_time.nanos));
    assert_eq!(all[1].read_time, None);
}

#[tokio::test]
async fn malformed_ids_are_invalid_argument_naming_each_index_and_mark_nothing() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let valid = app.send(&ada, "Valid").await;
    let token = app.user_token(&ada);
    let status = app
        .notifications
        .mark_read(with_token(
            pb::MarkReadRequest {
                ids: vec![
                    valid.id.clone(),
                    "not-a-uuid".into(),
                    String::new(),
                    valid.id.clone(),
                    "42".into(),
                ],
            },
            &token,
        ))
        .await
        .expect_err("malformed ids are refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["ids[1]", "ids[2]", "ids[4]"]);
    assert_eq!(
        ids(&app.list_all(&ada, true).await),
        [valid.id],
        "a refused request marks nothing"
    );
}

/// MarkRead as `user_id` with `ids`, expecting a refusal.
async fn mark_read_refused(
    app: &mut crate::helpers::TestApp,
    user_id: &str,
    ids: Vec<String>,
) -> tonic::Status {
    let token = app.user_token(user_id);
    app.notifications
        .mark_read(with_token(pb::MarkReadRequest { ids }, &token))
        .await
        .expect_err("too many ids are refused")
}

/// gRPC clients refuse response headers above 16 KiB (grpc-go, grpc-java); keep a status
/// far below that.
const SMALL_STATUS_BYTES: usize = 8 * 1024;

fn status_bytes(status: &tonic::Status) -> usize {
    status.message().len() + status.details().len()
}

#[tokio::test]
async fn more_than_1000_valid_ids_are_invalid_argument_naming_ids_and_mark_nothing() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let kept = app.send(&ada, "Kept unread").await;
    let mut many: Vec<String> = (0..40_000)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    many[0] = kept.id.clone();
    let status = mark_read_refused(&mut app, &ada, many).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), ["ids"]);
    assert!(status.message().contains("1000"), "{status:?}");
    assert_eq!(ids(&app.list_all(&ada, true).await), [kept.id]);

    // The cap itself is accepted.
    let token = app.user_token(&ada);
    let at_cap: Vec<String> = (0..1000)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let updated = app
        .notifications
        .mark_read(with_token(pb::MarkReadRequest { ids: at_cap }, &token))
        .await
        .expect("1000 ids are accepted")
        .into_inner()
        .updated_count;
    assert_eq!(updated, 0);
}

#[tokio::test]
async fn two_hundred_thousand_empty_ids_get_one_small_invalid_argument() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let status = mark_read_refused(&mut app, &ada, vec![String::new(); 200_000]).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), ["ids"]);
    assert!(
        status_bytes(&status) < SMALL_STATUS_BYTES,
        "{} bytes",
        status_bytes(&status)
    );
}
