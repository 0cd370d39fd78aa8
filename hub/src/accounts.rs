//! Accounts, API keys and who may do what on the HUB's API.
//!
//! Every upload and video belongs to an account; only its owner (or the
//! operator's admin key) may list, resume, terminate or delete it. Keys are
//! `mck_{id}_{secret}`: the id finds the record, the secret (32 random
//! bytes) is kept only as its BLAKE3 hash and compared in constant time, so
//! a copy of the database holds no usable key. Keys are shown once, at
//! creation, and revocable. A fast hash is right here: the secret has 256
//! bits of entropy, so there is nothing for a slow hash to protect.
//!
//! The admin key (`mca_…`, `data_dir/admin.key`, mode 0600, made on first
//! start) creates accounts and sees everything.

use crate::nodes::{now_secs, refuse};
use crate::openapi::TAG_ACCOUNTS;
use crate::{Hub, HubError};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use utoipa_axum::{router::OpenApiRouter, routes};

/// account id → JSON `Account`.
const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
/// key id → JSON `KeyRecord`.
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_keys");

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    pub name: String,
    pub created: u64,
    /// Largest single upload (bytes).
    pub max_upload_bytes: u64,
    /// Uploads and videos held at once (bytes of their sources).
    pub max_stored_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub account: String,
    /// Hex BLAKE3 of the secret part.
    hash: String,
    pub created: u64,
    pub revoked: Option<u64>,
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    Admin,
    Account(Account),
}

impl Caller {
    /// Whether the caller may see and change what `account` owns (`None`:
    /// a video from before accounts, the operator's).
    pub fn owns(&self, account: Option<&str>) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Account(a) => account == Some(a.id.as_str()),
        }
    }

    pub fn account_id(&self) -> Option<&str> {
        match self {
            Caller::Admin => None,
            Caller::Account(a) => Some(&a.id),
        }
    }
}

pub struct Accounts {
    db: Database,
    admin_hash: blake3::Hash,
}

fn err(e: impl std::fmt::Display) -> HubError {
    HubError::Catalog(format!("accounts: {e}"))
}

fn random_token(prefix: &str) -> Result<String, HubError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(err)?;
    Ok(format!("{prefix}{}", B64.encode(secret)))
}

/// The admin key from `path`, made (mode 0600) on first start.
fn load_or_create_admin_key(path: &std::path::Path) -> Result<String, HubError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if path.exists() {
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(err(format!(
                "{} is readable by others (mode {mode:o}); chmod 600 it",
                path.display()
            )));
        }
        return Ok(std::fs::read_to_string(path)?.trim().to_string());
    }
    let key = random_token("mca_")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(key.as_bytes())?;
    f.sync_all()?;
    tracing::info!(path = %path.display(), "created the hub's admin API key");
    Ok(key)
}

impl Accounts {
    pub fn open(
        db_path: &std::path::Path,
        admin_key_path: &std::path::Path,
    ) -> Result<Self, HubError> {
        let db = Database::create(db_path).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(ACCOUNTS).map_err(err)?;
        txn.open_table(KEYS).map_err(err)?;
        txn.commit().map_err(err)?;
        let admin = load_or_create_admin_key(admin_key_path)?;
        Ok(Accounts {
            db,
            admin_hash: blake3::hash(admin.as_bytes()),
        })
    }

