//! A load phase's report with the server threads' CPU time per call, and
//! consentd's figures as ratios to the bare server's.

use super::support;

/// A phase's report and the server threads' CPU time per operation.
pub(crate) struct Phase {
    pub(crate) report: support::Report,
    pub(crate) cpu_micros_per_call: f64,
}

impl Phase {
    pub(crate) fn rate(&self) -> f64 {
        self.report.ops as f64 / self.report.seconds
    }
}

/// Runs `work`, timing the server threads' CPU over it.
pub(crate) async fn measured<F: std::future::Future<Output = support::Report>>(
    name: &str,
    unit: &str,
    calls_per_op: f64,
    work: F,
) -> Phase {
    let (cpu, client) = (
        support::cpu_seconds("server"),
        support::cpu_seconds("client"),
    );
    let report = work.await;
    let calls = report.ops as f64 / calls_per_op;
    let cpu_micros_per_call = (support::cpu_seconds("server") - cpu) * 1e6 / calls.max(1.0);
    let client_micros = (support::cpu_seconds("client") - client) * 1e6 / calls.max(1.0);
    println!(
        "{}  CPU per call: server {cpu_micros_per_call:.2} µs, client {client_micros:.2} µs",
        report.line(name, unit)
    );
    Phase {
        report,
        cpu_micros_per_call,
    }
}

/// Prints consentd's figures as ratios to the bare server's.
pub(crate) fn ratio(what: &str, consentd: &Phase, bare: &Phase) {
    if consentd.cpu_micros_per_call == 0.0 {
        // `--addr`: consentd is another process, its CPU not seen here.
        println!(
            "  {what}: consentd / bare = {:.2}× the rate",
            consentd.rate() / bare.rate()
        );
        return;
    }
    println!(
        "  {what}: consentd / bare = {:.2}× the rate; server CPU per call {:.2} vs {:.2} µs = {:.2}× less work",
        consentd.rate() / bare.rate(),
        consentd.cpu_micros_per_call,
        bare.cpu_micros_per_call,
        bare.cpu_micros_per_call / consentd.cpu_micros_per_call
    );
}
