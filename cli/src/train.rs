//! `convoy train`: one rank in this process, a progress bar, and a summary.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use convoy_engine::collective::SingleProcess;
use convoy_engine::spec::JobSpec;
use convoy_engine::state;
use convoy_engine::train::{EvalMetrics, Event, StopToken, Summary, Trainer};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

#[derive(Args)]
pub struct TrainArgs {
    /// The job spec (TOML).
    spec: PathBuf,
    /// Print one JSON object per event (step, eval, sample, summary) on stdout instead of a
    /// progress bar.
    #[arg(long)]
    json: bool,
    /// CPU threads (default: the spec's `threads`, else every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Write the complete training state here at each checkpoint interval and at the end.
    #[arg(long)]
    save_state: Option<PathBuf>,
    /// Continue from a state written by --save-state.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Write the final GPT weights here as an llm.c checkpoint file.
    #[arg(long)]
    export: Option<PathBuf>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let spec = JobSpec::load(&args.spec)?;
    if let Some(n) = args.threads.or(spec.threads) {
        anyhow::ensure!(n >= 1, "--threads 0: at least one thread is needed");
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("starting the thread pool")?;
    }
    let mut trainer = Trainer::new(&spec, Box::new(SingleProcess))?;
    if let Some(path) = &args.resume {
        let saved = state::load(path)?;
        trainer
            .restore(saved)
            .with_context(|| format!("resuming from {}", path.display()))?;
    }
    let unit = trainer.unit();
    let mut out = Output::new(&args, spec.steps, trainer.step(), unit);
    let mut save_error = None;
    // Nothing stops a local run but the end of its steps (or Ctrl-C, which ends the process).
    let never = StopToken::new();
    let summary = trainer.run(
        &mut |event| match event {
            Event::Step(m) => out.step(m.step, m.loss, m.throughput, m.skipped),
            Event::Eval(e) => out.eval(e),
            Event::Checkpoint(st) => {
                if let Some(path) = &args.save_state
                    && let Err(e) = state::save(path, &st)
                {
                    save_error.get_or_insert(e);
                }
            }
            Event::Sample(_) => {}
        },
        &never,
    );
    out.finish();
    let summary = summary?;
    if let Some(e) = save_error {
        return Err(e).context("saving the training state");
    }
    if let Some(path) = &args.save_state
        && spec.checkpoint.interval == 0
    {
        state::save(path, &trainer.state()?)?;
    }
    if let Some(path) = &args.export {
        trainer.export_llmc(path)?;
    }
    out.summary(&summary, &spec.name);
    Ok(())
}

/// Progress bar on a terminal, plain periodic lines otherwise, or JSON lines with --json.
struct Output {
    json: bool,
    bar: Option<ProgressBar>,
    unit: &'static str,
    /// Without a terminal, print a line every this many steps.
    every: u64,
}

impl Output {
    fn new(args: &TrainArgs, steps: u64, done: u64, unit: &'static str) -> Output {
        let bar = (!args.json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(steps).with_style(
                ProgressStyle::with_template(
                    "[{elapsed_precise}] [{bar:30}] {pos}/{len} {msg} ETA {eta}",
                )
                .expect("a valid progress template")
                .progress_chars("=> "),
            );
            bar.set_position(done);
            bar.reset_eta();
            bar
        });
        Output {
            json: args.json,
            bar,
            unit,
            every: (steps / 20).max(1),
        }
    }

    fn step(&mut self, step: u64, loss: f64, throughput: f64, skipped: bool) {
        let skipped_note = if skipped {
            " (update skipped: non-finite loss)"
        } else {
            ""
        };
        if self.json {
            println!(
                "{}",
                json!({"event": "step", "step": step, "loss": loss, "throughput": throughput, "unit": self.unit, "skipped": skipped})
            );
        } else if let Some(bar) = &self.bar {
            bar.set_position(step);
            bar.set_message(format!(
                "loss {loss:.4} | {} {}/s{skipped_note}",
                human(throughput),
                self.unit
            ));
        } else if step.is_multiple_of(self.every) || step == 1 || skipped {
            eprintln!(
                "step {step}: loss {loss:.4}, {} {}/s{skipped_note}",
                human(throughput),
                self.unit
            );
        }
    }

    fn eval(&mut self, e: &EvalMetrics) {
        if self.json {
            let mut v = serde_json::to_value(e).unwrap_or_default();
            v["event"] = json!("eval");
            println!("{v}");
            return;
        }
        let line = eval_line(e);
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn summary(&self, s: &Summary, name: &str) {
        if self.json {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            v["event"] = json!("summary");
            println!("{v}");
            return;
        }
        println!(
            "{name}: {} steps in {:.1} s, {} {}/s (median)",
            s.steps,
            s.elapsed_s,
            human(s.throughput),
            s.unit
        );
        if let Some(loss) = s.final_loss {
            println!("final train loss {loss:.4}");
        }
        if let Some(c) = s.eval.as_ref().and_then(|e| e.classification.as_ref()) {
            println!("class  precision  recall");
            for (k, (p, r)) in c.precision.iter().zip(&c.recall).enumerate() {
                println!("{k:>5}  {p:>9.3}  {r:>6.3}");
            }
        }
        if let Some(text) = &s.sample {
            println!("--- sample ---\n{text}\n--------------");
        }
    }
}

fn eval_line(e: &EvalMetrics) -> String {
    let mut line = format!("step {}: val loss {:.4}", e.step, e.val_loss);
    if let Some(c) = &e.classification {
        line += &format!(
            ", accuracy {:.2} %, macro-F1 {:.4}",
            100.0 * c.accuracy,
            c.macro_f1
        );
    }
    line
}

fn human(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.1}")
    }
}
