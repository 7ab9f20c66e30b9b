//! Running a batch of events through a tenant's chain: each plugin sees the
//! events in its scope, and its outcomes (keep, fan out, drop, reject) or its
//! fault (under its failure policy) decide what reaches the store.

use std::collections::HashSet;
use std::sync::Arc;

use super::installation::{FailurePolicy, Installation, PluginSettings, Standing};
use crate::event::{now_micros, DeadLetter, Event, Lineage, LineageStep, PluginLog, PluginRun, Raw, StoredEvent};
use crate::runtime::bindings::types;
use crate::runtime::{Blame, PluginFault};
use crate::store::WriteBatch;

/// One input event with the client's raw input it came from.
#[derive(Debug, Clone)]
pub struct Input {
    pub event: Event,
    pub raw: Raw,
}

/// Why an event was refused, for the client.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    pub code: String,
    pub message: String,
    pub field: Option<String>,
    /// The plugin that refused it.
    pub plugin: String,
    /// Whether the plugin refused it or failed on it (under the `reject`
    /// policy). Kept apart from `code`, which a plugin chooses freely: a
    /// plugin cannot pass its own refusal off as a failure (502).
    #[serde(skip)]
    pub by: RejectedBy,
}

/// Who refused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectedBy {
    /// The plugin returned a rejection.
    Plugin,
    /// The plugin failed, and its failure policy is `reject`.
    FailurePolicy,
}

impl Rejection {
    /// The plugin failed (a 502 where a family tells the two apart).
    pub fn plugin_failed(&self) -> bool {
        self.by == RejectedBy::FailurePolicy
    }
}

/// What became of one input event.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Disposition {
    /// Stored as these events (more than one after a fan-out).
    Stored {
        ids: Vec<String>,
    },
    Dropped {
        reason: String,
        plugin: String,
    },
    Rejected {
        error: Rejection,
    },
    DeadLettered {
        reason: String,
        plugin: String,
    },
}

/// The result of a run: one disposition per input, what to commit, and
/// installations that this run disabled (their settings to persist).
#[derive(Debug, Default)]
pub struct RunOutput {
    pub dispositions: Vec<Disposition>,
    pub batch: WriteBatch,
    pub disabled: Vec<(String, String, PluginSettings)>,
    /// Set when the host failed a plugin call (blame: host, e.g. the
    /// instance pool was exhausted): the run was abandoned there, so
    /// `dispositions` and `batch` are incomplete and must not be used. The
    /// pipeline turns this into [`super::PluginError::Unavailable`].
    pub(super) host_fault: Option<(String, PluginFault)>,
}

/// Longest rejection code and message passed on to clients.
const MAX_CODE: usize = 64;
const MAX_MESSAGE: usize = 2048;
/// Longest rejected field name passed on.
const MAX_FIELD: usize = 256;
/// Bytes of plugin-written text (drop reasons, rejection codes, messages
/// and fields) one run passes on in full. Beyond it each is cut to
/// [`CUT_SHORT`]: an answer (and the copy of it remembered under an
/// `Idempotency-Key`) stays within a few MB whatever the plugin writes
/// (RELIABILITY.md, F22: 10,000 rejections of 4 KB made a 43 MB answer).
const MESSAGE_BUDGET: usize = 256 << 10;
const CUT_SHORT: usize = 64;

/// What is left of a run's [`MESSAGE_BUDGET`].
struct Messages {
    left: usize,
}

impl Messages {
    /// `s` cut to `max` bytes, or to [`CUT_SHORT`] once the budget is spent.
    fn cut(&mut self, s: String, max: usize) -> String {
        let max = if self.left >= max.min(s.len()) { max } else { CUT_SHORT.min(max) };
        let s = truncate(s, max);
        self.left = self.left.saturating_sub(s.len());
        s
    }
}
/// Longest event id a plugin may set.
const MAX_ID: usize = 128;

struct Item {
    input: usize,
    event: Event,
    lineage: Lineage,
}

/// Moves, never copies: the event is handed to the plugin and taken back
/// (as the plugin's output, or as it was when the plugin failed).
fn to_wit(e: Event) -> types::Event {
    types::Event {
        id: e.id,
        tenant: e.tenant,
        family: e.family,
        name: e.name,
        group: e.group,
        status: e.status,
        source: e.source,
        occurred_at: e.occurred_at,
        received_at: e.received_at,
        actor_type: e.actor_type,
        actor_id: e.actor_id,
        user_id: e.user_id,
        resource_type: e.resource_type,
        resource_id: e.resource_id,
        session_id: e.session_id,
        attributes: e.attributes,
        payload: e.payload,
    }
}

