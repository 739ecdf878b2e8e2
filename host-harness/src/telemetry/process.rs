//! The standard process metrics every Prometheus client exports, read from
//! `/proc/self` at each scrape (Linux; elsewhere none):
//! `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_start_time_seconds`,
//! `process_open_fds`, `process_max_fds`. Names and meanings are those of the
//! Go and Python clients, so dashboards made for any exporter work here.
//! A file that cannot be read leaves its metrics out of that scrape.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Registered once, unprefixed, in the telemetry's registry.
#[derive(Debug)]
pub(super) struct ProcessCollector;

/// One reading of the process's numbers; `None` for what could not be read.
#[derive(Debug, Default, PartialEq)]
pub(super) struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<f64>,
    pub virtual_bytes: Option<f64>,
    pub start_time_seconds: Option<f64>,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let p = ProcessStats::read();
        if let Some(v) = p.cpu_seconds {
            let counter = ConstCounter::new(v);
            let help = "Total user and system CPU time spent";
            counter.encode(encoder.encode_descriptor(
                "process_cpu",
                help,
                Some(&Unit::Seconds),
                counter.metric_type(),
            )?)?;
        }
        let gauges = [
            ("process_resident_memory", "Resident memory size", Some(Unit::Bytes), p.resident_bytes),
            ("process_virtual_memory", "Virtual memory size", Some(Unit::Bytes), p.virtual_bytes),
            (
                "process_start_time",
                "Start time of the process since the unix epoch",
                Some(Unit::Seconds),
                p.start_time_seconds,
            ),
            ("process_open_fds", "Number of open file descriptors", None, p.open_fds),
            ("process_max_fds", "Maximum number of open file descriptors", None, p.max_fds),
        ];
        for (name, help, unit, value) in gauges {
            if let Some(v) = value {
                let gauge = ConstGauge::new(v);
                gauge.encode(encoder.encode_descriptor(name, help, unit.as_ref(), gauge.metric_type())?)?;
            }
        }
        Ok(())
    }
}

impl ProcessStats {
    /// The numbers of this process, now.
    #[cfg(target_os = "linux")]
    pub fn read() -> ProcessStats {
        // SAFETY: sysconf only reads a configuration value.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let boot = std::fs::read_to_string("/proc/stat").ok();
        let limits = std::fs::read_to_string("/proc/self/limits").ok();
        let open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64);
        let mut p = ProcessStats::parse(stat.as_deref(), boot.as_deref(), limits.as_deref(), ticks as f64, page as f64);
        p.open_fds = open_fds;
        p
    }

    /// Nothing: no `/proc` to read.
    #[cfg(not(target_os = "linux"))]
    pub fn read() -> ProcessStats {
        ProcessStats::default()
    }

    /// From the texts of `/proc/self/stat`, `/proc/stat` (for the boot
    /// time) and `/proc/self/limits`, with the clock ticks per second and
    /// the page size in bytes.
    pub fn parse(
        stat: Option<&str>,
        boot: Option<&str>,
        limits: Option<&str>,
        ticks_per_second: f64,
        page_bytes: f64,
    ) -> ProcessStats {
        let mut p = ProcessStats::default();
        // The command name, field 2, is in parentheses and may hold spaces
        // or parentheses itself: the fields that follow start after the
        // last ')', with field 3 (state) at index 0.
        let fields: Vec<&str> =
            stat.and_then(|s| s.rsplit_once(')')).map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        if ticks_per_second > 0.0 {
            if let (Some(user), Some(system)) = (field(14), field(15)) {
                p.cpu_seconds = Some((user + system) / ticks_per_second);
            }
            let boot_time =
                boot.and_then(|b| b.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok()));
            if let (Some(boot_time), Some(start)) = (boot_time, field(22)) {
                p.start_time_seconds = Some(boot_time + start / ticks_per_second);
            }
        }
        p.virtual_bytes = field(23);
        if page_bytes > 0.0 {
            p.resident_bytes = field(24).map(|pages| pages * page_bytes);
        }
        p.max_fds = limits.and_then(|l| {
            let line = l.lines().find(|l| l.starts_with("Max open files"))?;
            line["Max open files".len()..].split_whitespace().next()?.parse().ok()
        });
        p
    }
}
