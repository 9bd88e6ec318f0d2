//! The dedup index holding N ids (`DEDUP_IDS`, default 2,000,000): resident memory, disk, the
//! insert rate (ids checked new and written in batches of 10,000, sled flushed every
//! `DEDUP_FLUSH_EVERY` batches, default 1 as ingest's commits do), the cost of a check of an id
//! it holds (the duplicate path) and of one it does not, and the time and memory to reload it
//! from disk in a fresh process (what a restart costs). `DEDUP_CACHE_MIB` sets sled's cache
//! capacity (default: sled's, 1 GiB). Prints figures; asserts nothing.
//!
//! The issue's 10,000,000 ids do not fit this 24 GiB machine while they are being written: sled
//! 0.34's memory grows by 1 to 4 KB per id written (docs/PERFORMANCE.md), so the default is
//! 2,000,000.
//!
//! ```sh
//! cargo bench -p tillbridge-ingest --bench dedup_index
//! DEDUP_IDS=1000000 cargo bench -p tillbridge-ingest --bench dedup_index
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Instant;

use tillbridge_ingest::{DedupIndex, Seen};
use uuid::Uuid;

// The allocator of the `tillbridge` binary, so resident memory is what the process would hold.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 10_000;

fn resident_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn disk_mib(dir: &Path) -> f64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(dir) as f64 / (1024.0 * 1024.0)
}

fn id(i: u64) -> Uuid {
    // Random-looking ids, as tills mint them (v4), but reproducible.
    Uuid::from_u128((i as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835) | 1)
}

fn hash(i: u64) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&i.to_le_bytes());
    h[8..16].copy_from_slice(&(!i).to_le_bytes());
    h
}

fn open(dir: &Path) -> (sled::Db, DedupIndex) {
    let mut config = sled::Config::new().path(dir);
    if let Some(mib) = std::env::var("DEDUP_CACHE_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        config = config.cache_capacity(mib * 1024 * 1024);
    }
    let db = config.open().unwrap();
    let index = DedupIndex::open(db.open_tree("dedup_expiry").unwrap()).unwrap();
    (db, index)
}

fn main() {
    // `cargo bench` passes `--bench`; a child started by this bench passes `reload <dir> <n>`.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("reload") {
        let (dir, n) = (Path::new(&args[2]), args[3].parse::<usize>().unwrap());
        let before = resident_mib();
        let started = Instant::now();
        let (_db, index) = open(dir);
        let took = started.elapsed().as_secs_f64();
        assert_eq!(index.len(), n);
        println!(
            "reload in a fresh process:  {took:>8.1} s ({:.0} ids/s), resident {:.0} MiB (was {before:.0} MiB before opening)",
            n as f64 / took,
            resident_mib()
        );
        return;
    }
    let n: u64 = std::env::var("DEDUP_IDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let flush_every: usize = std::env::var("DEDUP_FLUSH_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    println!("dedup index bench: {n} ids, batches of {BATCH}, flushed every {flush_every}");
    let base_rss = resident_mib();
    let (db, mut index) = open(&dir);
    let t0 = 1_700_000_000_000i64;

    let started = Instant::now();
    let mut i = 0u64;
    let mut batches = 0usize;
    while i < n {
        let end = (i + BATCH as u64).min(n);
        for j in i..end {
            let seen = index.check(id(j), hash(j), t0 + j as i64, (j % 4) as i32);
            assert_eq!(seen.unwrap(), Seen::New);
        }
        let staged = index.stage(None).unwrap();
        index.write(staged).unwrap();
        batches += 1;
        if batches % flush_every == 0 {
            db.flush().unwrap();
        }
        i = end;
    }
    db.flush().unwrap();
    let took = started.elapsed().as_secs_f64();
    println!(
        "insert (check new + write):  {took:>8.1} s ({:.0} ids/s, {:.2} us/id)",
        n as f64 / took,
        took * 1e6 / n as f64
    );
    println!(
        "resident memory:             {:>8.0} MiB ({:.0} MiB before opening, {:.1} bytes/id)",
        resident_mib(),
        base_rss,
        (resident_mib() - base_rss) * 1024.0 * 1024.0 / n as f64
    );
    println!(
        "disk:                        {:>8.0} MiB ({:.1} bytes/id)",
        disk_mib(&dir),
        disk_mib(&dir) * 1024.0 * 1024.0 / n as f64
    );

    let probes = 1_000_000u64.min(n);
    let started = Instant::now();
    for k in 0..probes {
        let j = (k * 7_919) % n;
        assert_eq!(index.check(id(j), hash(j), t0, 0).unwrap(), Seen::Duplicate);
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "check, id held (duplicate):  {:>8.3} us/check",
        took * 1e6 / probes as f64
    );
    let started = Instant::now();
    for k in 0..probes {
        let j = n + k;
        assert_eq!(index.check(id(j), hash(j), t0, 0).unwrap(), Seen::New);
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "check, new id:               {:>8.3} us/check",
        took * 1e6 / probes as f64
    );
    drop(index);
    drop(db);

    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["reload", &dir.display().to_string(), &n.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
