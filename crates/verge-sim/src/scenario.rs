//! Scenario files for `verge sim run`: a corridor, its traffic, and a fault timeline.
//!
//! [`Scenario::parse`] reads the TOML and checks everything that can be checked before a process
//! starts: unknown keys, values out of range, nodes that do not exist, and timelines that cannot
//! happen (a node restarted that was never killed, a heal with no partition, a fault after the
//! end). Every error names the file and the line.
//!
//! ```toml
//! name = "gateway-failover"
//! duration_s = 60
//!
//! [nodes]
//! count = 5            # b1..b5; or ids = ["a", "b", ...]
//! layout = "corridor"  # or "grid" with cols = N
//! voters = 3
//!
//! [traffic]
//! source = "synthetic" # or "sumo-replay", "sumo-live"
//! rate_per_s = 1000    # per node
//!
//! [[fault]]
//! at_s = 10
//! kind = "kill"
//! node = "gateway"     # the gateway at that moment
//!
//! [[fault]]
//! at_s = 15
//! kind = "restart"
//! node = "gateway"     # the node the last `kill` of "gateway" hit
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A scenario file that cannot be run.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}: {message}")]
pub struct ScenarioError {
    /// The file.
    pub path: PathBuf,
    /// The line (1-based) of the key or table that is wrong; 0 when the whole file is.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// A whole scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Its name.
    pub name: String,
    /// What it shows.
    pub description: String,
    /// How long the corridor runs, in seconds.
    pub duration_s: f64,
    /// The seed of its random choices; `None`: chosen at run time and printed.
    pub seed: Option<u64>,
    /// The nodes, in order.
    pub nodes: Vec<String>,
    /// Each node's road neighbours.
    pub neighbours: BTreeMap<String, Vec<String>>,
    /// The Raft voters (the first nodes).
    pub voters: Vec<String>,
    /// Copies of each stream and the write quorum.
    pub replicas: usize,
    /// Holders that must have a reading before it is acknowledged.
    pub write_quorum: usize,
    /// The traffic.
    pub traffic: Traffic,
    /// The faults, in time order.
    pub faults: Vec<Fault>,
}

/// Where the nodes' readings come from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    /// `synthetic`, `sumo-replay` or `sumo-live`.
    pub source: Source,
    /// Readings per second per node (synthetic).
    #[serde(default = "default_rate")]
    pub rate_per_s: f64,
    /// Detectors per node (synthetic).
    #[serde(default = "default_sensors")]
    pub sensors: u32,
    /// Replay speed, times real time (`sumo-replay`).
    #[serde(default = "default_speed")]
    pub speed: f64,
}

fn default_rate() -> f64 {
    1_000.0
}
fn default_sensors() -> u32 {
    8
}
fn default_speed() -> f64 {
    1.0
}

/// A traffic source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Synthetic detectors with a demand pattern.
    Synthetic,
    /// SUMO detector files of a grid, replayed.
    SumoReplay,
    /// One live SUMO over TraCI, one traffic light per node.
    SumoLive,
}

/// A node a fault hits: by id, or whoever is the gateway when it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// This node.
    Node(String),
    /// The gateway at that moment (for `restart` and `resume`: the node the last such fault on
    /// `gateway` hit).
    Gateway,
}

/// One fault at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// Seconds from the start.
    pub at_s: f64,
    /// What happens.
    pub what: FaultKind,
    /// The line of its `[[fault]]` table.
    pub line: usize,
}

