//! NotificationService.ListNotifications: order, AIP-158 paging, the unread filter, and
//! whose notifications a caller sees.

use std::collections::HashSet;

use tonic::Code;
use trellis_proto::notification_v1 as pb;

use crate::helpers::{ids, new_user_id, spawn_app, violated_fields, with_token};

fn page(page_size: i32, page_token: &str, unread_only: bool) -> pb::ListNotificationsRequest {
    pb::ListNotificationsRequest {
        page_size,
        page_token: page_token.to_owned(),
        unread_only,
    }
}

#[tokio::test]
async fn list_returns_the_callers_notifications_newest_first() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(app.send(&ada, &format!("Notification {i}")).await);
    }
    let listed = app.list_all(&ada, false).await;
    sent.reverse();
    assert_eq!(listed, sent, "newest first, as stored");
    let times: Vec<_> = listed
        .iter()
        .map(|n| n.create_time.map(|t| (t.seconds, t.nanos)))
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
}

#[tokio::test]
async fn paging_walks_every_notification_exactly_once_newest_first() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let mut sent = Vec::new();
    for i in 0..501 {
        sent.push(app.send(&ada, &format!("Notification {i}")).await.id);
    }
    sent.reverse();

    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let response = app.list_page(&ada, page(7, &page_token, false)).await;
        pages += 1;
        assert!(response.notifications.len() <= 7);
        seen.extend(ids(&response.notifications));
        if response.next_page_token.is_empty() {
            break;
        }
        page_token = response.next_page_token;
    }
    assert_eq!(pages, 501_usize.div_ceil(7));
    assert_eq!(seen, sent, "every notification once, newest first");

    // 0 means the default page size (50); above the maximum (500) is coerced, not refused.
    let default_page = app.list_page(&ada, page(0, "", false)).await;
    assert_eq!(default_page.notifications.len(), 50);
    assert!(!default_page.next_page_token.is_empty());
    let huge_page = app.list_page(&ada, page(i32::MAX, "", false)).await;
    assert_eq!(huge_page.notifications.len(), 500);
    let last_page = app
        .list_page(&ada, page(500, &huge_page.next_page_token, false))
        .await;
    assert_eq!(ids(&last_page.notifications), sent[500..]);
    assert!(
        last_page.next_page_token.is_empty(),
        "the last page has no token"
    );
}

#[tokio::test]
async fn unread_only_lists_only_unread_notifications_across_pages() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let mut sent = Vec::new();
    for i in 0..6 {
        sent.push(app.send(&ada, &format!("Notification {i}")).await.id);
    }
    // Read every other one.
    let read: Vec<String> = sent.iter().step_by(2).cloned().collect();
    let token = app.user_token(&ada);
    let marked = app
        .notifications
        .mark_read(with_token(
            pb::MarkReadRequest { ids: read.clone() },
            &token,
        ))
        .await
        .expect("MarkRead")
        .into_inner();
    assert_eq!(marked.updated_count, 3);

    let mut unread = Vec::new();
    let mut page_token = String::new();
    loop {
        let response = app.list_page(&ada, page(2, &page_token, true)).await;
        assert!(response.notifications.iter().all(|n| n.read_time.is_none()));
        unread.extend(ids(&response.notifications));
        if response.next_page_token.is_empty() {
            break;
        }
        page_token = response.next_page_token;
    }
    let expected: Vec<String> = sent
        .iter()
        .rev()
        .filter(|id| !read.contains(id))
        .cloned()
        .collect();
    assert_eq!(unread, expected);

    // Without the filter, read ones are listed too, with their read time.
    let all = app.list_all(&ada, false).await;
    assert_eq!(all.len(), 6);
    for n in &all {
        assert_eq!(read.contains(&n.id), n.read_time.is_some(), "{}", n.id);
    }
}

#[tokio::test]
async fn a_user_lists_only_their_own_notifications() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let grace = new_user_id();
    let adas = vec![app.send(&ada, "For Ada").await];
    let mut graces = vec![
        app.send(&grace, "For Grace 1").await,
        app.send(&grace, "For Grace 2").await,
    ];
    graces.reverse();
    assert_eq!(app.list_all(&ada, false).await, adas);
    assert_eq!(app.list_all(&grace, false).await, graces);
    assert!(app.list_all(&new_user_id(), false).await.is_empty());
}

#[tokio::test]
async fn a_page_token_from_another_filter_is_invalid_argument() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    for i in 0..3 {
        app.send(&ada, &format!("Notification {i}")).await;
    }
    let token = app.user_token(&ada);
    for unread_only in [false, true] {
        let next = app
            .list_page(&ada, page(1, "", unread_only))
            .await
            .next_page_token;
        assert!(!next.is_empty());
        let status = app
            .notifications
            .list_notifications(with_token(page(1, &next, !unread_only), &token))
            .await
            .expect_err("a token is good only for its own filter");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "unread_only={unread_only}"
        );
        assert_eq!(violated_fields(&status), ["page_token"]);
    }
}

#[tokio::test]
async fn an_altered_or_forged_page_token_is_invalid_argument() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    for i in 0..3 {
        app.send(&ada, &format!("Notification {i}")).await;
    }
    let next = app
        .list_page(&ada, page(1, "", false))
        .await
        .next_page_token;
    // Flip one character of the token, keeping it valid base64url.
    let mut chars: Vec<char> = next.chars().collect();
    chars[2] = if chars[2] == 'A' { 'B' } else { 'A' };
    let altered: String = chars.into_iter().collect();
    let token = app.user_token(&ada);
    for bad in [altered, "forged".to_owned(), format!("{next}x")] {
        let status = app
            .notifications
            .list_notifications(with_token(page(1, &bad, false), &token))
            .await
            .expect_err("an altered token is refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        assert_eq!(violated_fields(&status), ["page_token"]);
    }
}

#[tokio::test]
async fn a_negative_page_size_is_invalid_argument() {
    let mut app = spawn_app().await;
    let token = app.user_token(&new_user_id());
    for page_size in [-1, i32::MIN] {
        let status = app
            .notifications
            .list_notifications(with_token(page(page_size, "", false), &token))
            .await
            .expect_err("a negative page size is refused");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&status), ["page_size"]);
    }
}

#[tokio::test]
async fn pages_of_different_users_never_mix() {
    let mut app = spawn_app().await;
    let ada = new_user_id();
    let grace = new_user_id();
    // Interleaved, so every page boundary of one user falls between the other's ids.
    let mut adas = HashSet::new();
    for i in 0..10 {
        adas.insert(app.send(&ada, &format!("Ada {i}")).await.id);
        app.send(&grace, &format!("Grace {i}")).await;
    }
    let mut seen = HashSet::new();
    let mut page_token = String::new();
    loop {
        let response = app.list_page(&ada, page(3, &page_token, false)).await;
        for n in &response.notifications {
            assert_eq!(n.user_id, ada);
            assert!(seen.insert(n.id.clone()), "{} twice", n.id);
        }
        if response.next_page_token.is_empty() {
            break;
        }
        page_token = response.next_page_token;
    }
    assert_eq!(seen, adas);
}
