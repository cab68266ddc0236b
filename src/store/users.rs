//! Queries on `users`.

use chrono::Utc;
use entity::users;
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

use super::{StoreError, classify};
use crate::domain::{UserId, UserRef, Username};

/// A user row as the server uses it.
#[derive(Debug, Clone)]
pub struct User {
    /// Id and name.
    pub user: UserRef,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Registration time.
    pub created_at: chrono::DateTime<Utc>,
}

impl From<users::Model> for User {
    fn from(m: users::Model) -> Self {
        Self {
            user: UserRef {
                id: UserId(m.id),
                username: Username::from_trusted(m.username),
            },
            password_hash: m.password_hash,
            created_at: m.created_at,
        }
    }
}

/// Inserts a new user; [`StoreError::Conflict`] if the name is taken.
pub async fn insert(
    db: &impl ConnectionTrait,
    username: &Username,
    password_hash: String,
) -> Result<User, StoreError> {
    let model = users::ActiveModel {
        id: Set(UserId::new().0),
        username: Set(username.as_str().to_owned()),
        password_hash: Set(password_hash),
        created_at: Set(Utc::now()),
    };
    let row = users::Entity::insert(model)
        .exec_with_returning(db)
        .await
        .map_err(classify)?;
    Ok(row.into())
}

/// Finds a user by (validated) name.
pub async fn find_by_username(
    db: &impl ConnectionTrait,
    username: &Username,
) -> Result<Option<User>, StoreError> {
    Ok(users::Entity::find()
        .filter(users::Column::Username.eq(username.as_str()))
        .one(db)
        .await?
        .map(User::from))
}

/// Finds a user by id.
pub async fn find_by_id(db: &impl ConnectionTrait, id: UserId) -> Result<Option<User>, StoreError> {
    Ok(users::Entity::find_by_id(id.0)
        .one(db)
        .await?
        .map(User::from))
}

/// Names of the given users, for rendering call history.
pub async fn names(
    db: &impl ConnectionTrait,
    ids: impl IntoIterator<Item = uuid::Uuid>,
) -> Result<std::collections::HashMap<uuid::Uuid, String>, StoreError> {
    let ids: Vec<_> = ids.into_iter().collect();
    Ok(users::Entity::find()
        .filter(users::Column::Id.is_in(ids))
        .all(db)
        .await?
        .into_iter()
        .map(|m| (m.id, m.username))
        .collect())
}
