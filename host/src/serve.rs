//! `lmhost serve`: a local, read-only web dashboard of every run under the given folders. The
//! page (one embedded HTML file, no network) lists the runs, filters, sorts and groups them, and
//! draws the report's panels for a selection, polling so that a run in training updates within
//! seconds; every table and plot comes from the `reports` crate, as `lmhost compare` makes them.
//! It binds 127.0.0.1 by default; on any other address every request needs the token it prints.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use reports::{Band, CompareOptions, Split, XAxis};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::run_store::RunStore;

/// The dashboard page, with its script and style.
const PAGE: &str = include_str!("serve/dashboard.html");

/// The most of `worker.log` a run page shows.
const LOG_TAIL: u64 = 16 * 1024;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Runs folders to show [default: runs].
    folders: Vec<PathBuf>,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The address to bind; any but a loopback one requires the token printed at start.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
}

/// What the server knows: the folders it serves and the runs it has read.
struct Dashboard {
    /// Canonical roots; a run's key starts with its root's index.
    roots: Vec<PathBuf>,
    token: Option<String>,
    cache: Mutex<HashMap<PathBuf, Cached>>,
}

/// A run as last read, with the file times it was read at.
struct Cached {
    stamp: Stamp,
    run: Option<Arc<reports::Run>>,
    record: Value,
}

/// When `run.json` and `stats.arrows` last changed, and how long the stats were.
type Stamp = (Option<SystemTime>, Option<SystemTime>, u64);

fn stamp(dir: &Path) -> Stamp {
    let meta = |f: &str| std::fs::metadata(dir.join(f)).ok();
    let (record, stats) = (meta("run.json"), meta("stats.arrows"));
    (
        record.and_then(|m| m.modified().ok()),
        stats.as_ref().and_then(|m| m.modified().ok()),
        stats.map_or(0, |m| m.len()),
    )
}

/// One row of the runs table.
#[derive(Serialize)]
struct RunRow {
    key: String,
    id: String,
    status: String,
    arm: String,
    plugin: String,
    variant: Option<String>,
    seed: Option<u64>,
    tokens: Option<u64>,
    tokens_per_s: Option<f64>,
    val_loss: Option<f64>,
    test_loss: Option<f64>,
    config: BTreeMap<String, Value>,
    /// Changes whenever the run's files do (the page refetches its plots then).
    version: String,
}

impl Dashboard {
    /// Every run folder under the roots, with its key (`<root>/<path under it>`).
    fn run_dirs(&self) -> Vec<(String, PathBuf)> {
        self.roots
            .iter()
            .enumerate()
            .flat_map(|(i, root)| {
                RunStore::new(root).run_dirs().into_iter().map(move |d| {
                    let rel = d.strip_prefix(root).unwrap_or(&d).to_string_lossy().into_owned();
                    (format!("{i}/{rel}"), d)
                })
            })
            .collect()
    }

