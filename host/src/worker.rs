//! The child processes a run is made of: a probe that loads a plugin and resolves a request (so
//! that a library that crashes while loading takes only that process), and a worker per arm that
//! trains it and reports [`Event`]s on its stdout, which [`train_arm`] follows and shows.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::{resolve_arm, ArmConfig, Request};
use crate::events::{ArmView, Event};
use crate::plugin::{Plugin, PluginDescription, PluginSource};
use crate::run_store::{self, RunRecord, Status};

/// A plugin's description and one arm's config resolved for it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Probed {
    pub description: PluginDescription,
    pub config: ArmConfig,
    /// Override keys neither the plugin nor the host declares.
    pub unknown: Vec<String>,
}

/// What the probe process reports about a plugin and a request.
#[derive(Debug, Serialize, Deserialize)]
pub enum ProbeReply {
    Ok(Box<Probed>),
    Error { message: String },
}

/// Loads a plugin and resolves `request` for it, in this process (the `probe` subcommand).
pub fn probe_here(source: &PluginSource, request: &Request) -> ProbeReply {
    let result = (|| -> Result<ProbeReply> {
        let plugin = Plugin::open(source)?;
        let (mut config, unknown) = resolve_arm(&plugin.description, request)?;
        config.model = plugin
            .resolve_model_config(&config.model)
            .map_err(|e| anyhow::anyhow!("{} {e}", plugin.description.name))?;
        Ok(ProbeReply::Ok(Box::new(Probed { description: plugin.description, config, unknown })))
    })();
    result.unwrap_or_else(|e| ProbeReply::Error { message: format!("{e:#}") })
}

/// Runs the probe in a child process.
pub fn probe(source: &PluginSource, request: &Request) -> Result<Probed> {
    let out = Command::new(std::env::current_exe()?)
        .arg("probe")
        .arg(serde_json::to_string(source)?)
        .arg(serde_json::to_string(request)?)
        .stdin(Stdio::null())
        .output()
        .context("cannot start an lmhost probe process")?;
    let reply: Option<ProbeReply> = serde_json::from_slice(&out.stdout).ok();
    match reply {
        Some(ProbeReply::Ok(probed)) => Ok(*probed),
        Some(ProbeReply::Error { message }) => bail!("{message}"),
        None => bail!(
            "{} crashed the process that loaded it ({}); the file is probably truncated or corrupt: rebuild it with `cargo build --release --workspace`",
            source.label(),
            exit_description(&out.status)
        ),
    }
}

pub fn exit_description(status: &std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            let name = match sig {
                6 => "SIGABRT",
                7 => "SIGBUS",
                9 => "SIGKILL",
                11 => "SIGSEGV",
                _ => "a signal",
            };
            return format!("{name}, signal {sig}");
        }
    }
    format!("exit status {}", status.code().unwrap_or(-1))
}

/// An arm ready to train (or already trained, when reused).
pub struct ArmRun {
    pub label: String,
    pub dir: PathBuf,
    pub record: RunRecord,
    pub reused: bool,
}

/// Trains one arm in a worker process (continuing from its checkpoint when `resume`; what it
/// resumes under is already in its `run.json`); false when it did not finish.
pub fn train_arm(arm: &mut ArmRun, resume: bool) -> Result<bool> {
    let log_path = arm.dir.join("worker.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(resume)
        .write(true)
        .truncate(!resume)
        .open(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("worker")
        .arg(&arm.dir)
        .args(resume.then_some("--resume"))
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .context("cannot start an lmhost worker process")?;
    crate::interrupt::set_worker(Some(child.id()));
    let mut view = ArmView::new(&arm.label);
    let mut stopped = None;
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<Event>(&line) {
            Ok(event) => {
                view.show(&event);
                if let Event::Stopped { message, .. } = &event {
                    stopped = Some(message.clone());
                }
            }
            Err(_) => println!("arm:{} {line}", arm.label),
        }
    }
    let status = child.wait()?;
    crate::interrupt::set_worker(None);
    arm.record = run_store::read_record(&arm.dir)?;
    if status.success() && arm.record.status == Status::Finished {
        return Ok(true);
    }
    if stopped.is_none() {
        // The worker died without a word (a crash in the plugin's native code, a kill).
        let message = format!(
            "the worker process died ({}); its log is {}",
            exit_description(&status),
            log_path.display()
        );
        if matches!(arm.record.status, Status::Pending | Status::Running) {
            arm.record.status = Status::Failed;
            arm.record.error = Some(message.clone());
            run_store::write_record(&arm.dir, &arm.record)?;
        }
        view.show(&Event::Stopped { status: Status::Failed, message });
    }
    Ok(false)
}
