//! meshcast-conf owns the operator-facing configuration: the TOML schema of
//! every meshcast process, its defaults, and validation whose errors name the
//! file, line and key and say what was expected. It parses and checks; it
//! must not open sockets, read certificates or touch the cache directory —
//! those belong to the crates that use the values.

mod edge;
mod error;
mod hub;
mod ledger;
mod load;
mod spans;
mod units;
mod worker;

pub use edge::{
    AccessLogFormat, CacheSection, EdgeConfig, EdgeSection, HostPattern, LogSection, NodeSection,
    Origin, SignedUrls, SiteConfig, TokenConfig,
};
pub use error::ConfError;
pub use hub::{
    default_ladder, HubConfig, HubLedger, HubLog, HubSection, RungConfig, TranscodeSection,
};
pub use ledger::{LedgerConfig, LedgerSection};
pub use units::{parse_byte_size, parse_duration, ByteSize, Seconds};
pub use worker::{WorkerConfig, WorkerNode, WorkerSection, WORKER_ROLES};