/// What a fault does.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// SIGKILL.
    Kill(Target),
    /// Start a killed node again.
    Restart(Target),
    /// SIGSTOP.
    Pause(Target),
    /// SIGCONT.
    Resume(Target),
    /// Cut the groups off from each other (nodes in no group stay connected to all).
    Partition(Vec<Vec<String>>),
    /// Undo the partition.
    Heal,
    /// Drop this share of datagrams between nodes (0 to 1; 0 undoes it).
    Loss(f64),
    /// Delay datagrams between nodes by this many milliseconds (0 undoes it).
    Delay(u64),
    /// The node's inference takes this many times longer (1 undoes it).
    SlowInference(Target, f64),
    /// The cloud stops answering.
    CloudDown,
    /// The cloud is back.
    CloudUp,
    /// The node's disk quota is reached.
    FillDisk(Target),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: String,
    #[serde(default)]
    description: String,
    duration_s: f64,
    #[serde(default)]
    seed: Option<u64>,
    nodes: NodesFile,
    #[serde(default)]
    replication: ReplicationFile,
    traffic: Traffic,
    #[serde(default)]
    fault: Vec<toml::Spanned<toml::Table>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodesFile {
    #[serde(default)]
    count: Option<usize>,
    #[serde(default)]
    ids: Option<Vec<String>>,
    #[serde(default)]
    layout: Layout,
    #[serde(default)]
    cols: Option<usize>,
    #[serde(default = "default_voters")]
    voters: usize,
}

fn default_voters() -> usize {
    3
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Layout {
    #[default]
    Corridor,
    Grid,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplicationFile {
    #[serde(default = "default_two")]
    replicas: usize,
    #[serde(default = "default_two")]
    write_quorum: usize,
}

impl Default for ReplicationFile {
    fn default() -> Self {
        Self {
            replicas: 2,
            write_quorum: 2,
        }
    }
}

fn default_two() -> usize {
    2
}

/// The most nodes a scenario may start.
pub const NODES_MAX: usize = 64;

impl Scenario {
    /// Reads and checks the scenario file at `path`.
    ///
    /// # Errors
    ///
    /// A [`ScenarioError`] naming the file and line of the first problem.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            path: path.to_owned(),
            line: 0,
            message: format!("cannot read the scenario: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks a scenario's `text`; `path` names it in errors.
    ///
    /// # Errors
    ///
    /// A [`ScenarioError`] naming the line of the first problem.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ScenarioError> {
        let err = |line: usize, message: String| ScenarioError {
            path: path.to_owned(),
            line,
            message,
        };
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let key_line = |key: &str| {
            text.lines()
                .position(|l| {
                    let l = l.trim_start();
                    l.starts_with(key) && l[key.len()..].trim_start().starts_with('=')
                })
                .map_or(0, |i| i + 1)
        };
        let file: File = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(s.start));
            err(line, e.message().to_owned())
        })?;

        if !(file.duration_s.is_finite() && file.duration_s > 0.0 && file.duration_s <= 86_400.0) {
            return Err(err(
                key_line("duration_s"),
                format!(
                    "duration_s = {} is not between 0 and 86400",
                    file.duration_s
                ),
            ));
        }
        let n = &file.nodes;
        let nodes: Vec<String> = match (&n.ids, n.count) {
            (Some(_), Some(_)) => {
                return Err(err(
                    key_line("count"),
                    "[nodes] has both count and ids; give one".into(),
                ));
            }
            (Some(ids), None) => ids.clone(),
            (None, Some(c)) => (1..=c).map(|i| format!("b{i}")).collect(),
            (None, None) => {
                return Err(err(0, "[nodes] needs count = N or ids = [...]".into()));
            }
        };
        if nodes.is_empty() || nodes.len() > NODES_MAX {
            return Err(err(
                key_line(if n.ids.is_some() { "ids" } else { "count" }),
                format!("{} nodes is not between 1 and {NODES_MAX}", nodes.len()),
            ));
        }
        let mut seen = BTreeSet::new();
        for id in &nodes {
            if let Err(e) = id.parse::<verge_proto::NodeId>() {
                return Err(err(key_line("ids"), format!("node id `{id}`: {e}")));
            }
            if id == "gateway" {
                return Err(err(
                    key_line("ids"),
                    "`gateway` names the gateway in faults; it cannot be a node id".into(),
                ));
            }
            if !seen.insert(id.clone()) {
                return Err(err(key_line("ids"), format!("node `{id}` is listed twice")));
            }
        }
        let neighbours = match n.layout {
            Layout::Corridor => corridor(&nodes),
            Layout::Grid => {
                let cols = n.cols.unwrap_or(0);
                if cols == 0 || !nodes.len().is_multiple_of(cols) {
                    return Err(err(
                        key_line("cols"),
                        format!(
                            "a grid of {} nodes needs cols = N dividing it (got {cols})",
                            nodes.len()
                        ),
                    ));
                }
                grid(&nodes, cols)
            }
        };
        if n.layout == Layout::Corridor && n.cols.is_some() {
            return Err(err(
                key_line("cols"),
                "cols is for layout = \"grid\"".into(),
            ));
        }
        if !(n.voters == 1 || n.voters == 3 || n.voters == 5) || n.voters > nodes.len() {
            return Err(err(
                key_line("voters"),
                format!(
                    "voters = {} must be 1, 3 or 5 and at most the {} nodes",
                    n.voters,
                    nodes.len()
                ),
            ));
        }
        let r = &file.replication;
        if r.replicas == 0 || r.replicas > nodes.len() {
            return Err(err(
                key_line("replicas"),
                format!(
                    "replicas = {} is not between 1 and the {} nodes",
                    r.replicas,
                    nodes.len()
                ),
            ));
        }
        if r.write_quorum == 0 || r.write_quorum > r.replicas {
            return Err(err(
                key_line("write_quorum"),
                format!(
                    "write_quorum = {} is not between 1 and replicas ({})",
                    r.write_quorum, r.replicas
                ),
            ));
        }
        let t = &file.traffic;
        if !(t.rate_per_s.is_finite() && t.rate_per_s > 0.0 && t.rate_per_s <= 1e6) {
            return Err(err(
                key_line("rate_per_s"),
                format!("rate_per_s = {} is not between 0 and 1000000", t.rate_per_s),
            ));
        }
        if t.sensors == 0 || t.sensors > 10_000 {
            return Err(err(
                key_line("sensors"),
                format!("sensors = {} is not between 1 and 10000", t.sensors),
            ));
        }
        if !(t.speed.is_finite() && t.speed > 0.0 && t.speed <= 1_000.0) {
            return Err(err(
                key_line("speed"),
                format!("speed = {} is not between 0 and 1000", t.speed),
            ));
        }

        let mut faults = Vec::with_capacity(file.fault.len());
        for spanned in &file.fault {
            let line = line_of(spanned.span().start);
            let fault = parse_fault(spanned.get_ref(), &nodes, file.duration_s)
                .map_err(|m| err(line, m))?;
            faults.push(Fault {
                at_s: fault.0,
                what: fault.1,
                line,
            });
        }
        faults.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        check_timeline(&faults, &nodes).map_err(|(line, m)| err(line, m))?;

        Ok(Self {
            name: file.name,
            description: file.description,
            duration_s: file.duration_s,
            seed: file.seed,
            voters: nodes[..n.voters].to_vec(),
            nodes,
            neighbours,
            replicas: r.replicas,
            write_quorum: r.write_quorum,
            traffic: file.traffic,
            faults,
        })
    }
}

