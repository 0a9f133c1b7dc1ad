//! The auth service's tables.

/// `signing_keys`: Ed25519 keys, private part included.
pub mod signing_key {
    use sea_orm::entity::prelude::*;

    /// A row of `signing_keys`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "signing_keys")]
    pub struct Model {
        /// Key id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub kid: String,
        /// PKCS#8 DER private key.
        pub private_key: Vec<u8>,
        /// Raw 32-byte public key.
        pub public_key: Vec<u8>,
        /// Creation instant.
        pub create_time: DateTimeUtc,
        /// When it starts signing.
        pub activate_time: DateTimeUtc,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `refresh_tokens`: hashes of refresh tokens, grouped in families.
pub mod refresh_token {
    use sea_orm::entity::prelude::*;

    /// A row of `refresh_tokens`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "refresh_tokens")]
    pub struct Model {
        /// Row id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        /// The family (one sign-in and its rotations).
        pub family_id: Uuid,
        /// The user's id.
        pub user_id: String,
        /// Comma-separated roles.
        pub roles: String,
        /// base64url(SHA-256(token)); unique.
        #[sea_orm(unique)]
        pub token_hash: String,
        /// Issue instant.
        pub create_time: DateTimeUtc,
        /// The family's absolute expiry.
        pub expire_time: DateTimeUtc,
        /// When it was exchanged; a second exchange is a replay.
        pub used_time: Option<DateTimeUtc>,
        /// When its family was revoked.
        pub revoked_time: Option<DateTimeUtc>,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
