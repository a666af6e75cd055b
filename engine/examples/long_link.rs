//! Throughput of Trackshift's QUIC transport on long fat links, simulated deterministically
//! (issue 15): quinn-proto's two endpoints in virtual time over a drop-tail bottleneck with
//! a propagation delay and seeded random loss (`long_link/sim.rs` has the model).
//! `scripts/long-link.sh` builds it in release and prints the whole table.
//!
//! ```text
//! long_link [OPTIONS]          # one run, a report and its table row
//! long_link table [OPTIONS]    # RTT {50, 200} ms × loss {0, 0.1, 1} % × {newreno, cubic, bbr}
//!
//!   --rtt-ms N          round-trip propagation delay (50)
//!   --loss PCT          random loss each way, percent of datagrams (0)
//!   --rate-mbit N       bottleneck rate each way (1000)
//!   --seconds N         virtual duration of each run (20)
//!   --in-flight-mib N   application window W: chunk bytes not yet acked (256)
//!   --chunk-kib N       chunk size, one stream each (4096)
//!   --congestion C      cubic | newreno | bbr (cubic)
//!   --seed N            seed of the loss and the endpoints' RNGs (1)
//!   --queue-bdp X       drop-tail queue per direction, in BDPs (1)
//!   --seeds N           table: seeds per lossy cell, median and range shown (3)
//! ```

#[path = "common/proc_self.rs"]
mod proc_self;
#[path = "long_link/sim.rs"]
mod sim;

use std::time::Duration;

use trackshift_engine::tls::GatewayIdentity;
use trackshift_engine::transport::Congestion;

use sim::{Report, Scenario};

const USAGE: &str = "usage: long_link [table] [--rtt-ms N] [--loss PCT] [--rate-mbit N] [--seconds N] \
[--in-flight-mib N] [--chunk-kib N] [--congestion cubic|newreno|bbr] [--seed N] [--queue-bdp X] [--seeds N]";

fn fail(msg: &str) -> ! {
    eprintln!("long_link: {msg}\n{USAGE}");
    std::process::exit(2)
}

/// Command line: the base scenario, whether to run the grid, and seeds per lossy cell.
struct Args {
    table: bool,
    base: Scenario,
    seeds: u64,
}

fn parse_args() -> Args {
    let mut args = Args {
        table: false,
        base: Scenario::default(),
        seeds: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if arg == "table" {
            args.table = true;
            continue;
        }
        if arg == "-h" || arg == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it
            .next()
            .unwrap_or_else(|| fail(&format!("{arg} needs a value")));
        let num = |v: &str| -> f64 {
            match v.trim_end_matches('%').parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => x,
                _ => fail(&format!("{arg}: {v:?} is not a non-negative number")),
            }
        };
        let b = &mut args.base;
        match arg.as_str() {
            "--rtt-ms" => b.rtt = Duration::from_secs_f64(num(&value) / 1e3),
            "--loss" => {
                let pct = num(&value);
                if pct > 100.0 {
                    fail("--loss is a percentage, at most 100");
                }
                b.loss = pct / 100.0;
            }
            "--rate-mbit" => b.rate_bps = (num(&value) * 1e6) as u64,
            "--seconds" => b.duration = Duration::from_secs_f64(num(&value)),
            "--in-flight-mib" => b.in_flight = (num(&value) * 1048576.0) as u64,
            "--chunk-kib" => b.chunk = ((num(&value) * 1024.0) as u64).max(1),
            "--congestion" => {
                b.congestion = value.parse::<Congestion>().unwrap_or_else(|e| fail(&e))
            }
            "--seed" => b.seed = num(&value) as u64,
            "--queue-bdp" => b.queue_bdp = num(&value),
            "--seeds" => args.seeds = (num(&value) as u64).max(1),
            _ => fail(&format!("unknown option {arg}")),
        }
    }
    if args.base.rate_bps == 0 || args.base.duration.is_zero() {
        fail("--rate-mbit and --seconds must be positive");
    }
    args
}

/// CPU seconds (user + system) this process has used so far.
fn cpu_seconds() -> f64 {
    let (user, sys) = proc_self::cpu_seconds();
    user + sys
}

/// One run, with the CPU seconds it took.
fn measure(sc: &Scenario, identity: &GatewayIdentity) -> (Report, f64) {
    let before = cpu_seconds();
    let report = sim::run(sc, identity);
    let cpu = cpu_seconds() - before;
    if let Some(f) = &report.failure {
        eprintln!("long_link: run failed ({}): {f}", describe(sc));
    }
    (report, cpu)
}

fn describe(sc: &Scenario) -> String {
    format!(
        "rtt={}ms loss={}% rate={}Mbit/s {} seed={}",
        sc.rtt.as_millis(),
        sc.loss * 100.0,
        sc.rate_bps / 1_000_000,
        sc.congestion,
        sc.seed
    )
}

