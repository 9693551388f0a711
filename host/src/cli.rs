//! The command line: one subcommand per job, the config keys' help generated from their
//! declarations, and every error printed as one line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use lmhost_kit::config::{FieldSpec, Knobs};

use crate::config::{Request, RunConfig, PRESETS};
use crate::orchestrate;
use crate::plugin::{PluginDescription, PluginSource};
use crate::request::parse_overrides;
use crate::run_plan::RunPlan;
use crate::worker::probe;
use crate::workspace;

#[derive(Parser)]
#[command(
    name = "lmhost",
    version,
    about = "Train language-model experiment plugins against a built-in baseline GPT: same data, seed and budget, Arrow stats, fair comparisons."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train an experiment and the built-in baseline on the same data, seed and token budget.
    /// Lists (lr=3e-4,6e-4) or seeds=N make it a sweep.
    Run(RunArgs),
    /// Run a sweep here (as `run` with lists does) or write it as a Slurm job array (--emit slurm).
    Sweep(SweepArgs),
    /// Tune one key (lr by default) for the experiment and the baseline alike: each arm's best of
    /// its grid by validation loss, best against best on a held-out test split, loss against the key.
    Tune(crate::study::TuneArgs),
    /// Train both arms at four or more sizes (depth and width together, tokens ∝ parameters), fit
    /// a scaling law of test loss against FLOPs to each, and report the idea's compute multiplier.
    Ladder(crate::study::LadderArgs),
    /// Build every plugin and run the value-norm experiment against the baseline (tiny preset, embedded corpus).
    Demo {
        /// key=value overrides, as for `run` (e.g. steps=50).
        overrides: Vec<String>,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// A live dashboard of every run under the folders, in the browser (http://127.0.0.1:8080).
    Serve(crate::serve::ServeArgs),
    /// Compare runs: HTML, Markdown and JSON reports, plots of the losses and their difference to the baseline.
    Compare(crate::report_cmd::CompareArgs),
    /// Sample text from a trained run (or its prod weights in the built-in baseline).
    Generate(crate::generate_cmd::GenerateArgs),
    /// Write a run's weights; --prod: a sacrificial experiment folded into the baseline's layout.
    Export(crate::export_cmd::ExportArgs),
    /// Create plugins/NAME, a new plugin crate to change, with its tests.
    New {
        /// snake_case, e.g. my_idea.
        name: String,
    },
    /// List the plugins under plugins/ and the built-in baseline.
    List,
    /// What a plugin does: its description, variants and every config key.
    Describe {
        /// `baseline`, a plugin library, a plugin crate folder, or a plugin name.
        plugin: String,
        /// key=value overrides of the tiny preset the parameter table is built with
        /// (e.g. `arch=llama optimizer=muon variant=NAME`).
        overrides: Vec<String>,
    },
    /// Measure training throughput (tokens/s) and peak memory.
    Bench(crate::bench::BenchArgs),
    /// Continue a run that stopped (interrupted, killed, failed) from its last checkpoint; its
    /// stats are rewound to that checkpoint, so no step is counted twice. Host key=value
    /// overrides (lr=…, steps=… to train a finished run further) apply from the checkpoint on.
    Resume {
        run_dir: PathBuf,
        overrides: Vec<String>,
        /// Continue from the checkpoint of this step instead of the last one.
        #[arg(long)]
        from_step: Option<u64>,
    },
    /// A model's logits for given token ids (a run, or hf:DIR), as safetensors: golden tests
    /// against other implementations.
    Logits(crate::logits_cmd::LogitsArgs),
    /// Linear mode connectivity: evaluate (1 − α)·A + α·B along α, print the loss barrier.
    Interpolate(crate::interpolate::InterpolateArgs),
    /// Start children from a run's checkpoint at a step; they differ in data order (seed) or in
    /// the host keys given.
    Branch {
        run_dir: PathBuf,
        /// The parent's checkpoint step to start from.
        #[arg(long)]
        at: u64,
        #[arg(long, default_value_t = 2)]
        children: u64,
        /// Host key=value overrides for every child (seed=S numbers them S, S+1, …).
        overrides: Vec<String>,
    },
    /// Train one arm in this process (started by `run`).
    #[command(hide = true)]
    Worker {
        run_dir: PathBuf,
        /// Continue from the step the last entry of `resumes` in its run.json names.
        #[arg(long)]
        resume: bool,
    },
    /// Load a plugin and resolve a request in this process (started by `run`).
    #[command(hide = true)]
    Probe { source: String, request: String },
}