fn corridor(nodes: &[String]) -> BTreeMap<String, Vec<String>> {
    nodes
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut n = Vec::new();
            if i > 0 {
                n.push(nodes[i - 1].clone());
            }
            if i + 1 < nodes.len() {
                n.push(nodes[i + 1].clone());
            }
            (id.clone(), n)
        })
        .collect()
}

fn grid(nodes: &[String], cols: usize) -> BTreeMap<String, Vec<String>> {
    let rows = nodes.len() / cols;
    let mut out = BTreeMap::new();
    for r in 0..rows {
        for c in 0..cols {
            let mut n = Vec::new();
            if r > 0 {
                n.push(nodes[(r - 1) * cols + c].clone());
            }
            if c > 0 {
                n.push(nodes[r * cols + c - 1].clone());
            }
            if c + 1 < cols {
                n.push(nodes[r * cols + c + 1].clone());
            }
            if r + 1 < rows {
                n.push(nodes[(r + 1) * cols + c].clone());
            }
            out.insert(nodes[r * cols + c].clone(), n);
        }
    }
    out
}

/// One `[[fault]]` table: its time and what it does.
fn parse_fault(
    t: &toml::Table,
    nodes: &[String],
    duration_s: f64,
) -> Result<(f64, FaultKind), String> {
    let kind = t
        .get("kind")
        .and_then(toml::Value::as_str)
        .ok_or("a fault needs kind = \"...\"")?;
    let at_s = match t.get("at_s") {
        Some(toml::Value::Float(f)) => *f,
        Some(toml::Value::Integer(i)) => *i as f64,
        _ => return Err(format!("fault `{kind}` needs at_s = SECONDS")),
    };
    if !(at_s.is_finite() && at_s >= 0.0 && at_s <= duration_s) {
        return Err(format!(
            "fault `{kind}` at_s = {at_s} is outside the run (0 to {duration_s} s)"
        ));
    }
    let allowed: &[&str] = match kind {
        "kill" | "restart" | "pause" | "resume" | "fill-disk" => &["node"],
        "slow-inference" => &["node", "factor"],
        "partition" => &["groups"],
        "loss" => &["share"],
        "delay" => &["ms"],
        "heal" | "cloud-down" | "cloud-up" => &[],
        other => {
            return Err(format!(
                "unknown fault kind `{other}` (kill, restart, pause, resume, partition, heal, loss, delay, slow-inference, cloud-down, cloud-up, fill-disk)"
            ));
        }
    };
    if let Some(k) = t
        .keys()
        .find(|k| *k != "kind" && *k != "at_s" && !allowed.contains(&k.as_str()))
    {
        return Err(format!("fault `{kind}` has no key `{k}`"));
    }
    let target = || -> Result<Target, String> {
        let node = t
            .get("node")
            .and_then(toml::Value::as_str)
            .ok_or(format!("fault `{kind}` needs node = \"ID\" or \"gateway\""))?;
        if node == "gateway" {
            Ok(Target::Gateway)
        } else if nodes.iter().any(|n| n == node) {
            Ok(Target::Node(node.to_owned()))
        } else {
            Err(format!("fault `{kind}`: there is no node `{node}`"))
        }
    };
    let number = |key: &str| -> Result<f64, String> {
        match t.get(key) {
            Some(toml::Value::Float(f)) => Ok(*f),
            Some(toml::Value::Integer(i)) => Ok(*i as f64),
            _ => Err(format!("fault `{kind}` needs {key} = NUMBER")),
        }
    };
    let what = match kind {
        "kill" => FaultKind::Kill(target()?),
        "restart" => FaultKind::Restart(target()?),
        "pause" => FaultKind::Pause(target()?),
        "resume" => FaultKind::Resume(target()?),
        "fill-disk" => FaultKind::FillDisk(target()?),
        "slow-inference" => {
            let factor = number("factor")?;
            if !(factor.is_finite() && (1.0..=1000.0).contains(&factor)) {
                return Err(format!("factor = {factor} is not between 1 and 1000"));
            }
            FaultKind::SlowInference(target()?, factor)
        }
        "partition" => {
            let groups = t
                .get("groups")
                .and_then(toml::Value::as_array)
                .ok_or("fault `partition` needs groups = [[\"b1\"], [\"b2\", \"b3\"]]")?;
            let mut out = Vec::new();
            let mut seen = BTreeSet::new();
            for g in groups {
                let ids = g
                    .as_array()
                    .ok_or("each partition group is a list of node ids")?;
                let mut group = Vec::new();
                for id in ids {
                    let id = id.as_str().ok_or("a node id is a string")?;
                    if !nodes.iter().any(|n| n == id) {
                        return Err(format!("fault `partition`: there is no node `{id}`"));
                    }
                    if !seen.insert(id.to_owned()) {
                        return Err(format!("fault `partition`: `{id}` is in two groups"));
                    }
                    group.push(id.to_owned());
                }
                if group.is_empty() {
                    return Err("fault `partition`: a group is empty".into());
                }
                out.push(group);
            }
            if out.len() < 2 {
                return Err("fault `partition` needs at least two groups".into());
            }
            FaultKind::Partition(out)
        }
        "loss" => {
            let share = number("share")?;
            if !(0.0..=1.0).contains(&share) {
                return Err(format!("share = {share} is not between 0 and 1"));
            }
            FaultKind::Loss(share)
        }
        "delay" => {
            let ms = number("ms")?;
            if !(ms.is_finite() && (0.0..=10_000.0).contains(&ms)) {
                return Err(format!("ms = {ms} is not between 0 and 10000"));
            }
            FaultKind::Delay(ms as u64)
        }
        "heal" => FaultKind::Heal,
        "cloud-down" => FaultKind::CloudDown,
        _ => FaultKind::CloudUp,
    };
    Ok((at_s, what))
}