    fn put<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        v: &T,
    ) -> Result<(), HubError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut t = txn.open_table(table).map_err(err)?;
            t.insert(key, serde_json::to_vec(v).map_err(err)?.as_slice())
                .map_err(err)?;
        }
        txn.commit().map_err(err)
    }

    fn get<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, HubError> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(table).map_err(err)?;
        match t.get(key).map_err(err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(err)?)),
            None => Ok(None),
        }
    }

    fn all<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, HubError> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(table).map_err(err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(err)? {
            let (_, v) = row.map_err(err)?;
            out.push(serde_json::from_slice(v.value()).map_err(err)?);
        }
        Ok(out)
    }

    pub fn create(
        &self,
        name: &str,
        max_upload_bytes: u64,
        max_stored_bytes: u64,
    ) -> Result<(Account, String), HubError> {
        let account = Account {
            id: crate::tus::new_id(),
            name: name.to_string(),
            created: now_secs(),
            max_upload_bytes,
            max_stored_bytes,
        };
        self.put(ACCOUNTS, &account.id, &account)?;
        let key = self.new_key(&account.id)?;
        Ok((account, key))
    }

    pub fn account(&self, id: &str) -> Result<Option<Account>, HubError> {
        self.get(ACCOUNTS, id)
    }

    pub fn accounts(&self) -> Result<Vec<Account>, HubError> {
        let mut all: Vec<Account> = self.all(ACCOUNTS)?;
        all.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(all)
    }

    /// A new key for `account`; the text is returned once and never stored.
    pub fn new_key(&self, account: &str) -> Result<String, HubError> {
        let id = crate::tus::new_id();
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(err)?;
        let secret = B64.encode(secret);
        let record = KeyRecord {
            id: id.clone(),
            account: account.to_string(),
            hash: blake3::hash(secret.as_bytes()).to_hex().to_string(),
            created: now_secs(),
            revoked: None,
        };
        self.put(KEYS, &id, &record)?;
        Ok(format!("mck_{id}_{secret}"))
    }

    pub fn keys(&self, account: &str) -> Result<Vec<KeyRecord>, HubError> {
        let mut keys: Vec<KeyRecord> = self.all(KEYS)?;
        keys.retain(|k| k.account == account);
        keys.sort_by_key(|k| k.created);
        Ok(keys)
    }

    /// Revokes `key_id` if it is `account`'s; false if it is not.
    pub fn revoke(&self, account: &str, key_id: &str) -> Result<bool, HubError> {
        match self.get::<KeyRecord>(KEYS, key_id)? {
            Some(mut k) if k.account == account => {
                k.revoked.get_or_insert(now_secs());
                self.put(KEYS, key_id, &k)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Who `bearer` is, or why not.
    pub fn authenticate(&self, bearer: &str) -> Result<Caller, String> {
        // blake3::Hash compares in constant time.
        if blake3::hash(bearer.as_bytes()) == self.admin_hash {
            return Ok(Caller::Admin);
        }
        let bad = || "the API key is not valid (mistyped, or revoked)".to_string();
        let rest = bearer.strip_prefix("mck_").ok_or_else(bad)?;
        let (id, secret) = rest.split_once('_').ok_or_else(bad)?;
        let record: KeyRecord = self
            .get(KEYS, id)
            .map_err(|e| e.to_string())?
            .ok_or_else(bad)?;
        let mut want = [0u8; 32];
        hex::decode_to_slice(&record.hash, &mut want).map_err(|_| bad())?;
        if blake3::hash(secret.as_bytes()) != blake3::Hash::from(want) || record.revoked.is_some() {
            return Err(bad());
        }
        match self.account(&record.account).map_err(|e| e.to_string())? {
            Some(a) => Ok(Caller::Account(a)),
            None => Err(bad()),
        }
    }
}

/// The caller of a request, or the 401 to answer with.
pub fn caller(hub: &Hub, headers: &HeaderMap) -> Result<Caller, Box<Response>> {
    let unauthorized = |why: String| {
        Box::new(
            (
                StatusCode::UNAUTHORIZED,
                [("www-authenticate", "Bearer")],
                Json(json!({ "error": why })),
            )
                .into_response(),
        )
    };
    let Some(value) = headers.get("authorization") else {
        return Err(unauthorized(
            "this needs an API key: send `Authorization: Bearer mck_…` (the hub's operator creates accounts with POST /v1/accounts)".into(),
        ));
    };
    let bearer = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| unauthorized("Authorization must be `Bearer <API key>`".into()))?;
    hub.accounts.authenticate(bearer).map_err(unauthorized)
}

/// The admin, or a 401/403 saying this is an operator endpoint.
pub(crate) fn admin(hub: &Hub, headers: &HeaderMap) -> Result<(), Box<Response>> {
    match caller(hub, headers)? {
        Caller::Admin => Ok(()),
        Caller::Account(_) => Err(Box::new(refuse(
            StatusCode::FORBIDDEN,
            "this is an operator endpoint: use the hub's admin key (data_dir/admin.key)",
        ))),
    }
}

pub fn routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(me))
        .routes(routes!(add_key, list_keys))
        .routes(routes!(revoke))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    /// A name for people; need not be unique.
    name: String,
    /// The largest single upload (bytes); the hub's default without it.
    max_upload_bytes: Option<u64>,
    /// What the account may keep stored (bytes); the hub's default without it.
    max_stored_bytes: Option<u64>,
}

/// `POST /v1/accounts` (admin): a new account and its first key.
#[utoipa::path(post, path = "/v1/accounts", tag = TAG_ACCOUNTS,
    request_body(content = NewAccount, example = json!({"name": "acme", "max_upload_bytes": 10_000_000_000u64})),
    security(("admin_key" = [])),
    responses(
        (status = 201, description = "`account` and its first `api_key` (shown once)", body = Object),
        (status = 400, description = "Not a valid account request", body = Object),
        (status = 403, description = "Not the admin key", body = Object)))]
