//! Queries on `sessions`: create, look up, rotate the refresh hash atomically, record use,
//! revoke (one, or all but one), list.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use entity::sessions;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
};

use super::StoreError;
use crate::domain::{SessionId, UserId};

/// Longest stored `User-Agent`.
const USER_AGENT_MAX: usize = 256;

/// A session row.
pub type Session = sessions::Model;

/// Whether a session can still be used at `now`.
pub fn is_live(s: &Session, now: DateTime<Utc>) -> bool {
    s.revoked_at.is_none() && s.expires_at > now
}

/// Creates a session for `user` with the given refresh hash and lifetime.
pub async fn create(
    db: &impl ConnectionTrait,
    id: SessionId,
    user: UserId,
    refresh_hash: String,
    ttl: chrono::Duration,
    user_agent: Option<&str>,
    ip: IpAddr,
) -> Result<Session, StoreError> {
    let now = Utc::now();
    let ua = user_agent.map(|ua| ua.chars().take(USER_AGENT_MAX).collect::<String>());
    let model = sessions::ActiveModel {
        id: Set(id.0),
        user_id: Set(user.0),
        refresh_token_hash: Set(refresh_hash),
        created_at: Set(now),
        last_seen_at: Set(now),
        expires_at: Set(now + ttl),
        revoked_at: Set(None),
        user_agent: Set(ua),
        last_ip: Set(Some(ip.to_string())),
    };
    Ok(sessions::Entity::insert(model)
        .exec_with_returning(db)
        .await?)
}

/// Loads a session.
pub async fn get(db: &impl ConnectionTrait, id: SessionId) -> Result<Option<Session>, StoreError> {
    Ok(sessions::Entity::find_by_id(id.0).one(db).await?)
}

/// Replaces the refresh hash only if it is still `old` (so two concurrent refreshes with the
/// same token cannot both win). Returns whether this call won.
pub async fn rotate_refresh(
    db: &impl ConnectionTrait,
    id: SessionId,
    old: &str,
    new: String,
    ip: IpAddr,
) -> Result<bool, StoreError> {
    let res = sessions::Entity::update_many()
        .col_expr(sessions::Column::RefreshTokenHash, Expr::value(new))
        .col_expr(sessions::Column::LastSeenAt, Expr::value(Utc::now()))
        .col_expr(sessions::Column::LastIp, Expr::value(ip.to_string()))
        .filter(sessions::Column::Id.eq(id.0))
        .filter(sessions::Column::RefreshTokenHash.eq(old))
        .filter(sessions::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// Marks the session used now, from `ip` when known.
pub async fn touch(
    db: &impl ConnectionTrait,
    id: SessionId,
    ip: Option<IpAddr>,
) -> Result<(), StoreError> {
    let mut update = sessions::Entity::update_many()
        .col_expr(sessions::Column::LastSeenAt, Expr::value(Utc::now()));
    if let Some(ip) = ip {
        update = update.col_expr(sessions::Column::LastIp, Expr::value(ip.to_string()));
    }
    update
        .filter(sessions::Column::Id.eq(id.0))
        .exec(db)
        .await?;
    Ok(())
}

/// Revokes a session of `user` (only the owner's: another user's id matches nothing).
/// Returns whether a live session was revoked.
pub async fn revoke(
    db: &impl ConnectionTrait,
    id: SessionId,
    user: UserId,
) -> Result<bool, StoreError> {
    let res = sessions::Entity::update_many()
        .col_expr(sessions::Column::RevokedAt, Expr::value(Utc::now()))
        .filter(sessions::Column::Id.eq(id.0))
        .filter(sessions::Column::UserId.eq(user.0))
        .filter(sessions::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// The user's sessions that are neither revoked nor expired, newest first.
pub async fn list_live(
    db: &impl ConnectionTrait,
    user: UserId,
) -> Result<Vec<Session>, StoreError> {
    Ok(sessions::Entity::find()
        .filter(sessions::Column::UserId.eq(user.0))
        .filter(sessions::Column::RevokedAt.is_null())
        .filter(sessions::Column::ExpiresAt.gt(Utc::now()))
        .order_by_desc(sessions::Column::CreatedAt)
        .all(db)
        .await?)
}

/// Revokes every live session of `user` except `keep`; returns the ids it revoked (so their
/// sockets can be closed).
pub async fn revoke_others(
    db: &impl ConnectionTrait,
    user: UserId,
    keep: SessionId,
) -> Result<Vec<SessionId>, StoreError> {
    let now = Utc::now();
    let ids: Vec<uuid::Uuid> = list_live(db, user)
        .await?
        .into_iter()
        .map(|s| s.id)
        .filter(|id| *id != keep.0)
        .collect();
    if ids.is_empty() {
        return Ok(vec![]);
    }
    // `revoked_at IS NULL` again: a session revoked meanwhile keeps its first revocation time.
    sessions::Entity::update_many()
        .col_expr(sessions::Column::RevokedAt, Expr::value(now))
        .filter(sessions::Column::Id.is_in(ids.clone()))
        .filter(sessions::Column::UserId.eq(user.0))
        .filter(sessions::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    Ok(ids.into_iter().map(SessionId).collect())
}