/// Plays the timeline on a model of what is running, refusing what cannot happen.
fn check_timeline(faults: &[Fault], nodes: &[String]) -> Result<(), (usize, String)> {
    let mut killed: BTreeSet<String> = BTreeSet::new();
    let mut paused: BTreeSet<String> = BTreeSet::new();
    // What "gateway" named at the last kill/pause of it.
    let (mut killed_gateway, mut paused_gateway) = (0usize, 0usize);
    let (mut partitioned, mut cloud_down) = (false, false);
    for f in faults {
        let line = f.line;
        let fail = |m: String| Err((line, format!("at {} s: {m}", f.at_s)));
        match &f.what {
            FaultKind::Kill(Target::Node(n)) | FaultKind::Pause(Target::Node(n))
                if killed.contains(n) =>
            {
                return fail(format!("`{n}` is not running (killed before)"));
            }
            FaultKind::Kill(Target::Node(n)) => {
                paused.remove(n);
                killed.insert(n.clone());
            }
            FaultKind::Kill(Target::Gateway) => killed_gateway += 1,
            FaultKind::Restart(Target::Node(n)) => {
                if !killed.remove(n) {
                    return fail(format!("`{n}` cannot restart: it was not killed"));
                }
            }
            FaultKind::Restart(Target::Gateway) => {
                if killed_gateway == 0 {
                    return fail("no `kill` of the gateway to restart from".into());
                }
                killed_gateway -= 1;
            }
            FaultKind::Pause(Target::Node(n)) => {
                if !paused.insert(n.clone()) {
                    return fail(format!("`{n}` is paused already"));
                }
            }
            FaultKind::Pause(Target::Gateway) => paused_gateway += 1,
            FaultKind::Resume(Target::Node(n)) => {
                if !paused.remove(n) {
                    return fail(format!("`{n}` cannot resume: it was not paused"));
                }
            }
            FaultKind::Resume(Target::Gateway) => {
                if paused_gateway == 0 {
                    return fail("no `pause` of the gateway to resume".into());
                }
                paused_gateway -= 1;
            }
            FaultKind::Partition(_) => {
                if partitioned {
                    return fail("a partition is in place already; heal it first".into());
                }
                partitioned = true;
            }
            FaultKind::Heal => {
                if !partitioned {
                    return fail("nothing to heal: no partition before".into());
                }
                partitioned = false;
            }
            FaultKind::CloudDown => {
                if cloud_down {
                    return fail("the cloud is down already".into());
                }
                cloud_down = true;
            }
            FaultKind::CloudUp => {
                if !cloud_down {
                    return fail("the cloud is not down".into());
                }
                cloud_down = false;
            }
            FaultKind::SlowInference(Target::Node(n), _) | FaultKind::FillDisk(Target::Node(n))
                if killed.contains(n) =>
            {
                return fail(format!("`{n}` is not running (killed before)"));
            }
            FaultKind::SlowInference(..)
            | FaultKind::FillDisk(_)
            | FaultKind::Loss(_)
            | FaultKind::Delay(_) => {}
        }
        if killed.len() + killed_gateway >= nodes.len() {
            return fail("every node would be down".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "name = \"t\"\nduration_s = 60\n\n[nodes]\ncount = 5\n\n[traffic]\nsource = \"synthetic\"\n";

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(text, Path::new("t.toml"))
    }

    #[test]
    fn a_scenario_with_a_timeline_parses_in_time_order() {
        let text = format!(
            "{BASE}\n[[fault]]\nat_s = 20\nkind = \"restart\"\nnode = \"gateway\"\n\n[[fault]]\nat_s = 10\nkind = \"kill\"\nnode = \"gateway\"\n\n[[fault]]\nat_s = 30\nkind = \"partition\"\ngroups = [[\"b1\", \"b2\"], [\"b3\"]]\n\n[[fault]]\nat_s = 40\nkind = \"heal\"\n"
        );
        let s = parse(&text).expect("parses");
        assert_eq!(s.nodes, ["b1", "b2", "b3", "b4", "b5"]);
        assert_eq!(s.voters, ["b1", "b2", "b3"]);
        assert_eq!(s.neighbours["b1"], ["b2"]);
        assert_eq!(s.neighbours["b3"], ["b2", "b4"]);
        let kinds: Vec<_> = s.faults.iter().map(|f| (f.at_s, f.line)).collect();
        assert_eq!(kinds, [(10.0, 15), (20.0, 10), (30.0, 20), (40.0, 25)]);
        assert_eq!(s.faults[0].what, FaultKind::Kill(Target::Gateway));
    }

    #[test]
    fn a_grid_has_four_neighbours_inside() {
        let text = BASE.replace("count = 5", "count = 9\nlayout = \"grid\"\ncols = 3");
        let s = parse(&text).expect("parses");
        assert_eq!(s.neighbours["b5"], ["b2", "b4", "b6", "b8"]);
        assert_eq!(s.neighbours["b1"], ["b2", "b4"]);
    }

    #[test]
    fn bad_files_and_impossible_timelines_name_the_line() {
        let fault = |body: &str| format!("{BASE}\n[[fault]]\n{body}\n");
        let cases = [
            (
                BASE.replace("duration_s", "colour = 1\nduration_s"),
                2,
                "colour",
            ),
            (BASE.replace("count = 5", "count = 5\nsize = 3"), 6, "size"),
            (
                BASE.replace("duration_s = 60", "duration_s = -1"),
                2,
                "duration_s",
            ),
            (BASE.replace("synthetic", "magic"), 8, "magic"),
            (
                BASE.replace("count = 5", "count = 5\nvoters = 4"),
                6,
                "voters",
            ),
            (
                BASE.replace("count = 5", "count = 5\nlayout = \"grid\"\ncols = 2"),
                7,
                "cols",
            ),
            (
                fault("at_s = 70\nkind = \"kill\"\nnode = \"b1\""),
                10,
                "outside the run",
            ),
            (
                fault("at_s = 5\nkind = \"kill\"\nnode = \"b9\""),
                10,
                "no node `b9`",
            ),
            (
                fault("at_s = 5\nkind = \"explode\""),
                10,
                "unknown fault kind",
            ),
            (
                fault("at_s = 5\nkind = \"kill\"\nnode = \"b1\"\nhard = true"),
                10,
                "no key `hard`",
            ),
            (
                fault("at_s = 5\nkind = \"restart\"\nnode = \"b1\""),
                10,
                "was not killed",
            ),
            (fault("at_s = 5\nkind = \"heal\""), 10, "nothing to heal"),
            (fault("at_s = 5\nkind = \"cloud-up\""), 10, "not down"),
            (
                fault("at_s = 5\nkind = \"resume\"\nnode = \"gateway\""),
                10,
                "no `pause`",
            ),
            (
                fault("at_s = 5\nkind = \"partition\"\ngroups = [[\"b1\"], [\"b1\"]]"),
                10,
                "two groups",
            ),
            (
                fault("at_s = 5\nkind = \"slow-inference\"\nnode = \"b2\"\nfactor = 0.5"),
                10,
                "factor",
            ),
        ];
        for (text, line, what) in cases {
            let e = parse(&text).expect_err(what);
            assert!(
                e.to_string().contains(what) && e.line == line,
                "expected line {line} and `{what}`, got: {e}"
            );
            assert!(e.to_string().starts_with("t.toml:"), "{e}");
        }
        // A second kill of a dead node, after its first.
        let text = format!(
            "{BASE}\n[[fault]]\nat_s = 1\nkind = \"kill\"\nnode = \"b2\"\n\n[[fault]]\nat_s = 2\nkind = \"kill\"\nnode = \"b2\"\n"
        );
        let e = parse(&text).expect_err("second kill");
        assert_eq!(e.line, 15, "{e}");
    }

    #[test]
    fn the_shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../simulations");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("simulations/") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 1);
    }
}