fn from_wit(e: types::Event) -> Event {
    Event {
        id: e.id,
        tenant: e.tenant,
        family: e.family,
        name: e.name,
        group: e.group,
        status: e.status,
        source: e.source,
        occurred_at: e.occurred_at,
        received_at: e.received_at,
        actor_type: e.actor_type,
        actor_id: e.actor_id,
        user_id: e.user_id,
        resource_type: e.resource_type,
        resource_id: e.resource_id,
        session_id: e.session_id,
        attributes: e.attributes,
        payload: e.payload,
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Check a plugin's output for one input event; any breach is the plugin's
/// fault and fails the whole call.
fn check_output(inst: &Installation, input: &types::Event, outcome: &types::Outcome) -> Result<(), PluginFault> {
    let limits = inst.instances.limits();
    let types::Outcome::Keep(events) = outcome else {
        return Ok(());
    };
    if events.len() > limits.max_fanout as usize {
        return Err(PluginFault::InvalidOutput(format!(
            "fan-out of {} events exceeds the limit of {}",
            events.len(),
            limits.max_fanout
        )));
    }
    let mut ids = HashSet::new();
    for e in events {
        if e.tenant != input.tenant {
            return Err(PluginFault::InvalidOutput(
                "an event's tenant was changed; plugins may not move events between tenants".into(),
            ));
        }
        if e.family != input.family {
            return Err(PluginFault::InvalidOutput("an event's family was changed".into()));
        }
        if e.id.is_empty() || e.id.len() > MAX_ID {
            return Err(PluginFault::InvalidOutput(format!("event id must be 1..{MAX_ID} bytes")));
        }
        if events.len() > 1 && !ids.insert(e.id.as_str()) {
            return Err(PluginFault::InvalidOutput(format!("fan-out repeats event id {}", e.id)));
        }
        if e.name.is_empty() {
            return Err(PluginFault::InvalidOutput("event name is empty".into()));
        }
        let size = e.payload.len() + e.attributes.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if size as u64 > limits.max_event_bytes {
            return Err(PluginFault::InvalidOutput(format!(
                "event of {size} bytes exceeds the limit of {} bytes",
                limits.max_event_bytes
            )));
        }
        // A payload the plugin left as it was is known to be JSON.
        if e.payload != input.payload && serde_json::from_str::<serde::de::IgnoredAny>(&e.payload).is_err() {
            return Err(PluginFault::InvalidOutput(format!("payload of event {} is not valid JSON", e.id)));
        }
        for (key, value) in &e.attributes {
            let numeric = match key.as_str() {
                "task_id" | "http_status" => value.parse::<i64>().is_ok(),
                "latency_ms" => value.parse::<f64>().is_ok(),
                _ => true,
            };
            if !numeric {
                return Err(PluginFault::InvalidOutput(format!("attribute {key} must be a number, got {value:?}")));
            }
        }
    }
    Ok(())
}

/// How a run treats the chain, and whether it counts toward plugin health
/// (consecutive failures, automatic disabling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The tenant's live events: customer-disabled plugins are skipped,
    /// auto-disabled ones apply their failure policy, and every call counts
    /// toward plugin health.
    Live,
    /// A test space's events (and dry runs of the whole chain): run exactly
    /// as live ones, but faults are only reported, never counted, so test
    /// traffic cannot disable (or keep alive) a plugin of the live chain.
    Test,
    /// Every plugin given runs as it is, even a disabled one, and health is
    /// untouched: a dry run of one plugin, a shadow run.
    Dry,
}

/// A plugin that could not process its events (it faulted, or the host
/// disabled it), for its failure policy to settle.
struct Failure<'a> {
    plugin: &'a str,
    version: u32,
    /// For the client, under `reject` (`plugin_failed`).
    message: String,
    /// For the dead letter, under `dead-letter`.
    reason: String,
}

