//! The demo as a user runs it: deterministic for a seed, finds what its simulator planted, and
//! leaks no card number; its HTML report renders in a real headless browser.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use tillbridge_core::log::EmbeddedLog;
use tokio_util::sync::CancellationToken;

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_is_deterministic_and_finds_what_was_planted() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let first = tillbridge::demo::run(7, a.path(), CancellationToken::new())
        .await
        .unwrap();
    let second = tillbridge::demo::run(7, b.path(), CancellationToken::new())
        .await
        .unwrap();
    for f in ["report.json", "report.csv"] {
        assert_eq!(
            read(&a.path().join(f)),
            read(&b.path().join(f)),
            "{f} differs between runs"
        );
    }
    assert_eq!(first.dead_lettered, second.dead_lettered);
    assert_eq!(first.alerts, second.alerts);

    // Every dead-letter reason the simulator planted, once each (DECODE_ERROR twice).
    let reasons: Vec<(&str, u64)> = first
        .dead_lettered
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("CARD_DATA", 1),
            ("CLOCK_SKEW", 1),
            ("DECODE_ERROR", 2),
            ("DUPLICATE_CONFLICT", 1),
            ("INCONSISTENT_TOTAL", 1),
            ("INVALID_FIELD", 1),
            ("MISSING_FIELD", 1),
            ("OVERSIZED", 1),
        ]
    );
    assert!(first.duplicates > 0, "the fleet resends events");
    assert_eq!(first.events_in, first.accepted + first.duplicates + 9);

    // One alert subject per planted pattern.
    let subjects = |rule: &str| -> Vec<String> {
        first
            .alert_subjects
            .get(rule)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(subjects("OFFLINE_EXPOSURE"), vec!["store:S03"]);
    assert_eq!(subjects("OVERRIDE_RATE"), vec!["cashier:S05-C2"]);
    assert_eq!(subjects("SEQUENCE_GAP"), vec!["till:S06/T3"]);
    // S04/T1's event stamped ahead is dead-lettered by ingest and still judged by fraud-guard.
    assert_eq!(subjects("CLOCK_DRIFT"), vec!["till:S02/T3", "till:S04/T1"]);
    assert_eq!(subjects("RETURN_AFTER_REDEMPTION").len(), 1);
    let velocity = subjects("COUPON_VELOCITY");
    assert_eq!(velocity.len(), 2);
    assert!(velocity.iter().any(|s| s.starts_with("coupon:LE…2X#")));
    assert!(velocity.iter().any(|s| s.starts_with("coupon:FL…24#")));

    // The cases, from the report as an analyst reads it.
    let report: serde_json::Value =
        serde_json::from_slice(&read(&a.path().join("report.json"))).unwrap();
    let cases = report["cases"].as_array().unwrap();
    let mut kinds: Vec<&str> = cases.iter().map(|c| c["kind"].as_str().unwrap()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            "OFFLINE_NOT_ALLOWED",
            "OUTSIDE_VALIDITY",
            "OVER_LIMIT",
            "PER_PROFILE_LIMIT",
            "POINTS_DEFICIT",
            "UNKNOWN_COUPON"
        ]
    );
    assert_eq!(
        report["totals"]["deficit_points"], 300,
        "400 + 400 points against a balance of 500"
    );
    let leak = cases.iter().find(|c| c["subject"] == "LE…2X").unwrap();
    let timeline = leak["timeline"].as_array().unwrap();
    assert_eq!(timeline.len(), 3);
    // The first redemption in event time stands (the offline one at S03); the other two exceed.
    assert_eq!(timeline[0]["store_id"], "S03");
    assert_eq!(timeline[0]["offline"], true);
    let exceeding: i64 = timeline
        .iter()
        .filter(|t| t["verdict"] == "OVER_LIMIT")
        .map(|t| t["amount_minor"].as_i64().unwrap())
        .sum();
    assert_eq!(
        timeline
            .iter()
            .filter(|t| t["verdict"] == "OVER_LIMIT")
            .count(),
        2
    );
    assert_eq!(leak["exposure"]["EUR"].as_i64().unwrap(), exceeding);
    assert!(
        !cases.iter().any(|c| c["subject"] == "SU…EL"),
        "a released coupon is no case"
    );

    // No card digits in any topic or report file.
    let log = EmbeddedLog::open(&a.path().join("data/log"), 4).unwrap();
    let config = tillbridge_core::config::Config::default();
    for topic in config
        .topics
        .all()
        .into_iter()
        .filter(|t| *t != config.topics.till_events)
    {
        for r in log.read_all(topic).unwrap() {
            let text =
                String::from_utf8_lossy(r.payload.as_deref().unwrap_or_default()).into_owned();
            assert!(!text.contains("4111 1111"), "card digits on {topic}");
            assert!(
                !tillbridge_core::pan::contains(&text),
                "a card number on {topic}"
            );
        }
    }
    for f in ["report.json", "report.csv", "report.html"] {
        let text = String::from_utf8(read(&a.path().join(f))).unwrap();
        assert!(!text.contains("4111"), "card digits in {f}");
        assert!(!text.contains("LEAK-7Q2X"), "a full coupon code in {f}");
    }
}

