//! `lmhost serve` in a real headless Chromium, driven through chromedriver (WebDriver): the runs
//! table lists the runs, grouping collapses seeds, the numbers on the page are `report.json`'s, a
//! run being written shows its new points, paths outside the runs are refused, and a token guards
//! a server bound beyond loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use lmhost_tests::{built, run_folders, SMALL_MODEL};
use serde_json::{json, Value};

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `lmhost serve ARGS` in `dir` on a free port; its URL (as printed) and the process.
fn serve(dir: &Path, args: &[&str]) -> (String, Killed) {
    let mut child = Command::new(built().lmhost_path())
        .arg("serve")
        .args(args)
        .args(["--port", "0"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.split_whitespace().nth(1).unwrap_or_else(|| panic!("no URL in {line:?}")).to_owned();
    (url, Killed(child))
}

/// Sends one raw request (the path exactly as given, not normalised) and returns the status.
fn status_of(url: &str, path: &str) -> u16 {
    let address =
        url.trim_start_matches("http://").split('/').next().unwrap().replace("localhost", "127.0.0.1");
    let mut stream = TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// chromedriver on a free port, and a headless Chromium session through it.
async fn browser() -> (Client, Killed) {
    let port = free_port();
    let driver = std::env::var("LMHOST_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let child = Command::new(&driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {driver} ({e}): scripts/test.sh installs chromium-driver"));
    let child = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let profile = tempfile::tempdir().unwrap().keep();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": lmhost_tests::chromium(),
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1500,2000", format!("--user-data-dir={}", profile.display())],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session");
    (client, child)
}

/// Evaluates `script` in the page until it returns something truthy (or the time is up).
async fn until(c: &Client, script: &str, what: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = c.execute(script, vec![]).await.unwrap();
        let truthy = match &v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        if truthy {
            return v;
        }
        assert!(Instant::now() < deadline, "waited 30 s for {what}; last: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A sweep of 2 lrs × 2 seeds, both arms: 8 finished runs in `dir/runs`.
fn fixture(dir: &Path) -> Vec<PathBuf> {
    let plugin = built().plugin("value_norm");
    let mut args = vec!["run", plugin.to_str().unwrap()];
    args.extend(SMALL_MODEL);
    args.extend(["steps=6", "eval_every=3", "log_every=3", "lr=1e-3,2e-3", "seeds=2", "--no-report"]);
    let ran = built().lmhost(dir, &args);
    assert!(ran.success(), "{}", ran.stderr());
    let sweep = std::fs::read_dir(dir.join("runs")).unwrap().next().unwrap().unwrap().path();
    run_folders(&sweep).into_iter().map(|r| r.path).collect()
}

/// A train row and a val row at `step`, as a training run writes them.
fn rows(step: u64) -> Vec<reports::StatsRow> {
    let row = |split, loss: f64| {
        let train = split == reports::Split::Train;
        reports::StatsRow {
            flops: Some(step as f64 * 1e8),
            loss: Some(loss),
            accuracy: Some(0.1),
            lr: train.then_some(1e-3),
            grad_norm: train.then_some(1.0),
            tokens_per_s: train.then_some(2560.0),
            ..reports::StatsRow::at(step, step * 256, step as f64 * 0.1, split)
        }
    };
    vec![
        row(reports::Split::Train, 8.0 - step as f64 * 0.01),
        row(reports::Split::Val, 8.1 - step as f64 * 0.01),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_lists_groups_compares_and_follows_a_run_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let runs = fixture(dir.path());
    assert_eq!(runs.len(), 8);
    let (url, _server) = serve(dir.path(), &["runs"]);
    let (c, _driver) = browser().await;
    c.goto(&url).await.unwrap();

    // The runs table: every run, finished.
    until(&c, "return document.querySelectorAll('#runs tbody tr').length === 8", "8 rows").await;
    let statuses = c
        .execute("return [...document.querySelectorAll('#runs tbody td.status-finished')].length", vec![])
        .await
        .unwrap();
    assert_eq!(statuses, json!(8));
    // lr differs across the runs, so it is a column and a key to group by.
    until(&c, "return document.querySelector('#group-keys input[value=lr]') !== null", "lr as a group key")
        .await;

    // Group by plugin and lr: four groups, each of two seeds.
    c.find(Locator::Css("#group-keys input[value=plugin]")).await.unwrap().click().await.unwrap();
    c.find(Locator::Css("#group-keys input[value=lr]")).await.unwrap().click().await.unwrap();
    let ns = until(
        &c,
        "const n = [...document.querySelectorAll('#runs tbody tr.group td.n')].map(td => td.textContent); return n.length === 4 && n",
        "four groups",
    )
    .await;
    assert_eq!(ns, json!(["2", "2", "2", "2"]));

    // Select them all: the summary is `lmhost compare`'s, number for number.
    c.find(Locator::Css("#select-all")).await.unwrap().click().await.unwrap();
    let page_rows = until(
        &c,
        "const rows = [...document.querySelectorAll('#summary tbody tr')].map(tr => [...tr.children].map(td => td.textContent)); return rows.length && rows",
        "the summary table",
    )
    .await;
    let mut args = vec!["compare".to_owned()];
    args.extend(runs.iter().map(|r| r.display().to_string()));
    args.extend(["--out".into(), "report".into()]);
    let compared = built().lmhost(dir.path(), &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(compared.success(), "{}", compared.stderr());
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report/report.json")).unwrap())
            .unwrap();
    let summaries = report["summaries"].as_array().unwrap();
    let page_rows = page_rows.as_array().unwrap();
    assert_eq!(page_rows.len(), summaries.len());
    for (row, s) in page_rows.iter().zip(summaries) {
        assert_eq!(row[0], s["label"]);
        let loss =
            format!("{:.4} ± {:.4}", s["loss_mean"].as_f64().unwrap(), s["loss_std"].as_f64().unwrap());
        assert_eq!(row[3].as_str().unwrap(), loss, "{row}");
        if let Some(p) = s["p_value"].as_f64() {
            assert_eq!(row[7].as_str().unwrap(), format!("{p:.3}"), "{row}");
        }
    }
    let plots = until(
        &c,
        "const n = document.querySelectorAll('#plots svg.plot').length; return n >= 4 && n",
        "the plots",
    )
    .await;
    assert!(plots.as_u64().unwrap() >= 4);

    // A screenshot of the page with its plots: a blank page is a few kB.
    let png = c.screenshot().await.unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert!(png.len() > 40_000, "{} bytes", png.len());

    // A run being written: its stats grow while the page is open, and the page follows.
    let live = dir.path().join("runs/live");
    std::fs::create_dir(&live).unwrap();
    let record =
        std::fs::read_to_string(runs[0].join("run.json")).unwrap().replace("\"finished\"", "\"running\"");
    std::fs::write(live.join("run.json"), record).unwrap();
    let mut writer = reports::StatsWriter::create(&live.join("stats.arrows"), "live").unwrap();
    for step in 1..=3 {
        rows(step).into_iter().for_each(|r| writer.push(r));
    }
    writer.flush().unwrap();
    // Each click redraws the keys, so take the checked ones one at a time.
    let ungroup = "document.querySelector('#clear').click(); let i; while ((i = document.querySelector('#group-keys input:checked'))) i.click();";
    c.execute(ungroup, vec![]).await.unwrap();
    until(&c, "return document.querySelectorAll('#runs tbody tr').length === 9", "the live run's row").await;
    c.execute("document.querySelector('#runs tbody tr[data-key=\"0/live\"] input').click()", vec![])
        .await
        .unwrap();
    let points = "const p = document.querySelector('figure[data-slug=train_loss] path.series'); return p && Number(p.dataset.points)";
    let before = until(&c, points, "the live run's train loss").await.as_u64().unwrap();
    assert_eq!(before, 3);
    let started = Instant::now();
    for step in 4..=9 {
        rows(step).into_iter().for_each(|r| writer.push(r));
    }
    writer.flush().unwrap();
    until(&c, &format!("{points} === 9"), "the new points").await;
    eprintln!(
        "the page showed new stats rows {:.1} s after they were flushed",
        started.elapsed().as_secs_f64()
    );
    let status = c
        .execute(
            "return document.querySelector('#runs tbody tr[data-key=\"0/live\"] td.status-running') !== null",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(true));

    // The run page: its record and the commands that continue it.
    c.execute("document.querySelector('#runs tbody tr[data-key=\"0/live\"] .run-link').click()", vec![])
        .await
        .unwrap();
    let detail = until(&c, "const d = document.querySelector('#run-detail'); return d.textContent.includes('lmhost resume') && d.textContent", "the run page").await;
    assert!(detail.as_str().unwrap().contains("lmhost branch"));
    c.close().await.unwrap();

    // Read-only, inside the folders only.
    let inside =
        format!("/files/0/{}/run.json", runs[0].strip_prefix(dir.path().join("runs")).unwrap().display());
    assert_eq!(status_of(&url, &inside), 200);
    assert_eq!(status_of(&url, "/files/0/../../../../etc/passwd"), 403);
    assert_eq!(status_of(&url, "/files/0/%2e%2e/%2e%2e/%2e%2e/etc/passwd"), 403);
    assert_eq!(status_of(&url, "/files/7/x"), 404);
    std::os::unix::fs::symlink("/etc", dir.path().join("runs/outside")).unwrap();
    assert_eq!(status_of(&url, "/files/0/outside/passwd"), 403);
    assert_eq!(status_of(&url, "/files/0/nothing-here.json"), 404);
}

#[test]
fn beyond_loopback_every_request_needs_the_printed_token() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("runs")).unwrap();
    let (url, _server) = serve(dir.path(), &["runs", "--host", "0.0.0.0"]);
    let (base, token) = url.split_once("?token=").unwrap_or_else(|| panic!("no token in {url}"));
    assert_eq!(token.len(), 32);
    assert_eq!(status_of(base, "/api/runs"), 401);
    assert_eq!(status_of(base, "/api/runs?token=wrong"), 401);
    assert_eq!(status_of(base, &format!("/api/runs?token={token}")), 200);
    let (local, _server) = serve(dir.path(), &["runs"]);
    assert!(!local.contains("token"), "{local}");
    assert_eq!(status_of(&local, "/api/runs"), 200);
    let missing = built().lmhost(dir.path(), &["serve", "no-such-folder"]);
    assert_eq!(missing.error_lines().len(), 1);
    assert!(missing.stderr().contains("no-such-folder is not a folder of runs"), "{}", missing.stderr());
}