impl Failure<'_> {
    /// Settle the `affected` inputs (those not settled already) as `policy`
    /// says: `skip` leaves them to continue down the chain, `reject` refuses
    /// them, `dead-letter` quarantines their untransformed originals.
    fn apply(
        &self,
        policy: FailurePolicy,
        affected: HashSet<usize>,
        finals: &mut [Option<Disposition>],
        dead_letters: &mut Vec<DeadLetter>,
        originals: &[Event],
        raws: &[Raw],
    ) {
        match policy {
            FailurePolicy::Skip => {}
            FailurePolicy::Reject => {
                for input in affected {
                    finals[input].get_or_insert(Disposition::Rejected {
                        error: Rejection {
                            code: "plugin_failed".into(),
                            message: self.message.clone(),
                            field: None,
                            plugin: self.plugin.to_string(),
                            by: RejectedBy::FailurePolicy,
                        },
                    });
                }
            }
            FailurePolicy::DeadLetter => {
                for input in affected {
                    if finals[input].is_some() {
                        continue;
                    }
                    let original = &originals[input];
                    dead_letters.push(DeadLetter {
                        id: original.id.clone(),
                        tenant: original.tenant.clone(),
                        family: original.family.clone(),
                        received_at: original.received_at,
                        plugin: self.plugin.to_string(),
                        plugin_version: self.version,
                        reason: self.reason.clone(),
                        event: original.clone(),
                        raw: raws[input].clone(),
                    });
                    finals[input] = Some(Disposition::DeadLettered {
                        reason: self.reason.clone(),
                        plugin: self.plugin.to_string(),
                    });
                }
            }
        }
    }
}