async fn create(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = admin(&hub, &headers) {
        return *r;
    }
    let req: NewAccount = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("account: {e}; send {{\"name\": \"…\", \"max_upload_bytes\": N, \"max_stored_bytes\": N}}"),
            )
        }
    };
    let name = req.name.trim();
    if name.is_empty() || name.len() > 100 {
        return refuse(StatusCode::BAD_REQUEST, "name must be 1 to 100 characters");
    }
    let quota = &hub.config.hub;
    let upload = req.max_upload_bytes.unwrap_or(quota.max_upload_size.0);
    let stored = req.max_stored_bytes.unwrap_or(quota.account_storage.0);
    match hub.accounts.create(name, upload, stored) {
        Ok((account, key)) => {
            tracing::info!(account = %account.id, name, "account created");
            (
                StatusCode::CREATED,
                Json(json!({ "account": account, "api_key": key })),
            )
                .into_response()
        }
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `GET /v1/accounts` (admin): every account with its usage.
#[utoipa::path(get, path = "/v1/accounts", tag = TAG_ACCOUNTS,
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "`accounts`, each with its quotas and `stored_bytes`", body = Object),
        (status = 403, description = "Not the admin key", body = Object)))]
async fn list(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&hub, &headers) {
        return *r;
    }
    let accounts = match hub.accounts.accounts() {
        Ok(a) => a,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let rows: Vec<_> = accounts
        .iter()
        .map(|a| json!({ "account": a, "stored_bytes": hub.stored_bytes(&a.id).unwrap_or(0) }))
        .collect();
    Json(json!({ "accounts": rows })).into_response()
}

pub(crate) fn account_caller(hub: &Hub, headers: &HeaderMap) -> Result<Account, Box<Response>> {
    match caller(hub, headers)? {
        Caller::Account(a) => Ok(a),
        Caller::Admin => Err(Box::new(refuse(
            StatusCode::BAD_REQUEST,
            "the admin key has no account; use an account's API key",
        ))),
    }
}

/// `GET /v1/account`: the caller's account, quotas and usage.
#[utoipa::path(get, path = "/v1/account", tag = TAG_ACCOUNTS,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "`account` (id, name, created, quotas) and `stored_bytes`", body = Object),
        (status = 401, description = "No or a bad API key", body = Object)))]
async fn me(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    let a = match account_caller(&hub, &headers) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    match hub.stored_bytes(&a.id) {
        Ok(stored) => Json(json!({ "account": a, "stored_bytes": stored })).into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `POST /v1/account/keys`: another key for the caller's account.
#[utoipa::path(post, path = "/v1/account/keys", tag = TAG_ACCOUNTS,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "`api_key`: the new key (shown once)", body = Object),
        (status = 401, description = "No or a bad API key", body = Object)))]
async fn add_key(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    let a = match account_caller(&hub, &headers) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    match hub.accounts.new_key(&a.id) {
        Ok(key) => (StatusCode::CREATED, Json(json!({ "api_key": key }))).into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `GET /v1/account/keys`: the caller's keys (ids and dates, no secrets).
#[utoipa::path(get, path = "/v1/account/keys", tag = TAG_ACCOUNTS,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "`keys`: id, created, revoked", body = Object),
        (status = 401, description = "No or a bad API key", body = Object)))]
async fn list_keys(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    let a = match account_caller(&hub, &headers) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    match hub.accounts.keys(&a.id) {
        Ok(keys) => Json(json!({ "keys": keys })).into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `DELETE /v1/account/keys/{key}`: revokes one of the caller's keys.
#[utoipa::path(delete, path = "/v1/account/keys/{key}", tag = TAG_ACCOUNTS,
    params(("key" = String, Path, description = "The key's id (from `GET /v1/account/keys`)")),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such key of yours", body = Object)))]
async fn revoke(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Response {
    let a = match account_caller(&hub, &headers) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    match hub.accounts.revoke(&a.id, &key) {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => refuse(
            StatusCode::NOT_FOUND,
            format!("no key {key:?} on this account"),
        ),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

impl Hub {
    /// Source bytes the account holds: its uploads and videos that did not
    /// fail (a failed video's upload is deleted).
    pub fn stored_bytes(&self, account: &str) -> Result<u64, HubError> {
        Ok(self
            .catalog
            .videos()?
            .iter()
            .filter(|v| v.account.as_deref() == Some(account))
            .filter(|v| v.status != crate::catalog::Status::Failed)
            .map(|v| v.upload_length)
            .sum())
    }
}
