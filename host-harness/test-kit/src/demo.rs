//! `host-harness demo`: the offline first run. Starts both emulators with a
//! generated data set, ticks the real component until every service has
//! caught up, and shows what reached Devo per tag.

use crate::emulator::{tenant_variables, Dataset, DevoEmulator, DevoOptions, OnePasswordEmulator, OnePasswordOptions};
use host_harness::runtime::Limits;
use host_harness::tenant::Tenant;
use onepassword_collector::service::Service;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

const DEMO_OP_TOKEN: &str = "demo-1password-events-token";
const DEMO_DEVO_TOKEN: &str = "demodevotoken0123456789abcdefABCD";
/// Safety stop: the data set drains in far fewer ticks.
const MAX_TICKS: usize = 1000;

/// What the demo delivered, per tag: (received, expected, distinct uuids).
pub struct DemoSummary {
    pub ticks: usize,
    pub per_tag: BTreeMap<String, (usize, usize, usize)>,
}

impl DemoSummary {
    /// Every served event arrived exactly once.
    pub fn complete(&self) -> bool {
        self.per_tag.values().all(|(got, want, distinct)| got == want && distinct == want)
    }
}

pub async fn run(
    component: &Path,
    per_service: usize,
    page_size: u16,
    out: &mut impl Write,
) -> anyhow::Result<DemoSummary> {
    let now = chrono::Utc::now();
    // Inside the collector's default 24-hour look-back.
    let dataset = Dataset::generate(7, per_service, now - chrono::Duration::hours(23), chrono::Duration::hours(22));
    let op = OnePasswordEmulator::start(OnePasswordOptions::new(DEMO_OP_TOKEN, dataset.clone()))?;
    let devo = DevoEmulator::start(DevoOptions { domain: "demo".into(), token: DEMO_DEVO_TOKEN.into() })?;
    let state = tempdir()?;
    let mut variables = tenant_variables(&op, DEMO_OP_TOKEN, &devo, "demo", DEMO_DEVO_TOKEN);
    variables.insert("page_size".into(), page_size.to_string());
    let tenant = Tenant {
        name: "demo".into(),
        schedule: host_harness::tenant::DEFAULT_SCHEDULE.into(),
        spread_firings: true,
        kv: state.join("demo.sqlite").into(),
        variables,
        environment: Default::default(),
        allowed_outbound_hosts: None,
        limits: Default::default(),
    };
    writeln!(out, "1Password emulator at {}, Devo receiver at {}", op.base_url(), devo.base_url())?;
    writeln!(out, "{per_service} events per service, page size {page_size}; ticking until caught up…")?;
    // The emulators are plain http on loopback, which a runtime refuses
    // unless allowed.
    let runtime = crate::loopback::runtime(component, Limits::default())?;
    let mut ticks = 0;
    loop {
        ticks += 1;
        let tick = runtime.tick(&tenant).await;
        let report = match &tick.result {
            Ok(r) => r,
            Err(e) => anyhow::bail!("the tick failed: {e}"),
        };
        // Progress: what reached Devo per tag, against what was served.
        let mut line = format!("tick {ticks:>3} ({:>4} ms):", tick.host_elapsed_ms);
        for service in Service::ALL {
            let tag = service.default_tag();
            let short = tag.rsplit('.').next().unwrap_or(tag);
            line.push_str(&format!("  {short} {}/{}", devo.events(tag).len(), dataset.events(service).len()));
        }
        if let Some(e) = report.services.iter().find_map(|s| s.error.as_ref()) {
            line.push_str(&format!("  error {}: {}", e.id, e.message.lines().next().unwrap_or_default()));
        }
        writeln!(out, "{line}")?;
        let caught_up = report.services.iter().all(|s| s.error.is_none() && !s.has_more);
        if caught_up || ticks >= MAX_TICKS {
            break;
        }
    }
    let mut per_tag = BTreeMap::new();
    for service in Service::ALL {
        let tag = service.default_tag().to_string();
        let received = devo.event_values(&tag);
        let distinct: std::collections::HashSet<String> =
            received.iter().filter_map(|v| v["uuid"].as_str().map(str::to_owned)).collect();
        per_tag.insert(tag, (received.len(), dataset.events(service).len(), distinct.len()));
    }
    let _ = std::fs::remove_dir_all(&state);
    let summary = DemoSummary { ticks, per_tag };
    writeln!(out, "\n{:<44} {:>9} {:>9} {:>9}", "Devo tag", "received", "served", "distinct")?;
    for (tag, (got, want, distinct)) in &summary.per_tag {
        writeln!(out, "{tag:<44} {got:>9} {want:>9} {distinct:>9}")?;
    }
    writeln!(
        out,
        "\n{} ticks; {}",
        summary.ticks,
        if summary.complete() { "every event arrived exactly once" } else { "SOME EVENTS ARE MISSING OR DUPLICATED" }
    )?;
    Ok(summary)
}

fn tempdir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("host-harness-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
