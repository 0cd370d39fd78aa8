//! meshcast-loadtest: measures `meshcast edge` against nginx `proxy_cache`
//! on this machine (`compare`) and simulates HLS viewers (`viewers`). It
//! starts everything it measures — an origin, nginx, the edge — on loopback
//! ports and stops them when done; it touches nothing else.

mod coalesce;
mod compare;
mod connections;
mod http3;
mod ledger;
mod openloop;
mod origin;
mod procstat;
mod receipts;
mod report;
mod rtc;
mod servers;
mod shards;
mod transcode;
mod viewers;
mod wrk;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "meshcast-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
pub struct Common {
    /// The meshcast binary; default: `meshcast` beside this program.
    #[arg(long)]
    pub meshcast: Option<PathBuf>,
    /// Worker threads for the edge and worker processes for nginx.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// A few seconds per case: a smoke test of the harness, not a measurement.
    #[arg(long)]
    pub quick: bool,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// The edge's memory tier (`[cache] memory_size`). Below an object's
    /// size, its hits come from the disk tier (the page cache, as nginx's).
    #[arg(long, default_value = "512MiB")]
    pub memory_size: String,
}

#[derive(Subcommand)]
enum Command {
    /// Throughput, latency, CPU and memory of meshcast vs nginx, and cold-miss coalescing.
    Compare {
        #[command(flatten)]
        common: Common,
        /// Seconds per wrk run (default 5; 1 with --quick).
        #[arg(long)]
        duration: Option<u64>,
        /// Concurrent connections per wrk run.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Alternating rounds per object (default 3; 1 with --quick).
        #[arg(long)]
        rounds: Option<usize>,
        /// Concurrent cold requests in the coalescing test (default 1000; 200 with --quick).
        #[arg(long)]
        cold: Option<usize>,
        /// Copies of each object the load cycles through (`?n=0…N-1`). With
        /// N × an object's size above `--memory-size`, its hits come from
        /// the edge's disk tier.
        #[arg(long, default_value_t = 1)]
        objects: usize,
    },
    /// 2 MB segment throughput over HTTP/3 vs HTTP/2 over TLS on one edge.
    Http3 {
        #[command(flatten)]
        common: Common,
        /// Seconds per run (default 5; 1 with --quick).
        #[arg(long)]
        duration: Option<u64>,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Requests in flight per connection.
        #[arg(long, default_value_t = 4)]
        streams: usize,
        /// Alternating rounds (default 3; 1 with --quick).
        #[arg(long)]
        rounds: Option<usize>,
    },
    /// Requests/s with a delivery receipt on every response ÷ without.
    Receipts {
        #[command(flatten)]
        common: Common,
        /// Seconds per wrk run (default 5; 1 with --quick).
        #[arg(long)]
        duration: Option<u64>,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Alternating rounds (default 3; 1 with --quick).
        #[arg(long)]
        rounds: Option<usize>,
    },
    /// Committed transactions/s and time to finality of four ledger validators.
    Ledger {
        #[command(flatten)]
        common: Common,
        /// Transfers in the throughput run (default 40000; 2000 with --quick).
        #[arg(long)]
        txs: Option<usize>,
        /// Single transfers timed for finality (default 30; 5 with --quick).
        #[arg(long)]
        samples: Option<usize>,
    },
    /// Memory per idle connection (meshcast vs nginx), and normal clients' latency during a flood of silent and slowloris connections.
    Connections {
        #[command(flatten)]
        common: Common,
        /// Idle connections in the memory test (default 10000; 500 with --quick).
        #[arg(long)]
        idle: Option<usize>,
        /// Silent connections in the flood (default 20000; 500 with --quick).
        #[arg(long)]
        flood_idle: Option<usize>,
        /// Slowloris connections in the flood (default 3000; 100 with --quick).
        #[arg(long)]
        flood_slow: Option<usize>,
        /// Normal clients' requests per second.
        #[arg(long, default_value_t = 2000.0)]
        rps: f64,
        /// Seconds of normal load, quiet and flooded (default 10; 2 with --quick).
        #[arg(long)]
        secs: Option<f64>,
        /// Scheduling niceness of the attacker processes (0–19). On one
        /// machine they share the cores with the edge and the normal
        /// clients; 19 lets them stand in for machines elsewhere.
        #[arg(long, default_value_t = 19)]
        attacker_nice: i32,
    },
    /// One upload's ladder by the HUB alone, then by the HUB with workers: wall time and CPU seconds.
    Transcode {
        #[command(flatten)]
        common: Common,
        /// Length of the generated 1080p source (default 120; 20 with --quick).
        #[arg(long)]
        secs: Option<u32>,
        /// Worker processes in the second run.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// x264 preset of the ladder (default: the hub's default).
        #[arg(long)]
        preset: Option<String>,
    },
    /// Objects over the WebRTC door's data channel vs HTTP/1.1 from the same edge: time to first byte and throughput.
    Rtc {
        #[command(flatten)]
        common: Common,
        /// Requests per object per run (default 40; 5 with --quick).
        #[arg(long)]
        requests: Option<usize>,
        /// Runs per door, alternating (default 5; 1 with --quick).
        #[arg(long)]
        rounds: Option<usize>,
    },
    /// Storage on the network: misses from shards vs from the hub, and the repair of two lost nodes.
    Shards {
        #[command(flatten)]
        common: Common,
        /// Length of the generated 1080p source (default 40; 8 with --quick).
        #[arg(long)]
        secs: Option<u32>,
        /// The hub's `[storage] repair_rate` in the repair run.
        #[arg(long, default_value = "1GiB")]
        repair_rate: String,
    },
    /// (Used by `connections`: one process of flood attackers.)
    #[command(hide = true)]
    FloodClient {
        #[arg(long)]
        to: std::net::SocketAddr,
        #[arg(long)]
        idle: usize,
        #[arg(long)]
        slow: usize,
        #[arg(long)]
        first: usize,
        #[arg(long)]
        secs: f64,
        #[arg(long, default_value_t = 0)]
        nice: i32,
    },
    /// Simulated HLS players, ramped until more than 1 % of viewing time is rebuffering.
    Viewers {
        #[command(flatten)]
        common: Common,
        /// Viewers in the first step (doubling each step).
        #[arg(long)]
        start: Option<usize>,
        /// Largest step to try.
        #[arg(long)]
        max: Option<usize>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.command {
        Command::Compare {
            common,
            duration,
            connections,
            rounds,
            cold,
            objects,
        } => {
            let opts = compare::Options {
                duration: duration.unwrap_or(if common.quick { 1 } else { 5 }),
                connections,
                rounds: rounds.unwrap_or(if common.quick { 1 } else { 3 }),
                cold: cold.unwrap_or(if common.quick { 200 } else { 1000 }),
                objects: objects.max(1),
                common,
            };
            rt.block_on(compare::run(opts))
        }
        Command::Rtc {
            common,
            requests,
            rounds,
        } => {
            let opts = rtc::Options {
                requests: requests.unwrap_or(if common.quick { 5 } else { 40 }),
                rounds: rounds.unwrap_or(if common.quick { 1 } else { 5 }),
                common,
            };
            rt.block_on(rtc::run(opts))
        }
        Command::Http3 {
            common,
            duration,
            connections,
            streams,
            rounds,
        } => {
            let opts = http3::Options {
                duration: duration.unwrap_or(if common.quick { 1 } else { 5 }),
                connections,
                streams,
                rounds: rounds.unwrap_or(if common.quick { 1 } else { 3 }),
                common,
            };
            rt.block_on(http3::run(opts))
        }
        Command::Receipts {
            common,
            duration,
            connections,
            rounds,
        } => {
            let opts = receipts::Options {
                duration: duration.unwrap_or(if common.quick { 1 } else { 5 }),
                connections,
                rounds: rounds.unwrap_or(if common.quick { 1 } else { 3 }),
                common,
            };
            rt.block_on(receipts::run(opts))
        }
        Command::Ledger {
            common,
            txs,
            samples,
        } => {
            let opts = ledger::Options {
                txs: txs.unwrap_or(if common.quick { 2_000 } else { 40_000 }),
                finality_samples: samples.unwrap_or(if common.quick { 5 } else { 30 }),
                common,
            };
            rt.block_on(ledger::run(opts))
        }
        Command::Connections {
            common,
            idle,
            flood_idle,
            flood_slow,
            rps,
            secs,
            attacker_nice,
        } => {
            let q = common.quick;
            let opts = connections::Options {
                attacker_nice: attacker_nice.clamp(0, 19),
                idle: idle.unwrap_or(if q { 500 } else { 10_000 }),
                flood_idle: flood_idle.unwrap_or(if q { 500 } else { 20_000 }),
                flood_slow: flood_slow.unwrap_or(if q { 100 } else { 3_000 }),
                secs: secs.unwrap_or(if q { 2.0 } else { 10.0 }),
                rps,
                common,
            };
            rt.block_on(connections::run(opts))
        }
        Command::Transcode {
            common,
            secs,
            workers,
            preset,
        } => {
            let opts = transcode::Options {
                secs: secs.unwrap_or(if common.quick { 20 } else { 120 }),
                workers,
                preset,
                common,
            };
            rt.block_on(transcode::run(opts))
        }
        Command::Shards {
            common,
            secs,
            repair_rate,
        } => {
            let opts = shards::Options {
                secs: secs.unwrap_or(if common.quick { 8 } else { 40 }),
                repair_rate,
                common,
            };
            rt.block_on(shards::run(opts))
        }
        Command::FloodClient {
            to,
            idle,
            slow,
            first,
            secs,
            nice,
        } => {
            rt.block_on(connections::flood_client(to, idle, slow, first, secs, nice));
            Ok(())
        }
        Command::Viewers { common, start, max } => {
            let opts = viewers::Options {
                start: start.unwrap_or(if common.quick { 4 } else { 25 }),
                max: max.unwrap_or(if common.quick { 8 } else { 3200 }),
                common,
            };
            rt.block_on(viewers::run(opts))
        }
    }
}