    /// The run at `dir`, read again only when its files changed (`now`: their stamp).
    fn read(&self, dir: &Path, now: Stamp) -> (Option<Arc<reports::Run>>, Value, Stamp) {
        let mut cache = self.cache.lock().expect("the cache lock");
        if let Some(c) = cache.get(dir).filter(|c| c.stamp == now) {
            return (c.run.clone(), c.record.clone(), now);
        }
        let record = std::fs::read_to_string(dir.join("run.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        // A torn or growing stats file reads up to its last whole batch; an empty run has none.
        let run = reports::Run::load(dir).ok().map(Arc::new);
        cache.insert(dir.to_owned(), Cached { stamp: now, run: run.clone(), record: record.clone() });
        (run, record, now)
    }

    fn row(&self, key: String, dir: &Path, now: Stamp) -> RunRow {
        let (run, record, stamp) = self.read(dir, now);
        let version = format!("{:?}{:?}{}", stamp.0, stamp.1, stamp.2);
        let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
        match run {
            Some(r) => RunRow {
                key,
                id: r.id.clone(),
                status: r.status.clone(),
                arm: r.arm.clone(),
                plugin: r.plugin.clone(),
                variant: r.variant.clone(),
                seed: Some(r.seed),
                tokens: Some(r.tokens()),
                tokens_per_s: r
                    .tokens_per_s
                    .or_else(|| r.stats.rows.iter().rev().find_map(|x| x.tokens_per_s)),
                val_loss: r.final_val().map(|v| v.0),
                test_loss: r.final_on(Split::Test).map(|v| v.0),
                config: r.config.clone(),
                version,
            },
            None => RunRow {
                key,
                id: text(&record["id"]),
                status: text(&record["status"]),
                arm: text(&record["arm"]),
                plugin: text(&record["plugin"]["name"]),
                variant: record["plugin"]["variant"].as_str().map(str::to_owned),
                seed: record["config"]["run"]["seed"].as_u64(),
                tokens: None,
                tokens_per_s: None,
                val_loss: None,
                test_loss: None,
                config: reports::runs::config_of(&record),
                version,
            },
        }
    }

    /// The folder of run `key`, refusing any key that would leave the roots.
    fn resolve(&self, key: &str) -> Result<PathBuf, StatusCode> {
        let (root, rel) = key.split_once('/').ok_or(StatusCode::NOT_FOUND)?;
        let root = root.parse::<usize>().ok().and_then(|i| self.roots.get(i)).ok_or(StatusCode::NOT_FOUND)?;
        let rel = Path::new(rel);
        if rel.as_os_str().is_empty()
            || rel.as_os_str().to_string_lossy().contains('\0')
            || rel.components().any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(StatusCode::FORBIDDEN);
        }
        let path = root.join(rel).canonicalize().map_err(|_| StatusCode::NOT_FOUND)?;
        // A symlink may point anywhere: what it resolves to must still be under the root.
        if !path.starts_with(root) {
            return Err(StatusCode::FORBIDDEN);
        }
        Ok(path)
    }

    fn runs(&self, keys: &str) -> Result<Vec<reports::Run>, (StatusCode, String)> {
        keys.split(',')
            .filter(|k| !k.is_empty())
            .map(|k| {
                let dir = self.resolve(k).map_err(|s| (s, format!("no run {k}")))?;
                let (run, _, _) = self.read(&dir, stamp(&dir));
                run.map(|r| (*r).clone())
                    .ok_or((StatusCode::UNPROCESSABLE_ENTITY, format!("{k} has no stats yet")))
            })
            .collect()
    }
}

/// The view of a selection the page asks for: the `compare` flags, in their words.
#[derive(Deserialize)]
struct View {
    runs: String,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    split: Option<String>,
    #[serde(default)]
    band: Option<String>,
    #[serde(default)]
    smooth: Option<f64>,
    #[serde(default)]
    x_min: Option<f64>,
    #[serde(default)]
    x_max: Option<f64>,
}

/// A `compare` flag's value, as the command line spells it.
fn flag<T: clap::ValueEnum>(value: &Option<String>, default: T) -> Result<T, (StatusCode, String)> {
    match value {
        None => Ok(default),
        Some(v) => T::from_str(v, true).map_err(|e| (StatusCode::BAD_REQUEST, e)),
    }
}

impl View {
    fn comparison(&self, d: &Dashboard) -> Result<reports::Comparison, (StatusCode, String)> {
        let runs = d.runs(&self.runs)?;
        let options = CompareOptions {
            x: flag(&self.x, XAxis::Tokens)?,
            split: flag(&self.split, Split::Val)?,
            band: flag(&self.band, Band::Std)?,
            smoothing: self.smooth.unwrap_or(0.8).clamp(0.0, 0.99),
            observing: crate::config::observing_keys(),
            x_range: self.x_min.zip(self.x_max),
            ..CompareOptions::default()
        };
        reports::Comparison::new(runs, options).map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
    }
}

type Shared = State<Arc<Dashboard>>;

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            // The page loads nothing from anywhere else.
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src 'self' data:"),
            ),
        ],
        PAGE,
    )
}

/// The runs table. Its ETag is the runs' file stamps, so a poll that finds nothing changed is
/// answered 304 after a `stat` per file, without reading or sending the table again.
async fn runs(State(d): Shared, headers: axum::http::HeaderMap) -> Response {
    let dirs = d.run_dirs();
    let stamps: Vec<Stamp> = dirs.iter().map(|(_, dir)| stamp(dir)).collect();
    let etag = {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        (&dirs, &stamps).hash(&mut h);
        format!("\"{:016x}\"", h.finish())
    };
    let etag_header = (header::ETAG, HeaderValue::from_str(&etag).expect("hex is a header value"));
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return (StatusCode::NOT_MODIFIED, [etag_header]).into_response();
    }
    let rows: Vec<RunRow> =
        dirs.into_iter().zip(stamps).map(|((key, dir), now)| d.row(key, &dir, now)).collect();
    let table = json!({
        "folders": d.roots,
        "observing": crate::config::observing_keys(),
        "runs": rows,
    });
    ([etag_header, (header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))], Json(table))
        .into_response()
}

async fn compare(State(d): Shared, Query(view): Query<View>) -> Result<Json<Value>, (StatusCode, String)> {
    let c = view.comparison(&d)?;
    let (header, rows) = reports::report::summary_rows(&c);
    let figures: Vec<Value> = reports::report::figures(&c)
        .into_iter()
        .map(|(slug, f)| json!({ "slug": slug, "title": f.title, "svg": f.to_svg() }))
        .collect();
    Ok(Json(json!({
        "title": reports::report::title(&c),
        "notes": c.notes,
        "summary": { "header": header, "rows": rows },
        "summaries": c.summaries(),
        "figures": figures,
    })))
}