/// Run `inputs` through `chain` (already ordered, already filtered to this
/// tenant). Blocking: call it from a blocking thread.
///
/// Events move through the chain without being copied: each plugin gets the
/// events in its scope and gives back what becomes of them. The untouched
/// inputs are kept aside only when some plugin's failure policy may need
/// them (`dead-letter`); policies are read once, when the batch starts.
pub fn run_chain(chain: &[Arc<Installation>], inputs: Vec<Input>, mode: Mode) -> RunOutput {
    let n = inputs.len();
    let mut out = RunOutput { dispositions: Vec::with_capacity(n), ..Default::default() };
    let mut finals: Vec<Option<Disposition>> = vec![None; n];
    let mut last_drop: Vec<Option<(String, String)>> = vec![None; n];
    let mut messages = Messages { left: MESSAGE_BUDGET };
    let policies: Vec<FailurePolicy> = chain.iter().map(|inst| inst.failure_policy()).collect();
    let originals: Vec<Event> = if policies.contains(&FailurePolicy::DeadLetter) {
        inputs.iter().map(|i| i.event.clone()).collect()
    } else {
        Vec::new()
    };
    let mut raws: Vec<Raw> = Vec::with_capacity(n);
    let mut items: Vec<Item> = Vec::with_capacity(n);
    let untouched: Lineage = Vec::new().into();
    for (input, Input { event, raw }) in inputs.into_iter().enumerate() {
        raws.push(raw);
        items.push(Item { input, event, lineage: untouched.clone() });
    }

    for (inst, &policy) in chain.iter().zip(&policies) {
        let standing = if mode == Mode::Dry { Standing::Active } else { inst.standing() };
        if standing == Standing::Disabled {
            continue;
        }
        let in_scope: Vec<usize> = (0..items.len()).filter(|&i| inst.matches(&items[i].event)).collect();
        if in_scope.is_empty() {
            continue;
        }
        let version = inst.version();
        // What the call leaves behind (its logs, its run) belongs to the
        // space the events came for: test traffic's to the test space.
        let space = if mode == Mode::Test {
            format!("{}{}", inst.tenant, crate::auth::TEST_SPACE_SUFFIX)
        } else {
            inst.tenant.clone()
        };
        if let Standing::AutoDisabled(reason) = standing {
            // Not called, but not skipped either: its events meet its failure
            // policy, as they would if it had failed on them.
            let failure = Failure {
                plugin: &inst.name,
                version,
                message: format!(
                    "plugin {} is auto-disabled ({reason}); a PATCH with enabled: true turns it back on",
                    inst.name
                ),
                reason: format!("auto_disabled: {reason}"),
            };
            let affected: HashSet<usize> = in_scope.iter().map(|&i| items[i].input).collect();
            failure.apply(policy, affected, &mut finals, &mut out.batch.dead_letters, &originals, &raws);
            items.retain(|item| finals[item.input].is_none());
            continue;
        }
        let wit_events: Vec<types::Event> =
            in_scope.iter().map(|&i| to_wit(std::mem::take(&mut items[i].event))).collect();
        let (result, report) = inst.instances.process(&wit_events);
        let at = now_micros();
        for log in report.logs {
            out.batch.logs.push(PluginLog {
                tenant: space.clone(),
                plugin: inst.name.clone(),
                plugin_version: version,
                at,
                level: log.level,
                message: log.message,
                fields: log.fields,
            });
        }
        let result = result.and_then(|outcomes| {
            for (input, outcome) in wit_events.iter().zip(&outcomes) {
                check_output(inst, input, outcome)?;
            }
            Ok(outcomes)
        });
        let mut run = PluginRun {
            tenant: space.clone(),
            plugin: inst.name.clone(),
            plugin_version: version,
            started_at: at - report.elapsed.as_micros() as i64,
            events_in: in_scope.len() as u32,
            events_out: 0,
            dropped: 0,
            rejected: 0,
            fault: None,
            elapsed_us: report.elapsed.as_micros() as i64,
            cpu_us: report.cpu.as_micros() as i64,
            fuel: report.fuel,
        };
        match &result {
            Ok(outcomes) => {
                for outcome in outcomes {
                    match outcome {
                        types::Outcome::Keep(events) if events.is_empty() => run.dropped += 1,
                        types::Outcome::Keep(events) => run.events_out += events.len() as u32,
                        types::Outcome::Drop(_) => run.dropped += 1,
                        types::Outcome::Reject(_) => run.rejected += 1,
                    }
                }
            }
            Err(fault) => run.fault = Some(fault.reason().to_string()),
        }
        out.batch.runs.push(run);
        match result {
            Ok(outcomes) => {
                if mode == Mode::Live {
                    inst.record_success();
                }
                let step = LineageStep {
                    plugin: inst.name.clone(),
                    version,
                    sha256: inst.instances.plugin().sha256().to_string(),
                };
                // Items that share a lineage share its extension: one
                // allocation per step for the usual batch, not one per event.
                let mut extended: Option<(Lineage, Lineage)> = None;
                let mut extend = |lineage: &Lineage| -> Lineage {
                    match &extended {
                        Some((from, to)) if Arc::ptr_eq(from, lineage) => to.clone(),
                        _ => {
                            let mut steps = lineage.to_vec();
                            steps.push(step.clone());
                            let to: Lineage = steps.into();
                            extended = Some((lineage.clone(), to.clone()));
                            to
                        }
                    }
                };
                let mut outcomes = in_scope.iter().copied().zip(outcomes).peekable();
                let mut next_items = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    let outcome = match outcomes.peek() {
                        Some((j, _)) if *j == i => outcomes.next().map(|(_, o)| o),
                        _ => None,
                    };
                    match outcome {
                        None => next_items.push(item),
                        Some(types::Outcome::Keep(events)) => {
                            if events.is_empty() {
                                last_drop[item.input] = Some(("no events kept".into(), inst.name.clone()));
                            } else {
                                let lineage = extend(&item.lineage);
                                for event in events {
                                    next_items.push(Item {
                                        input: item.input,
                                        event: from_wit(event),
                                        lineage: lineage.clone(),
                                    });
                                }
                            }
                        }
                        Some(types::Outcome::Drop(reason)) => {
                            last_drop[item.input] = Some((messages.cut(reason, MAX_MESSAGE), inst.name.clone()));
                        }
                        Some(types::Outcome::Reject(r)) => {
                            finals[item.input].get_or_insert(Disposition::Rejected {
                                error: Rejection {
                                    code: messages.cut(r.code, MAX_CODE),
                                    message: messages.cut(r.message, MAX_MESSAGE),
                                    field: r.field.map(|f| messages.cut(f, MAX_FIELD)),
                                    plugin: inst.name.clone(),
                                    by: RejectedBy::Plugin,
                                },
                            });
                        }
                    }
                }
                items = next_items;
            }
            Err(fault) if fault.blame() == Blame::Host => {
                // Not the plugin's doing, so not its failure: no count toward
                // auto-disabling, no failure policy (a dead letter or a
                // `plugin_failed` would blame the customer's code). The batch
                // cannot finish as the chain says, so it is abandoned whole
                // and the client is asked to retry.
                tracing::warn!(tenant = %inst.tenant, plugin = %inst.name, %fault, "host could not run plugin");
                out.host_fault = Some((inst.name.clone(), fault));
                return out;
            }
            Err(fault) => {
                tracing::debug!(tenant = %inst.tenant, plugin = %inst.name, %fault, "plugin call failed");
                // The plugin's answer is void: its events are as they were.
                for (&i, event) in in_scope.iter().zip(wit_events) {
                    items[i].event = from_wit(event);
                }
                if mode == Mode::Live {
                    if let Some(settings) = inst.record_failure(&fault) {
                        out.disabled.push((inst.tenant.clone(), inst.name.clone(), settings));
                    }
                }
                let affected: HashSet<usize> = in_scope.iter().map(|&i| items[i].input).collect();
                let failure = Failure {
                    plugin: &inst.name,
                    version,
                    message: format!("plugin {} failed: {fault}", inst.name),
                    reason: format!("{}: {fault}", fault.reason()),
                };
                failure.apply(policy, affected, &mut finals, &mut out.batch.dead_letters, &originals, &raws);
            }
        }
        items.retain(|item| finals[item.input].is_none());
    }

    let mut ids: Vec<Vec<String>> = vec![Vec::new(); n];
    for item in items {
        ids[item.input].push(item.event.id.clone());
        out.batch.events.push(StoredEvent { event: item.event, lineage: item.lineage, raw: raws[item.input].clone() });
    }
    for (input, (fin, ids)) in finals.into_iter().zip(ids).enumerate() {
        out.dispositions.push(match fin {
            Some(d) => d,
            None if !ids.is_empty() => Disposition::Stored { ids },
            None => {
                let (reason, plugin) = last_drop[input].take().unwrap_or_else(|| ("dropped".into(), String::new()));
                Disposition::Dropped { reason, plugin }
            }
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Runtime, RuntimeConfig};

    /// customer-prefix (the plugin the host ships), installed for tenant `t`
    /// with `settings` changed by `change`.
    fn prefix(runtime: &Runtime, change: impl FnOnce(&mut PluginSettings)) -> Arc<Installation> {
        let (plugin, _) = runtime.compile(crate::shipped::CUSTOMER_PREFIX).unwrap();
        let mut settings = PluginSettings::new(3, plugin.sha256().to_string(), 0);
        change(&mut settings);
        Arc::new(Installation::new("t".into(), "prefix".into(), settings, Arc::new(plugin)))
    }

    fn runtime() -> Runtime {
        Runtime::new(RuntimeConfig { max_instances: 8, ..RuntimeConfig::default() }).unwrap()
    }

    fn input(id: &str, family: &str, name: &str) -> Input {
        let event = Event {
            id: id.into(),
            tenant: "t".into(),
            family: family.into(),
            name: name.into(),
            source: "s".into(),
            payload: "{}".into(),
            ..Event::default()
        };
        Input { event, raw: format!("{{\"id\":\"{id}\"}}").into() }
    }

    fn names(output: &RunOutput) -> Vec<&str> {
        output.batch.events.iter().map(|e| e.event.name.as_str()).collect()
    }

    #[test]
    fn an_empty_chain_stores_every_input_as_it_came() {
        let inputs = vec![input("a", "generic", "one"), input("b", "iam", "two")];
        let output = run_chain(&[], inputs, Mode::Live);
        assert_eq!(names(&output), ["one", "two"]);
        assert!(output.batch.events.iter().all(|e| e.lineage.is_empty()));
        assert_eq!(&*output.batch.events[1].raw, r#"{"id":"b"}"#, "each event keeps its raw input");
        let stored: Vec<&Disposition> = output.dispositions.iter().collect();
        assert!(matches!(stored[..], [Disposition::Stored { .. }, Disposition::Stored { .. }]));
        assert!(output.batch.runs.is_empty() && output.batch.dead_letters.is_empty());
    }

    #[test]
    fn a_plugin_rewrites_the_events_in_its_scope_and_is_recorded_in_their_lineage() {
        let runtime = runtime();
        let chain = [prefix(&runtime, |s| s.families = vec!["generic".into()])];
        let inputs = vec![
            input("a", "generic", "match.started"),
            input("b", "iam", "account.created"),
            input("c", "generic", "customer.x"),
        ];
        let output = run_chain(&chain, inputs, Mode::Live);
        // In request order; the IAM event is out of the plugin's scope, and a
        // name already prefixed is not prefixed again.
        assert_eq!(names(&output), ["customer.match.started", "account.created", "customer.x"]);
        let lineage = &output.batch.events[0].lineage;
        assert_eq!(lineage.len(), 1);
        assert_eq!((lineage[0].plugin.as_str(), lineage[0].version), ("prefix", 3));
        assert_eq!(lineage[0].sha256, chain[0].settings().sha256);
        assert!(output.batch.events[1].lineage.is_empty(), "untouched by a plugin it did not meet");
        // One call, on the two events in scope.
        assert_eq!(output.batch.runs.len(), 1);
        assert_eq!((output.batch.runs[0].events_in, output.batch.runs[0].events_out), (2, 2));
        assert!(output.batch.runs[0].fault.is_none());
    }

    #[test]
    fn a_disabled_plugin_is_skipped_except_in_a_dry_run() {
        let runtime = runtime();
        let chain = [prefix(&runtime, |s| s.enabled = false)];
        let live = run_chain(&chain, vec![input("a", "generic", "e")], Mode::Live);
        assert_eq!(names(&live), ["e"]);
        assert!(live.batch.runs.is_empty(), "not called");
        let dry = run_chain(&chain, vec![input("a", "generic", "e")], Mode::Dry);
        assert_eq!(names(&dry), ["customer.e"], "a dry run tries the chain as configured, disabled plugins too");
    }
}