#[derive(clap::Args)]
struct RunArgs {
    /// `baseline`, a plugin library (plugins/NAME.so), a plugin crate folder (built first), or a plugin name.
    plugin: String,
    /// key=value overrides of any config key listed below or by `lmhost describe PLUGIN`; variant=NAME picks a variant.
    overrides: Vec<String>,
    /// Train only the experiment, no baseline arm.
    #[arg(long)]
    no_baseline: bool,
    /// In a sweep, pair the lists by position instead of taking every combination.
    #[arg(long)]
    zip: bool,
    /// List the runs (and which are already finished) without training anything.
    #[arg(long)]
    dry_run: bool,
    /// Skip an arm whose finished twin is already in --runs-dir, and resume one that was
    /// interrupted (a Slurm task of a sweep runs so, and runs again when requeued).
    #[arg(long)]
    skip_finished: bool,
    /// Write no report at the end (a Slurm task: the sweep's compare job writes one over all).
    #[arg(long)]
    no_report: bool,
    #[command(flatten)]
    common: CommonArgs,
}

impl RunArgs {
    fn sweep(&self, source: PluginSource) -> Result<crate::sweep::Sweep> {
        Ok(crate::sweep::Sweep {
            source,
            preset: self.common.preset.clone(),
            device: self.common.device.clone(),
            points: crate::sweep::expand(&self.overrides, self.zip)?,
            runs_root: self.common.runs_dir.clone(),
            cache_dir: self.common.cache_dir(),
            no_baseline: self.no_baseline,
            retrain_baseline: self.common.retrain_baseline,
            folder: None,
        })
    }

    fn plan(&self, source: PluginSource) -> Result<RunPlan> {
        Ok(RunPlan {
            request: self.common.request(&self.overrides)?,
            reuse_finished: self.skip_finished,
            resume_interrupted: self.skip_finished,
            no_baseline: self.no_baseline,
            dry_run: self.dry_run,
            report: !self.no_report,
            ..self.common.plan(source)
        })
    }
}

#[derive(clap::Args)]
struct SweepArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Write the sweep as a job script instead of running it here.
    #[arg(long, value_enum)]
    emit: Option<crate::sweep::Emit>,
    /// Where the job script goes [default: <sweep name>.sbatch].
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    slurm: crate::sweep::SlurmOptions,
}

#[derive(clap::Args)]
pub struct CommonArgs {
    /// Starting point for every knob: tiny, small, gpt2 (124M exactly) or gpt2ish.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// cpu or cuda:N (the same as device=…).
    #[arg(long)]
    pub device: Option<String>,
    /// Where run folders go.
    #[arg(long, default_value = "runs")]
    pub runs_dir: PathBuf,
    /// Where tokenizers and token caches go [default: $XDG_CACHE_HOME/lmhost or ~/.cache/lmhost].
    #[arg(long, env = "LMHOST_CACHE")]
    pub cache_dir: Option<PathBuf>,
    /// Train the baseline again even when a finished run with the same config exists.
    #[arg(long)]
    pub retrain_baseline: bool,
}

impl CommonArgs {
    /// The request made of these flags and `key=value` arguments.
    pub fn request(&self, overrides: &[String]) -> Result<Request> {
        Request::new(&self.preset, self.device.as_deref(), overrides)
    }

    /// A plan of one run from these flags (its request and arms left to the caller).
    fn plan(&self, source: PluginSource) -> RunPlan {
        RunPlan {
            source,
            request: Request::default(),
            runs_dir: self.runs_dir.clone(),
            runs_root: self.runs_dir.clone(),
            cache_dir: self.cache_dir(),
            retrain_baseline: self.retrain_baseline,
            no_baseline: false,
            reuse_finished: false,
            resume_interrupted: false,
            dry_run: false,
            sweep: false,
            report: true,
        }
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(default_cache_dir)
    }
}

pub(crate) fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("lmhost");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache").join("lmhost"),
        None => PathBuf::from(".lmhost-cache"),
    }
}

/// The help text listing every host and baseline knob, generated from their declarations.
fn config_help() -> String {
    let mut out = String::from("Config keys (key=value), host then baseline model:\n");
    let mut fields = RunConfig::fields();
    fields.extend(PluginDescription::builtin().fields);
    for f in &fields {
        out.push_str(&field_line(f));
    }
    out.push_str("\nPresets:\n");
    for p in PRESETS {
        out.push_str(&format!("  {:<12} {}\n", p.name, p.about));
    }
    out
}