/// The HTML report in headless Chromium: it renders, shows the cases, the compensating actions
/// and the alerts, sorts and filters the cases with its own script, and loads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_report_renders_in_a_headless_browser() {
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    let Some(chromium) = chromium else {
        eprintln!("SKIPPED: no chromium on PATH; scripts/test.sh installs it");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    tillbridge::demo::run(11, dir.path(), CancellationToken::new())
        .await
        .unwrap();
    let html = dir.path().join("report.html");
    let profile = dir.path().join("chromium-profile");
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ];
    // Chromium on `page` with `args` besides the common ones: what it printed.
    let browse = |args: &[String], page: &std::path::Path| -> String {
        let out = Command::new(chromium)
            .args(common)
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .arg(format!("file://{}", page.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = browse(&["--dump-dom".into()], &html);
    assert!(dom.contains("<svg"), "charts render");
    for needle in ["LE…2X", "POINTS_DEFICIT", "OVER_LIMIT", "S03"] {
        assert!(dom.contains(needle), "the rendered page shows {needle}");
    }
    let shot = dir.path().join("report.png");
    browse(
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,2000".into(),
        ],
        &html,
    );
    let png = read(&shot);
    assert!(
        png.len() > 10_000 && png.starts_with(b"\x89PNG"),
        "a real screenshot"
    );
    if let Ok(keep) = std::env::var("KEEP_REPORT_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }

    // The page's own script, driven in the browser: a copy of the page with the probe below as
    // the first script of its head clicks headers, types in the filter box, watches for any
    // load, and writes what it saw into the DOM, which Chromium dumps.
    let page = String::from_utf8(read(&html)).unwrap();
    for section in [
        "id=\"compensations\"",
        "id=\"alerts\"",
        "id=\"cases-table\"",
    ] {
        assert!(page.contains(section), "the page has {section}");
    }
    assert!(page.contains("<head>"));
    let probed = dir.path().join("report-probed.html");
    std::fs::write(
        &probed,
        page.replacen("<head>", &format!("<head><script>{PROBE}</script>"), 1),
    )
    .unwrap();
    let dom = browse(
        &["--virtual-time-budget=10000".into(), "--dump-dom".into()],
        &probed,
    );
    let json = dom
        .split_once("<pre id=\"probe-result\">")
        .and_then(|(_, rest)| rest.split_once("</pre>"))
        .map(|(j, _)| {
            j.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&")
        })
        .unwrap_or_else(|| panic!("the probe wrote no result: {dom}"));
    let p: serde_json::Value = serde_json::from_str(&json).unwrap();
    eprintln!("probe: {p}");
    let list = |k: &str| p[k].as_array().cloned().unwrap_or_default();
    let nums = |k: &str| -> Vec<i64> { list(k).iter().filter_map(|v| v.as_i64()).collect() };
    let texts = |k: &str| -> Vec<String> {
        list(k)
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    assert!(list("errors").is_empty(), "the probe failed: {p}");

    // Compensating actions and alerts, with rows.
    assert!(p["compensation_rows"].as_u64().unwrap() > 0, "{p}");
    assert!(p["alert_rows"].as_u64().unwrap() > 0, "{p}");
    let rules = texts("alert_rules");
    for rule in ["SEQUENCE_GAP", "COUPON_VELOCITY", "CLOCK_DRIFT"] {
        assert!(rules.iter().any(|r| r == rule), "{rule} in {rules:?}");
    }

    // Sorting: the cases come by exposure, descending; one click on the header sorts them
    // ascending, a second one descending again; a text column sorts as text.
    let before = nums("exposure_before");
    let (once, twice) = (nums("exposure_click1"), nums("exposure_click2"));
    assert!(before.len() > 2, "{p}");
    assert!(once.windows(2).all(|w| w[0] <= w[1]), "ascending: {once:?}");
    assert!(
        twice.windows(2).all(|w| w[0] >= w[1]),
        "descending: {twice:?}"
    );
    assert_ne!(once, before, "the click changed the order");
    let kinds = texts("kind_click1");
    let mut sorted = kinds.clone();
    sorted.sort();
    assert_eq!(kinds, sorted, "sorted by kind");

    // Filtering hides the cases (and their details) that do not match, and brings them back.
    let shown = texts("filter_visible");
    assert!(!shown.is_empty(), "{p}");
    assert!(
        shown.iter().all(|r| r.contains("POINTS_DEFICIT")),
        "{shown:?}"
    );
    assert!(p["filter_hidden"].as_u64().unwrap() > 0, "{p}");
    assert_eq!(p["sections_visible"].as_u64(), Some(shown.len() as u64));
    assert_eq!(p["after_clear_visible"].as_u64(), Some(before.len() as u64));

    // No network: nothing loaded, nothing blocked by the page's policy, nothing referenced.
    assert!(list("resources").is_empty(), "loads: {p}");
    assert!(list("csp").is_empty(), "blocked loads: {p}");
    assert!(list("external_refs").is_empty(), "references: {p}");
}

/// Injected into a copy of the HTML report by the browser test: drives the page's own script
/// and records every load the page attempts (Resource Timing, Content-Security-Policy
/// violations, `src`/`href` attributes that leave the page).
const PROBE: &str = r##"(function () {
  var seen = { csp: [], resources: [] };
  document.addEventListener("securitypolicyviolation", function (e) {
    seen.csp.push(e.violatedDirective + " " + e.blockedURI);
  });
  if (window.PerformanceObserver) {
    new PerformanceObserver(function (list) {
      list.getEntries().forEach(function (e) { seen.resources.push(e.name); });
    }).observe({ type: "resource", buffered: true });
  }
  function column(table, i) {
    return Array.prototype.map.call(table.tBodies[0].rows, function (r) {
      var c = r.cells[i];
      var v = c.getAttribute("data-sort");
      return v !== null ? v : c.textContent.trim();
    });
  }
  function headerIndex(table, name) {
    var cells = table.tHead.rows[0].cells;
    for (var i = 0; i < cells.length; i++) {
      if (cells[i].textContent.trim() === name) { return i; }
    }
    return -1;
  }
  function visible(el) { return !el.hidden && el.getClientRects().length > 0; }
  window.addEventListener("load", function () {
    var out = { errors: [] };
    try {
      var cases = document.getElementById("cases-table");
      var comp = document.getElementById("compensations-table");
      var alerts = document.getElementById("alerts-table");
      out.compensation_rows = comp ? comp.tBodies[0].rows.length : 0;
      out.retraction_rows = comp ? comp.querySelectorAll("tr.retract").length : 0;
      out.alert_rows = alerts ? alerts.tBodies[0].rows.length : 0;
      out.alert_rules = alerts ? column(alerts, headerIndex(alerts, "Rule")) : [];
      var ex = headerIndex(cases, "Exposure"), kind = headerIndex(cases, "Kind");
      out.exposure_before = column(cases, ex).map(Number);
      cases.tHead.rows[0].cells[ex].click();
      out.exposure_click1 = column(cases, ex).map(Number);
      cases.tHead.rows[0].cells[ex].click();
      out.exposure_click2 = column(cases, ex).map(Number);
      cases.tHead.rows[0].cells[kind].click();
      out.kind_click1 = column(cases, kind);
      var input = document.querySelector("input[data-filter='cases-table']");
      input.value = "points_deficit";
      input.dispatchEvent(new Event("input", { bubbles: true }));
      var rows = Array.prototype.slice.call(cases.tBodies[0].rows);
      out.filter_visible = rows.filter(visible).map(function (r) { return r.textContent; });
      out.filter_hidden = rows.filter(function (r) { return !visible(r); }).length;
      out.sections_visible = Array.prototype.filter.call(
        document.querySelectorAll("section.case"), visible).length;
      input.value = "";
      input.dispatchEvent(new Event("input", { bubbles: true }));
      out.after_clear_visible = rows.filter(visible).length;
      out.external_refs = Array.prototype.filter.call(
        document.querySelectorAll("[src],[href],[action],[data],[poster]"),
        function (el) {
          var v = el.getAttribute("src") || el.getAttribute("href") || el.getAttribute("action") ||
            el.getAttribute("data") || el.getAttribute("poster") || "";
          return v.charAt(0) !== "#";
        }).map(function (el) { return el.outerHTML.slice(0, 120); });
    } catch (e) {
      out.errors.push(String(e));
    }
    setTimeout(function () {
      out.csp = seen.csp;
      out.resources = seen.resources.concat(performance.getEntriesByType("resource").map(function (e) { return e.name; }));
      var pre = document.createElement("pre");
      pre.id = "probe-result";
      pre.textContent = JSON.stringify(out);
      document.body.appendChild(pre);
    }, 100);
  });
})();"##;

/// Every sled directory (state of each stage, the embedded log) under `dir`.
#[cfg(unix)]
fn sled_dirs(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            if p.join("conf").exists() {
                out.push(p.clone());
            }
            sled_dirs(&p, out);
        }
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_log_and_reports_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let out = tempfile::tempdir().unwrap();
    tillbridge::demo::run(5, out.path(), CancellationToken::new())
        .await
        .unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let mut dirs = Vec::new();
    sled_dirs(out.path(), &mut dirs);
    assert!(dirs.len() >= 4, "the log and three stages' state: {dirs:?}");
    for d in &dirs {
        assert_eq!(mode(d), 0o700, "{}", d.display());
    }
    for name in ["report.json", "report.csv", "report.html"] {
        assert_eq!(mode(&out.path().join(name)), 0o600, "{name}");
    }
}