/// Writes the static report of the selection beside the first folder, as `lmhost compare` would.
async fn write_report(
    State(d): Shared,
    Query(view): Query<View>,
) -> Result<Json<Value>, (StatusCode, String)> {
    let c = view.comparison(&d)?;
    let reports_dir = crate::orchestrate::reports_dir(&d.roots[0]);
    let name = crate::report_cmd::slug(&reports::report::title(&c));
    let out = crate::report_cmd::fresh_dir(&reports_dir, &name);
    let files =
        reports::write_report(&c, &out).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(json!({ "report": files.html })))
}

#[derive(Deserialize)]
struct RunQuery {
    key: String,
}

/// A run's page: its record, the end of its log, its checkpoints and the commands that continue it.
async fn run_page(State(d): Shared, Query(q): Query<RunQuery>) -> Result<Json<Value>, StatusCode> {
    let dir = d.resolve(&q.key)?;
    let record: Value = std::fs::read_to_string(dir.join("run.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or(StatusCode::NOT_FOUND)?;
    let log = tail(&dir.join("worker.log"), LOG_TAIL);
    let mut checkpoints: Vec<String> = std::fs::read_dir(dir.join("checkpoints"))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned())).collect())
        .unwrap_or_default();
    checkpoints.sort();
    let shown = crate::sweep::quote(&dir.display().to_string());
    Ok(Json(json!({
        "record": record,
        "log_tail": log,
        "checkpoints": checkpoints,
        "commands": {
            "resume": format!("lmhost resume {shown}"),
            "branch": format!("lmhost branch {shown} --at STEP --children 2"),
            "generate": format!("lmhost generate {shown} --prompt \"ROMEO:\""),
            "export": format!("lmhost export {shown} --out weights.safetensors"),
            "compare": format!("lmhost compare {shown}"),
        },
    })))
}

/// The last `max` bytes of a file (from a line start), or "" when there is none.
fn tail(path: &Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    match (len > max, text.find('\n')) {
        (true, Some(i)) => text[i + 1..].to_owned(),
        _ => text,
    }
}

/// A file of a run, read-only: `/files/<root>/<path>`, never outside the roots.
async fn file(State(d): Shared, axum::extract::Path(path): axum::extract::Path<String>) -> Response {
    let resolved = match d.resolve(&path) {
        Ok(p) if p.is_file() => p,
        Ok(_) => return StatusCode::NOT_FOUND.into_response(),
        Err(status) => return status.into_response(),
    };
    let kind = match resolved.extension().and_then(|e| e.to_str()) {
        Some("json") => "application/json",
        Some("log" | "md" | "txt" | "toml") => "text/plain; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    };
    match std::fs::read(&resolved) {
        Ok(bytes) => ([(header::CONTENT_TYPE, kind)], bytes).into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Refuses a request without the token, when there is one.
async fn check_token(State(d): Shared, request: Request, next: Next) -> Response {
    if let Some(token) = &d.token {
        let given_header = request.headers().get("x-lmhost-token").and_then(|v| v.to_str().ok());
        let given_query =
            request.uri().query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
        if given_header != Some(token.as_str()) && given_query != Some(token.as_str()) {
            return (
                StatusCode::UNAUTHORIZED,
                "this dashboard needs its token: open the URL lmhost serve printed",
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// Sixteen random bytes as hex, from the kernel.
fn new_token() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom for the dashboard's token")?;
    Ok(crate::run_store::hex(&bytes))
}

fn app(dashboard: Arc<Dashboard>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/runs", get(runs))
        .route("/api/compare", get(compare))
        .route("/api/report", post(write_report))
        .route("/api/run", get(run_page))
        .route("/files/{*path}", get(file))
        .layer(axum::middleware::from_fn_with_state(dashboard.clone(), check_token))
        .with_state(dashboard)
}

/// `lmhost serve`.
pub fn serve(args: &ServeArgs) -> Result<bool> {
    let folders = if args.folders.is_empty() { vec![PathBuf::from("runs")] } else { args.folders.clone() };
    let mut roots = Vec::new();
    for f in &folders {
        if !f.is_dir() {
            bail!("{} is not a folder of runs: pass the runs folder (e.g. lmhost serve runs)", f.display());
        }
        roots.push(f.canonicalize().with_context(|| format!("cannot open {}", f.display()))?);
    }
    let token = if args.host.is_loopback() { None } else { Some(new_token()?) };
    let dashboard = Arc::new(Dashboard { roots, token: token.clone(), cache: Mutex::new(HashMap::new()) });
    let count = dashboard.run_dirs().len();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the server's runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host, args.port))
            .await
            .with_context(|| format!("cannot listen on {}:{} (pass another --port)", args.host, args.port))?;
        let address = listener.local_addr()?;
        let shown =
            if address.ip().is_unspecified() { "localhost".to_owned() } else { address.ip().to_string() };
        let query = token.map(|t| format!("?token={t}")).unwrap_or_default();
        println!(
            "serving http://{shown}:{}/{query} ({count} runs under {})",
            address.port(),
            folders.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
        );
        axum::serve(listener, app(dashboard)).await.context("the server stopped")
    })?;
    Ok(true)
}
