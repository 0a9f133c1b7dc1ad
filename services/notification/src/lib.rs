//! Trellis's notification service: stores notifications sent by other services
//! (idempotently) and delivers them live to every open stream of their user.
//!
//! Layers: [`grpc`] (wire types, streams, statuses), [`domain`] (rules and fan-out),
//! [`storage`] (sea-orm). [`Service`] wires them onto the platform.

pub mod config;
pub mod domain;
pub mod grpc;
pub mod storage;

use trellis_platform::auth::{Access, AccessPolicy, RateClass};
use trellis_platform::metrics::prometheus::IntCounter;
use trellis_platform::{BuildError, Context, ServiceInfo};
use trellis_proto::notification_v1::notification_internal_service_server::NotificationInternalServiceServer;
use trellis_proto::notification_v1::notification_service_server::NotificationServiceServer;

use std::sync::Arc;

use domain::Notifications;
use domain::hub::Hub;
use domain::live::LiveFeed;
use grpc::NotificationHandlers;
use storage::SeaOrmNotificationRepository;

/// The notification service, as the platform runs it: `trellis_platform::run::<Service>()`.
#[derive(Debug)]
pub struct Service;

/// Every setting of the notification service: the platform's sections (default port
/// 50053, database `sqlite://.data/notification.db?mode=rwc`, peer `auth` at
/// `http://127.0.0.1:50052` for signing keys) and [`config::Settings`], from
/// `TRELLIS_NOTIFICATION__*`.
pub type Config = trellis_platform::Config<Service>;

impl trellis_platform::Service for Service {
    const INFO: ServiceInfo = ServiceInfo {
        name: "notification",
        env_prefix: "TRELLIS_NOTIFICATION",
    };
    const DEFAULT_PORT: u16 = 50053;
    const DEFAULT_PEERS: &'static [(&'static str, &'static str)] =
        &[("auth", "http://127.0.0.1:50052")];
    type Settings = config::Settings;
    type Migrator = storage::migration::Migrator;

    /// End users call the public service, services the internal one. Rate classes, per
    /// caller: listing is a read, marking read a write, opening a stream its own class;
    /// the internal service is not limited.
    fn access_policy() -> AccessPolicy {
        // User (account notices) and auth (sign-in notices) send; nobody else may.
        AccessPolicy::new(Access::Authenticated)
            .rate(
                "trellis.notification.v1.NotificationService/ListNotifications",
                RateClass::READ,
            )
            .rate(
                "trellis.notification.v1.NotificationService/MarkRead",
                RateClass::WRITE,
            )
            .rate(
                "trellis.notification.v1.NotificationService/Subscribe",
                RateClass::STREAM,
            )
            .rate(
                "trellis.notification.v1.NotificationService/Connect",
                RateClass::STREAM,
            )
            .internal(trellis_proto::paths::SEND_NOTIFICATION, &["user", "auth"])
            // Any other internal method admits no one until it declares its callers.
            .internal("trellis.notification.v1.NotificationInternalService", &[])
    }

    async fn build(ctx: &mut Context<Self>) -> Result<(), BuildError> {
        let repository = SeaOrmNotificationRepository::new(ctx.db().clone());
        let hub = Hub::new(ctx.settings().streams);
        let live = hub.clone();
        ctx.metrics().gauge_fn(
            "trellis_notification_live_subscribers",
            "Open Subscribe and Connect streams, all users together.",
            move || i64::try_from(live.streams()).unwrap_or(i64::MAX),
        )?;
        let live = LiveFeed::new(hub);
        let feed = ctx.settings().feed;
        let sqlite_file = ctx.config().database.sqlite_file().map(str::to_owned);
        let watched = ctx.db().clone();
        let woken = live.clone();
        let reconnects = ctx.metrics().register(IntCounter::new(
            "trellis_notification_feed_reconnects_total",
            "Times the live feed's change watcher (PostgreSQL LISTEN, SQLite data_version) \
             lost its connection and made it again, catching up from storage.",
        )?)?;
        ctx.spawn(move |stop| {
            storage::watch::run(watched, sqlite_file, woken, feed, reconnects, stop)
        });
        let followed = live.clone();
        ctx.metrics().gauge_fn(
            "trellis_notification_feed_sequence",
            "Sequence of the last notification the live feed read and handed to its streams; \
             a replica that stays behind the others does not hear of their commits.",
            move || followed.position(),
        )?;
        let notifications = Arc::new(Notifications::new(repository, live));
        // Read before the server serves, so before any stream can open.
        let from = notifications.last_committed().await?;
        let follower = Arc::clone(&notifications);
        ctx.spawn(move |stop| async move { follower.follow(from, feed, stop).await });
        let ignored_acks = ctx.metrics().register(IntCounter::new(
            "trellis_notification_ignored_acks_total",
            "Connect acknowledgements ignored: not of a notification the stream pushed and \
             had not seen acknowledged.",
        )?)?;
        let handlers =
            NotificationHandlers::new(notifications, ctx.page_tokens(), ctx.shutdown_token())
                .count_ignored_acks(ignored_acks);
        ctx.add_service(NotificationServiceServer::new(handlers.clone()));
        ctx.add_service(NotificationInternalServiceServer::new(handlers));
        Ok(())
    }
}