fn field_line(f: &FieldSpec) -> String {
    let choices = if f.choices.is_empty() { String::new() } else { format!(" [{}]", f.choices.join("|")) };
    format!("  {:<18} {:<8} {:<10} {}{choices}\n", f.name, f.kind, f.default.to_string(), f.help)
}

pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LMHOST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .without_time()
        .with_target(false)
        .init();

    let features = workspace::built_features();
    if let Some(e) = lmhost_kit::kernels::matmul_backend_error() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let matmul = lmhost_kit::kernels::matmul_backend();
    let version = format!(
        "{} (features: {}; matrix products: {matmul})",
        env!("CARGO_PKG_VERSION"),
        if features.is_empty() { "none".to_owned() } else { features.join(", ") }
    );
    let command = Cli::command()
        .version(&*Box::leak(version.into_boxed_str()))
        .mut_subcommand("run", |c| c.after_long_help(config_help()))
        .mut_subcommand("sweep", |c| c.after_long_help(config_help()))
        .mut_subcommand("tune", |c| c.after_long_help(config_help()))
        .mut_subcommand("ladder", |c| c.after_long_help(config_help()));
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match dispatch(cli.command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

fn dispatch(command: Command) -> Result<bool> {
    match &command {
        Command::Worker { .. } => crate::interrupt::install_for_worker(),
        Command::Run(_)
        | Command::Demo { .. }
        | Command::Resume { .. }
        | Command::Branch { .. }
        | Command::Sweep(_)
        | Command::Tune(_)
        | Command::Ladder(_) => crate::interrupt::install_for_orchestrator(),
        _ => {}
    }
    match command {
        Command::Run(args) => {
            let source = workspace::resolve_plugin_arg(&args.plugin)?;
            if crate::sweep::is_sweep(&args.overrides) {
                return args.sweep(source)?.run(args.dry_run);
            }
            orchestrate::run(&args.plan(source)?)
        }
        Command::Sweep(args) => {
            let source = workspace::resolve_plugin_arg(&args.run.plugin)?;
            let sweep = args.run.sweep(source)?;
            match args.emit {
                None => sweep.run(args.run.dry_run),
                Some(crate::sweep::Emit::Slurm) => sweep.write_slurm(args.out.as_deref(), &args.slurm, None),
            }
        }
        Command::Demo { overrides, common } => {
            let folder = demo_plugin_folder()?;
            let source = workspace::build_crate_folder(&folder)?;
            let ok = orchestrate::run(&RunPlan {
                request: common.request(&demo_keys(&overrides))?,
                ..common.plan(source)
            })?;
            println!(
                "\nopen the results in the browser: {} serve {}",
                std::env::current_exe().map(|e| e.display().to_string()).unwrap_or_else(|_| "lmhost".into()),
                common.runs_dir.display()
            );
            Ok(ok)
        }
        Command::Tune(args) => crate::study::tune(&args),
        Command::Ladder(args) => crate::study::ladder(&args),
        Command::Compare(args) => crate::report_cmd::compare_command(&args),
        Command::Serve(args) => crate::serve::serve(&args),
        Command::Generate(args) => crate::generate_cmd::generate_command(&args),
        Command::Export(args) => crate::export_cmd::export_command(&args),
        Command::New { name } => crate::scaffold::new_plugin(&name),
        Command::List => list(),
        Command::Describe { plugin, overrides } => describe(&plugin, &overrides),
        Command::Bench(args) => {
            crate::memory::keep_freed_memory();
            crate::bench::bench(&args)
        }
        Command::Resume { run_dir, overrides, from_step } => {
            crate::lineage::resume(&run_dir, &parse_overrides(&overrides)?, from_step)
        }
        Command::Logits(args) => crate::logits_cmd::logits_command(&args),
        Command::Interpolate(args) => crate::interpolate::interpolate_command(&args),
        Command::Branch { run_dir, at, children, overrides } => {
            crate::lineage::branch(&run_dir, at, children, &parse_overrides(&overrides)?)
        }
        Command::Worker { run_dir, resume } => {
            crate::memory::keep_freed_memory();
            crate::train::run_worker(&run_dir, resume)?;
            Ok(true)
        }
        Command::Probe { source, request } => {
            let source: PluginSource = serde_json::from_str(&source).context("probe: bad source")?;
            let request: Request = serde_json::from_str(&request).context("probe: bad request")?;
            println!("{}", serde_json::to_string(&crate::worker::probe_here(&source, &request))?);
            Ok(true)
        }
    }
}

/// The demo's keys: evaluated every 15 steps, so its plots have a curve, then the user's.
fn demo_keys(overrides: &[String]) -> Vec<String> {
    std::iter::once("eval_every=15".to_owned()).chain(overrides.iter().cloned()).collect()
}

/// `plugins/value_norm` of this checkout: from the current folder, else beside the binary
/// (`target/release/lmhost` → the workspace two levels up).
fn demo_plugin_folder() -> Result<PathBuf> {
    let here = Path::new("plugins/value_norm");
    if here.join("Cargo.toml").is_file() {
        return Ok(here.to_owned());
    }
    let exe = std::env::current_exe()?;
    if let Some(root) = exe.ancestors().nth(3) {
        let folder = root.join("plugins/value_norm");
        if folder.join("Cargo.toml").is_file() {
            return Ok(folder);
        }
    }
    bail!("the demo runs from an lmhost checkout: cd into it (plugins/value_norm must exist)")
}

fn list() -> Result<bool> {
    let baseline = PluginDescription::builtin();
    println!("{:<22} {:<8} {:<34} summary", "plugin", "version", "variants");
    println!("{:<22} {:<8} {:<34} {}", "baseline (built-in)", baseline.version, "-", baseline.summary);
    let folder =
        workspace::plugin_folders().into_iter().find(|f| f.is_dir()).unwrap_or_else(|| "plugins".into());
    for (name, path) in workspace::discover(&folder) {
        match path {
            None => {
                println!("{name:<22} {:<8} {:<34} not built: cargo build --release --workspace", "-", "-")
            }
            Some(path) => match probe(
                &PluginSource::Library { path: path.clone() },
                &Request { preset: "tiny".into(), ..Request::default() },
            ) {
                Ok(probed) => {
                    let d = probed.description;
                    let variants: Vec<&str> = d.variants.iter().map(|v| v.name.as_str()).collect();
                    println!(
                        "{:<22} {:<8} {:<34} {}",
                        path.display(),
                        d.version,
                        variants.join(","),
                        d.summary
                    );
                }
                Err(e) => println!(
                    "{:<22} {:<8} {:<34} cannot load: {}",
                    path.display(),
                    "-",
                    "-",
                    one_line(&format!("{e:#}"))
                ),
            },
        }
    }
    Ok(true)
}

fn describe(arg: &str, overrides: &[String]) -> Result<bool> {
    let source = workspace::resolve_plugin_arg(arg)?;
    let request = Request::new("tiny", None, overrides)?;
    let probed = probe(&source, &request)?;
    let d = match &source {
        PluginSource::Builtin => PluginDescription::builtin(),
        _ => probed.description,
    };
    println!(
        "{} {} (plugin-api {}){}",
        d.name,
        d.version,
        d.api_version,
        if d.sacrificial { ", sacrificial" } else { "" }
    );
    println!("{}\n", d.summary);
    println!("{}\n", d.description);
    if !d.variants.is_empty() {
        println!("Variants (variant=NAME; the first is the default):");
        for v in &d.variants {
            println!("  {:<16} {}  {}", v.name, v.summary, serde_json::Value::Object(v.overrides.clone()));
        }
        println!();
    }
    println!("Model config keys:");
    for f in &d.fields {
        print!("{}", field_line(f));
    }
    println!("\nRun config keys (the host's, the same for every plugin):");
    for f in &RunConfig::fields() {
        print!("{}", field_line(f));
    }
    let shown = if overrides.is_empty() { String::new() } else { format!(" {}", overrides.join(" ")) };
    println!("\nParameters (preset tiny{shown}; how the optimiser updates each):");
    match crate::model::parameters(&source, &probed.config) {
        Ok(table) => {
            println!("  {:<44} {:<14} {:<7} {:<8} lr ×", "name", "shape", "decay", "rule");
            for p in table {
                let shape = format!("{:?}", p.shape);
                let decay = if p.decay { "yes" } else { "no" };
                println!("  {:<44} {shape:<14} {decay:<7} {:<8} {}", p.name, p.rule, p.lr_scale);
            }
        }
        Err(e) => println!("  (not listed: {e:#})"),
    }
    Ok(true)
}