/// Runs of one grid cell (one per seed), summarised.
struct Cell {
    sc: Scenario,
    runs: Vec<(Report, f64)>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `median` alone for one run, `median (min–max)` for several.
fn spread(values: Vec<f64>, digits: usize) -> String {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let n = values.len();
    let m = median(values);
    if n <= 1 {
        format!("{m:.digits$}")
    } else {
        format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})")
    }
}

const HEADER: &str = "| RTT | loss | controller | seeds | goodput Mbit/s (whole run) | goodput Mbit/s (2nd half) | % of link (2nd half) | in flight / BDP (2nd half) | cwnd / BDP (2nd half) | dropped at the queue, % of datagrams | CPU s per run |\n\
|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|";

fn row(cell: &Cell) -> String {
    let sc = &cell.sc;
    let col = |f: &dyn Fn(&Report) -> f64, digits| {
        spread(cell.runs.iter().map(|(r, _)| f(r)).collect(), digits)
    };
    let link = sc.rate_bps as f64;
    let failed = cell
        .runs
        .iter()
        .filter(|(r, _)| r.failure.is_some())
        .count();
    format!(
        "| {} ms | {} % | {} | {}{} | {} | {} | {} | {} | {} | {} | {:.1} |",
        sc.rtt.as_millis(),
        sc.loss * 100.0,
        sc.congestion,
        cell.runs.len(),
        if failed > 0 {
            format!(" ({failed} failed)")
        } else {
            String::new()
        },
        col(&|r| r.goodput_bps / 1e6, 0),
        col(&|r| r.steady_bps / 1e6, 0),
        col(&|r| r.steady_bps / link * 100.0, 1),
        col(&|r| r.in_flight_steady / r.bdp, 2),
        col(&|r| r.cwnd_steady / r.bdp, 2),
        col(
            &|r| r.queue_drops as f64 * 100.0 / r.datagrams.max(1) as f64,
            1
        ),
        median(cell.runs.iter().map(|(_, c)| *c).collect()),
    )
}

fn main() {
    let args = parse_args();
    let dir = tempfile::tempdir().expect("a temporary directory for the gateway identity");
    let identity =
        GatewayIdentity::load_or_generate(dir.path()).expect("a generated gateway identity");
    let started = cpu_seconds();
    let base = &args.base;
    println!(
        "link {} Mbit/s each way, drop-tail queue {} BDP, {} s virtual per run, W = {} MiB in {} KiB chunks",
        base.rate_bps / 1_000_000,
        base.queue_bdp,
        base.duration.as_secs_f64(),
        base.in_flight as f64 / 1048576.0,
        base.chunk / 1024,
    );
    if !args.table {
        let (r, cpu) = measure(base, &identity);
        println!("{}", describe(base));
        println!(
            "delivered={} B (second half {} B) goodput={:.1} Mbit/s steady={:.1} Mbit/s in_flight/BDP={:.2} cwnd/BDP={:.2} \
chunks={} acks={} datagrams={} queue_drops={} random_drops={} lost_packets={} congestion_events={} \
srtt={:?} connected_after={:?} max_receive_window={:.1} MiB cpu={cpu:.2}s",
            r.delivered,
            r.delivered_second_half,
            r.goodput_bps / 1e6,
            r.steady_bps / 1e6,
            r.in_flight_steady / r.bdp,
            r.cwnd_steady / r.bdp,
            r.chunks_done,
            r.acks,
            r.datagrams,
            r.queue_drops,
            r.random_drops,
            r.lost_packets,
            r.congestion_events,
            r.srtt,
            r.connected_after,
            f64::from(r.max_receive_window) / 1048576.0,
        );
        if let Some(f) = &r.failure {
            println!("failure: {f}");
        }
        println!("\n{HEADER}");
        println!(
            "{}",
            row(&Cell {
                sc: base.clone(),
                runs: vec![(r, cpu)]
            })
        );
        return;
    }
    println!("\n{HEADER}");
    for rtt in [50u64, 200] {
        for loss in [0.0, 0.001, 0.01] {
            for congestion in [Congestion::NewReno, Congestion::Cubic, Congestion::Bbr] {
                let seeds = if loss > 0.0 { args.seeds } else { 1 };
                let mut cell = Cell {
                    sc: Scenario {
                        rtt: Duration::from_millis(rtt),
                        loss,
                        congestion,
                        ..base.clone()
                    },
                    runs: Vec::new(),
                };
                for i in 0..seeds {
                    let sc = Scenario {
                        seed: base.seed + i,
                        ..cell.sc.clone()
                    };
                    let (r, cpu) = measure(&sc, &identity);
                    eprintln!(
                        "{}: steady {:.0} Mbit/s, cpu {cpu:.1} s",
                        describe(&sc),
                        r.steady_bps / 1e6
                    );
                    cell.runs.push((r, cpu));
                }
                println!("{}", row(&cell));
            }
        }
    }
    println!(
        "\nCPU: {:.1} s for the whole table (one thread). Goodput counts what the receiver read; \
about 96 % of the link is the payload ceiling (IP, UDP and QUIC headers), so a second half above \
it is data held behind losses in the first half and released in the second.",
        cpu_seconds() - started
    );
}
